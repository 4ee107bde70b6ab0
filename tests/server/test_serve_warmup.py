"""Warm-up samples in a load's config (Triton's ``model_warmup``): they run on the new instance before
anything is routed to it, every type can be warmed, they count in no statistics, and a sample the
model fails fails the load while the instance it would have replaced keeps serving. The same config
given at start (``serve --model-config NAME=FILE``) serves the model from the start and every load
without a config of its own."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import caught_logs, mlp_ones, register_like, start
from tritonclient.utils import InferenceServerException

from polystack.formats import import_model
from polystack.server.app import ServerThread
from polystack.server.model_config import ConfigFile
from polystack.store import ModelRecord, Store


def _embedding_onnx(path: Path) -> Path:
    """ids INT64 [batch, 3] -> rows of a 10 x 4 table: any id outside 0..9 fails in the runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"])],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", 3, 4])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def server(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    store, records = model_store
    register_like(store, records["mlp"], "slow200", tags={"delay_ms": "200"})
    work = tmp_path_factory.mktemp("warmup")
    imported = import_model(_embedding_onnx(work / "embed.onnx"), work / "import")
    store.register(imported.artifact, name="embed", format=imported.format, signature=imported.signature)
    st = start(
        store, models=["mlp", "slow200", "embed", "ident64", "ident8", "notb", "strid"], allow_model_control=True
    )
    yield st
    st.stop()


def sample(inputs: dict[str, Any], batch_size: int = 1, count: int = 0, name: str = "w") -> dict[str, Any]:
    return {"name": name, "batch_size": batch_size, "inputs": inputs, "count": count}


def warmup_config(*samples: dict[str, Any], **config: Any) -> str:
    return json.dumps({**config, "model_warmup": list(samples)})


def test_a_load_runs_its_samples_before_routing_and_config_shows_them(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "random_data": True}}, batch_size=4, count=3)
    began = time.monotonic()
    with caught_logs("polystack.server") as logs:
        client.load_model("slow200", config=warmup_config(w, max_batch_size=8))
    took = time.monotonic() - began
    assert took >= 0.6  # three calls of 200 ms, one batch of 4 rows each, before the load answered
    assert [r.samples for r in logs if r.getMessage() == "model warmed up"] == [["w"]]  # type: ignore[attr-defined]
    config = client.get_model_config("slow200")
    assert config["model_warmup"] == [w]  # as given, so that reading the config and loading it keeps them
    stats = client.get_inference_statistics("slow200")["model_stats"][0]
    assert stats["inference_count"] == 0 and stats["execution_count"] == 0  # warm-up calls are not requests
    assert client.infer("slow200", [mlp_ones(2)]).as_numpy("y").shape == (2, 4)
    # read, loaded back unchanged: warmed again; a plain load goes back to the plan, which has none
    client.load_model("slow200", config=json.dumps(config))
    assert client.get_model_config("slow200")["model_warmup"] == [w]
    client.load_model("slow200")
    assert client.get_model_config("slow200")["model_warmup"] == []  # Triton prints it empty


def test_a_model_without_batching_is_warmed_with_requests_of_its_whole_shape(server: ServerThread) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [3, 16], "zero_data": True}}, count=3)
    began = time.monotonic()
    client.load_model("slow200", config=warmup_config(w, max_batch_size=0))  # the dims then hold the batch too
    assert time.monotonic() - began >= 0.6  # three requests of [3, 16], one after the other
    try:
        rendered = client.get_model_config("slow200", as_json=True)["config"]["model_warmup"]
        assert rendered == [
            {
                "name": "w",
                "batch_size": 1,
                "count": 3,  # protobuf's JSON: 64-bit ints as strings
                "inputs": {"x": {"data_type": "TYPE_FP32", "dims": ["3", "16"], "zero_data": True}},
            }
        ]
    finally:
        client.load_model("slow200")


@pytest.mark.parametrize(
    ("model", "name", "data_type", "dims"),
    [
        ("ident64", "a", "TYPE_INT64", [4]),
        ("ident8", "a", "TYPE_INT8", [2]),
        ("notb", "p", "TYPE_BOOL", [3]),
        ("strid", "s", "TYPE_STRING", [2]),  # empty strings, random or not, as Triton's
        ("mlp", "x", "TYPE_FP32", [16]),
    ],
)
@pytest.mark.parametrize("data", ["zero_data", "random_data"])
def test_every_type_can_be_warmed_with_zeros_or_random_values(
    server: ServerThread, model: str, name: str, data_type: str, dims: list[int], data: str
) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    w = sample({name: {"data_type": data_type, "dims": dims, data: True}}, batch_size=2, count=2)
    client.load_model(model, config=warmup_config(w, max_batch_size=8))
    try:
        assert client.get_model_config(model)["model_warmup"] == [w]
    finally:
        client.load_model(model)


def test_a_sample_the_model_fails_fails_the_load_and_the_model_keeps_serving(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    zeros = sample({"ids": {"data_type": "TYPE_INT64", "dims": [3], "zero_data": True}}, name="zeros")
    client.load_model("embed", config=warmup_config(zeros, max_batch_size=4))
    random = sample({"ids": {"data_type": "TYPE_INT64", "dims": [3], "random_data": True}}, name="ids")
    with pytest.raises(InferenceServerException) as e:  # random ids fall outside the 10-row table
        client.load_model("embed", config=warmup_config(zeros, random, max_batch_size=4))
    assert e.value.status() == "400"
    assert e.value.message().startswith("load failed for model 'embed': failed to run warmup sample 'ids': ")
    assert client.is_model_ready("embed")  # the instance the load would have replaced serves on
    assert client.get_model_config("embed")["model_warmup"] == [zeros]
    ids = httpclient.InferInput("ids", [1, 3], "INT64")
    ids.set_data_from_numpy(np.array([[0, 1, 9]], np.int64))
    assert client.infer("embed", [ids]).as_numpy("emb")[0, 2].tolist() == [36.0, 37.0, 38.0, 39.0]
    client.load_model("embed")


def test_a_sample_of_batch_size_0_is_skipped_as_triton_skips_it(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    skipped = sample({}, batch_size=0, name="nothing")  # no inputs either: it never runs
    with caught_logs("polystack.server") as logs:
        client.load_model("slow200", config=warmup_config(skipped, max_batch_size=8))
    try:
        assert not [r for r in logs if r.getMessage() == "model warmed up"]
        assert client.get_model_config("slow200")["model_warmup"] == [skipped]  # kept, as Triton keeps it
    finally:
        client.load_model("slow200")


def test_requests_during_a_warmup_are_served_by_the_instance_it_will_replace(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("slow200", config=json.dumps({"max_batch_size": 8}))
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}, count=5)  # a second
    loader = threading.Thread(
        target=lambda: httpclient.InferenceServerClient(server.http_url, network_timeout=30).load_model(
            "slow200", config=warmup_config(w, max_batch_size=4)
        )
    )
    loader.start()
    try:
        time.sleep(0.3)
        assert loader.is_alive()
        # six rows: only the old instance (max_batch_size 8) takes them; the warming one takes 4
        assert client.infer("slow200", [mlp_ones(6)]).as_numpy("y").shape == (6, 4)
        assert client.get_model_config("slow200")["max_batch_size"] == 8 and loader.is_alive()
    finally:
        loader.join(30)
        client.load_model("slow200")


def test_a_shutdown_stops_a_warmup_between_two_calls(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    # the drain waited for the loader thread, so a warm-up of many calls held the shutdown for all of them
    store, records = model_store
    register_like(store, records["mlp"], "slow200", tags={"delay_ms": "200"})
    st = start(store, models=["slow200"], allow_model_control=True, drain_timeout_s=1.0)
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}, count=100)  # 20 s of calls
    errors: list[str] = []

    def load() -> None:
        try:
            httpclient.InferenceServerClient(st.http_url, network_timeout=60).load_model(
                "slow200", config=warmup_config(w, max_batch_size=8)
            )
        except InferenceServerException as e:
            errors.append(e.message())

    def load_queued() -> None:  # a load of the same model, behind the one warming up when the drain begins
        try:
            httpclient.InferenceServerClient(st.http_url, network_timeout=60).load_model("slow200")
        except InferenceServerException as e:
            errors.append(e.message())

    loader, queued = threading.Thread(target=load), threading.Thread(target=load_queued)
    loader.start()
    time.sleep(0.5)
    queued.start()
    time.sleep(0.2)
    began = time.monotonic()
    with caught_logs("polystack.server") as logs:
        st.stop()
    loader.join(30)
    queued.join(30)
    assert time.monotonic() - began < 10  # not the 20 s the warm-up would have taken
    assert len(errors) == 2 and all("shutting down" in e for e in errors), errors
    # the queued load did not load its runtime only to close it
    assert not [r for r in logs if r.getMessage() == "model loaded" and getattr(r, "model", "") == "slow200"]


REFUSED: list[tuple[dict[str, Any], int, str]] = [
    ({"x": {"data_type": "TYPE_FP32", "dims": [16], "input_data_file": "x.bin"}}, 1, "no model directory"),
    (
        {"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True, "input_data_file": ""}},
        1,
        "not zero_data and input_data_file",
    ),
    ({"x": {"data_type": "TYPE_FP32", "dims": [16]}}, 1, "zero_data, random_data or input_data_file, not none"),
    ({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True, "random_data": True}}, 1, "not zero_data and"),
    ({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": "yes"}}, 1, "true or false"),
    ({"x": {"data_type": "TYPE_INT64", "dims": [16], "zero_data": True}}, 1, "TYPE_FP32"),
    ({"x": {"dims": [16], "zero_data": True}}, 1, "data_type None"),
    ({"x": {"data_type": "TYPE_FP32", "dims": [8], "zero_data": True}}, 1, "dims [8]"),
    ({"x": {"data_type": "TYPE_FP32", "dims": [-1], "zero_data": True}}, 1, "from 0 to"),  # sizes, not -1
    ({"x": {"data_type": "TYPE_FP32", "dims": [1, 16], "zero_data": True}}, 1, "dims [1, 16]"),  # no batch dim
    ({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}, 65, "over the model's max_batch_size 64"),
    ({"x": {"data_type": "TYPE_FP32", "dims": [1 << 30], "zero_data": True}}, 1, "dims"),
    ({"nope": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}, 1, "'nope'"),
    ({}, 1, "no data for input 'x'"),
    ({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True, "frobnicate": 1}}, 1, "frobnicate"),
    ({"x": [1, 2]}, 1, "must be a JSON object"),
]


@pytest.mark.parametrize(("inputs", "batch_size", "why"), REFUSED)
def test_a_sample_that_does_not_fit_the_model_is_refused_before_anything_loads(
    server: ServerThread, inputs: dict[str, Any], batch_size: int, why: str
) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    before = client.get_model_config("mlp")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("mlp", config=warmup_config(sample(inputs, batch_size=batch_size)))
    assert e.value.status() == "400" and why in e.value.message(), e.value.message()
    assert e.value.message().startswith("load failed for model 'mlp': model_warmup[0]")
    assert client.get_model_config("mlp") == before


def test_a_warmup_of_more_than_1000_calls_is_refused(server: ServerThread) -> None:
    # each call holds the loader thread (other loads, unloads, the shutdown wait for it)
    client = httpclient.InferenceServerClient(server.http_url)
    x = {"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}
    for samples in ([sample(x, count=4_294_967_295)], [sample(x, count=600), sample(x, count=401, name="v")]):
        with pytest.raises(InferenceServerException, match="at most 1,000 for a load"):
            client.load_model("mlp", config=warmup_config(*samples))


def test_a_model_without_batching_takes_samples_of_batch_size_1(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [2, 16], "zero_data": True}}, batch_size=2)
    with pytest.raises(InferenceServerException, match="batch_size 1"):
        client.load_model("slow200", config=warmup_config(w, max_batch_size=0))


# -- a config at start: `serve --model-config NAME=FILE`, as Triton reads config.pbtxt ----------------
def test_a_config_given_at_start_warms_the_model_before_the_server_is_ready(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, records = model_store
    register_like(store, records["mlp"], "slow200", tags={"delay_ms": "200"})
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}, count=3)
    text = warmup_config(w, max_batch_size=8, dynamic_batching={"max_queue_delay_microseconds": 500})
    with caught_logs("polystack.server") as logs:
        st = start(store, models=["slow200"], allow_model_control=True, model_configs={"slow200": ConfigFile(text)})
    try:
        assert [r.getMessage() for r in logs].index("model warmed up") < [r.getMessage() for r in logs].index("serving")
        client = httpclient.InferenceServerClient(st.http_url)
        config = client.get_model_config("slow200")
        assert config["model_warmup"] == [w] and config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        # a plain load of a model served as its start config says changes nothing (Triton re-reads
        # config.pbtxt), and a load with another config still replaces it
        with caught_logs("polystack.server") as logs:
            client.load_model("slow200")
        assert "model served as asked" in [r.getMessage() for r in logs]
        client.load_model("slow200", config="{}")
        assert client.get_model_config("slow200")["model_warmup"] == []  # Triton prints it empty
        client.load_model("slow200")  # back to the start config, warmed again
        assert client.get_model_config("slow200")["model_warmup"] == [w]
    finally:
        st.stop()


def test_a_start_config_warms_with_input_data_files_from_its_model_directory(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """Triton's input_data_file, for a model that random values fail (ids): the file's row runs, and a
    load re-reads the file, as Triton re-reads the model directory, with a config of its own too."""
    store, _ = model_store
    imported = import_model(_embedding_onnx(tmp_path / "embed.onnx"), tmp_path / "import")
    store.register(imported.artifact, name="embed", format=imported.format, signature=imported.signature)
    (tmp_path / "embed" / "warmup").mkdir(parents=True)
    ids = tmp_path / "embed" / "warmup" / "ids.bin"
    ids.write_bytes(np.array([1, 2, 9], np.int64).tobytes())
    w = sample({"ids": {"data_type": "TYPE_INT64", "dims": [3], "input_data_file": "ids.bin"}}, batch_size=4)
    start_config = ConfigFile(warmup_config(w, max_batch_size=4), tmp_path / "embed")
    with caught_logs("polystack.server") as logs:
        st = start(store, models=["embed"], allow_model_control=True, model_configs={"embed": start_config})
    try:
        assert "model warmed up" in [r.getMessage() for r in logs]
        client = httpclient.InferenceServerClient(st.http_url)
        assert client.get_model_config("embed")["model_warmup"] == [w]
        shown = grpcclient.InferenceServerClient(st.grpc_url).get_model_config("embed", as_json=True)["config"]
        assert shown["model_warmup"][0]["inputs"]["ids"]["input_data_file"] == "ids.bin"
        ids.write_bytes(np.array([1, 2, 12], np.int64).tobytes())  # 12: outside the table
        with pytest.raises(InferenceServerException, match="failed to run warmup sample 'w'") as e:
            client.load_model("embed")
        assert "12" in e.value.message()  # the runtime's own words: the file's row reached the model
        assert client.is_model_ready("embed")  # the instance the load would have replaced serves on
        # a load's own config reads the model's directory too, as Triton reads the repository folder
        with pytest.raises(InferenceServerException, match="failed to run warmup sample 'w'"):
            client.load_model("embed", config=warmup_config(w, max_batch_size=4))
        ids.write_bytes(np.array([1, 2, 9], np.int64).tobytes())
        client.load_model("embed", config=warmup_config(w, max_batch_size=8))
        assert client.get_model_config("embed")["max_batch_size"] == 8
    finally:
        st.stop()


def registered_mlp(tmp_path: Path, sizes: tuple[int, ...] = (16, 8, 4)) -> Path:
    """A store home in ``tmp_path`` with an MLP of layer ``sizes`` registered as ``m`` through the CLI."""
    from polystack.examples import mlp_onnx

    home = tmp_path / "home"
    path = mlp_onnx(tmp_path / "m.onnx", sizes=sizes)
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(path), "--name", "m"],
                   check=True, capture_output=True)  # fmt: skip
    return home


def test_model_config_at_start_exits_2_with_one_line_when_it_cannot_be_used(tmp_path: Path) -> None:
    from servekit import refused_at_start

    registered_mlp(tmp_path)  # as refused_at_start finds it: tmp_path / "home"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_warmup": [{"batch_size": 1, "inputs": {"nope": {}}}]}))
    good = tmp_path / "good.json"
    good.write_text("{}")
    typo = tmp_path / "config.pbtxt"
    typo.write_text('name: "m"\nmax_batch_sise: 8\n')
    cases = [
        (["--model-config", "m"], "NAME=FILE"),
        (["--model-config", f"m={tmp_path / 'missing.json'}"], "missing.json"),
        (["--model-config", f"other={good}"], "'other'"),
        (["m", "--model-config", f"m={good}", "--model-config", f"m={good}"], "twice"),
        (
            ["--model-config", f"m={bad}"],
            "failed to load 'm:1': the config from serve --model-config m: model_warmup[0]",
        ),
        (["m:1", "--model-config", f"m:1={good}"], "without a version"),
        (["--model-config", f"m={tmp_path / 'home'}"], f"cannot read {tmp_path}/home/config.pbtxt: No such file"),
        (
            ["--model-config", f"m={typo}"],
            f"--model-config m: {typo}: not a Triton config.pbtxt (protobuf text format): line 2, column 1: ",
        ),
        (  # checked before Ray starts, as each replica will read it
            ["--model-config", f"m={bad}", "--engine", "ray"],
            "failed to load 'm:1': the config from serve --model-config m: model_warmup[0]",
        ),
    ]
    for args, says in cases:
        line = refused_at_start(tmp_path, [*args, "--http-port", "0", "--grpc-port", "-1"])
        assert says in line, line


def test_a_triton_config_pbtxt_serves_its_model_as_it_says_through_the_cli(tmp_path: Path) -> None:
    """A model repository's config.pbtxt, as it is, through ``polystack serve --model-config``."""
    from servekit import cli_server, free_port

    home = registered_mlp(tmp_path)
    pbtxt = tmp_path / "config.pbtxt"
    pbtxt.write_text(
        '''# as Triton's model repository holds it
name: "m"
max_batch_size: 8
version_policy: { latest { num_versions: 1 } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 300 }
model_warmup [ { name: "ones" batch_size: 8 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "ones.bin" } } } ]
'''
    )
    (tmp_path / "warmup").mkdir()  # Triton's layout: the warm-up files beside config.pbtxt, in warmup/
    (tmp_path / "warmup" / "ones.bin").write_bytes(np.ones(16, np.float32).tobytes())
    port, log = free_port(), tmp_path / "serve.log"
    with cli_server(home, ["m", "--model-config", f"m={tmp_path}", "--grpc-port", "-1"], port, log):  # its folder
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = client.get_model_config("m")
        assert config["max_batch_size"] == 8 and config["instance_group"][0]["count"] == 2
        assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300
        assert [w["name"] for w in config["model_warmup"]] == ["ones"]
        result = client.infer("m", [mlp_ones(rows=3)])
        assert result.as_numpy("y").shape == (3, 4)
    messages = [json.loads(line).get("msg") for line in log.read_text().splitlines() if line.startswith("{")]
    assert messages.index("model warmed up") < messages.index("serving")


@contextlib.contextmanager
def warming_at_start(tmp_path: Path, sizes: tuple[int, ...], w: dict[str, Any]) -> Iterator[subprocess.Popen[bytes]]:
    """``polystack serve m`` in its own process, an MLP of layer ``sizes`` warmed at start with sample
    ``w``, once its warm-up has begun (its log is ``tmp_path / "serve.log"``); killed if left running."""
    home = registered_mlp(tmp_path, sizes)
    config = tmp_path / "config.json"
    config.write_text(warmup_config(w, max_batch_size=max(64, w["batch_size"])))
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "polystack", "--home", str(home), "serve", "m", "--model-config", f"m={config}",
           "--http-port", "0", "--grpc-port", "-1"]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "warming up model" not in log.read_text():  # logged just before the first call
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_start_time_warmup_stops_it_and_exits_zero(tmp_path: Path, sig: signal.Signals) -> None:
    """Before, the signal handlers came with the event loop, after the models loaded: a SIGTERM killed
    the process (143) and a Ctrl-C printed a traceback."""
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "random_data": True}}, batch_size=64, count=1000)
    log = tmp_path / "serve.log"
    with warming_at_start(tmp_path, (16, 2048, 4), w) as proc:  # ~ms a call: 1,000 calls take seconds
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines()]  # JSON lines only: no traceback
    messages = [r["msg"] for r in records]
    assert "model warmed up" not in messages and "serving" not in messages, messages
    assert records[-1]["msg"] == "stopped" and records[-1]["before_serving"] is True and records[-1]["models"] == []


def test_a_second_signal_stops_the_start_at_once_even_inside_a_runtime_call(tmp_path: Path) -> None:
    """The first signal asks the warm-up to stop between two calls; a second does not wait for the call."""
    rows = 60_000  # 750 GMAC a call; 20,000 rows took 5.2 s here, so a call lasts seconds on any CPU
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}, batch_size=rows, count=100)
    log = tmp_path / "serve.log"
    with warming_at_start(tmp_path, (16, 2048, 2048, 2048, 2048, 4), w) as proc:
        time.sleep(0.5)  # into the first call
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "a second signal stops at once" not in log.read_text():  # taken at once, mid-call
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # sent with the first (a wrapper forwarding it): not a second one
        time.sleep(1.2)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM, log.read_text()


def test_a_signal_stops_a_server_whose_event_loop_takes_no_signal_handlers(tmp_path: Path) -> None:
    """Windows' loops have no add_signal_handler; none can be had on Linux, so this test's process
    patches in a loop without them (a stand-in for the real one, which cannot run here)."""
    home = registered_mlp(tmp_path)
    script = (
        "import asyncio, sys\n"
        "from polystack.server import app\n"
        "class NoSignals(asyncio.SelectorEventLoop):\n"
        "    def add_signal_handler(self, *args):\n"
        "        raise NotImplementedError\n"
        "def run_loop(coro):\n"
        "    with asyncio.Runner(loop_factory=NoSignals) as runner:\n"
        "        runner.run(coro)\n"
        "app._run_loop = run_loop\n"
        "sys.argv[0] = 'polystack'\n"
        "from polystack.cli import main\n"
        "main()\n"
    )
    from servekit import free_port

    port = free_port()
    args = ["m", "--grpc-port", "-1", "--http-port", str(port)]
    cmd = [sys.executable, "-c", script, "--home", str(home), "serve", *args]
    with (tmp_path / "serve.log").open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                if client.is_server_ready():
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_start_config_decides_its_models_batching_whatever_the_batching_flags_say(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    text = json.dumps({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 700}})
    with caught_logs("polystack.server") as logs:
        st = start(store, models=["mlp", "ident64"], no_batching=True, model_configs={"mlp": ConfigFile(text)})
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        assert client.get_model_config("mlp")["dynamic_batching"]["max_queue_delay_microseconds"] == 700
        assert "dynamic_batching" not in client.get_model_config("ident64")  # the flag still holds for the others
        warned = [r for r in logs if r.getMessage().startswith("batching settings do not apply")]
        assert [r.model for r in warned] == ["mlp"]  # type: ignore[attr-defined]
    finally:
        st.stop()


def test_a_plain_load_refused_by_the_start_config_says_where_the_config_came_from(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    from polystack.examples import mlp_onnx

    store, records = model_store
    register_like(store, records["mlp"], "cfgm")
    w = sample({"x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}})
    st = start(
        store, models=["cfgm"], allow_model_control=True, model_configs={"cfgm": ConfigFile(warmup_config(w, max_batch_size=8))}
    )
    try:
        wider = import_model(mlp_onnx(tmp_path / "wide.onnx", sizes=(32, 8, 4)), tmp_path / "import")
        store.register(wider.artifact, name="cfgm", format=wider.format, signature=wider.signature)  # version 2
        with pytest.raises(InferenceServerException) as e:  # the client sent no config: the file's is refused
            httpclient.InferenceServerClient(st.http_url).load_model("cfgm")
        assert e.value.message().startswith("load failed for model 'cfgm': the config from serve --model-config cfgm: ")
    finally:
        st.stop()

