"""model_config.read on its own: what a load's config decides, against the policy polystack would have used."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from configkit import PLAN, RECORD, SIG, SPEC
from servekit import caught_logs

from polystack.backends.reshaped import Reshape
from polystack.batching import BatchPolicy, QueuePolicy
from polystack.batching.rate_limiter import Resource, Rule
from polystack.engine import LoadSpec
from polystack.errors import InvalidRequest
from polystack.server import config_text, model_config
from polystack.types import DType, Signature, TensorSpec


def test_what_the_config_leaves_out_means_what_it_means_to_triton_but_size_and_instances() -> None:
    chosen = model_config.read('{"dynamic_batching": {}}', RECORD, SPEC, PLAN)
    # max_batch_size and instances from the plan; the rest as Triton reads an empty dynamic_batching
    assert chosen.batching == BatchPolicy(
        max_batch_size=24, max_queue_delay_ms=0, instances=2, idle_gap_ms=0, max_queue_size=0, client_timeouts=False,
        client_timeout_needs_default=True,
    )


def test_without_dynamic_batching_the_plans_instances_are_not_asked_for() -> None:
    assert model_config.read('{"max_batch_size": 4}', RECORD, SPEC, PLAN) == model_config.LoadConfig(None, 4)
    assert model_config.read("{}", RECORD, SPEC, PLAN) == model_config.LoadConfig(None, None)


def test_without_dynamic_batching_the_count_is_how_many_requests_run_at_once() -> None:
    # a group without a count has Triton's default count: 2 for its ONNX Runtime backend on CPU (was 1)
    text = '{"instance_group": [{"count": 3}, {"kind": "KIND_CPU"}]}'
    # the groups run as one pool, each shown named as Triton names it
    named = model_config.Additions(groups=(("m_0", 3, None), ("m_1", 2, None)), group_order=("m_0", "m_1"))
    assert model_config.read(text, RECORD, SPEC, PLAN) == model_config.LoadConfig(None, None, 5, named)
    other = dataclasses.replace(SPEC, backend="openvino")  # 1 for the others
    shown = model_config.Additions(groups=(("m_0", 3, None), ("m_1", 1, None)), group_order=("m_0", "m_1"))
    assert model_config.read(text, RECORD, other, PLAN) == model_config.LoadConfig(None, None, 4, shown)


def test_numbers_may_be_strings_as_protobuf_writes_64_bit_ones() -> None:
    text = (
        '{"maxBatchSize": "8", "dynamicBatching": {"preferredBatchSize": ["4", 8], "maxQueueDelayMicroseconds": "250"}}'
    )
    chosen = model_config.read(text, RECORD, SPEC, None)
    assert chosen.batching is not None
    assert chosen.batching.preferred_batch_sizes == (4, 8) and chosen.batching.max_queue_delay_ms == 0.25
    with pytest.raises(InvalidRequest, match="'8x' is not a whole number"):
        model_config.read('{"max_batch_size": "8x"}', RECORD, SPEC, None)


def test_a_gpu_instance_group_matches_a_cuda_device() -> None:
    """No GPU here: only the config's reading is checked, against a spec that names one."""
    cuda = LoadSpec(artifact=Path("m.onnx"), format="onnx", backend="onnxruntime", device="cuda:1")
    text = '{"dynamic_batching": {}, "instance_group": [{"kind": "KIND_GPU", "gpus": [1], "count": 3}]}'
    chosen = model_config.read(text, RECORD, cuda, None)
    assert chosen.batching is not None and chosen.batching.instances == 3
    with pytest.raises(InvalidRequest, match="gpus"):
        model_config.read('{"instance_group": [{"kind": "KIND_GPU", "gpus": [0]}]}', RECORD, cuda, None)
    with pytest.raises(InvalidRequest, match="KIND_CPU"):
        model_config.read('{"instance_group": [{"kind": "KIND_CPU"}]}', RECORD, cuda, None)


def test_triton_onnxruntime_parameters_set_the_runtimes_options() -> None:
    """Triton's onnxruntime backend reads thread counts and the execution mode from ``parameters``;
    polystack's onnxruntime backend takes the same as options ("0": the plan's choice)."""

    def parameters(**given: str) -> str:
        return json.dumps({"parameters": {k: {"string_value": v} for k, v in given.items()}})

    chosen = model_config.read(parameters(intra_op_thread_count="3", execution_mode="1"), RECORD, SPEC, PLAN)
    assert chosen.additions.options == {"intra_op_threads": 3, "execution_mode": "parallel"}
    assert model_config.read(parameters(inter_op_thread_count="0"), RECORD, SPEC, PLAN).additions.options == {}
    # read as Triton's backend reads them (std::stoi): spaces, a sign, leading zeros; 0 or less: the default
    assert model_config.read(parameters(intra_op_thread_count=" 02"), RECORD, SPEC, PLAN).additions.options == {
        "intra_op_threads": 2
    }
    assert model_config.read(parameters(intra_op_thread_count="-1"), RECORD, SPEC, PLAN).additions.options == {}
    for bad, says in (("many", "not a whole number"), ("1025", "at most 1024 threads")):
        with pytest.raises(InvalidRequest, match=says):
            model_config.read(parameters(intra_op_thread_count=bad), RECORD, SPEC, PLAN)
    for item in ({"string_value": "2", "stringValue": "3"}, {"string_value": "2", "bool_value": True}):
        with pytest.raises(InvalidRequest, match="parameter 'intra_op_thread_count' sets"):
            model_config.read(json.dumps({"parameters": {"intra_op_thread_count": item}}), RECORD, SPEC, PLAN)
    with pytest.raises(InvalidRequest, match="Expected values for execution_mode are 0 or 1 but got 2"):
        model_config.read(parameters(execution_mode="2"), RECORD, SPEC, PLAN)
    # read as Triton reads it (std::stoi)
    assert model_config.read(parameters(execution_mode=" +1"), RECORD, SPEC, PLAN).additions.options == {
        "execution_mode": "parallel"
    }
    # a parameter Triton's backend does not read is ignored, as Triton ignores it (was refused), and said;
    # GET config still shows it, as Triton's does
    with caught_logs("polystack.server", logging.WARNING) as logs:
        got = model_config.read(parameters(frobnicate="1", owner="team-a"), RECORD, SPEC, PLAN)
    assert got.additions.options == {} and got.additions.parameters == (("frobnicate", "1"), ("owner", "team-a"))
    assert [r.parameters for r in logs] == [["frobnicate", "owner"]]  # type: ignore[attr-defined]
    # an empty string, which protobuf's JSON leaves out of config.pbtxt's parameter (stopped the start)
    empty = config_text.as_json('parameters { key: "note" value: { string_value: "" } }')
    assert model_config.read(empty, RECORD, SPEC, PLAN).additions.parameters == (("note", ""),)
    for bad in ("abc", 5, None, ["x"]):  # not a parameter message: refused, not read as ""
        with pytest.raises(InvalidRequest, match=re.escape('parameter \'note\' must be {"string_value": TEXT}')):
            model_config.read(json.dumps({"parameters": {"note": bad}}), RECORD, SPEC, PLAN)
    ov = LoadSpec(artifact=Path("m.xml"), format="openvino", backend="openvino")
    assert model_config.read(parameters(owner="team-a"), RECORD, ov, PLAN).additions.options == {}
    with pytest.raises(InvalidRequest, match="of Triton's ONNX Runtime backend, but polystack serves this model with"):
        model_config.read(parameters(intra_op_thread_count="2"), RECORD, ov, PLAN)


def test_triton_onnxruntime_memory_and_session_parameters_set_the_runtimes_options() -> None:
    """The rest of what Triton's ONNX Runtime backend reads from ``parameters``: the CPU memory arena and pattern
    (booleans as its ParseBoolValue reads them), a session entry, and CUDA provider settings, which apply on a
    GPU only (Triton reads them for GPU instances); the config's own text is kept to show."""

    def read(spec: LoadSpec = SPEC, **given: str) -> model_config.Additions:
        text = json.dumps({"parameters": {k: {"string_value": v} for k, v in given.items()}})
        return model_config.read(text, RECORD, spec, PLAN).additions

    chosen = read(
        enable_mem_arena="OFF",
        enable_mem_pattern="true",
        share_session_between_instances="true",  # polystack's instances share one session anyway
        **{"session.use_device_allocator_for_initializers": "1", "memory.enable_memory_arena_shrinkage": "cpu:0"},
    )
    assert chosen.options == {
        "enable_cpu_mem_arena": False,
        "enable_mem_pattern": True,
        "session_config": {"session.use_device_allocator_for_initializers": "1"},
        "run_config": {"memory.enable_memory_arena_shrinkage": "cpu:0"},
    }
    assert chosen.parameters[:2] == (("enable_mem_arena", "OFF"), ("enable_mem_pattern", "true"))
    for bad in ({"enable_mem_arena": "maybe"}, {"share_session_between_instances": "maybe"}):
        with pytest.raises(InvalidRequest, match="failed to convert 'maybe' to boolean"):
            read(**bad)
    cuda = dict(cudnn_conv_algo_search="1", arena_extend_strategy="1", gpu_mem_limit="1024", do_copy_in_default_stream="0")
    # on a CPU: neither checked nor applied, as Triton reads them for GPU instances only
    assert read(**cuda).options == {} and read(cudnn_conv_algo_search="3").options == {}
    # No GPU here: what a GPU spec would be given is checked, not run
    gpu = dataclasses.replace(SPEC, device="cuda:0")
    assert read(gpu, **cuda).options == {
        "provider_options": {
            "CUDAExecutionProvider": {
                "cudnn_conv_algo_search": "HEURISTIC",
                "arena_extend_strategy": "kSameAsRequested",
                "gpu_mem_limit": "1024",
                "do_copy_in_default_stream": "0",
            }
        }
    }
    with pytest.raises(InvalidRequest, match="unsupported cudnn_conv_algo_search value '3' is requested"):
        read(gpu, cudnn_conv_algo_search="3")


def test_triton_optimization_sets_the_graph_level_and_execution_accelerators() -> None:
    def read(optimization: dict[str, Any], spec: LoadSpec = SPEC) -> model_config.Additions:
        return model_config.read(json.dumps({"optimization": optimization}), RECORD, spec, PLAN).additions

    # Triton's levels: -1 basic, 1 extended, 2 none, any other every optimization (ORT's default)
    for level, ours in ((-1, "basic"), (1, "extended"), (2, "disable"), (0, "all"), (7, "all")):
        assert read({"graph": {"level": level}}).options == {"graph_optimization_level": ours}
    openvino = {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}
    assert read(openvino).options == {
        "cpu_accelerators": ["OpenVINOExecutionProvider"],
        "provider_options": {"OpenVINOExecutionProvider": {"device_type": "CPU"}},
    }
    tensorrt = {
        "name": "tensorrt",
        "parameters": {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824", "trt_engine_cache_enable": "true"},
    }
    cuda = {"name": "cuda", "parameters": {"cudnn_conv_use_max_workspace": "0", "use_ep_level_unified_stream": "1"}}
    gpu_eas = {"execution_accelerators": {"gpu_execution_accelerator": [tensorrt, cuda]}}
    assert read(gpu_eas).options == {}  # on a CPU: ignored, as by Triton's KIND_CPU instances
    unknown = {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "auto_mixed_precision"}]}}
    assert read(unknown).options == {}  # TensorFlow's, copied over: Triton does not look at it on a CPU either
    # No GPU here: what a GPU spec would be given is checked, not run
    gpu = dataclasses.replace(SPEC, device="cuda:1")
    assert read(gpu_eas, gpu).options == {
        "accelerators": ["TensorrtExecutionProvider"],
        "provider_options": {
            "TensorrtExecutionProvider": {
                "trt_fp16_enable": "1",
                "trt_max_workspace_size": "1073741824",
                "trt_engine_cache_enable": "1",
            },
            "CUDAExecutionProvider": {"cudnn_conv_use_max_workspace": "0", "use_ep_level_unified_stream": "1"},
        },
    }
    bf16 = {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"precision_mode": "BF16"}}]}}
    assert read(bf16, gpu).options["provider_options"]["TensorrtExecutionProvider"] == {"trt_bf16_enable": "1"}
    # the deprecated CUDA parameters win over the cuda accelerator's, as in Triton
    both = {"optimization": {"execution_accelerators": {"gpu_execution_accelerator": [
        {"name": "cuda", "parameters": {"cudnn_conv_algo_search": "DEFAULT"}}]}},
        "parameters": {"cudnn_conv_algo_search": {"string_value": "1"}}}  # fmt: skip
    chosen = model_config.read(json.dumps(both), RECORD, gpu, PLAN).additions.options
    assert chosen["provider_options"]["CUDAExecutionProvider"] == {"cudnn_conv_algo_search": "HEURISTIC"}
    # Triton's TensorRT backend's fields, which its other backends ignore; pinned memory changes no copy here
    ignored = {
        "cuda": {"graphs": True, "busyWaitEvents": True},
        "gather_kernel_buffer_threshold": 4,
        "eager_batching": True,
        "input_pinned_memory": {"enable": False},
        "output_pinned_memory": {},
        "priority": "PRIORITY_MAX",  # every polystack thread runs at the highest priority a user process may set
    }
    chosen = read(ignored)
    assert chosen.options == {}
    shown = chosen.optimization.render()  # as given, to show, as Triton shows them
    assert shown["cuda"] == {"graphs": True, "busy_wait_events": True} and shown["priority"] == "PRIORITY_MAX"
    assert shown["gather_kernel_buffer_threshold"] == 4 and shown["eager_batching"] is True
    assert shown["input_pinned_memory"] == shown["output_pinned_memory"] == {"enable": False}
    gpu = dataclasses.replace(SPEC, device="cuda:0")
    for bad, says in (
        ({"graph": {"level": "high"}}, "'high' is not a whole number"),
        ({"priority": "PRIORITY_MIN"}, "one scheduling priority"),
        ({"priority": 7}, "not a value of Triton's"),
        ({"execution_accelerators": {"cpu_execution_accelerator": [{"name": "tensorrt"}]}},
         "unknown Execution Accelerator 'tensorrt' is requested; Triton's ONNX Runtime backend takes openvino"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"name": "openvino"}]}},
         "unknown Execution Accelerator 'openvino' is requested"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"x": "1"}}]}},
         "unknown parameter 'x' is provided for TensorRT Execution Accelerator"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"precision_mode": "FP8"}}]}},
         "unsupported precision mode 'FP8' is requested"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"trt_dla_core": "one"}}]}},
         "'one', not a whole number"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"parameters": {}}]}}, "needs a name"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"name": "cuda", "parameters": {"a": 1}}]}}, "map names to strings"),
        ({"execution_accelerators": {"cpu_execution_accelerator": {"name": "openvino"}}}, "must be a list"),
        ({"cuda": {"graph": True}}, "'graph', which is not a field"),
        ({"cuda": {"graphs": "abc"}}, "is not Triton's ModelOptimizationPolicy.Cuda"),
        ({"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"trt_dla_core": "99999999999"}}]}},
         "out of range"),
        ({"graphs": True}, "'graphs', which is not a field"),
    ):  # fmt: skip
        with pytest.raises(InvalidRequest, match=re.escape(says)):
            read(bad, gpu if "gpu_execution_accelerator" in json.dumps(bad) else SPEC)
    ov = LoadSpec(artifact=Path("m.xml"), format="openvino", backend="openvino")
    for given in ({"graph": {"level": 1}}, openvino):
        with pytest.raises(InvalidRequest, match=r"optimization.* of Triton's ONNX Runtime backend, but polystack serves"):
            read(given, ov)
    assert read(ignored, ov).options == {}  # the rest is any runtime's


def test_optimization_reads_from_config_pbtxt_and_shows_as_triton_shows_it() -> None:
    text = config_text.as_json(
        """
        optimization { execution_accelerators {
          gpu_execution_accelerator : [ {
            name : "tensorrt"
            parameters { key: "precision_mode" value: "FP16" }
            parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ]
          cpu_execution_accelerator : [ { name : "openvino" } ]
        }
        graph : { level : 1 }
        input_pinned_memory { enable: false } }
        """
    )
    optimization = model_config.read(text, RECORD, SPEC, PLAN).additions.optimization
    assert optimization.render() == {
        "priority": "PRIORITY_DEFAULT",
        "input_pinned_memory": {"enable": False},
        "output_pinned_memory": {"enable": True},
        "gather_kernel_buffer_threshold": 0,
        "eager_batching": False,
        "graph": {"level": 1},
        "execution_accelerators": {
            "gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}}
            ],
            "cpu_execution_accelerator": [{"name": "openvino", "parameters": {}}],
        },
    }
    # shown, it reads back to what it was
    again = model_config.read(json.dumps({"optimization": optimization.render()}), RECORD, SPEC, PLAN)
    assert again.additions.optimization == optimization


def test_response_cache_is_read_in_both_spellings_and_from_config_pbtxt() -> None:
    def cached(text: str) -> bool:
        return model_config.read(text, RECORD, SPEC, PLAN).additions.response_cache

    assert cached('{"response_cache": {"enable": true}}') and cached('{"responseCache": {"enable": true}}')
    assert not cached("{}") and not cached('{"response_cache": {}}') and not cached('{"response_cache": null}')
    assert cached(config_text.as_json("response_cache { enable: true }"))
    assert not cached(config_text.as_json("response_cache { enable: false }"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"response_cache": true}', "response_cache must be a JSON object"),
        ('{"response_cache": {"enable": "yes"}}', "response_cache.enable must be true or false"),
        ('{"response_cache": {"enable": true, "size": 5}}', "not a field of Triton's model configuration"),
    ],
)
def test_a_response_cache_setting_triton_would_not_read_is_refused(text: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        model_config.read(text, RECORD, SPEC, PLAN)


def test_enum_fields_may_be_numbers_as_protobufs_json_reads_them() -> None:
    """Triton reads configs with protobuf's JSON parser, which takes an enum's number (or its digits) for
    its name: a config written that way reads as the same config with names."""
    named = {
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "dynamic_batching": {"default_queue_policy": {"timeout_action": "REJECT"}},
    }
    numbered = copy.deepcopy(named)
    numbered["input"][0]["data_type"] = 11
    numbered["output"][0]["data_type"] = "11"
    numbered["instance_group"][0]["kind"] = 2
    numbered["dynamic_batching"]["default_queue_policy"]["timeout_action"] = 0
    assert model_config.read(json.dumps(numbered), RECORD, SPEC, PLAN) == model_config.read(
        json.dumps(named), RECORD, SPEC, PLAN
    )
    for spelled in ("+2", " 2 ", "02", 2.0):  # as protobuf reads a number: a sign, spaces, leading zeros
        numbered["instance_group"][0]["kind"] = spelled
        assert model_config.read(json.dumps(numbered), RECORD, SPEC, PLAN) == model_config.read(
            json.dumps(named), RECORD, SPEC, PLAN
        )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"instance_group": [{"kind": 7}]}, r"instance_group\[0\].kind 7 is not a value of Triton's"),
        ({"instance_group": [{"kind": 1}]}, "kind 'KIND_GPU' does not match"),
        ({"input": [{"name": "x", "data_type": 8}]}, "has data_type 'TYPE_INT32', but the model's is TYPE_FP32"),
        ({"input": [{"name": "x", "format": 2}]}, "has format FORMAT_NCHW, which needs 3 dims"),
        ({"input": [{"name": "x", "data_type": [11]}]}, "must be a name such as those GET config shows"),
        ({"dynamic_batching": {"default_queue_policy": {"timeout_action": 2}}}, "timeout_action 2 is not a value"),
    ],
)
def test_an_enum_number_is_checked_as_its_name_would_be(change: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        model_config.read(json.dumps(change), RECORD, SPEC, PLAN)


def test_priority_levels_read_from_a_config_pbtxt_as_from_json() -> None:
    """Triton's priority_queue_policy is a map from level to queue policy: entries with key and value in
    the protobuf text format, an object keyed by the level's digits in JSON."""
    pbtxt = """
    dynamic_batching {
      priority_levels: 3
      default_priority_level: 2
      default_queue_policy { max_queue_size: 8 }
      priority_queue_policy [
        { key: 3 value: { max_queue_size: 2 default_timeout_microseconds: 1500 allow_timeout_override: true } },
        { key: 1 value: { } }
      ]
    }
    """
    chosen = model_config.read(config_text.as_json(pbtxt), RECORD, SPEC, PLAN)
    same = {
        "dynamic_batching": {
            "priority_levels": "3",
            "default_priority_level": 2,
            "default_queue_policy": {"max_queue_size": 8},
            "priority_queue_policy": {
                "1": {},
                "3": {"max_queue_size": 2, "default_timeout_microseconds": "1500", "allow_timeout_override": True},
            },
        }
    }
    assert chosen == model_config.read(json.dumps(same), RECORD, SPEC, PLAN)
    policy = chosen.batching
    assert policy is not None and (policy.priority_levels, policy.default_priority_level) == (3, 2)
    assert policy.queue_policy(3) == QueuePolicy(max_queue_size=2, timeout_s=0.0015, client_timeouts=True)
    assert policy.queue_policy(1) == QueuePolicy(max_queue_size=0, timeout_s=None, client_timeouts=False)
    assert policy.queue_policy(2) == QueuePolicy(max_queue_size=8, timeout_s=None, client_timeouts=False)
    assert [policy.level_of(p) for p in (0, 1, 2, 3, 4, 1 << 63)] == [2, 1, 2, 3, 2, 2]


def test_timeout_action_delay_reads_by_name_or_number_and_per_level() -> None:
    """Triton's DELAY: a request past its queue timeout runs after its level's others instead of failing."""
    named = {"dynamic_batching": {"default_queue_policy": {"timeout_action": "DELAY", "default_timeout_microseconds": 5000}}}
    chosen = model_config.read(json.dumps(named), RECORD, SPEC, PLAN)
    assert chosen.batching is not None and chosen.batching.queue_policy(0).delay
    assert chosen.batching.queue_policy(0).timeout_s == 0.005
    numbered = {"dynamic_batching": {"default_queue_policy": {"timeout_action": 1, "default_timeout_microseconds": 5000}}}
    assert model_config.read(json.dumps(numbered), RECORD, SPEC, PLAN) == chosen
    levels = config_text.as_json(
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 "
        "priority_queue_policy { key: 1 value: { timeout_action: DELAY default_timeout_microseconds: 100 } } }"
    )
    policy = model_config.read(levels, RECORD, SPEC, PLAN).batching
    assert policy is not None and policy.queue_policy(1).delay and not policy.queue_policy(2).delay


def test_config_dims_may_fix_a_dynamic_dim_but_not_change_a_fixed_one() -> None:
    """Triton's ONNX Runtime backend compares dims so: a -1 of the model's matches any size the config gives."""
    dynamic = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1, 4)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2)),))
    record = dataclasses.replace(RECORD, signature=dynamic)
    fixed = model_config.read(json.dumps({"max_batch_size": 8, "input": [{"name": "x", "dims": [5, 4]}]}), record, SPEC, PLAN)
    assert fixed.additions.shapes == (("x", (-1, 5, 4)),)
    same = model_config.read(json.dumps({"max_batch_size": 8, "input": [{"name": "x", "dims": [-1, 4]}]}), record, SPEC, PLAN)
    assert same.additions.shapes == ()
    for dims in ([5, -1], [5, 3], [5]):
        with pytest.raises(InvalidRequest, match="may fix a dim the model leaves -1"):
            model_config.read(json.dumps({"max_batch_size": 8, "input": [{"name": "x", "dims": dims}]}), record, SPEC, PLAN)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"input": [{"name": "x", "dims": [4, 1]}]},
         "unable to load model 'm', tensor 'x' shape expected by framework [4] doesn't match model configuration shape "
         "[4,1]: input[0] (x) has dims [4, 1]"),
        ({"output": [{"name": "y", "dims": [3]}]},
         "unable to load model 'm', tensor 'y' shape expected by framework [2] doesn't match model configuration shape "
         "[3]: output[0] (y) has dims [3]"),
        ({"input": [{"name": "x", "data_type": "TYPE_INT32"}]},
         "unable to load model 'm', input 'x' data-type TYPE_FP32 doesn't match configuration data-type TYPE_INT32: "),
        ({"output": [{"name": "y", "data_type": "TYPE_INT16"}]},  # Triton's words, its missing quote too
         "unable to load model 'm, unexpected datatype TYPE_FP32 for output 'y', expecting TYPE_INT16: "),
        ({"input": [{"name": "x", "dims": [4]}, {"name": "z", "dims": [4]}]},
         "unable to load model 'm', configuration expects 2 inputs, model provides 1: input[1] names 'z'"),
        ({"input": [{"name": "z", "dims": [4]}]}, "unexpected inference input 'z', allowed inputs are: x: "),
        ({"output": [{"name": "z", "dims": [4]}]}, "unexpected inference output 'z', allowed outputs are: y: "),
    ],
)
def test_a_config_that_does_not_fit_the_model_is_refused_in_the_words_of_tritons_onnx_runtime_backend(
    change: dict[str, Any], words: str, tmp_path: Path
) -> None:
    """Its words first, as Triton's L0_model_config greps them (helper-193), then polystack's."""
    from polystack.examples import mlp_onnx

    spec = dataclasses.replace(SPEC, artifact=mlp_onnx(tmp_path / "m.onnx", sizes=(4, 2)))  # RECORD's: x [-1, 4] -> y
    with pytest.raises(InvalidRequest) as refused:
        model_config.read(json.dumps({"max_batch_size": 8, **change}), RECORD, spec, PLAN)
    assert refused.value.message.startswith(words), refused.value.message


@pytest.mark.parametrize("dims", [[0, 4], [-2, 4], [4, 0]])
@pytest.mark.parametrize("key", ["input", "output"])
def test_a_dimension_below_1_but_minus_1_is_refused_in_tritons_words(key: str, dims: list[int]) -> None:
    """Triton's ValidateIOShape takes each dimension of a config's inputs and outputs >= 1, or -1: a config whose
    dims said 0 fixed a model's -1 to 0, and a Python model's (whose signature is its config's) loaded (helper-193)."""
    def signature(shape: tuple[int, ...]) -> Signature:
        return Signature(inputs=(TensorSpec("x", DType.FP32, shape),), outputs=(TensorSpec("y", DType.FP32, shape),))

    python = dataclasses.replace(RECORD, format="python", signature=signature((-1, *dims)))  # its config's
    python_spec = LoadSpec(artifact=Path("m"), format="python", backend="python")
    name = "x" if key == "input" else "y"
    words = f"model {key} '{name}' dimension must be integer >= 1, or -1 to indicate a variable-size dimension for m"
    for record, spec in ((dataclasses.replace(RECORD, signature=signature((-1, -1, 4))), SPEC), (python, python_spec)):
        config = {"max_batch_size": 8, key: [{"name": name, "data_type": "TYPE_FP32", "dims": dims}]}
        with pytest.raises(InvalidRequest, match=re.escape(words)):
            model_config.read(json.dumps(config), record, spec, PLAN)


TRITON_RECORD = dataclasses.replace(RECORD, settings={model_config.TRITON_IO: True})  # from a model repository


def test_a_repository_models_config_without_its_tensors_is_auto_completed_as_triton_does() -> None:
    """Triton's ONNX Runtime backend completes a config that lists no inputs or no outputs (AutoCompleteMaxBatch):
    a model that can batch gets default-max-batch-size (4) where max_batch_size is 0 or left out, and dynamic
    batching (Triton's defaults) where that is over 1, unless the config schedules it itself."""
    # without a plan, Triton's instance count too: 2 for ONNX Runtime on CPU (SetDefaultInstanceCount)
    triton = BatchPolicy(
        max_batch_size=4, max_queue_delay_ms=0, instances=2, idle_gap_ms=0, max_queue_size=0, client_timeouts=False,
        client_timeout_needs_default=True,
    )
    assert model_config.read("{}", TRITON_RECORD, SPEC, None).batching == triton
    for text in ('{"max_batch_size": 0}', '{"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]}'):
        assert model_config.read(text, TRITON_RECORD, SPEC, PLAN).batching.max_batch_size == 4  # type: ignore[union-attr]
    # a size the config gives is kept, and batched; a delay it gives too
    chosen = model_config.read('{"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 500}}',
                               TRITON_RECORD, SPEC, None)
    assert chosen.batching is not None and (chosen.batching.max_batch_size, chosen.batching.max_queue_delay_ms) == (8, 0.5)
    assert model_config.read('{"max_batch_size": 8}', TRITON_RECORD, SPEC, None).batching is not None
    # the server's default-max-batch-size: 0 is no batching, 1 a batch of one without a batcher
    # auto-completed to max_batch_size 0: no batch dimension (dims of -1 need not agree as a batch's would)
    assert model_config.read("{}", TRITON_RECORD, SPEC, None, default_max_batch_size=0) == model_config.LoadConfig(None, 0)
    assert model_config.read("{}", TRITON_RECORD, SPEC, None, default_max_batch_size=1) == model_config.LoadConfig(None, 1)
    # a variant that takes fewer rows caps it
    small = dataclasses.replace(SPEC, max_batch_size=2)
    assert model_config.read("{}", TRITON_RECORD, small, None).batching.max_batch_size == 2  # type: ignore[union-attr]
    # a sequence model gets the size but keeps its own scheduler
    sequence = '{"sequence_batching": {"max_sequence_idle_microseconds": 1000000}}'
    chosen = model_config.read(sequence, TRITON_RECORD, SPEC, None)
    assert chosen.batching is None and chosen.sequence is not None and chosen.sequence.max_batch_size == 4


def test_a_config_that_lists_its_tensors_or_a_model_polystack_registered_is_not_auto_completed() -> None:
    both = (
        '{"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}], '
        '"output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 2]}]}'
    )
    # its max_batch_size is Triton's 0: no batch dimension
    assert model_config.read(both, TRITON_RECORD, SPEC, PLAN) == model_config.LoadConfig(None, 0)
    assert model_config.read("{}", RECORD, SPEC, PLAN) == model_config.LoadConfig(None, None)  # polystack's own
    # a model Triton cannot batch (a scalar output) keeps max_batch_size 0, its scalar shown as dims [1]; a size
    # given is refused
    scalar_out = Signature(inputs=SIG.inputs, outputs=(TensorSpec("y", DType.FP32, ()),))
    record = dataclasses.replace(TRITON_RECORD, signature=scalar_out)
    chosen = model_config.read("{}", record, SPEC, None)
    assert (chosen.batching, chosen.max_batch_size) == (None, None)
    assert chosen.additions.reshape == (Reshape("y", False, (1,), ()),)
    with pytest.raises(InvalidRequest, match="autofill failed for model 'm': model does not support batching"):
        model_config.read('{"max_batch_size": 8}', record, SPEC, None)
    # so is a model without a batch dimension, whose config leaves its outputs to auto-complete (Triton's
    # L0_model_config bad_max_batch_size, which polystack refused in its own words: helper-193)
    unbatched = Signature(inputs=(TensorSpec("x", DType.FP32, (16,)),), outputs=(TensorSpec("y", DType.FP32, (16,)),))
    record = dataclasses.replace(TRITON_RECORD, signature=unbatched)
    inputs_alone = '{"max_batch_size": 1, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}]}'
    with pytest.raises(InvalidRequest, match="autofill failed for model 'm': model does not support batching"):
        model_config.read(inputs_alone, record, SPEC, None)


def test_a_refusal_of_an_auto_completed_size_says_where_the_size_came_from() -> None:
    """The user wrote max_batch_size 0 (or none), listed the inputs with their batch dim and left the outputs to
    auto-complete, which gives 4 (as Triton's does, which refuses it too): the refusal says the 4 came from it."""
    text = '{"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}]}'
    with pytest.raises(InvalidRequest) as e:
        model_config.read(text, TRITON_RECORD, SPEC, None)
    assert e.value.message.startswith(
        "max_batch_size 4 is what Triton's auto-complete gives this model, whose config lists no outputs"
    )
    assert "input[0] (x) has dims [-1, 4], but the model's are [4] with max_batch_size 4" in e.value.message
    with pytest.raises(InvalidRequest) as e:  # a size the user wrote: the refusal alone
        model_config.read(text.replace('"max_batch_size": 0', '"max_batch_size": 4'), TRITON_RECORD, SPEC, None)
    assert e.value.message.startswith("unable to load model 'm', tensor 'x' shape expected by framework [4]")


def test_a_refusal_the_auto_completed_size_does_not_decide_is_not_put_down_to_it() -> None:
    with pytest.raises(InvalidRequest) as e:
        model_config.read('{"response_cache": {"enable": "maybe"}}', TRITON_RECORD, SPEC, None)
    assert "auto-complete" not in e.value.message


def test_an_instance_groups_rate_limiter_is_read_for_the_rate_limiter() -> None:
    """Triton schedules by rate_limiter when started with --rate-limit execution_count (off by default, when it
    changes nothing): each group's resources and priority are kept for its instances."""
    group = {"count": 2, "kind": "KIND_CPU",
             "rate_limiter": {"resources": [{"name": "R1", "count": 4}, {"name": "R3", "global": True, "count": 2}],
                              "priority": 2}}  # fmt: skip
    chosen = model_config.read(json.dumps({"instance_group": [group, {"count": 1}]}), RECORD, SPEC, PLAN)
    assert chosen.instances == 3
    assert chosen.additions.rules(3) == [
        (Rule((Resource("R1", 4), Resource("R3", 2, shared=True)), priority=2), 2),
        (Rule(), 1),  # a group without one needs nothing, at priority 0 (counted as 1)
    ]
    assert chosen.additions.rules(5) == [(chosen.additions.rules(3)[0][0], 5)]  # serve's count over the config's
    pbtxt = config_text.as_json(
        'instance_group [ { count: 2 kind: KIND_CPU rate_limiter { resources [ { name: "R1" global: true count: 4 } ] '
        "priority: 1 } } ]"
    )
    nameless = {"count": 1, "rate_limiter": {"resources": [{"count": 4}, {"name": "", "count": 1}]}}
    assert model_config.read(json.dumps({"instance_group": [nameless]}), RECORD, SPEC, PLAN).additions.rules(1) == [
        (Rule((Resource("", 4), Resource("", 1))), 1)  # named "", as Triton loads them (it was refused)
    ]
    assert model_config.read(pbtxt, RECORD, SPEC, PLAN).additions.rules(2) == [
        (Rule((Resource("R1", 4, shared=True),), priority=1), 2)
    ]
    for bad, says in (
        ({"resources": [{"name": "R1", "count": 4, "size": 1}]}, "not a field of Triton's model configuration"),
        ({"resources": [{"name": "R1", "count": -1}]}, "is not a whole number from 0"),
        ({"priority": "high"}, "is not a whole number from 0"),
        ({"resources": {"name": "R1"}}, "must be a list of resources"),
    ):
        with pytest.raises(InvalidRequest, match=says):
            model_config.read(json.dumps({"instance_group": [{**group, "rate_limiter": bad}]}), RECORD, SPEC, PLAN)


def test_model_metrics_is_a_field_of_tritons_config_taken_at_its_default_and_refused_otherwise() -> None:
    """Triton's per-model histogram buckets (``model_metrics``, Triton 24.09 and later): a config copying Triton's
    printed defaults loads; one that sets buckets says why polystack cannot honour them. Both were refused as
    not a field of Triton's model configuration."""
    model_config.read('{"model_metrics": {"metric_control": []}}', RECORD, SPEC, PLAN)
    buckets = {"metric_control": [{"metric_identifier": {"family": "nv_inference_first_response_histogram_ms"},
                                   "histogram_options": {"buckets": [1, 10, 100]}}]}  # fmt: skip
    with pytest.raises(InvalidRequest, match="sets model_metrics, which polystack cannot honour: polystack's histograms"):
        model_config.read(json.dumps({"model_metrics": buckets}), RECORD, SPEC, PLAN)


def test_a_decoupled_config_is_a_python_model_s_alone() -> None:
    """Not decoupled is Triton's default and loads; decoupled is for a model whose code sends its responses (a
    Python model's): any other is refused, saying to leave it out, as one cached is (Triton's words)."""
    model_config.read('{"model_transaction_policy": {"decoupled": false}}', RECORD, SPEC, PLAN)
    with pytest.raises(InvalidRequest) as refused:
        model_config.read('{"model_transaction_policy": {"decoupled": true}}', RECORD, SPEC, PLAN)
    assert refused.value.message.startswith("the config sets model_transaction_policy.decoupled, which only a Python")
    assert refused.value.message.endswith("leave model_transaction_policy out")
    with pytest.raises(InvalidRequest, match="model_transaction_policy sets 'lazy', which is not a field"):
        model_config.read('{"model_transaction_policy": {"lazy": true}}', RECORD, SPEC, PLAN)
    python = LoadSpec(artifact=Path("m.zip"), format="python", backend="python")
    loaded = model_config.read('{"model_transaction_policy": {"decoupled": true}}', RECORD, python, PLAN)
    assert loaded.additions.decoupled
    with pytest.raises(InvalidRequest) as refused:
        model_config.read(
            '{"model_transaction_policy": {"decoupled": true}, "response_cache": {"enable": true}}', RECORD, python, PLAN
        )
    assert refused.value.message == (  # Triton's words
        "Response Cache does not currently support model m with 'decoupled' transaction policy. Please disable the "
        "response cache."
    )


def test_what_clients_see_holds_a_configs_optional_inputs_once() -> None:
    """``Additions.seen`` adds the optional inputs to a record's signature (which has none), as the --engine ray
    check reads a step model; a loaded model's signature has them already, and keeps them once."""
    x, b, y = (TensorSpec(n, DType.FP32, (5,)) for n in ("x", "b", "y"))
    added = model_config.Additions(optional=(b,), shapes=(("b", (5,)),))
    seen = added.seen(Signature((x,), (y,)))
    assert seen.optional == (b,) and seen.inputs == (x,)
    assert added.seen(seen) == seen


def test_a_config_that_lists_some_of_the_models_inputs_is_refused_as_triton_refuses_it() -> None:
    """Triton's ONNX Runtime backend counts the inputs a config accounts for against the model's (helper-82's
    review: a config listing one of two inputs loaded, where Triton does not load it); one listing none is
    completed, and sequence controls count as listed."""
    two = Signature(
        inputs=(TensorSpec("a", DType.FP32, (-1, 4)), TensorSpec("b", DType.FP32, (-1, 4))),
        outputs=(TensorSpec("y", DType.FP32, (-1, 2)),),
    )
    for record in (dataclasses.replace(RECORD, signature=two), dataclasses.replace(TRITON_RECORD, signature=two)):
        some = {"max_batch_size": 4, "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [4]}]}
        with pytest.raises(InvalidRequest, match=r"configuration expects 1 inputs, model provides 2: the config leaves out 'b'"):
            model_config.read(json.dumps(some), record, SPEC, PLAN)
        every = {**some, "input": [*some["input"], {"name": "b", "data_type": "TYPE_FP32", "dims": [4]}]}
        assert model_config.read(json.dumps(every), record, SPEC, PLAN).additions.shapes == ()
        assert model_config.read(json.dumps({"max_batch_size": 4}), record, SPEC, PLAN).additions.shapes == ()  # loads
    stateful = Signature(
        inputs=(TensorSpec("x", DType.FP32, (-1, 4)), TensorSpec("START", DType.INT32, (-1, 1))),
        outputs=(TensorSpec("y", DType.FP32, (-1, 2)),),
    )
    start = {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]}
    config = {"max_batch_size": 2, "input": [{"name": "x", "dims": [4]}], "sequence_batching": {"control_input": [start]}}
    assert model_config.read(json.dumps(config), dataclasses.replace(RECORD, signature=stateful), SPEC, PLAN).sequence


def test_a_passive_instance_group_is_shown_and_takes_no_requests() -> None:
    """helper-167 (Triton's L0_passive_instance): a passive group's instances get no requests from Triton's
    scheduler; polystack refused the config. It runs the other groups' instances alone and shows the passive one."""
    text = '{"instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"name": "spare", "count": 3, "passive": true}]}'
    chosen = model_config.read(text, RECORD, SPEC, PLAN)
    assert chosen.instances == 2
    assert chosen.additions.groups == (("m_0", 2, None),) and chosen.additions.passive == (("spare", 3),)
    with pytest.raises(InvalidRequest, match="every instance_group is passive"):
        model_config.read('{"instance_group": [{"passive": true}]}', RECORD, SPEC, PLAN)
    with pytest.raises(InvalidRequest, match=r"instance_group\[0\].passive must be true or false"):
        model_config.read('{"instance_group": [{"passive": "yes"}]}', RECORD, SPEC, PLAN)




@pytest.mark.parametrize("text", ['{"output": 5}', '{"input": true, "output": [{"name": "y"}]}', '{"input": "x"}'])
@pytest.mark.parametrize("auto_complete", [True, False])
def test_a_config_whose_inputs_or_outputs_are_not_a_list_is_refused_saying_so(text: str, auto_complete: bool) -> None:
    """helper-253: a number or a string where the config lists tensors failed with Python's TypeError (a server error)
    where auto-complete or the strict model config looked at the list first."""
    for record in (RECORD, TRITON_RECORD):
        with pytest.raises(InvalidRequest, match=r"^(input|output) must be a list of tensors$"):
            model_config.read(text, record, SPEC, PLAN, auto_complete=auto_complete)
