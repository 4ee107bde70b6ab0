"""Ray Serve runs the same OIP v2 HTTP routes: tritonclient infers against it unchanged.

Marked ``ray``: `make test` runs it inside a loopback-only network namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jobdata import FEATURES, reference, register_mlp
from ports import free_port

from polystack.config import StoreSettings
from polystack.store import Store

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ray = pytest.importorskip("ray")
    from ray import serve

    work = tmp_path_factory.mktemp("serve")
    store = Store(StoreSettings(home=work / "home"))
    register_mlp(store, work)
    _register_accumulator(store, work)
    store.close()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield from _serving(work, serve)
    finally:  # a start that failed too: the next module's Ray would find this one
        serve.shutdown()
        ray.shutdown()


def _register_accumulator(store: Store, work: Path) -> None:
    """A stateful model (polystack.examples.accumulator_onnx), served with sequence batching."""
    from polystack.examples import accumulator_onnx
    from polystack.formats import import_model

    imported = import_model(accumulator_onnx(work / "acc.onnx"), work / "acc-import")
    store.register(imported.artifact, name="acc", format=imported.format, signature=imported.signature)


ACC = """max_batch_size: 4
sequence_batching {
  control_input [
    { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] },
    { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] }
  ]
  state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
}
"""


def _serving(work: Path, serve: Any) -> Iterator[tuple[str, Path]]:
    from polystack.server import config_text, ensemble
    from polystack.server.app import ServeConfig
    from polystack.server.model_config import ConfigFile
    from polystack.server.ray_serve import build_app
    from polystack.server.response_cache import CacheConfig

    port = free_port()  # once Ray's own processes hold their ports: one of them took a port chosen before
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # a start config (serve --model-config mlp=DIR/config.pbtxt), warm-up file and all, in each replica
    (work / "mlp" / "warmup").mkdir(parents=True)
    (work / "mlp" / "warmup" / "x.bin").write_bytes(np.ones(FEATURES, np.float32).tobytes())
    pbtxt = f"""max_batch_size: 16
dynamic_batching {{ max_queue_delay_microseconds: 400 }}
model_warmup [ {{ name: "file" batch_size: 4 inputs {{ key: "x" value: {{ data_type: TYPE_FP32 dims: [ {FEATURES} ] input_data_file: "x.bin" }} }} }} ]
response_cache {{ enable: true }}
"""
    start_config = ConfigFile(config_text.as_json(pbtxt), work / "mlp")
    # an ensemble of a repository (serve --model-repository): IN -> mlp -> OUT, run in each replica
    pipe = f"""platform: "ensemble"
max_batch_size: 8
input [ {{ name: "IN", data_type: TYPE_FP32, dims: [ {FEATURES} ] }} ]
output [ {{ name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] }} ]
ensemble_scheduling {{ step [ {{ model_name: "mlp", input_map {{ key: "x" value: "IN" }}, output_map {{ key: "y" value: "OUT" }} }} ] }}
"""
    config = ServeConfig(
        host="127.0.0.1",
        http_port=port,
        grpc_port=None,
        # a sequence model: its one replica keeps its sequences (more replicas are refused before Ray starts)
        model_configs={"mlp": start_config, "acc": ConfigFile(config_text.as_json(ACC))},
        ensembles={"pipe": ensemble.read(config_text.as_json(pipe), "pipe", 1)},
        response_cache=CacheConfig(1 << 20),  # serve --cache-config local,size=1048576: one in each replica
    )
    serve.run(build_app(work / "home", config, replicas=1), name="polystack", route_prefix="/")
    yield f"127.0.0.1:{port}", work / "mlp.onnx"


def test_tritonclient_infers_against_ray_serve(served: tuple[str, Path]) -> None:
    import tritonclient.http as httpclient

    url, model_path = served
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["shape"] == [-1, FEATURES]
    x = np.random.default_rng(3).standard_normal((5, FEATURES)).astype(np.float32)
    for binary in (True, False):  # the binary tensor extension (tritonclient's default) and JSON
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("y", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("y"), reference(model_path, x), rtol=1e-5, atol=1e-6)


def test_ray_serve_replicas_serve_a_model_as_its_start_config_says(served: tuple[str, Path]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=served[0])
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 16 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 400
    assert config["model_warmup"][0]["inputs"]["x"]["input_data_file"] == "x.bin"
    assert config["response_cache"] == {"enable": True}

    def hits() -> int:
        return int(client.get_inference_statistics("mlp")["model_stats"][0]["inference_stats"]["cache_hit"]["count"])

    before = hits()
    x = httpclient.InferInput("x", [2, FEATURES], "FP32")
    x.set_data_from_numpy(np.full((2, FEATURES), 0.25, np.float32))
    first, again = (client.infer("mlp", [x]).as_numpy("y") for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert hits() == before + 1  # the replica's cache answered the second


def test_ray_serve_answers_errors_like_the_server(served: tuple[str, Path]) -> None:
    import httpx

    url, _ = served
    bad_shape = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = httpx.post(f"http://{url}/v2/models/mlp/infer", json=bad_shape, timeout=30)
    assert r.status_code == 400 and "got [1,3]" in r.json()["error"]
    r = httpx.get(f"http://{url}/v2/models/nope", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    # and it keeps serving
    assert httpx.get(f"http://{url}/v2/health/ready", timeout=30).status_code == 200


def test_kserve_v1_and_the_repository_index_answer_through_ray_serve(served: tuple[str, Path]) -> None:
    """The replicas run the same HTTP app: KServe's V1 protocol answers there too, and the repository index
    (without model control, as in Triton's default mode) lists what they serve; loads are refused."""
    import httpx

    url, model_path = served
    x = np.random.default_rng(7).standard_normal((2, FEATURES)).astype(np.float32)
    assert httpx.get(f"http://{url}/v1/models/mlp", timeout=30).json() == {"name": "mlp", "ready": True}
    r = httpx.post(f"http://{url}/v1/models/mlp:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"], np.float32), reference(model_path, x), rtol=1e-5, atol=1e-5)
    r = httpx.post(f"http://{url}/v2/repository/index", json={}, timeout=30)
    assert r.status_code == 200 and {"name": "mlp", "version": "1", "state": "READY"} in r.json(), r.text
    r = httpx.post(f"http://{url}/v2/repository/models/mlp/unload", json={}, timeout=30)
    assert r.status_code == 503 and "name the models at start" in r.json()["error"], r.text


def test_an_ensemble_runs_in_each_replica(served: tuple[str, Path]) -> None:
    import tritonclient.http as httpclient

    url, model_path = served
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_model_ready("pipe") and client.get_model_metadata("pipe")["platform"] == "ensemble"
    x = np.random.default_rng(5).standard_normal((3, FEATURES)).astype(np.float32)
    inp = httpclient.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(
        client.infer("pipe", [inp]).as_numpy("OUT"), reference(model_path, x), rtol=1e-5, atol=1e-6
    )


def test_one_replica_keeps_the_sequences_of_a_sequence_model(served: tuple[str, Path]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=served[0])
    assert [i["name"] for i in client.get_model_metadata("acc")["inputs"]] == ["INPUT"]
    sums = []
    for step, value in enumerate((1.0, 2.0, 3.0)):
        x = httpclient.InferInput("INPUT", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[value]], np.float32))
        answer = client.infer("acc", [x], sequence_id=5, sequence_start=step == 0, sequence_end=step == 2)
        sums.append(float(answer.as_numpy("OUTPUT")[0, 0]))
    assert sums == [1.0, 3.0, 6.0]
