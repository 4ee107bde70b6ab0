"""A config as Triton hands it to a model's code: compared with what tritonserver 2.51 handed a Python model's
``initialize`` for the same config.pbtxt (recorded here by helper-206's probe, /tmp/rev206/repro/cfgdump)."""

from __future__ import annotations

import json

from polystack.formats import triton_config
from polystack.server import config_text

CONFIG = """
backend: "python"
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 1000 preferred_batch_size: [ 2 ] }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START bool_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ 0, 1 ] } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 } ]
parameters { key: "p" value: { string_value: "v" } }
"""

# tritonserver 2.51's args["model_config"]
HANDED = {
    "backend": "python", "batch_input": [], "batch_output": [], "cc_model_filenames": {},
    "default_model_filename": "model.py",
    "input": [{"allow_ragged_batch": False, "data_type": "TYPE_INT32", "dims": [1], "format": "FORMAT_NONE",
               "is_non_linear_format_io": False, "is_shape_tensor": False, "name": "INPUT", "optional": False}],
    "instance_group": [{"count": 1, "gpus": [], "host_policy": "", "kind": "KIND_CPU", "name": "m_0", "passive": False,
                        "profile": [], "secondary_devices": []}],
    "max_batch_size": 4, "metric_tags": {}, "model_warmup": [], "name": "m",
    "optimization": {"eager_batching": False, "gather_kernel_buffer_threshold": 0,
                     "input_pinned_memory": {"enable": True}, "output_pinned_memory": {"enable": True},
                     "priority": "PRIORITY_DEFAULT"},
    "output": [{"data_type": "TYPE_INT32", "dims": [1], "is_non_linear_format_io": False, "is_shape_tensor": False,
                "label_filename": "", "name": "OUTPUT"}],
    "parameters": {"p": {"string_value": "v"}}, "platform": "", "runtime": "",
    "sequence_batching": {
        "control_input": [
            {"control": [{"bool_false_true": [False, True], "data_type": "TYPE_INVALID", "fp32_false_true": [],
                          "int32_false_true": [], "kind": "CONTROL_SEQUENCE_START"}], "name": "START"},
            {"control": [{"bool_false_true": [False, True], "data_type": "TYPE_INVALID", "fp32_false_true": [],
                          "int32_false_true": [], "kind": "CONTROL_SEQUENCE_READY"}], "name": "READY"},
        ],
        "iterative_sequence": False, "max_sequence_idle_microseconds": 5000000,
        "oldest": {"max_candidate_sequences": 4, "max_queue_delay_microseconds": 1000, "preferred_batch_size": [2],
                   "preserve_ordering": False},
        "state": [],
    },
    "version_policy": {"latest": {"num_versions": 1}},
}  # fmt: skip


def test_a_config_is_handed_to_a_model_as_tritonserver_2_51_hands_it() -> None:
    """helper-206: the START control came without its kind (protobuf's default, left out) and the idle time as the
    string "5000000", so a model reading control["kind"] failed to load on polystack alone."""
    config = json.loads(config_text.as_json(CONFIG))
    assert json.loads(triton_config.as_handed(config, "m", "model.py")) == HANDED


def test_what_a_config_gives_is_kept_and_the_rest_completed() -> None:
    given = "version_policy: { all { } }\noptimization { priority: PRIORITY_MAX }\n"
    handed = json.loads(triton_config.as_handed(json.loads(config_text.as_json(CONFIG + given)), "m", "model.py"))
    assert handed["version_policy"] == {"all": {}}
    assert handed["optimization"] == {**HANDED["optimization"], "priority": "PRIORITY_MAX"}


def test_the_fields_newer_than_tritonclients_proto_are_handed_as_given() -> None:
    """helper-219: Triton 24.x's ``runtime`` and ``is_non_linear_format_io`` were left out (tritonclient's proto, which
    polystack reads configs with, has neither), where 2.51 hands them, a config's own values included."""
    config = json.loads(config_text.as_json(CONFIG))  # (a config.pbtxt gives them as JSON: its proto lacks them)
    config["runtime"], config["input"][0]["is_non_linear_format_io"] = "model.py", True
    handed = json.loads(triton_config.as_handed(config, "m", "model.py"))
    assert handed["runtime"] == "model.py"
    assert handed["input"][0]["is_non_linear_format_io"] and not handed["output"][0]["is_non_linear_format_io"]


def test_a_config_protobuf_cannot_read_is_handed_as_it_is() -> None:
    config = {"name": "m", "max_batch_size": "lots"}
    assert json.loads(triton_config.as_handed(config, "m", "model.py")) == config
