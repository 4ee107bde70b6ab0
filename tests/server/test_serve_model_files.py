"""Triton's model file overrides on a repository load (``load_model(name, config=..., files=...)``): the
file is registered in the store as a version of the model and served with the load's config; a load
that fails for any reason leaves the store and the served models as they were."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Raw
from servekit import batch_of_scalars, caught_logs, mlp_ones, start
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx
from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

Client = Any  # tritonclient.http or tritonclient.grpc InferenceServerClient


def _config(name: str, **extra: Any) -> str:
    """A config as a Triton user writes one for an ONNX MLP 16 -> 4 with a batch dimension."""
    return json.dumps(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4], **extra}],
        }
    )


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("uploads")
    return {f"seed{seed}": mlp_onnx(work / f"seed{seed}.onnx", seed=seed).read_bytes() for seed in (1, 2, 3, 4)}


@pytest.fixture(scope="module")
def server(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    store, _ = model_store
    st = start(store, models=["mlp"], allow_model_control=True)
    yield st
    st.stop()


def _expected(model: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "expected.onnx"
    path.write_bytes(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ones((2, 16), np.float32)})[0]


def _clients(server: ServerThread) -> dict[str, Client]:
    return {
        "http": httpclient.InferenceServerClient(server.http_url),
        "grpc": grpcclient.InferenceServerClient(server.grpc_url),
    }


def test_an_uploaded_batch_of_scalars_shows_as_triton_auto_completes_it(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """As from a repository: a config that lists no outputs gets Triton's auto-completed ones, a batch of
    scalars shown as dims [1] (reshaped to the model's []), so that clients get [batch, 1] as from Triton."""
    store, _ = model_store
    client = httpclient.InferenceServerClient(server.http_url)
    model = batch_of_scalars(tmp_path / "scalars.onnx").read_bytes()
    config = {"max_batch_size": 8, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}]}
    client.load_model("scal", config=json.dumps(config), files={"file:1/model.onnx": model})
    try:
        outputs = client.get_model_metadata("scal")["outputs"]
        assert [(o["name"], o["shape"]) for o in outputs] == [("y", [-1, 1]), ("z", [-1, 2])]
        x = httpclient.InferInput("x", [2, 1], "FP32")
        x.set_data_from_numpy(np.array([[1.0], [4.0]], np.float32))
        np.testing.assert_array_equal(client.infer("scal", [x]).as_numpy("y"), np.array([[2.0], [8.0]], np.float32))
    finally:
        client.unload_model("scal")
        store.remove("scal")


def test_an_uploaded_models_version_policy_reads_its_version_directory(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes]
) -> None:
    """As Triton reads a load's files as a model folder: the config's version_policy picks among its version
    directories (here one)."""
    store, _ = model_store
    client = httpclient.InferenceServerClient(server.http_url)
    files = {"file:1/model.onnx": uploads["seed1"]}
    config = json.loads(_config("pol"))
    with pytest.raises(InferenceServerException, match=r"asks for versions \[2\], but the model's versions are \[1\]"):
        client.load_model("pol", config=json.dumps({**config, "version_policy": {"specific": {"versions": [2]}}}), files=files)
    assert not store.models.list("pol")  # nothing registered
    client.load_model("pol", config=json.dumps({**config, "version_policy": {"all": {}}}), files=files)
    try:
        assert client.is_model_ready("pol", "1") and client.infer("pol", [mlp_ones(2)]).as_numpy("y").shape == (2, 4)
    finally:
        client.unload_model("pol")
        store.remove("pol")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_uploaded_model_is_registered_and_served_with_its_config(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes],
    transport: str, tmp_path: Path,
) -> None:  # fmt: skip
    store, _ = model_store
    name = f"fresh-{transport}"
    client = _clients(server)[transport]
    model = uploads["seed1"] if transport == "http" else uploads["seed2"]
    filename = "model.onnx" if transport == "http" else "model"
    client.load_model(name, config=_config(name), files={f"file:1/{filename}": model})
    try:
        record = store.get(name)
        assert record.version == 1 and record.format == "onnx" and record.source_filename == filename
        answer = client.infer(name, [mlp_ones(2, grpcclient if transport == "grpc" else httpclient)])
        np.testing.assert_allclose(answer.as_numpy("y"), _expected(model, tmp_path), rtol=1e-5, atol=1e-6)
        config = client.get_model_config(name, as_json=True)["config"] if transport == "grpc" else client.get_model_config(name)
        assert int(config.get("max_batch_size", config.get("maxBatchSize", 0))) == 8 and config["name"] == name
        # the same files again: the same version, not a new one
        client.load_model(name, config=_config(name), files={f"file:1/{filename}": model})
        assert [r.version for r in store.models.list() if r.name == name] == [1]
    finally:
        client.unload_model(name)
        store.remove(name)


def test_a_loads_files_serve_as_the_version_their_directory_names_as_tritons_do(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Triton serves a load's files as a model folder: file:1/model.onnx is version 1 whatever was there, and
    file:5/model.onnx version 5. polystack numbered them as the store's next version (new bytes at file:1
    became version 2, and a client asking for version 1 got the old bytes or a 404). Bytes replaced leave the
    store once the load serves; a version `polystack register` made is refused, saying how to go on."""
    store, records = model_store
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("mlp2", config=_config("mlp2"), files={"file:1/model.onnx": uploads["seed3"]})
    try:
        for _ in range(2):
            client.infer("mlp2", [mlp_ones(2)])
        with caught_logs("polystack.server", logging.INFO) as logs:
            client.load_model("mlp2", config=_config("mlp2"), files={"file:1/model.onnx": uploads["seed4"]})
        registered = [r for r in logs if r.getMessage() == "model registered from a load's files"]
        assert [(r.model, r.version, r.new_version) for r in registered] == [("mlp2", 1, True)]  # type: ignore[attr-defined]
        assert [r.version for r in store.models.list() if r.name == "mlp2"] == [1]
        assert [r.digest for r in store.models.list() if r.name == "mlp2"] != [records["mlp"].digest]
        answer = client.infer("mlp2", [mlp_ones(2)], model_version="1").as_numpy("y")
        np.testing.assert_allclose(answer, _expected(uploads["seed4"], tmp_path), rtol=1e-5, atol=1e-6)
        # other bytes are another model: its statistics start again (the same config updates none in place)
        [stats] = client.get_inference_statistics("mlp2", "1")["model_stats"]
        assert stats["inference_count"] == 2, stats
        # a path with a leading slash is in the model's folder all the same: Triton joins it to its folder, and its
        # QA test (L0_backend_python_pytest model_control, helper-188) loads its models so; polystack refused it
        client.load_model("mlp2", config=_config("mlp2"), files={"file:/5/model.onnx": uploads["seed3"]})
        answer = client.infer("mlp2", [mlp_ones(2)], model_version="5").as_numpy("y")
        np.testing.assert_allclose(answer, _expected(uploads["seed3"], tmp_path), rtol=1e-5, atol=1e-6)
        # Triton's default version policy, the latest one: the version before is no longer served
        assert client.get_model_metadata("mlp2")["versions"] == ["5"] and not client.is_model_ready("mlp2", "1")
        assert [r.version for r in store.models.list() if r.name == "mlp2"] == [1, 5]
        # a version registered another way is not a load's to replace
        with pytest.raises(InferenceServerException, match=r"mlp:1 is already in the store with other bytes") as e:
            client.load_model("mlp", config=_config("mlp"), files={"file:1/model.onnx": uploads["seed4"]})
        assert e.value.status() == "400"  # a load that fails, as Triton answers them all (was 409)
        # the index says why of a name it lists that is not served, as for any failed load
        with pytest.raises(InferenceServerException, match=r"slow:1 is already in the store with other bytes"):
            client.load_model("slow", config=_config("slow"), files={"file:1/model.onnx": uploads["seed4"]})
        [slow] = [m for m in client.get_model_repository_index() if m["name"] == "slow"]
        assert slow["state"] == "UNAVAILABLE" and "already in the store" in slow["reason"], slow
        assert store.get("mlp:1").digest == records["mlp"].digest
    finally:
        client.unload_model("mlp2")
        store.remove("mlp2")


@pytest.mark.parametrize(
    ("model", "label"),
    [
        ("1/labels", "classes.txt"),  # a model file may have any name, even that of a folder the import uses
        ("1/model.onnx", "labels/en.txt"),  # in a folder, as a repository's may be (such loads were refused)
    ],
)
def test_label_files_named_by_the_config_label_the_outputs(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes],
    model: str, label: str,
) -> None:  # fmt: skip
    store, _ = model_store
    client = httpclient.InferenceServerClient(server.http_url)
    files = {f"file:{model}": uploads["seed1"], f"file:{label}": b"cat\ndog\nemu\nfox\n"}
    client.load_model("labelled", config=_config("labelled", label_filename=label), files=files)
    try:
        assert client.get_model_config("labelled")["output"][0]["label_filename"] == label
        assert _labels_answered(client, "labelled") == ["cat", "dog", "emu", "fox"]
    finally:
        client.unload_model("labelled")
        store.remove("labelled")
        client.close()


def test_a_failed_load_leaves_the_labels_of_the_same_bytes_as_they_were(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes]
) -> None:
    """The same bytes again are the version that holds them, whose labels the load's replace; a load that
    then fails puts the labels back."""
    store, _ = model_store
    client = httpclient.InferenceServerClient(server.http_url)
    config = _config("relabel", label_filename="classes.txt")
    model = {"file:1/model.onnx": uploads["seed2"]}
    client.load_model("relabel", config=config, files={**model, "file:classes.txt": b"a\nb\nc\nd\n"})
    try:
        wide = json.dumps({**json.loads(config), "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [17]}]})
        with pytest.raises(InferenceServerException, match="dims"):
            client.load_model("relabel", config=wide, files={**model, "file:classes.txt": b"W\nX\nY\nZ\n"})
        assert store.get("relabel").settings["labels"] == {"y": ["a", "b", "c", "d"]}
        client.load_model("relabel")
        assert _labels_answered(client, "relabel") == ["a", "b", "c", "d"]
    finally:
        client.unload_model("relabel")
        store.remove("relabel")


def _labels_answered(client: httpclient.InferenceServerClient, name: str) -> list[str]:
    """The labels of all four classes of one item, as classification answers them ("score:index:label")."""
    out = httpclient.InferRequestedOutput("y", class_count=4)
    answer = client.infer(name, [mlp_ones(1)], outputs=[out]).as_numpy("y")
    return sorted(item.decode().split(":")[2] for item in answer[0])


REFUSED = [
    ("no-config", None, {"file:1/model.onnx": "seed1"}, "config"),
    ("two-models", "ok", {"file:1/model.onnx": "seed1", "file:2/model.onnx": "seed2"}, "one model file"),
    ("no-model", "ok", {"file:classes.txt": b"a\n"}, "one model file"),
    ("no-version", "ok", {"file:model.onnx": "seed1"}, "version"),
    ("version-zero", "ok", {"file:0/model.onnx": "seed1"}, "version"),
    ("deeper", "ok", {"file:1/sub/model.onnx": "seed1"}, "file:1/sub/model.onnx"),
    ("dot-dot", "ok", {"file:../model.onnx": "seed1"}, "file:../model.onnx"),
    ("slash-dot-dot", "ok", {"file://../model.onnx": "seed1"}, "file://../model.onnx"),
    ("garbage", "ok", {"file:1/model.onnx": b"not a model at all"}, "file:1/model.onnx"),
    ("empty", "ok", {"file:1/model.onnx": b""}, "file:1/model.onnx"),
    ("pickle", "ok", {"file:1/model.pkl": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."}, "pickle"),
    ("stray-file", "ok", {"file:1/model.onnx": "seed1", "file:notes.txt": b"x"}, "notes.txt"),
    ("file-and-folder", "ok", {"file:1/model.onnx": "seed1", "file:x": b"a", "file:x/y.txt": b"b"}, "as a file and as a folder"),
    ("label-missing", "labels", {"file:1/model.onnx": "seed1"}, "classes.txt"),
    ("config-refused", "sequence", {"file:1/model.onnx": "seed1"}, "sequence_batching"),
    ("signature-differs", "wide", {"file:1/model.onnx": "seed1"}, "dims"),
]


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(("case", "config", "files", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_load_whose_files_cannot_be_served_is_refused_and_changes_nothing(
    server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes],
    transport: str, case: str, config: str | None, files: dict[str, Any], says: str,
) -> None:  # fmt: skip
    store, _ = model_store
    configs = {
        "ok": _config("up"),
        "labels": _config("up", label_filename="classes.txt"),
        "sequence": json.dumps({**json.loads(_config("up")), "sequence_batching": {"control_input": [
            {"name": "START", "control": [{"int32_false_true": [0, 1]}]}]}}),  # the model has no input START
        "wide": json.dumps({**json.loads(_config("up")), "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [32]}]}),
    }  # fmt: skip
    before = [(r.name, r.version) for r in store.models.list()]
    client = _clients(server)[transport]
    content = {k: (uploads[v] if isinstance(v, str) else v) for k, v in files.items()}
    with pytest.raises(InferenceServerException) as err:
        client.load_model("up", config=configs[config] if config else None, files=content)
    assert says in str(err.value), str(err.value)
    # files without their config fail Triton's poll: INTERNAL, as tritonserver 2.51 answers it (helper-107, -108); so do
    # those outside the model's folder, in its words, which Triton's L0_lifecycle test_file_override_security reads
    # (helper-163)
    polled = case in ("no-config", "dot-dot", "slash-dot-dot")
    if case != "no-config":
        assert ("failed to load 'up', failed to poll from model repository" in str(err.value)) is polled
    want = ("500" if polled else "400") if transport == "http" else ("StatusCode.INTERNAL" if polled else "StatusCode.INVALID_ARGUMENT")
    assert err.value.status() == want
    assert [(r.name, r.version) for r in store.models.list()] == before  # nothing registered, nothing lost
    assert not client.is_model_ready("up")
    # nor listed by the index: no load could serve the name (each such load was kept and listed, without end)
    index = client.get_model_repository_index()
    names = {m["name"] for m in index} if transport == "http" else {m.name for m in index.models}
    assert "up" not in names
    assert client.infer("mlp", [mlp_ones(1, grpcclient if transport == "grpc" else httpclient)]).as_numpy("y").shape == (1, 4)


def test_file_contents_must_be_base64_over_http(server: ServerThread) -> None:
    raw = Raw(server.http_port)
    body = {"parameters": {"config": _config("up"), "file:1/model.onnx": "%%% not base64 %%%"}}
    status, doc = raw.json("POST", "/v2/repository/models/up/load", body)
    assert status == 400 and "base64" in doc["error"]
    status, doc = raw.json("POST", "/v2/repository/models/up/load", {"parameters": {"config": _config("up"), "file:1/model.onnx": 5}})
    assert status == 400 and "base64" in doc["error"]


def test_files_need_model_control(model_store: tuple[Store, dict[str, ModelRecord]], uploads: dict[str, bytes]) -> None:
    store, _ = model_store
    st = start(store, models=["mlp"])
    try:
        with pytest.raises(InferenceServerException, match="allow-model-control"):
            httpclient.InferenceServerClient(st.http_url).load_model(
                "up", config=_config("up"), files={"file:1/model.onnx": uploads["seed1"]}
            )
    finally:
        st.stop()
