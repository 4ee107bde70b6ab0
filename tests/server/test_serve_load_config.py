"""A repository load with Triton's ``config`` parameter: it sets batching, limits and instances for that
load, a config copied from Triton loads, and every config polystack cannot honour is refused whole,
leaving the model served as it was."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import logging
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Raw
from google.protobuf import json_format
from servekit import (
    caught_logs,
    cli_server,
    free_port,
    mlp_ones,
    refused_after_loads,
    register_like,
    same_config_both_ways,
    start,
)
from tritonclient.utils import InferenceServerException

from polystack.batching import BatchPolicy, DynamicBatcher
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.server import model_loads
from polystack.server.app import ServerThread
from polystack.server.model_config import ConfigFile
from polystack.store import ModelRecord, Store
from polystack.types import DType, Signature, TensorSpec


@pytest.fixture(scope="module")
def server(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    store, records = model_store
    register_like(store, records["mlp"], "slow500", tags={"delay_ms": "500"})
    register_like(store, records["mlp"], "mlpfree")
    # the MLP's file under a signature with a fixed first dimension: a model that takes no batch
    fixed = Signature(inputs=(TensorSpec("x", DType.FP32, (2, 16)),), outputs=(TensorSpec("y", DType.FP32, (2, 4)),))
    store.register(store.artifact_path(records["mlp"]), name="fixed2", format=records["mlp"].format, signature=fixed)
    st = start(store, models=["mlp", "slow500", "fixed2"], allow_model_control=True)
    yield st
    st.stop()


def config_of(st: ServerThread, name: str) -> dict[str, Any]:
    return httpclient.InferenceServerClient(st.http_url).get_model_config(name)


def test_a_load_config_may_preserve_ordering_as_tritons(server: ServerThread) -> None:
    """Once refused: a config with preserve_ordering loads, its answers keep the requests' order (the batcher's
    tests show it with two instances), and GET config shows it, loading back as it was."""
    client = httpclient.InferenceServerClient(server.http_url)
    edited = copy.deepcopy(config_of(server, "mlp"))
    edited["instance_group"][0]["count"] = 2
    edited["dynamic_batching"] = {"preserve_ordering": True, "max_queue_delay_microseconds": 100}
    client.load_model("mlp", config=json.dumps(edited))
    try:
        shown = config_of(server, "mlp")
        assert shown["dynamic_batching"]["preserve_ordering"] is True
        answers = [client.async_infer("mlp", [mlp_ones(1)]) for _ in range(8)]
        assert all(a.get_result().as_numpy("y").shape == (1, 4) for a in answers)
        client.load_model("mlp", config=json.dumps(shown))
        assert config_of(server, "mlp") == shown
    finally:
        client.load_model("mlp", config="{}")  # Triton's default scheduler again, as the other tests expect


def test_a_load_config_sets_batching_limits_and_instances_for_that_load(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    before = config_of(server, "mlp")
    assert before["max_batch_size"] == 64 and "dynamic_batching" not in before  # the test variant's limit
    edited = copy.deepcopy(before)  # what a Triton user does: read the config, change it, load it
    edited["max_batch_size"] = 16
    edited["instance_group"][0]["count"] = 2
    edited["dynamic_batching"] = {
        "preferred_batch_size": [8],
        "max_queue_delay_microseconds": 3000,
        "default_queue_policy": {"max_queue_size": 100, "default_timeout_microseconds": 2000000},
    }
    grpcclient.InferenceServerClient(server.grpc_url).load_model("mlp", config=json.dumps(edited))
    after = config_of(server, "mlp")
    assert after["max_batch_size"] == 16 and after["instance_group"][0]["count"] == 2
    assert after["dynamic_batching"] == {
        "preferred_batch_size": [8],
        "max_queue_delay_microseconds": 3000,
        "preserve_ordering": False,
        "priority_levels": 0,
        "default_priority_level": 0,
        "default_queue_policy": {  # every field, as tritonserver 2.51 prints it (helper-114)
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 2000000,
            "allow_timeout_override": False,
            "max_queue_size": 100,
        },
        "priority_queue_policy": {},
    }
    assert client.infer("mlp", [mlp_ones(16)]).as_numpy("y").shape == (16, 4)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [mlp_ones(17)])  # over the config's max_batch_size, under the variant's 64
    assert "400" in str(e.value.status()) and "16" in e.value.message()
    # the next load without a config goes back to polystack's own choice
    client.load_model("mlp")
    assert config_of(server, "mlp") == before
    assert client.infer("mlp", [mlp_ones(17)]).as_numpy("y").shape == (17, 4)


def test_a_queue_timeout_may_be_any_uint64_as_in_triton(server: ServerThread) -> None:
    """Triton's L0_config_json loads default_timeout_microseconds 2^64 - 1 (helper-181); polystack refused past
    10^12. A deadline that far runs its requests, and GET config shows it as given."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for timeout in ((1 << 64) - 1, 10**13):
            policy = {"default_timeout_microseconds": timeout}
            client.load_model("mlp", config=json.dumps({"dynamic_batching": {"default_queue_policy": policy}}))
            shown = config_of(server, "mlp")["dynamic_batching"]["default_queue_policy"]
            assert shown["default_timeout_microseconds"] == timeout
            assert client.infer("mlp", [mlp_ones(2)]).as_numpy("y").shape == (2, 4)
    finally:
        client.load_model("mlp", config="{}")


def test_a_clients_timeout_only_shortens_a_queues_default_timeout_as_in_triton(server: ServerThread) -> None:
    """Triton's queue policy: with allow_timeout_override, a request's ``timeout`` shortens the queue's default
    timeout; where the queue has none, tritonserver 2.51 ignores it and the request runs (helper-279; polystack
    rejected it at its deadline). A lone request waits out the 300 ms queue delay here."""
    client = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for default_us in (0, 5_000_000):
            policy = {"allow_timeout_override": True, "default_timeout_microseconds": default_us}
            config = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 300_000,
                                                                "default_queue_policy": policy}}  # fmt: skip
            client.load_model("mlp", config=json.dumps(config))
            if default_us == 0:  # no default: the client's 50 ms changes nothing
                assert client.infer("mlp", [mlp_ones()], timeout=50_000).as_numpy("y").shape == (1, 4)
                assert grpc.infer("mlp", [mlp_ones(1, grpcclient)], timeout=50_000).as_numpy("y").shape == (1, 4)
            else:  # a default: the client's shorter deadline applies
                with pytest.raises(InferenceServerException, match="Request timeout expired"):
                    client.infer("mlp", [mlp_ones()], timeout=50_000)
    finally:
        client.load_model("mlp", config="{}")


def test_max_batch_size_without_dynamic_batching_limits_requests(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("mlp", config=json.dumps({"max_batch_size": 4}))
        config = config_of(server, "mlp")
        assert config["max_batch_size"] == 4 and "dynamic_batching" not in config
        assert config["input"][0]["dims"] == [16]
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", [mlp_ones(5)])
        assert "400" in str(e.value.status())
        assert client.infer("mlp", [mlp_ones(4)]).as_numpy("y").shape == (4, 4)
    finally:
        client.load_model("mlp")


def test_a_config_copied_from_triton_loads(server: ServerThread) -> None:
    """Triton prints its defaults for features polystack lacks, and protobuf's JSON may spell fields in
    lowerCamelCase with 64-bit integers as strings: all of that loads."""
    triton_style = {
        "name": "mlp",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "versionPolicy": {"latest": {"numVersions": 1}},
        "maxBatchSize": 8,
        "input": [
            {
                "name": "x",
                "dataType": "TYPE_FP32",
                "format": "FORMAT_NONE",
                "dims": ["16"],
                "isShapeTensor": False,
                "allowRaggedBatch": False,
                "optional": False,
            }
        ],
        "output": [
            {"name": "y", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "", "is_shape_tensor": False}
        ],
        "batch_input": [],
        "batch_output": [],
        "optimization": {
            "priority": "PRIORITY_DEFAULT",
            "input_pinned_memory": {"enable": True},
            "output_pinned_memory": {"enable": True},
            "gather_kernel_buffer_threshold": 0,
            "eager_batching": False,
        },
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": "500",
            "preserve_ordering": False,
            "priority_levels": "0",
            "default_priority_level": "0",
            "priority_queue_policy": {},
            "default_queue_policy": {"timeout_action": "REJECT", "allow_timeout_override": True, "max_queue_size": 0},
        },
        "instance_group": [
            {
                "name": "mlp",
                "kind": "KIND_CPU",
                "count": 1,
                "gpus": [],
                "secondary_devices": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
            }
        ],
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
        "response_cache": {"enable": False},
    }
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("mlp", config=json.dumps(triton_style))
        config = config_of(server, "mlp")
        assert config["max_batch_size"] == 8
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 0  # no limit, as in Triton
        assert config["dynamic_batching"]["default_queue_policy"]["allow_timeout_override"] is True
        assert client.infer("mlp", [mlp_ones(3)]).as_numpy("y").shape == (3, 4)
    finally:
        client.load_model("mlp")


def test_a_config_triton_prints_for_an_unbatched_cpu_model_loads(server: ServerThread) -> None:
    """Triton gives an ONNX model on CPU two instances, batched or not (densenet_onnx in its quickstart):
    without batching, two of its requests run at once."""
    printed = {
        "name": "mlp",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "runtime": "",
        "version_policy": {"latest": {"num_versions": "1"}},
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [-1, 16],
                   "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False,
                   "is_non_linear_format_io": False}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": ["-1", "4"], "label_filename": "",
                    "is_shape_tensor": False, "is_non_linear_format_io": False}],
        "instance_group": [{"name": "mlp", "kind": "KIND_CPU", "count": 2.0, "gpus": [], "secondary_devices": [],
                            "profile": [], "passive": False, "host_policy": ""}],
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
        "model_transaction_policy": {"decoupled": False},
        "model_repository_agents": {"agents": []},
        "response_cache": {"enable": False},
    }  # fmt: skip
    unlimited = "mlpfree"  # the test variant caps "mlp" at 64 rows; this one has no cap
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model(unlimited, config=json.dumps({**printed, "name": unlimited}))
    config = config_of(server, unlimited)
    assert config["max_batch_size"] == 0 and config["input"][0]["dims"] == [-1, 16] and "dynamic_batching" not in config
    assert config["instance_group"][0]["count"] == 2
    assert client.infer(unlimited, [mlp_ones(3)]).as_numpy("y").shape == (3, 4)


def test_an_instance_count_without_batching_bounds_the_requests_running_at_once(server: ServerThread) -> None:
    """As Triton's default scheduler does: an unbatched model's instance count is how many of its
    requests run at once; the others wait their turn, and that wait is their queue time."""
    client = httpclient.InferenceServerClient(server.http_url)

    def two_at_once() -> float:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            clients = [httpclient.InferenceServerClient(server.http_url) for _ in range(2)]
            futures = [pool.submit(c.infer, "slow500", [mlp_ones(1)]) for c in clients]
            assert all(f.result(timeout=30).as_numpy("y").shape == (1, 4) for f in futures)
        return time.perf_counter() - started

    def queued_ns() -> int:
        return int(client.get_inference_statistics("slow500")["model_stats"][0]["inference_stats"]["queue"]["ns"])

    workers = server.server.plane.workers
    assert config_of(server, "slow500")["instance_group"][0]["count"] == workers  # the shared inference threads
    # named as Triton names it: the group it adds to a config without one, as the model (was slow500_0)
    assert config_of(server, "slow500")["instance_group"][0]["name"] == "slow500"
    try:
        client.load_model("slow500", config=json.dumps({"instance_group": [{"kind": "KIND_CPU", "count": 1}]}))
        config = config_of(server, "slow500")
        assert config["instance_group"][0]["count"] == 1 and "dynamic_batching" not in config
        assert config["instance_group"][0]["name"] == "slow500_0"  # a first group the config does not name
        before = queued_ns()
        assert two_at_once() >= 1.0  # 500 ms each, one after the other
        assert queued_ns() - before >= 400_000_000  # the second waited for the first
        client.load_model("slow500", config=json.dumps({"instance_group": [{"name": "pair", "count": 2}]}))
        assert config_of(server, "slow500")["instance_group"][0] | {"kind": ""} == {
            "name": "pair", "kind": "", "count": 2, "gpus": [], "secondary_devices": [], "profile": [], "passive": False,
            "host_policy": "",
        }  # fmt: skip  # the config's own name (was slow500_0)
        assert two_at_once() < 1.0  # side by side
        # several groups run as one pool of their instances, and show as the config gave them (were one group)
        groups = [{"name": "a", "count": 1}, {"kind": "KIND_CPU", "count": 1}]
        client.load_model("slow500", config=json.dumps({"instance_group": groups}))
        shown = config_of(server, "slow500")["instance_group"]
        assert [(g["name"], g["count"]) for g in shown] == [("a", 1), ("slow500_1", 1)]
        client.load_model("slow500", config=json.dumps({"instance_group": shown}))  # loads back unchanged
        assert config_of(server, "slow500")["instance_group"] == shown
        assert two_at_once() < 1.0  # two instances in all
    finally:
        client.load_model("slow500")
    assert config_of(server, "slow500")["instance_group"][0]["count"] == workers


def test_the_queue_delay_holds_a_batch_for_its_preferred_size(server: ServerThread) -> None:
    """As in Triton: requests trickling in are held up to max_queue_delay_microseconds to fill a
    preferred batch, not sent on as soon as the queue falls quiet."""
    client = httpclient.InferenceServerClient(server.http_url)
    config = {"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 2000000}}
    try:
        client.load_model("mlp", config=json.dumps(config))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = []
            for _ in range(4):
                futures.append(pool.submit(httpclient.InferenceServerClient(server.http_url).infer, "mlp", [mlp_ones(1)]))
                time.sleep(0.02)
            assert all(f.result(timeout=10).as_numpy("y").shape == (1, 4) for f in futures)
        stats = client.get_inference_statistics("mlp")["model_stats"][0]
        assert stats["inference_count"] == 4 and stats["execution_count"] == 1, stats
    finally:
        client.load_model("mlp")


def test_null_is_a_fields_default_as_protobuf_reads_it(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    nulls = {"input": None, "instance_group": [{"count": None}], "max_batch_size": None,
             "dynamic_batching": {"default_queue_policy": None, "max_queue_delay_microseconds": None}}  # fmt: skip
    try:
        client.load_model("mlp", config=json.dumps(nulls))
        config = config_of(server, "mlp")
        # polystack's own size; a group's count unset is Triton's default, 2 for ONNX Runtime on CPU
        assert config["max_batch_size"] == 32 and config["instance_group"][0]["count"] == 2
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    finally:
        client.load_model("mlp")



def test_metric_tags_and_a_groups_host_policy_load_saying_what_polystack_does_not_do(server: ServerThread) -> None:
    """Triton's repositories set them; polystack refused the model (helper-269), where it can serve it all the same:
    its metrics carry no tags, and every instance has the cpu host policy."""
    client = httpclient.InferenceServerClient(server.http_url)
    config = {"metric_tags": {"team": "search"}, "instance_group": [{"count": 1, "host_policy": "cpu"}]}
    try:
        with caught_logs("polystack.server", logging.WARNING) as records:
            client.load_model("mlp", config=json.dumps(config))
        assert client.is_model_ready("mlp") and config_of(server, "mlp")["instance_group"][0]["count"] == 1
        said = [r.getMessage() for r in records]
        assert any("metric_tags, which polystack reads past" in m and "not added" in m for m in said), said
        assert any("host_policy, which polystack reads past" in m for m in said), said
    finally:
        client.load_model("mlp")


def test_preferred_batch_sizes_read_back_as_written(server: ServerThread) -> None:
    """tritonserver 2.51 shows a config's preferred_batch_size in the order given (helper-279: polystack sorted
    them); the batcher takes them as a set either way."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        config = {"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [4, 2]}}
        client.load_model("mlp", config=json.dumps(config))
        assert config_of(server, "mlp")["dynamic_batching"]["preferred_batch_size"] == [4, 2]
        shown = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("mlp").config
        assert list(shown.dynamic_batching.preferred_batch_size) == [4, 2]
        assert client.infer("mlp", [mlp_ones(3)]).as_numpy("y").shape == (3, 4)
    finally:
        client.load_model("mlp")


def test_a_lone_group_where_the_config_repeats_a_field_is_a_list_of_it_as_triton_reads_json(server: ServerThread) -> None:
    """helper-163 (Triton's L0_lifecycle test_concurrent_model_instance_load_sanity sends "instance_group": {...}):
    tritonserver 2.51 reads a lone object as a list of one (protobuf's JSON reading); polystack refused it."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("mlp", config=json.dumps({"instance_group": {"kind": "KIND_CPU", "count": 3},
                                                     "dynamic_batching": {"preferred_batch_size": 4}}))  # fmt: skip
        config = config_of(server, "mlp")
        assert [g["count"] for g in config["instance_group"]] == [3]
        assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    finally:
        client.load_model("mlp")


def test_a_config_with_keys_unquoted_or_a_trailing_comma_loads_as_tritons_json_reading_takes_it(
    server: ServerThread,
) -> None:
    """helper-199 (Triton's L0_iterative_sequence sends `direct: {...}`): tritonserver 2.51 loads such a config, its
    JSON read by protobuf's legacy parser (bare keys, single quotes, trailing commas); polystack refused it."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.load_model("mlp", config="{max_batch_size: 4, 'dynamic_batching': {preferred_batch_size: [2],},}")
        config = config_of(server, "mlp")
        assert config["max_batch_size"] == 4 and config["dynamic_batching"]["preferred_batch_size"] == [2]
        with caught_logs("polystack.server") as records, pytest.raises(
            InferenceServerException, match="Invalid config override"
        ):  # not even that: refused
            client.load_model("mlp", config="{max_batch_size: 4 dynamic_batching: {}}")
        # and logged, as Triton logs a load that failed (helper-200: L0_http's test.sh greps its log for the words)
        assert any("failed to load 'mlp'" in r.getMessage() and "Invalid config override" in r.getMessage()
                   and r.levelname == "ERROR" for r in records), [r.getMessage() for r in records]  # fmt: skip
        assert config_of(server, "mlp") == config
    finally:
        client.load_model("mlp")


@pytest.mark.parametrize(
    ("config", "rows"),
    [
        ({"max_batch_size": 1, "dynamic_batching": {"default_queue_policy": {"max_queue_size": 1}}}, 1),
        # max_batch_size 0: Triton still queues the requests under the queue policy, running each alone (polystack
        # refused the config); 3 rows, as no batch holds them to a maximum
        ({"max_batch_size": 0, "dynamic_batching": {"default_queue_policy": {"max_queue_size": 1}}}, 3),
    ],
    ids=["batched", "max_batch_size_0"],
)
def test_a_config_with_a_small_queue_refuses_what_does_not_fit(
    server: ServerThread, config: dict[str, Any], rows: int
) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("slow500", config=json.dumps(config))

        def one(_: int) -> str:
            c = httpclient.InferenceServerClient(server.http_url)
            try:
                c.infer("slow500", [mlp_ones(rows)])
                return "ok"
            except InferenceServerException as e:
                return str(e.status())

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # the first runs (half a second) before the others come: sent together, two could reach the queue of
            # one before the batcher took the first from it, and only one was served (seen under load)
            first = pool.submit(one, 0)
            time.sleep(0.25)
            rest = list(pool.map(one, range(3)))  # while the first runs
            answers = sorted([first.result(), *rest])
        assert answers.count("503") >= 1 and answers.count("ok") >= 2  # one running, one queued, the rest refused
    finally:
        client.load_model("slow500")


REFUSED = [
    ("not json", "Invalid config override: the 'config' load parameter is not JSON"),  # Triton's words (its log's)
    ("[1, 2]", "must be a JSON object"),
    ("[" * 10_000 + "]" * 10_000, "not JSON"),
    (json.dumps({"sequence_batching": {"iterative_sequence": True}}), "is not a Python model"),
    (json.dumps({"sequence_batching": {}, "dynamic_batching": {}}), "both dynamic_batching and sequence_batching"),
    (json.dumps({"sequence_batching": {"state": [{"input_name": "x", "output_name": "y"}]}}), "data_type"),
    (json.dumps({"ensemble_scheduling": {"step": [{"model_name": "a"}]}}), "ensembles"),
    (json.dumps({"version_policy": {"specific": {"versions": [7]}}}), "asks for versions [7]"),
    (json.dumps({"version_policy": {"all": {}}, "versionPolicy": {"all": {}}}), "version_policy twice"),
    (json.dumps({"version_policy": {"latest": {"num_versions": "--2"}}}), "must be whole numbers"),  # was a 500
    ('{"version_policy": {"all": {}}, "x": ' + "[" * 1010 + "]" * 1010 + "}", "nests deeper"),  # was a 500
    (json.dumps({"model_warmup": [{"batch_size": 1, "inputs": {"x": {"input_data_file": "x.bin"}}}]}), "TYPE_FP32"),
    (json.dumps({"model_warmup": 5}), "model_warmup[0] must be a JSON object"),  # a lone value: a list of it
    (
        json.dumps({"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "dnnl"}]}}}),
        "unknown Execution Accelerator 'dnnl' is requested",
    ),
    (json.dumps({"optimization": {"priority": "PRIORITY_MIN"}}), "one scheduling priority"),
    (json.dumps({"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}}),
     "no OpenVINOExecutionProvider"),
    (json.dumps({"frobnicate": 1}), "'frobnicate'"),
    (json.dumps({"dynamic_batching": {"frobnicate": 0}}), "not a field"),  # even at zero: not Triton's
    (json.dumps({"default_model_filename": 5}), "file names"),
    (json.dumps({"dynamic_batching": {"priority_queue_policy": {"1": {}}}}), "priority_queue_policy without priority_levels"),
    (json.dumps({"dynamic_batching": {"default_priority_level": 1}}), "default_priority_level without priority_levels"),
    (json.dumps({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1, "priority_queue_policy": {"3": {}}}}),
     r"priority queue policy must have priority level in range [1, 2] for mlp; key"),  # Triton's whole sentence
    (json.dumps({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1,
                                      "priority_queue_policy": {"2": {"timeout_action": "DEFER"}}}}), "'DEFER'"),
    (json.dumps({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1, "priority_queue_policy": {"x": {}}}}),
     "'x' is not a whole number"),
    (json.dumps({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1, "priority_queue_policy": [1]}}),
     "must map priority levels"),
    (json.dumps({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 1,
                                      "priority_queue_policy": {"1": {}, "01": {}}}}), "gives level 1 twice"),
    (json.dumps({"model_operations": json.loads('{"x": ' * 450 + "0" + "}" * 450)}), "nests deeper"),
    (json.dumps({"dynamic_batching": {"max_queue_delay_microseconds": 18446744073709551615}}), "from 0 to"),
    (json.dumps({"dynamic_batching": {"default_queue_policy": {"default_timeout_microseconds": 2**64}}}), "from 0 to"),
    (json.dumps({"max_batch_size": 1.5}), "1.5"),
    (json.dumps({"parameters": {"polystack_device": "cpu"}}), "'cpu'"),
    (json.dumps({"name": "other"}), "the config names model 'other', but it is loading 'mlp'"),
    (json.dumps({"platform": "tensorrt_plan"}), "tensorrt_plan"),
    (json.dumps({"backend": "python"}), "'python'"),
    (json.dumps({"max_batch_size": 65}), "from 1 to 64"),
    (json.dumps({"max_batch_size": 0}), "from 1 to 64"),  # 0 would say "no limit" where the variant has one
    (json.dumps({"max_batch_size": -1}), "'max_batch_size' must be non-negative value for mlp: it is -1"),
    (json.dumps({"max_batch_size": "lots"}), "max_batch_size"),
    (json.dumps({"max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP16", "dims": [16]}]}), "TYPE_FP32"),
    (json.dumps({"max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [8]}]}), "dims"),
    (json.dumps({"max_batch_size": 4, "input": [{"name": "x", "dims": [-1, 16]}]}), "dims"),  # the batch is not a dim
    (json.dumps({"input": [{"name": "x", "dims": [16]}, {"name": "x", "dims": [16]}]}), "second time"),
    (json.dumps({"input": [{"name": "nope", "dims": [16]}]}), "'nope'"),
    (json.dumps({"input": [{"name": "x", "reshape": {"shape": [4, 4]}}]}), "reshape"),
    (json.dumps({"input": [{"name": "x", "reshape": {"shape": []}}]}), "reshape"),  # present, even empty: a reshape
    ('{"max_batch_size": "' + "9" * 5000 + '"}', "max_batch_size"),
    ('{"version_policy": {"latest": {"num_versions": "' + "1" * 5000 + '"}}}', "version_policy"),
    (json.dumps({"frobnicate": None}), "'frobnicate'"),
    (json.dumps({"output": [{"name": "y", "label_filename": "labels.txt"}]}), "labels"),
    # Triton's words on a host without GPUs, as tritonserver 2.51 says them on this one (on a host with GPUs, the
    # CPU variant's kind)
    (json.dumps({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}),
     "instance group mlp_0 of model mlp has kind KIND_GPU but no GPUs are available: instance_group[0].kind "
     if not any(Path("/proc/driver/nvidia/gpus").glob("*")) else "instance_group[0].kind 'KIND_GPU' does not match"),
    (json.dumps({"instance_group": [{"kind": "KIND_CPU", "gpus": [0]}]}),
     "instance group mlp_0 of model mlp has kind KIND_CPU but specifies one or more GPUs: instance_group[0].gpus is "
     "[0]"),
    # KIND_AUTO is KIND_CPU where the model runs on the CPU, as Triton places it on a host without GPUs (helper-195)
    (json.dumps({"instance_group": [{"gpus": [-1]}]}), "instance group mlp_0 of model mlp has kind KIND_CPU but"),
    (json.dumps({"instance_group": [{"gpus": [None]}]}), "gpus"),
    (json.dumps({"instance_group": [{"count": 2000}], "dynamic_batching": {}}), "count"),
    (json.dumps({"instance_group": []}), "at least one"),
    (json.dumps({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [16]}}), "from 1 to"),
    (json.dumps({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [0]}}), "from 1 to"),
    (json.dumps({"dynamic_batching": {"max_queue_delay_microseconds": -5}}), "max_queue_delay_microseconds"),
    (json.dumps({"dynamic_batching": {"preserve_ordering": True,
                                      "default_queue_policy": {"timeout_action": "DELAY", "default_timeout_microseconds": 5}}}),
     "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true for mlp; use REJECT"),
    (json.dumps({"dynamic_batching": {"priority_levels": 2}}),
     r"default priority level must be in range [1, 2] for mlp;"),
    (json.dumps({"dynamic_batching": {"preserve_ordering": True, "priority_levels": 2, "default_priority_level": 1}}),
     "Only one priority level is allowed when 'preserve_ordering' is true for mlp; set"),
    (json.dumps({"dynamic_batching": {"default_queue_policy": {"max_queue_size": "many"}}}), "max_queue_size"),
    (json.dumps({"parameters": {"enable_mem_arena": {"string_value": "2"}}}), "failed to convert '2' to boolean"),
    (json.dumps({"parameters": {"polystack_device": {"string_value": "cuda:0"}}}), "cuda:0"),
    (json.dumps({"max_batch_size": 4, "maxBatchSize": 4}), "twice"),
]


@pytest.mark.parametrize("config,says", REFUSED, ids=[f"refused{i}" for i in range(len(REFUSED))])
def test_a_config_polystack_cannot_honour_is_refused_and_changes_nothing(
    server: ServerThread, config: str, says: str
) -> None:
    before = config_of(server, "mlp")
    g = grpcclient.InferenceServerClient(server.grpc_url)
    with caught_logs("polystack.server", logging.ERROR) as records, pytest.raises(InferenceServerException) as e:
        g.load_model("mlp", config=config)
    logged = [r.getMessage() for r in records if r.getMessage().startswith("failed to load 'mlp'")]
    assert len(logged) == 1 and logged[0].count("failed to load 'mlp'") == 1, logged  # the lead once (helper-259)
    # text that is not JSON fails Triton's poll: INTERNAL, as tritonserver 2.51 answers it (helper-107, -108); so
    # does a config naming another model (2.51: "unexpected directory name ... must equal model name", helper-189)
    polled = "is not JSON" in e.value.message() or "names model" in e.value.message()
    code = "INTERNAL" if polled else "INVALID_ARGUMENT"
    assert ("failed to load 'mlp', failed to poll from model repository" in e.value.message()) is polled
    assert code in str(e.value.status()) and says in e.value.message(), e.value.message()
    assert config_of(server, "mlp") == before
    assert httpclient.InferenceServerClient(server.http_url).infer("mlp", [mlp_ones(2)]).as_numpy("y").shape == (2, 4)


def test_a_config_for_a_model_without_a_batch_dimension(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as e:
        client.load_model("fixed2", config=json.dumps({"max_batch_size": 2}))
    assert "400" in str(e.value.status()) and "max_batch_size 0" in e.value.message()
    x = httpclient.InferInput("x", [2, 16], "FP32")
    x.set_data_from_numpy(np.ones((2, 16), np.float32))
    # Triton's dynamic batcher over it: each request alone, through its queue (was refused)
    client.load_model("fixed2", config=json.dumps({"dynamic_batching": {"priority_levels": 2, "default_priority_level": 2}}))
    shown = client.get_model_config("fixed2")
    assert shown["max_batch_size"] == 0 and shown["dynamic_batching"]["priority_levels"] == 2
    before = client.get_inference_statistics("fixed2")["model_stats"][0]
    assert client.infer("fixed2", [x], priority=1).as_numpy("y").shape == (2, 4)
    after = client.get_inference_statistics("fixed2")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 1  # a request, not its first dimension's rows
    client.load_model("fixed2", config=json.dumps(shown))  # read back, it loads as it was
    assert client.get_model_config("fixed2") == shown
    client.load_model("fixed2", config=json.dumps({"max_batch_size": 0, "input": [{"name": "x", "dims": [2, 16]}]}))
    assert "dynamic_batching" not in client.get_model_config("fixed2")
    assert client.infer("fixed2", [x]).as_numpy("y").shape == (2, 4)


def test_the_config_parameter_must_be_a_string(server: ServerThread) -> None:
    raw = Raw(server.http_port)
    for value in ({"max_batch_size": 2}, None, 5):
        status, doc = raw.json("POST", "/v2/repository/models/mlp/load", {"parameters": {"config": value}})
        assert status == 400 and "must be a string" in doc["error"]
    status, doc = raw.json("POST", "/v2/repository/models/nope/load", {"parameters": {"config": "{}"}})
    # Triton's 500 for a name unknown: its poll finds nothing (tritonserver 2.51, helper-107, -108)
    assert status == 500 and doc["error"].startswith("failed to load 'nope', failed to poll from model repository: ")
    raw.infer_ok()


def test_a_refused_load_names_a_128_character_model_whole(server: ServerThread) -> None:
    name = "m" * 128  # the longest name the store takes
    with pytest.raises(InferenceServerException) as e:
        httpclient.InferenceServerClient(server.http_url).load_model(name)
    assert e.value.message().startswith(f"failed to load {name!r}, failed to poll from model repository: ")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"parameters": [1]}', "'parameters' must be an object"),
        (b'{"parameters": {"config": "{}", "file:1/model.onnx": 5}}', "base64"),
    ],
)
def test_a_load_the_http_adapter_refuses_says_failed_to_load_first_as_every_refused_load(
    server: ServerThread, body: bytes, why: str
) -> None:
    # the data plane put Triton's "failed to load 'm': " before its refusals, but not before those of the
    # HTTP body, read before it: client code looking for Triton's words missed them
    status, _, data = Raw(server.http_port).request("POST", "/v2/repository/models/mlp/load", body)
    error = json.loads(data)["error"]
    assert status == 400 and error.startswith("failed to load 'mlp': ") and why in error, error


def _register_identity(store: Store, work: Path, name: str, tensors: tuple[str, str], shape: list[Any]) -> None:
    """An FP32 ONNX Identity of ``shape`` (input, output named ``tensors``), registered as ``name``."""
    import onnx
    from onnx import TensorProto, helper

    from polystack.formats import import_model

    given, out = tensors
    graph = helper.make_graph(
        [helper.make_node("Identity", [given], [out])],
        name,
        [helper.make_tensor_value_info(given, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(work / f"{name}.onnx"))
    imported = import_model(work / f"{name}.onnx", work / "import")
    store.register(imported.artifact, name=name, format=imported.format, signature=imported.signature)


def test_an_image_inputs_layout_from_a_config_is_shown_as_triton_image_clients_read_it(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Triton's image_client picks its preprocessing from the input's ``format`` in GET config: a config
    may give it (FORMAT_NCHW or FORMAT_NHWC, on inputs of three dims besides the batch), and every
    input shows one (FORMAT_NONE unless given), over HTTP and gRPC."""
    store, _ = model_store
    _register_identity(store, tmp_path_factory.mktemp("image"), "image", ("image", "same"), ["batch", 3, 4, 4])
    st = start(store, models=["image"], allow_model_control=True)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        assert client.get_model_config("image")["input"][0]["format"] == "FORMAT_NONE"
        image = {"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 4, 4]}
        nchw = {"max_batch_size": 8, "input": [image]}
        client.load_model("image", config=json.dumps(nchw))
        assert client.get_model_config("image")["input"][0]["format"] == "FORMAT_NCHW"
        g = grpcclient.InferenceServerClient(st.grpc_url).get_model_config("image").config
        assert grpcclient.model_config_pb2.ModelInput.Format.Name(g.input[0].format) == "FORMAT_NCHW"
        for layout, why in (("FORMAT_NCWH", "Triton's are FORMAT_NONE"), ("FORMAT_NHWC", None)):
            config = {"max_batch_size": 8, "input": [{"name": "image", "format": layout}]}
            if why is None:
                client.load_model("image", config=json.dumps(config))
                continue
            with pytest.raises(InferenceServerException, match=why):
                client.load_model("image", config=json.dumps(config))
        assert client.get_model_config("image")["input"][0]["format"] == "FORMAT_NHWC"
        client.load_model("image")  # back to the plan's: no layout
        assert client.get_model_config("image")["input"][0]["format"] == "FORMAT_NONE"
        # a layout needs three dims besides the batch: the MLP's [16] has one
        with pytest.raises(InferenceServerException, match=r"FORMAT_NCHW, which needs 3 dims besides the batch"):
            client.load_model("mlp", config=json.dumps({"max_batch_size": 8, "input": [{"name": "x", "format": "FORMAT_NCHW"}]}))
    finally:
        st.stop()


def test_a_layout_counts_the_dims_the_config_gives_as_tritons_densenet_config_does(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Triton's densenet_onnx example: an unbatched model of [1, 3, 224, 224] served with dims [3, 224, 224],
    a reshape to the model's, and FORMAT_NCHW. The layout counts the config's dims, as Triton's
    ValidateModelInput does (helper-93: the model's four were counted, and the example's config refused)."""
    store, _ = model_store
    _register_identity(store, tmp_path_factory.mktemp("dense"), "dense", ("data_0", "out"), [1, 3, 4, 4])
    st = start(store, models=["dense"], allow_model_control=True)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        data = {"name": "data_0", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 4, 4]}
        config = {"max_batch_size": 0, "input": [{**data, "reshape": {"shape": [1, 3, 4, 4]}}]}
        client.load_model("dense", config=json.dumps(config))
        assert client.get_model_config("dense")["input"][0]["format"] == "FORMAT_NCHW"
        x = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
        given = httpclient.InferInput("data_0", [3, 4, 4], "FP32")
        given.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("dense", [given]).as_numpy("out").reshape(3, 4, 4), x)
        four = {"max_batch_size": 0, "input": [{**data, "dims": [1, 3, 4, 4]}]}  # the config's dims count: 4
        with pytest.raises(InferenceServerException, match=re.escape("needs 3 dims besides the batch, but the config's are [1, 3, 4, 4]")):
            client.load_model("dense", config=json.dumps(four))
        bare = {"max_batch_size": 0, "input": [{"name": "data_0", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW"}]}
        with pytest.raises(InferenceServerException) as refused:  # the model's own dims: says how Triton's does it
            client.load_model("dense", config=json.dumps(bare))
        assert "or give dims [3, 4, 4] and reshape { shape: [1, 3, 4, 4] }, as Triton's densenet_onnx" in str(refused.value)
    finally:
        st.stop()


def test_triton_onnxruntime_parameters_reach_the_runtime_and_show_in_the_config(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    threads = {"intra_op_thread_count": {"string_value": "1"}, "execution_mode": {"string_value": "1"}}
    client.load_model("mlpfree", config=json.dumps({"parameters": threads}))
    entry = server.server.engine.get("mlpfree", None)
    assert entry.spec.options["intra_op_threads"] == 1 and entry.spec.options["execution_mode"] == "parallel"
    shown = client.get_model_config("mlpfree")["parameters"]
    assert shown["intra_op_thread_count"] == {"string_value": "1"} and shown["execution_mode"] == {"string_value": "1"}
    assert client.infer("mlpfree", [mlp_ones()]).as_numpy("y").shape == (1, 4)
    client.load_model("mlpfree", config=json.dumps(client.get_model_config("mlpfree")))  # read back, loads again
    assert server.server.engine.get("mlpfree", None).spec.options["intra_op_threads"] == 1
    # only what a config set is shown: what polystack chose is chosen again at the next load
    client.load_model("mlpfree")
    assert client.get_model_config("mlpfree")["parameters"] == {}


def test_get_config_shows_the_messages_triton_shows_only_where_the_config_gives_them(server: ServerThread) -> None:
    """tritonserver 2.51 prints response_cache, model_transaction_policy and dynamic_batching's
    default_queue_policy only where the config gives them (each then in full), and no parameter of its own:
    helper-193 found Triton's compare_status.py failing every config polystack showed with them always."""
    http, grpc = httpclient.InferenceServerClient(server.http_url), grpcclient.InferenceServerClient(server.grpc_url)
    try:
        http.load_model("mlpfree", config=json.dumps({"dynamic_batching": {}}))
        shown = same_config_both_ways(http, grpc, "mlpfree")
        assert "response_cache" not in shown and "model_transaction_policy" not in shown
        assert "default_queue_policy" not in shown["dynamic_batching"] and shown["parameters"] == {}
        given = {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 0}},
                 "response_cache": {"enable": False}, "model_transaction_policy": {}}  # fmt: skip
        http.load_model("mlpfree", config=json.dumps(given))
        shown = same_config_both_ways(http, grpc, "mlpfree")
        assert shown["response_cache"] == {"enable": False}
        assert shown["model_transaction_policy"] == {"decoupled": False}
        assert shown["dynamic_batching"]["default_queue_policy"] == {
            "timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": False,
            "max_queue_size": 0,
        }  # fmt: skip
        # what GET config shows loads back as the same config
        five = {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 5}}}
        http.load_model("mlpfree", config=json.dumps(five))
        queue = same_config_both_ways(http, grpc, "mlpfree")["dynamic_batching"]["default_queue_policy"]
        http.load_model("mlpfree", config=json.dumps(http.get_model_config("mlpfree")))
        assert same_config_both_ways(http, grpc, "mlpfree")["dynamic_batching"]["default_queue_policy"] == queue
        assert queue["max_queue_size"] == 5
    finally:
        http.load_model("mlpfree")


def test_triton_optimization_reaches_the_runtime_and_shows_in_the_config(server: ServerThread) -> None:
    """A Triton config's graph level and memory parameters set the runtime's session; GET config shows them as
    Triton does (over gRPC too), and reads back; an execution accelerator this onnxruntime lacks is refused at
    load, saying which build has it, and the model serves on as it was."""
    client = httpclient.InferenceServerClient(server.http_url)
    config = {
        "parameters": {"enable_mem_arena": {"string_value": "0"}},
        "optimization": {"graph": {"level": 2}, "input_pinned_memory": {"enable": False}, "cuda": {"graphs": True}},
    }
    client.load_model("mlpfree", config=json.dumps(config))
    try:
        entry = server.server.engine.get("mlpfree", None)
        assert entry.spec.options["graph_optimization_level"] == "disable"
        so = entry.model.inner.session.get_session_options()  # the runtime's own session, under the check
        assert str(so.graph_optimization_level).endswith("ORT_DISABLE_ALL") and not so.enable_cpu_mem_arena
        shown = same_config_both_ways(client, grpcclient.InferenceServerClient(server.grpc_url), "mlpfree")
        assert shown["optimization"]["graph"] == {"level": 2}
        assert shown["optimization"]["input_pinned_memory"] == {"enable": False}
        assert shown["parameters"]["enable_mem_arena"] == {"string_value": "0"}
        assert client.infer("mlpfree", [mlp_ones()]).as_numpy("y").shape == (1, 4)
        client.load_model("mlpfree", config=json.dumps(shown))  # read back, loads again
        assert server.server.engine.get("mlpfree", None).spec.options["enable_cpu_mem_arena"] is False
        openvino = {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}
        with pytest.raises(InferenceServerException, match=r"no OpenVINOExecutionProvider.*onnxruntime-openvino") as e:
            client.load_model("mlpfree", config=json.dumps({"optimization": openvino}))
        assert e.value.status() == "400"  # as Triton refuses an accelerator its build lacks: not worth a retry
        assert client.get_model_config("mlpfree")["optimization"]["graph"] == {"level": 2}
        assert client.infer("mlpfree", [mlp_ones()]).as_numpy("y").shape == (1, 4)
        client.load_model("mlpfree", config=json.dumps({"parameters": {"memory.enable_memory_arena_shrinkage": {"string_value": "cpu:0"}}}))
        run = server.server.engine.get("mlpfree", None).model.inner._run_options
        assert run.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
        assert client.infer("mlpfree", [mlp_ones()]).as_numpy("y").shape == (1, 4)
    finally:
        client.load_model("mlpfree")
    assert "graph" not in client.get_model_config("mlpfree")["optimization"]


def test_a_loads_version_policy_picks_among_the_versions_the_store_holds(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    for seed in (1, 2, 3):
        imported = import_model(mlp_onnx(tmp_path / f"m{seed}.onnx", seed=seed), tmp_path / f"imported{seed}")
        store.register(imported.artifact, name="threev", format=imported.format, signature=imported.signature)
    st = start(store, models=["threev"], allow_model_control=True)
    try:
        for transport, client in (
            ("http", httpclient.InferenceServerClient(st.http_url)),
            ("grpc", grpcclient.InferenceServerClient(st.grpc_url)),
        ):

            def ready(client: Any = client) -> list[str]:
                return [v for v in ("1", "2", "3") if client.is_model_ready("threev", v)]

            assert ready() == ["3"], transport
            def policy(client: Any = client) -> Any:  # GET config's: the one that picks what is served now
                if isinstance(client, grpcclient.InferenceServerClient):
                    return json_format.MessageToDict(
                        client.get_model_config("threev").config.version_policy, preserving_proto_field_name=True
                    )
                return client.get_model_config("threev")["version_policy"]

            assert policy() == {"latest": {"num_versions": 1}}
            client.load_model("threev", config=json.dumps({"version_policy": {"latest": {"num_versions": 2}}}))
            assert ready() == ["2", "3"] and policy() == {"latest": {"num_versions": 2}}
            client.load_model("threev", config=json.dumps({"version_policy": {"specific": {"versions": ["1", 3]}}}))
            assert ready() == ["1", "3"]
            shown = httpclient.InferenceServerClient(st.http_url).get_model_config("threev")
            assert shown["version_policy"] == {"specific": {"versions": [1, 3]}}  # Triton shows one (none was shown)
            client.load_model("threev")
            client.load_model("threev", config=json.dumps(shown))  # serves them again
            assert ready() == ["1", "3"]
            without = {k: v for k, v in shown.items() if k != "version_policy"}
            client.load_model("threev", config=json.dumps(without))  # Triton's default for a config with none
            assert ready() == ["3"]
            client.load_model("threev", config=json.dumps(shown))
            with pytest.raises(InferenceServerException, match=re.escape("but the model's versions are [1, 2, 3]")):
                client.load_model("threev", config=json.dumps({"version_policy": {"specific": {"versions": [4]}}}))
            assert ready() == ["1", "3"]
            client.load_model("threev")  # Triton's default: the latest
            assert ready() == ["3"]
    finally:
        st.stop()


def test_a_model_config_files_version_policy_picks_the_versions_served_as_get_config_shows_them(
    tmp_path: Path,
) -> None:
    """GET config shows the version_policy that picks the versions served, and serve --model-config takes it
    (helper-88: the JSON GET config returns was refused there, for any policy but Triton's default)."""
    home = tmp_path / "home"
    store = Store.at(home)
    for seed in (1, 2, 3):
        imported = import_model(mlp_onnx(tmp_path / f"m{seed}.onnx", seed=seed), tmp_path / f"imported{seed}")
        store.register(imported.artifact, name="threev", format=imported.format, signature=imported.signature)
    store.close()
    port = free_port()
    with cli_server(home, ["threev:1", "threev:3", "--grpc-port", "-1"], port, tmp_path / "a.log") as proc:
        shown = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_config("threev")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert shown["version_policy"] == {"specific": {"versions": [1, 3]}}
    (tmp_path / "shown.json").write_text(json.dumps(shown))
    (tmp_path / "latest2.json").write_text(json.dumps({"version_policy": {"latest": {"num_versions": 2}}}))
    for args, ready in (
        (["threev:1", "threev:3", "--model-config", f"threev={tmp_path / 'shown.json'}"], ["1", "3"]),  # as named
        (["threev", "--model-config", f"threev={tmp_path / 'shown.json'}"], ["1", "3"]),  # the policy picks
        (["--model-config", f"threev={tmp_path / 'latest2.json'}"], ["2", "3"]),  # every model served
    ):
        port = free_port()
        with cli_server(home, [*args, "--grpc-port", "-1"], port, tmp_path / "b.log") as proc:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            assert [v for v in ("1", "2", "3") if client.is_model_ready("threev", v)] == ready, args
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    said = refused_after_loads(tmp_path, ["threev:1", "--model-config", f"threev={tmp_path / 'latest2.json'}"])
    assert "its version_policy picks versions [2, 3], but the command line serves [1]" in said
    # a load's config replaces the file's whole, its policy too (Triton's default then); a load without one reads
    # the file's again (helper-90: the file's policy picked for a config without one)
    port = free_port()
    args = ["--model-config", f"threev={tmp_path / 'latest2.json'}", "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(home, args, port, tmp_path / "c.log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        client.load_model("threev", config=json.dumps({"max_batch_size": 8}))
        assert [v for v in ("1", "2", "3") if client.is_model_ready("threev", v)] == ["3"]
        client.load_model("threev")
        assert [v for v in ("1", "2", "3") if client.is_model_ready("threev", v)] == ["2", "3"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_load_whose_batcher_cannot_start_leaves_every_version_as_it_was(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batcher was started after its version was routed to: when the second version's could not start,
    # the first served the new config, the second ran unbatched, and the old second was never closed.
    # A thread that cannot start cannot be made to happen here: the batcher's constructor is made to fail.
    store, _ = model_store
    for seed in (1, 2):
        imported = import_model(mlp_onnx(tmp_path / f"m{seed}.onnx", seed=seed), tmp_path / f"imported{seed}")
        store.register(imported.artifact, name="twov", format=imported.format, signature=imported.signature)
    start_config = ConfigFile("{}", None, "", (1, 2))  # as a repository folder serving versions 1 and 2
    st = start(store, models=["twov:1", "twov:2"], model_configs={"twov": start_config}, allow_model_control=True)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        before = [client.infer("twov", [mlp_ones()], model_version=v).as_numpy("y") for v in ("1", "2")]
        made = [0]

        def second_fails(*args: Any, **kwargs: Any) -> DynamicBatcher:
            made[0] += 1
            if made[0] == 2:
                raise RuntimeError("can't start new thread")
            return DynamicBatcher(*args, **kwargs)

        monkeypatch.setattr(model_loads, "DynamicBatcher", second_fails)
        with pytest.raises(InferenceServerException):
            config = {"max_batch_size": 8, "dynamic_batching": {}, "version_policy": {"all": {}}}
            client.load_model("twov", config=json.dumps(config))
        monkeypatch.undo()
        for v, y in zip(("1", "2"), before, strict=True):
            config = client.get_model_config("twov", v)
            assert "dynamic_batching" not in config, config  # neither version took the failed load's config
            np.testing.assert_array_equal(client.infer("twov", [mlp_ones()], model_version=v).as_numpy("y"), y)
    finally:
        st.stop()


def test_a_config_from_get_config_keeps_the_early_leave_of_serves_batching(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Serve's batching flags let a batch leave before its queue delay once no request came for the idle gap,
    which Triton's dynamic batching has no field for: GET config carries it as a parameter, so that the config
    loads back as it was served (helper-86: a lone request took 3 ms, and 1,002 ms after reloading its own config)."""
    store, _ = model_store
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_ms=1000, idle_gap_ms=0.1234567)  # 0.2 ms by default
    st = start(store, models=["mlp"], allow_model_control=True, policy_for=lambda *_: policy)
    client = httpclient.InferenceServerClient(st.http_url)
    try:

        def lone_s() -> float:
            started = time.perf_counter()
            assert client.infer("mlp", [mlp_ones(1)]).as_numpy("y").shape == (1, 4)
            return time.perf_counter() - started

        config = client.get_model_config("mlp")
        # every digit, so that it reads back the same (helper-88: "%g" wrote 0.123457)
        assert config["parameters"]["polystack_idle_gap_ms"] == {"string_value": "0.1234567"}
        assert lone_s() < 0.5
        client.load_model("mlp", config=json.dumps(config))
        assert client.get_model_config("mlp") == config and lone_s() < 0.5
        triton = copy.deepcopy(config)
        del triton["parameters"]["polystack_idle_gap_ms"]  # Triton's rule: the batch waits out its delay
        client.load_model("mlp", config=json.dumps(triton))
        assert "polystack_idle_gap_ms" not in client.get_model_config("mlp")["parameters"] and lone_s() >= 0.9
        for bad, says in (
            ({**triton, "parameters": {"polystack_idle_gap_ms": {"string_value": "soon"}}}, "takes milliseconds from 0"),
            ({**triton, "parameters": {"polystack_idle_gap_ms": {"string_value": "1_0"}}}, "takes milliseconds from 0"),
            ({"max_batch_size": 8, "parameters": {"polystack_idle_gap_ms": {"string_value": "1"}}}, "batches nothing"),
        ):
            with pytest.raises(InferenceServerException, match=says):
                client.load_model("mlp", config=json.dumps(bad))
    finally:
        st.stop()
