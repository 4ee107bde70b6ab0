"""A config's text: Triton's config.pbtxt or JSON read as the JSON model_config.read takes, and its label files."""

from __future__ import annotations

import json

import pytest
from configkit import PLAN, RECORD, SPEC

from polystack.errors import InvalidRequest
from polystack.server import config_text, model_config


def test_label_files_are_named_by_output() -> None:
    text = '{"output": [{"name": "y", "label_filename": "classes.txt"}, {"name": "z", "label_filename": ""}]}'
    assert config_text.label_files(text) == {"y": "classes.txt"}
    with pytest.raises(InvalidRequest, match="no output"):
        config_text.label_files('{"output": [{"label_filename": "classes.txt"}]}')


# Triton's config.pbtxt as a model repository holds it: comments, lists both ways, 64-bit numbers, enums
PBTXT = """
# the MLP, as Triton serves it
name: "m"
max_batch_size: 16
version_policy: { latest { num_versions: 1 } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }
]
instance_group [ { count: 3 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 250
  default_queue_policy { max_queue_size: 64 }
}
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
  }
]
"""


SAME_AS_JSON = {
    "name": "m",
    "max_batch_size": 16,
    "version_policy": {"latest": {"num_versions": 1}},
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
    "instance_group": [{"count": 3, "kind": "KIND_CPU"}],
    "dynamic_batching": {
        "preferred_batch_size": [4, 8],
        "max_queue_delay_microseconds": 250,
        "default_queue_policy": {"max_queue_size": 64},
    },
    "model_warmup": [
        {"name": "zeros", "batch_size": 2, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}}}
    ],
}


def test_a_triton_config_pbtxt_reads_as_the_same_config_in_json() -> None:
    from_pbtxt = model_config.read(config_text.as_json(PBTXT), RECORD, SPEC, PLAN)
    assert from_pbtxt == model_config.read(json.dumps(SAME_AS_JSON), RECORD, SPEC, PLAN)
    assert from_pbtxt.batching is not None
    assert from_pbtxt.batching.preferred_batch_sizes == (4, 8) and from_pbtxt.batching.instances == 3
    assert from_pbtxt.batching.max_queue_size == 64 and [w.name for w in from_pbtxt.additions.warmup] == ["zeros"]


def test_json_config_files_are_taken_as_they_are() -> None:
    text = ' \n{"max_batch_size": 4}'
    assert config_text.as_json(text) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('name: "m"\nmax_batch_sise: 4', 'line 2, column 1: Message type "inference.ModelConfig" has no field named'),
        ("max_batch_size: 99999999999", "line 1, column 17: Value out of range: 99999999999"),
        ('input [ { name: "x" data_type: FP32 } ]', 'line 1, column 32: Enum type "inference.DataType" has no value'),
        ("max_batch_size: 4 }", "line 1, column 19"),
    ],
)
def test_a_config_pbtxt_triton_would_not_read_is_refused_at_its_line(text: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=r"not a Triton config\.pbtxt") as e:
        config_text.as_json(text)
    assert says in str(e.value) and str(e.value).endswith("or give the JSON GET config returns")


def test_a_pbtxt_that_says_max_batch_size_0_is_not_batched_where_leaving_it_out_lets_polystack_choose() -> None:
    """protobuf drops zeros: the text itself says whether the file set it."""
    assert json.loads(config_text.as_json("max_batch_size: 0 # no batching"))["max_batch_size"] == 0
    assert "max_batch_size" not in json.loads(config_text.as_json('name: "max_batch_size" # max_batch_size: 0'))
    # Triton's dynamic batcher over a model without batching: each request alone, through its queues (was refused)
    alone = model_config.read(
        config_text.as_json("max_batch_size: 0\ndynamic_batching { priority_levels: 2 default_priority_level: 1 }"),
        RECORD, SPEC, PLAN,
    )  # fmt: skip
    assert alone.batching is not None and not alone.batching.merge and alone.batching.max_batch_size == 1
    assert alone.batching.priority_levels == 2 and alone.max_batch_size == 0 and alone.instances is None
    with pytest.raises(InvalidRequest, match="preferred size must be <= max batch size"):
        model_config.read(
            config_text.as_json("max_batch_size: 0\ndynamic_batching { preferred_batch_size: [ 2 ] }"),
            RECORD, SPEC, PLAN,
        )  # fmt: skip
    chosen = model_config.read(config_text.as_json("dynamic_batching { }"), RECORD, SPEC, PLAN)
    assert chosen.batching is not None and chosen.batching.max_batch_size == PLAN.max_batch_size


def test_config_files_are_checked_when_read_whatever_their_form() -> None:
    assert json.loads(config_text.as_json('\ufeff{"max_batch_size": 4}')) == {"max_batch_size": 4}  # a BOM
    assert json.loads(config_text.as_json("\ufeffmax_batch_size: 4")) == {"max_batch_size": 4}
    # Python's own words, which 3.13 changed ("Illegal trailing comma before end of object", at column 21)
    trailing = r"(Expecting property name .*line 1 column 22|Illegal trailing comma .*line 1 column 21)"
    with pytest.raises(InvalidRequest, match=rf"^not JSON: {trailing}.*; fix it there$"):
        config_text.as_json('{"max_batch_size": 4,}')
    with pytest.raises(InvalidRequest, match=r"^not JSON: "):  # valid, but nested past the parser's recursion limit
        config_text.as_json('{"input": ' + "[" * 100_000 + "]" * 100_000 + "}")
    # a field of Triton releases newer than the installed tritonclient's ModelConfig
    with pytest.raises(InvalidRequest, match="is_non_linear_format_io is a field of newer Triton releases"):
        config_text.as_json('input [ { name: "x" is_non_linear_format_io: false } ]')
    # a field of Triton's in the wrong message is a plain mistake
    for text in ("dynamic_batching { max_batch_size: 8 }", 'input [ { name: "x" label_filename: "l.txt" } ]'):
        with pytest.raises(InvalidRequest, match=r"not a Triton config\.pbtxt .* has no field named"):
            config_text.as_json(text)


def test_a_lone_value_where_model_config_repeats_a_field_reads_as_a_list_of_it() -> None:
    """As Triton's JSON reading (protobuf's) takes them, nested too; maps, nulls and lists stay as they are."""
    given = {
        "instance_group": {"count": 2},
        "input": {"name": "x", "dims": 4},
        "maxBatchSize": 4,
        "ensemble_scheduling": {"step": {"model_name": "a", "input_map": {"x": "IN"}}},
        "parameters": {"k": {"string_value": "v"}},
        "output": None,
    }
    assert json.loads(config_text.lists_where_repeated(json.dumps(given))) == {
        "instance_group": [{"count": 2}],
        "input": [{"name": "x", "dims": [4]}],
        "maxBatchSize": 4,
        "ensemble_scheduling": {"step": [{"model_name": "a", "input_map": {"x": "IN"}}]},
        "parameters": {"k": {"string_value": "v"}},
        "output": None,
    }
    unchanged = json.dumps({"instance_group": [{"count": 2}]}, indent=1)
    assert config_text.lists_where_repeated(unchanged) is unchanged
    assert config_text.lists_where_repeated("not json") == "not json"


def test_a_load_config_nested_past_any_config_is_not_read_by_a_parser_that_recurses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A config override nested 10,000 deep was read by json, then by json5, each recursing to Python's limit: a
    finalizer the collector ran down there had no stack left, and a suite run failed on its RecursionError. Such a
    text goes on as it is (``model_config.read`` refuses it), read by no parser that recurses in Python."""
    deep = "[" * 10_000 + "]" * 10_000
    monkeypatch.setattr(config_text, "_relaxed", lambda text: pytest.fail("read by json5"))
    monkeypatch.setattr(config_text.json, "loads", lambda text: pytest.fail("read by json"))
    assert config_text.lists_where_repeated(deep) == deep
