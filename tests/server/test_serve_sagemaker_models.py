"""SageMaker's multi-model endpoints on the SageMaker port (``--allow-sagemaker true`` with explicit model control):
``/models`` loads, lists, invokes and unloads models from the folders SageMaker unpacks their archives in, as
tritonserver 2.51's SageMaker front end does (helper-132 recorded it), driven as SageMaker drives them: a JSON
body naming the folder, and the archive's key in ``X-Amzn-SageMaker-Target-Model``."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port, http_call, register_all, start, until
from test_serve_ensemble import pipeline_repository
from test_serve_model_repository import expected

from polystack.errors import AlreadyExists, InvalidRequest, ShuttingDown
from polystack.examples import mlp_onnx
from polystack.server import model_loads
from polystack.server.app import ServerThread
from polystack.server.model_repository import FolderRules
from polystack.server.restricted import Restrictions
from polystack.server.sagemaker import SageMakerSettings, _refused
from polystack.server.sagemaker_models import served_name
from polystack.store import Store

BINARY = "application/vnd.sagemaker-triton.binary+json;json-header-size="
TARGET = "X-Amzn-SageMaker-Target-Model"
X = np.full((1, 16), 0.5, np.float32)
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]})


def archive(root: Path, seed: int = 1, folder: str | None = "add", name: str | None = None) -> Path:
    """A folder as SageMaker unpacks an archive in it: ``<root>/model/<folder>/`` holding the test MLP (``folder``
    None: the model folder is ``<root>/model`` itself); its config names the model ``name``, if given."""
    model = root / "model" / folder if folder else root / "model"
    (model / "1").mkdir(parents=True)
    mlp_onnx(model / "1" / "model.onnx", seed=seed)
    named = f'name: "{name}"\n' if name else ""
    (model / "config.pbtxt").write_text(f'{named}platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    return root / "model"


def call(port: int, method: str, path: str, body: str | bytes | None = None, **headers: str) -> tuple[int, str, bytes]:
    data = body.encode() if isinstance(body, str) else body
    return http_call(port, method, path, data, {k.replace("_", "-"): v for k, v in headers.items()})


def load(port: int, name: str, url: Path | str, target: str | None = None) -> tuple[int, str, bytes]:
    body = json.dumps({"model_name": name, "url": str(url)})
    return call(port, "POST", "/models", body, **({TARGET.replace("-", "_"): target} if target else {}))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, int]]:
    """A server as SageMaker's multi-model containers run Triton: explicit model control over an empty
    repository, the SageMaker port on."""
    (tmp_path / "empty").mkdir()
    st = start(
        Store.at(tmp_path / "home"), models=[], allow_model_control=True, repository_only=True,
        model_repositories=[tmp_path / "empty"], sagemaker_port=0, sagemaker=SageMakerSettings(),
    )  # fmt: skip
    port = st.server.platform_ports.get("SageMaker")
    assert port is not None
    yield st, port
    st.stop()


def _y(answer: bytes) -> np.ndarray:
    out = json.loads(answer)["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_a_model_loads_from_its_folder_serves_under_the_target_models_name_and_unloads(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    st, port = served
    url = archive(tmp_path / "opt" / "h1")
    assert load(port, "h1", url, "add.tar.gz") == (200, "text/plain", b"")
    listed = {"modelName": "h1", "modelUrl": str(url)}
    assert call(port, "GET", "/models") == (200, "application/json", json.dumps({"models": [listed]}, separators=(",", ":")).encode())
    assert json.loads(call(port, "GET", "/models/h1")[2]) == listed
    status, _, answer = call(port, "POST", "/models/h1/invoke", BODY, **{"X_Amzn_SageMaker_Target_Model": "add.tar.gz"})
    assert status == 200 and json.loads(answer)["model_name"] == "add.tar.gz"
    np.testing.assert_allclose(_y(answer), expected(url / "add" / "1" / "model.onnx", X), rtol=1e-5)
    # the model is the server's as any other: the HTTP port's index and statistics know it by its name
    client = httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}")
    assert {"name": "add.tar.gz", "version": "1", "state": "READY"} in client.get_model_repository_index()
    assert client.get_inference_statistics("add.tar.gz")["model_stats"][0]["inference_count"] == 1
    store = st.server.plane.store
    assert [r.version for r in store.models.list("add.tar.gz")] == [1]  # registered as a repository model is
    assert call(port, "DELETE", "/models/h1") == (200, "text/plain", b"")
    assert not client.is_model_ready("add.tar.gz")
    assert store.models.list("add.tar.gz") == []  # and removed with it: SageMaker's loads never fill the disk
    assert call(port, "GET", "/models") == (200, "application/json", b'{"models":[]}')
    for method, path in (("GET", "/models/h1"), ("POST", "/models/h1/invoke"), ("DELETE", "/models/h1")):
        assert call(port, method, path, BODY if method == "POST" else None) == (404, "text/plain", b""), path
    assert load(port, "h1", url, "add.tar.gz")[0] == 200  # its repository was unregistered: it loads again
    assert call(port, "POST", "/models/h1/invoke", BODY)[0] == 200


def test_a_folder_that_is_the_model_folder_serves_under_sagemakers_name_without_a_header(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    _, port = served
    # its config names another model: the model has SageMaker's name whatever it says, as in Triton
    url = archive(tmp_path / "opt" / "h2", seed=2, folder=None, name="resnet_v2")
    assert load(port, "h2", url)[0] == 200
    # the folder is registered as the repository of that one model (Triton registers its parent, the others in it too)
    assert json.loads(call(port, "GET", "/models/h2")[2]) == {"modelName": "h2", "modelUrl": str(url)}
    status, _, answer = call(port, "POST", "/models/h2/invoke", BODY)
    assert status == 200 and json.loads(answer)["model_name"] == "h2"
    np.testing.assert_allclose(_y(answer), expected(url / "1" / "model.onnx", X), rtol=1e-5)
    # binary tensors, with SageMaker's content type both ways
    i = httpclient.InferInput("x", [1, 16], "FP32")
    i.set_data_from_numpy(X, binary_data=True)
    body, length = httpclient.InferenceServerClient.generate_request_body([i])
    status, ctype, answer = call(port, "POST", "/models/h2/invoke", body, Content_Type=f"{BINARY}{length}")
    assert status == 200 and ctype.startswith(BINARY)
    got = httpclient.InferenceServerClient.parse_response_body(answer, header_length=int(ctype[len(BINARY):]))
    np.testing.assert_allclose(got.as_numpy("y"), expected(url / "1" / "model.onnx", X), rtol=1e-5)


def test_an_ensembles_archive_loads_the_ensemble_with_its_models_and_unloads_them_all(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    st, port = served
    url = pipeline_repository(tmp_path / "opt" / "h3" / "model")
    assert load(port, "h3", url, "pipe.tar.gz")[0] == 200
    client = httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}")
    assert all(client.is_model_ready(m) for m in ("pipe.tar.gz", "mlp", "head", "neg"))
    body = json.dumps({"inputs": [{"name": "IN", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]})
    status, _, answer = call(port, "POST", "/models/h3/invoke", body)
    assert status == 200 and {o["name"] for o in json.loads(answer)["outputs"]} == {"OUT", "NEG"}
    assert call(port, "DELETE", "/models/h3")[0] == 200
    assert not any(client.is_model_ready(m) for m in ("pipe.tar.gz", "mlp", "head", "neg"))
    assert st.server.plane.store.models.list() == []


def test_an_invokes_failures_have_the_statuses_of_any_request(served: tuple[ServerThread, int], tmp_path: Path) -> None:
    """invoke answered a request's failure with the statuses of loads (helper-262): 400 for a model unloaded over v2
    behind its name, where 404 makes SageMaker load it again, and 507 for a model's out-of-memory while it ran."""
    st, port = served
    assert load(port, "h1", archive(tmp_path / "opt" / "h1"), "add.tar.gz")[0] == 200
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    status, _, answer = call(port, "POST", "/models/h1/invoke", bad)
    assert status == 400 and "unexpected shape" in json.loads(answer)["error"]
    httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}").unload_model("add.tar.gz")
    status, _, answer = call(port, "POST", "/models/h1/invoke", BODY)
    assert status == 404 and "'add.tar.gz'" in json.loads(answer)["error"], answer
    assert call(port, "GET", "/models/h1")[0] == 404  # as the list, which leaves it out
    assert call(port, "GET", "/models") == (200, "application/json", b'{"models":[]}')


def test_a_name_loaded_with_a_space_is_reached_percent_encoded(served: tuple[ServerThread, int], tmp_path: Path) -> None:
    # the route matched the path undecoded: "h 1" loaded, and GET, invoke and DELETE of /models/h%201 were 404
    _, port = served
    assert load(port, "h 1", archive(tmp_path / "opt" / "h1"), "add.tar.gz")[0] == 200
    assert json.loads(call(port, "GET", "/models/h%201")[2])["modelName"] == "h 1"
    assert call(port, "POST", "/models/h%201/invoke", BODY)[0] == 200
    assert call(port, "DELETE", "/models/h%201")[0] == 200


def test_what_is_loaded_already_is_409_in_tritons_words(served: tuple[ServerThread, int], tmp_path: Path) -> None:
    _, port = served
    first, second = archive(tmp_path / "opt" / "h1"), archive(tmp_path / "opt" / "h2", seed=2)
    assert load(port, "h1", first, "add.tar.gz")[0] == 200
    for name, url, target, words in (
        ("h1", first, "add.tar.gz", f"model repository '{first}' has already been registered"),
        ("h9", first, "other.tar.gz", f"model repository '{first}' has already been registered"),
        ("h9", second, "add.tar.gz", "failed to register 'add.tar.gz', there is a conflicting mapping for 'add.tar.gz'"),
        ("h1", second, "other.tar.gz", "SageMaker model 'h1' is loaded already"),
    ):
        status, ctype, answer = load(port, name, url, target)
        assert (status, ctype) == (409, "application/json") and json.loads(answer)["error"].startswith(words), answer
    assert load(port, "h2", second, "two.tar.gz")[0] == 200  # the refused loads left nothing registered
    assert [m["modelName"] for m in json.loads(call(port, "GET", "/models")[2])["models"]] == ["h1", "h2"]


def test_a_load_that_fails_is_400_and_leaves_nothing_registered(served: tuple[ServerThread, int], tmp_path: Path) -> None:
    _, port = served
    url = archive(tmp_path / "opt" / "h1")
    good = (url / "add" / "1" / "model.onnx").read_bytes()
    (url / "add" / "1" / "model.onnx").write_bytes(b"not onnx")
    status, _, answer = load(port, "h1", url, "add.tar.gz")
    assert status == 400 and "add.tar.gz" in json.loads(answer)["error"], answer
    assert call(port, "GET", "/models") == (200, "application/json", b'{"models":[]}')
    (url / "add" / "1" / "model.onnx").write_bytes(good)
    assert load(port, "h1", url, "add.tar.gz")[0] == 200


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{bad", "not valid JSON"),
        ('{"model_name": "h1"}', 'a load needs "url"'),
        ('{"url": "/tmp"}', 'a load needs "model_name"'),
        ('{"model_name": "h1", "url": 7}', '"url" must be a string, not 7'),
        ('{"model_name": 7, "url": "/tmp"}', '"model_name" must be a string, not 7'),
        ('{"model_name": "h1", "url": "/nowhere/model"}', "failed to register '/nowhere/model', repository not found"),
        ('{"model_name": "h1", "url": "/proc/self"}', "never read from /dev/, /proc/ or /sys/"),
        ('{"model_name": "h1", "url": "/sys/../proc/1"}', "never read from /dev/, /proc/ or /sys/"),
    ],
)
def test_bad_loads_are_400_saying_what_to_send(served: tuple[ServerThread, int], body: str, words: str) -> None:
    _, port = served
    status, ctype, answer = call(port, "POST", "/models", body)
    assert (status, ctype) == (400, "application/json") and words in json.loads(answer)["error"], answer


def test_an_archive_of_several_models_and_no_ensemble_is_refused_naming_them(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    _, port = served
    url = archive(tmp_path / "opt" / "h1", folder="a")
    archive(tmp_path / "opt" / "h1", folder="b")
    status, _, answer = load(port, "h1", url)
    assert status == 400 and "2 model folders (a, b) and no ensemble" in json.loads(answer)["error"]
    (tmp_path / "opt" / "empty" / "model").mkdir(parents=True)
    status, _, answer = load(port, "h2", tmp_path / "opt" / "empty" / "model")
    assert status == 400 and "holds no model folder" in json.loads(answer)["error"]


def test_without_explicit_model_control_a_load_is_400_in_tritons_words(tmp_path: Path) -> None:
    st = start(Store.at(tmp_path / "home"), models=[], sagemaker_port=0, sagemaker=SageMakerSettings())
    try:
        port = st.server.platform_ports.get("SageMaker")
        assert port is not None
        status, _, answer = load(port, "h1", archive(tmp_path / "opt" / "h1"))
        assert status == 400
        assert json.loads(answer)["error"].startswith(
            "repository registration is not allowed if model control mode is not EXPLICIT; start the server with "
            "--model-control-mode explicit"
        )
    finally:
        st.stop()


def test_the_model_repository_restriction_covers_all_but_invoke(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    st = start(
        Store.at(tmp_path / "home"), models=[], allow_model_control=True, repository_only=True,
        model_repositories=[tmp_path / "empty"], sagemaker_port=0, sagemaker=SageMakerSettings(),
        http_restricted=Restrictions({"model-repository": ("admin-key", "s3cret")}),
    )  # fmt: skip
    try:
        port = st.server.platform_ports.get("SageMaker")
        assert port is not None
        url = archive(tmp_path / "opt" / "h1")
        assert load(port, "h1", url)[0] == 403
        body = json.dumps({"model_name": "h1", "url": str(url)})
        assert call(port, "POST", "/models", body, admin_key="s3cret")[0] == 200
        for method, path in (("GET", "/models"), ("GET", "/models/h1"), ("DELETE", "/models/h1")):
            assert call(port, method, path)[0] == 403, path
        assert call(port, "POST", "/models/h1/invoke", BODY)[0] == 200
        assert call(port, "DELETE", "/models/h1", admin_key="s3cret")[0] == 200
    finally:
        st.stop()


def test_refusals_keep_tritons_statuses_507_when_memory_ran_out() -> None:
    assert _refused(AlreadyExists("taken")).status == 409
    assert _refused(InvalidRequest("failed to load 'm': std::bad_alloc: out of memory")).status == 507
    assert _refused(InvalidRequest("CUDA out of memory. Tried to allocate 2.00 GiB")).status == 507
    assert _refused(InvalidRequest("no such input")).status == 400
    assert _refused(ShuttingDown("draining")).status == 503


def test_serve_loads_sagemakers_models_as_a_multi_model_container_runs_it(tmp_path: Path) -> None:
    """As a user's container runs it: explicit model control and no repository at all."""
    port, sagemaker_port = free_port(), free_port()
    args = ["--grpc-port", "-1", "--model-control-mode", "explicit", "--allow-sagemaker", "true",
            "--sagemaker-port", str(sagemaker_port)]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        assert load(sagemaker_port, "h1", archive(tmp_path / "opt" / "h1"), "add.tar.gz")[0] == 200
        assert call(sagemaker_port, "POST", "/models/h1/invoke", BODY)[0] == 200
        assert call(sagemaker_port, "DELETE", "/models/h1")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    log = (tmp_path / "log").read_text()
    assert '"msg":"loading a SageMaker model"' in log and '"msg":"model repository unregistered"' in log


def test_other_methods_and_paths_under_models_are_400_with_an_empty_body_as_in_triton(
    served: tuple[ServerThread, int],
) -> None:
    _, port = served
    for method, path in (("PUT", "/models"), ("PATCH", "/models/h1"), ("GET", "/models/h1/other"), ("GET", "/models/a/b"),
                         ("HEAD", "/models")):
        assert call(port, method, path) == (400, "text/plain", b""), (method, path)
    assert call(port, "GET", "/ping")[0] == 200


def _slow_loads(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every repository load takes ``seconds`` more, as real models take a while to load."""
    real = model_loads.ModelLoads.load_from_repository

    def slow(self: model_loads.ModelLoads, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(model_loads.ModelLoads, "load_from_repository", slow)


def test_loads_at_once_each_take_back_only_their_own_store_rows(
    served: tuple[ServerThread, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, port = served
    _slow_loads(monkeypatch, 0.3)
    urls = [archive(tmp_path / "opt" / f"h{i}", seed=i + 1) for i in range(2)]
    answers: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: answers.update({f"h{i}": load(port, f"h{i}", urls[i], f"m{i}")[0]}))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {"h0": 200, "h1": 200}
    assert call(port, "DELETE", "/models/h0")[0] == 200
    assert [r.name for r in st.server.plane.store.models.list()] == ["m1"]  # h0's unload took back m0 alone
    assert call(port, "DELETE", "/models/h1")[0] == 200
    assert st.server.plane.store.models.list() == []


def test_one_name_loaded_twice_at_once_is_loaded_once_and_the_other_is_409(
    served: tuple[ServerThread, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = served
    _slow_loads(monkeypatch, 0.3)
    urls = [archive(tmp_path / "opt" / f"u{i}", seed=i + 1) for i in range(2)]
    answers: list[int] = []
    threads = [threading.Thread(target=lambda i=i: answers.append(load(port, "h1", urls[i], f"m{i}")[0])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [200, 409]
    assert call(port, "DELETE", "/models/h1")[0] == 200
    assert call(port, "GET", "/models") == (200, "application/json", b'{"models":[]}')


def test_a_load_whose_client_goes_runs_to_its_end_and_is_known(
    served: tuple[ServerThread, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, port = served
    _slow_loads(monkeypatch, 1.0)
    url = archive(tmp_path / "opt" / "h1")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.3)
    conn.request("POST", "/models", body=json.dumps({"model_name": "h1", "url": str(url)}), headers={TARGET: "m"})
    with pytest.raises((socket.timeout, TimeoutError)):
        conn.getresponse()
    conn.close()
    assert until(lambda: call(port, "GET", "/models/h1")[0] == 200, 10)  # loaded, and listed
    assert load(port, "h1", url, "m")[0] == 409  # SageMaker's retry: loaded already
    assert call(port, "DELETE", "/models/h1")[0] == 200
    assert st.server.plane.store.models.list() == []


def test_a_failed_ensemble_load_takes_back_the_models_it_brought_up_and_the_endpoint_stays_healthy(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    st, port = served
    url = pipeline_repository(tmp_path / "opt" / "h3" / "model")
    config = url / "pipe" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 3 ]", "dims: [ 5 ]"))  # does not fit its step's output
    assert load(port, "h3", url, "pipe.tar.gz")[0] == 400
    client = httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}")
    assert not any(client.is_model_ready(m) for m in ("mlp", "head", "neg"))
    assert st.server.plane.store.models.list() == []
    assert call(port, "GET", "/ping")[0] == 200  # its repository is gone: nothing is left unready
    other = pipeline_repository(tmp_path / "opt" / "h4" / "model")
    mlp_onnx(other / "mlp" / "1" / "model.onnx", sizes=(16, 32, 4), seed=9)
    assert load(port, "h4", other, "pipe.tar.gz")[0] == 200
    body = json.dumps({"inputs": [{"name": "IN", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]})
    neg = next(o for o in json.loads(call(port, "POST", "/models/h4/invoke", body)[2])["outputs"] if o["name"] == "NEG")
    np.testing.assert_allclose(neg["data"], -expected(other / "mlp" / "1" / "model.onnx", X).ravel(), rtol=1e-5)


def test_a_name_served_another_way_is_409_and_that_model_serves_on(tmp_path: Path) -> None:
    store = Store.at(tmp_path / "home")
    register_all(store, tmp_path / "work")
    st = start(store, models=["mlp"], allow_model_control=True, sagemaker_port=0, sagemaker=SageMakerSettings())
    try:
        port = st.server.platform_ports["SageMaker"]
        status, _, answer = load(port, "h1", archive(tmp_path / "opt" / "h1", seed=7), "mlp")
        assert status == 409 and "model 'mlp' is served already" in json.loads(answer)["error"]
        assert httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}").is_model_ready("mlp")
    finally:
        st.stop()


def test_a_name_loaded_once_by_sagemaker_loads_from_the_store_again_after(tmp_path: Path) -> None:
    store = Store.at(tmp_path / "home")
    register_all(store, tmp_path / "work")
    st = start(store, models=[], allow_model_control=True, sagemaker_port=0, sagemaker=SageMakerSettings())
    try:
        port = st.server.platform_ports["SageMaker"]
        client = httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}")
        client.load_model("mlp")  # served from the store, then not
        client.unload_model("mlp")
        url = tmp_path / "opt" / "h1" / "model"
        (url / "2").mkdir(parents=True)  # a version the store lacks, beside its version 1
        mlp_onnx(url / "2" / "model.onnx", seed=3)
        (url / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
        assert load(port, "h1", url, "mlp")[0] == 200
        assert call(port, "DELETE", "/models/h1")[0] == 200
        assert [r.version for r in store.models.list("mlp")] == [1]  # the store's own version stays
        client.load_model("mlp")  # from the store, as before
        assert client.is_model_ready("mlp")
    finally:
        st.stop()


def test_a_folder_mapped_to_its_own_name_takes_it_whatever_its_config_says(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    _, port = served
    assert load(port, "h1", archive(tmp_path / "opt" / "h1", folder="add", name="resnet"), "add")[0] == 200


def test_model_folders_side_by_side_load_each_alone(served: tuple[ServerThread, int], tmp_path: Path) -> None:
    st, port = served
    for name in ("x", "y"):
        archive(tmp_path / "flat" / name, folder=None)
    assert load(port, "hx", tmp_path / "flat" / "x" / "model", "x.tar.gz")[0] == 200
    assert load(port, "hy", tmp_path / "flat" / "y" / "model", "y.tar.gz")[0] == 200
    index = httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}").get_model_repository_index()
    assert sorted(m["name"] for m in index) == ["x.tar.gz", "y.tar.gz"]  # nothing else of their folders


def test_an_ensemble_whose_models_another_archive_serves_is_refused_as_triton_refuses_it(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    _, port = served
    first = pipeline_repository(tmp_path / "opt" / "h1" / "model")
    second = pipeline_repository(tmp_path / "opt" / "h2" / "model")
    mlp_onnx(second / "mlp" / "1" / "model.onnx", sizes=(16, 32, 4), seed=9)  # its own mlp, which it must run
    assert load(port, "h1", first, "pipe1.tar.gz")[0] == 200
    status, _, answer = load(port, "h2", second, "pipe2.tar.gz")
    assert status == 400 and "model appears in two or more repositories: 'head' is in" in json.loads(answer)["error"]
    body = json.dumps({"inputs": [{"name": "IN", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]})
    neg = next(o for o in json.loads(call(port, "POST", "/models/h1/invoke", body)[2])["outputs"] if o["name"] == "NEG")
    np.testing.assert_allclose(neg["data"], -expected(first / "mlp" / "1" / "model.onnx", X).ravel(), rtol=1e-5)
    assert call(port, "DELETE", "/models/h1")[0] == 200
    assert load(port, "h2", second, "pipe2.tar.gz")[0] == 200  # alone now
    neg = next(o for o in json.loads(call(port, "POST", "/models/h2/invoke", body)[2])["outputs"] if o["name"] == "NEG")
    np.testing.assert_allclose(neg["data"], -expected(second / "mlp" / "1" / "model.onnx", X).ravel(), rtol=1e-5)


def test_with_namespacing_archives_whose_ensembles_run_models_of_one_name_each_run_their_own(tmp_path: Path) -> None:
    """Triton's SageMaker entrypoint passes --model-namespacing=true: each archive's ensemble runs its own model of
    a name another archive holds too, as tritonserver's namespacing resolves a step in its own repository first."""
    (tmp_path / "empty").mkdir()
    st = start(
        Store.at(tmp_path / "home"), models=[], allow_model_control=True, repository_only=True,
        model_repositories=[tmp_path / "empty"], sagemaker_port=0, sagemaker=SageMakerSettings(),
        folder_rules=FolderRules(namespacing=True),
    )  # fmt: skip
    port = st.server.platform_ports["SageMaker"]
    try:
        first = pipeline_repository(tmp_path / "opt" / "h1" / "model")
        second = pipeline_repository(tmp_path / "opt" / "h2" / "model")
        mlp_onnx(second / "mlp" / "1" / "model.onnx", sizes=(16, 32, 4), seed=9)  # its own mlp, which it must run
        assert load(port, "h1", first, "pipe1.tar.gz")[0] == 200
        assert load(port, "h2", second, "pipe2.tar.gz")[0] == 200
        tensor = {"name": "IN", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}
        body = json.dumps({"inputs": [tensor]})
        for hashed, repo in (("h1", first), ("h2", second)):
            answer = call(port, "POST", f"/models/{hashed}/invoke", body)[2]
            neg = next(o for o in json.loads(answer)["outputs"] if o["name"] == "NEG")
            np.testing.assert_allclose(neg["data"], -expected(repo / "mlp" / "1" / "model.onnx", X).ravel(), rtol=1e-5)
        assert call(port, "DELETE", "/models/h1")[0] == 200
        answer = call(port, "POST", "/models/h2/invoke", body)[2]
        neg = next(o for o in json.loads(answer)["outputs"] if o["name"] == "NEG")
        np.testing.assert_allclose(neg["data"], -expected(second / "mlp" / "1" / "model.onnx", X).ravel(), rtol=1e-5)
        assert call(port, "DELETE", "/models/h2")[0] == 200
        client = httpclient.InferenceServerClient(f"127.0.0.1:{st.server.http_port}")
        assert [m for m in client.get_model_repository_index() if m.get("state") == "READY"] == []
    finally:
        st.stop()


def test_a_target_model_in_an_s3_folder_or_of_any_length_serves_under_a_name_made_of_it(
    served: tuple[ServerThread, int], tmp_path: Path
) -> None:
    _, port = served
    for i, target in enumerate(("team/resnet/model.tar.gz", "m" * 300 + ".tar.gz")):
        assert load(port, f"h{i}", archive(tmp_path / "opt" / f"h{i}"), target)[0] == 200
        status, _, answer = call(port, "POST", f"/models/h{i}/invoke", BODY)
        assert status == 200 and json.loads(answer)["model_name"] == served_name(target)
        assert call(port, "DELETE", f"/models/h{i}")[0] == 200
    assert served_name("resnet.tar.gz") == "resnet.tar.gz"
    assert served_name("team/resnet/model.tar.gz").startswith("team_resnet_model.tar.gz-")
    assert served_name("a/b") != served_name("a_b") and served_name("../x").startswith("x-")
    assert all(len(served_name(t)) <= 128 for t in ("x" * 1024, "é" * 500, "/" * 10))


def test_a_model_loaded_before_a_restart_is_taken_back_by_its_unload_after(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    url = archive(tmp_path / "opt" / "h1")
    for unload in (False, True):  # the container stops with the model loaded, then starts again on the same home
        st = start(
            Store.at(tmp_path / "home"), models=[], allow_model_control=True, repository_only=True,
            model_repositories=[tmp_path / "empty"], sagemaker_port=0, sagemaker=SageMakerSettings(),
        )  # fmt: skip
        try:
            port = st.server.platform_ports["SageMaker"]
            assert load(port, "h1", url, "add.tar.gz")[0] == 200
            if unload:
                assert call(port, "DELETE", "/models/h1")[0] == 200
                assert st.server.plane.store.models.list() == []
        finally:
            st.stop()
