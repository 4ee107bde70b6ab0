"""Triton's model namespacing (``serve --model-namespacing true``, ``model_repository.namespace_of``): a model
folder two repositories hold serves from each, the ensembles of each repository run its own copy, and a request
naming the model alone is refused as ambiguous (helper-221, helper-237: Triton's L0_model_namespacing, and
tritonserver 2.51 probed). A real server process, the real tritonclient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start, single_op, until
from tritonclient.utils import InferenceServerException

from polystack.server import model_repository

X = np.array([[-2.0, -1.0, 0.5, 3.0]], np.float32)
AMBIGUOUS = "There are 2 identifiers of model 'f' in global map, model namespace must be provided to resolve ambiguity."
_MODEL = (
    'max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
)
_ENSEMBLE = (
    'platform: "ensemble"\n' + _MODEL + 'ensemble_scheduling { step [ { model_name: "f" model_version: -1 '
    'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }\n'
)


def _model(repo: Path, name: str, op: str) -> Path:
    """Model ``name`` in ``repo``: y = op(x), x and y FP32 [batch, 4]."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(_MODEL)
    single_op(repo / name / "1" / "model.onnx", op, 1, 4, "x", [("y", op)])  # 1: FLOAT
    return repo / name


def _ensemble(repo: Path, name: str) -> None:
    """Ensemble ``name`` in ``repo``, running model ``f``."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(_ENSEMBLE)


def _repositories(tmp_path: Path) -> tuple[Path, Path]:
    """Two repositories, each with its own ``f`` (a: -x, b: |x|), an ensemble of its own running ``f``, and an
    ensemble ``pipe`` both hold."""
    a, b = tmp_path / "a", tmp_path / "b"
    _model(a, "f", "Neg")
    _model(b, "f", "Abs")
    _ensemble(a, "e_a")
    _ensemble(b, "e_b")
    _ensemble(a, "pipe")
    _ensemble(b, "pipe")
    return a, b


def _y(client: httpclient.InferenceServerClient, model: str) -> np.ndarray:
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    return np.asarray(client.infer(model, [x]).as_numpy("y"))


def test_a_model_two_repositories_hold_serves_from_each_and_their_ensembles_run_their_own(tmp_path: Path) -> None:
    a, b = _repositories(tmp_path)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(a), "--model-repository", str(b), "--model-namespacing", "true",
            "--grpc-port", str(grpc_port)]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        index = {(m["name"], m.get("state")) for m in client.get_model_repository_index()}
        assert index == {(n, "READY") for n in ("f@a", "f@b", "e_a", "e_b", "pipe@a", "pipe@b")}, index
        np.testing.assert_array_equal(_y(client, "e_a"), -X)  # each ensemble runs its repository's f
        np.testing.assert_array_equal(_y(client, "e_b"), np.abs(X))
        np.testing.assert_array_equal(_y(client, "pipe@a"), -X)  # an ensemble both hold: each its own
        np.testing.assert_array_equal(_y(client, "pipe@b"), np.abs(X))
        np.testing.assert_array_equal(_y(client, "f@b"), np.abs(X))  # a copy by its name
        for name in ("f", "pipe"):  # the name alone: ambiguous, in Triton's words, then the names of the copies
            with pytest.raises(InferenceServerException) as e:
                _y(client, name)
            assert e.value.status() == "400", e.value
            words = AMBIGUOUS.replace("'f'", repr(name))
            assert e.value.message() == f"{words}; each repository's copy serves under its own name: {name}@a, {name}@b"
        with pytest.raises(InferenceServerException, match="must be provided to resolve ambiguity"):
            client.get_model_metadata("f")
        with pytest.raises(InferenceServerException, match="must be provided to resolve ambiguity"):
            client.get_model_config("pipe")
        assert not client.is_model_ready("f") and client.is_model_ready("f@a")
        step = client.get_model_config("e_a")["ensemble_scheduling"]["step"][0]
        assert step["model_name"] == "f"  # as its config names it
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as g:
            x = grpcclient.InferInput("x", list(X.shape), "FP32")
            x.set_data_from_numpy(X)
            with pytest.raises(InferenceServerException, match="must be provided to resolve ambiguity") as e:
                g.infer("f", [x])
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
            np.testing.assert_array_equal(g.infer("f@a", [x]).as_numpy("y"), -X)
        client.close()


def test_an_explicit_load_or_unload_of_a_name_two_repositories_hold_loads_or_unloads_each_copy(tmp_path: Path) -> None:
    a, b = _repositories(tmp_path)
    _ensemble(tmp_path / "c", "e_c")  # a repository of its own without f: which f it would run is ambiguous
    port = free_port()
    args = ["--model-repository", str(a), "--model-repository", str(b), "--model-repository", str(tmp_path / "c"),
            "--model-namespacing=1", "--model-control-mode", "explicit", "--load-model", "e_a",
            "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("e_a") and client.is_model_ready("f@a") and not client.is_model_ready("f@b")
        np.testing.assert_array_equal(_y(client, "e_a"), -X)
        client.load_model("f")  # each copy
        assert client.is_model_ready("f@a") and client.is_model_ready("f@b")
        client.load_model("e_b")
        np.testing.assert_array_equal(_y(client, "e_b"), np.abs(X))
        client.unload_model("f")  # each copy, and the ensembles that ran them
        assert not any(client.is_model_ready(m) for m in ("f@a", "f@b", "e_a", "e_b"))
        client.load_model("f")
        with pytest.raises(InferenceServerException, match="ensemble e_c contains models that are not available or ambig"):
            client.load_model("e_c")  # Triton's words
        client.load_model("pipe")  # both ensembles of that name, each with its repository's f
        np.testing.assert_array_equal(_y(client, "pipe@a"), -X)
        np.testing.assert_array_equal(_y(client, "pipe@b"), np.abs(X))
        client.close()


def test_a_polled_ensemble_runs_its_own_repositorys_copy_once_it_comes_and_the_other_once_it_goes(
    tmp_path: Path,
) -> None:
    """Triton's test_dynamic_resolution: an ensemble whose repository has no ``f`` runs the one another holds."""
    a, b = _repositories(tmp_path)
    aside = tmp_path / "aside"
    shutil.move(a / "f", aside)
    port = free_port()
    args = ["--model-repository", str(a), "--model-repository", str(b), "--model-namespacing", "true",
            "--repository-poll-secs", "0.2", "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_array_equal(_y(client, "e_a"), np.abs(X))  # b's f, the only one
        np.testing.assert_array_equal(_y(client, "f"), np.abs(X))  # one repository holds it: its name alone
        shutil.move(aside, a / "f")
        assert until(lambda: client.is_model_ready("f@a") and client.is_model_ready("e_a"))
        np.testing.assert_array_equal(_y(client, "e_a"), -X)
        np.testing.assert_array_equal(_y(client, "e_b"), np.abs(X))
        with pytest.raises(InferenceServerException, match="must be provided to resolve ambiguity"):
            _y(client, "f")
        shutil.rmtree(a / "f")
        assert until(lambda: client.is_model_ready("f") and client.is_model_ready("e_a"))
        np.testing.assert_array_equal(_y(client, "e_a"), np.abs(X))
        assert not client.is_model_ready("f@a")
        client.close()


def test_without_namespacing_a_folder_two_repositories_hold_still_fails_the_start(tmp_path: Path) -> None:
    a, b = _repositories(tmp_path)
    for flag in ([], ["--model-namespacing", "false"]):
        line = refused_at_start(tmp_path, ["--model-repository", str(a), "--model-repository", str(b), *flag])
        assert "model appears in two or more repositories: 'f' is in" in line, line
    line = refused_at_start(tmp_path, ["--model-repository", str(a), "--model-namespacing", "sometimes"])
    assert line == "error: --model-namespacing takes 1 or 0 (true or false), not 'sometimes'"


def test_a_repository_is_named_by_its_folder_with_as_many_parents_as_tell_it_from_the_others() -> None:
    roots = [Path("/srv/a/models"), Path("/srv/b/models"), Path("/srv/extra")]
    assert [model_repository.namespace_of(r, roots) for r in roots] == ["a.models", "b.models", "extra"]
    # SageMaker's archives: /opt/ml/models/<hash>/model
    roots = [Path("/opt/ml/models/1f2e/model"), Path("/opt/ml/models/9ab0/model")]
    assert model_repository.namespace_of(roots[1], roots) == "9ab0.model"
    odd = Path("/srv/my models")  # white space is not a model name's: a digest of its path
    named = model_repository.namespace_of(odd, [odd])
    assert len(named) == 12 and named == model_repository.namespace_of(odd, [odd, Path("/elsewhere")])


def test_a_model_served_by_its_name_gives_way_to_its_copies_at_its_load_and_back_once_one_holds_it(
    tmp_path: Path,
) -> None:
    """helper-240: in explicit mode, a model served by its name before a second repository held it too serves on
    by that name until a load of it (an unrelated load refused it); that load serves the copies and its ensembles
    ran none of them again (they stayed unloaded); and once one repository holds it again, a load of the name
    serves it by its name in place of the copies, and an unload of the name unloaded the name alone."""
    a, b = tmp_path / "a", tmp_path / "b"
    _model(a, "f", "Neg")
    _model(a, "g", "Abs")
    _ensemble(a, "e_a")
    _ensemble(b, "e_b")  # b has no f: it runs a's
    port = free_port()
    args = ["--model-repository", str(a), "--model-repository", str(b), "--model-namespacing", "true",
            "--model-control-mode", "explicit", "--load-model", "e_a", "--load-model", "e_b",
            "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_array_equal(_y(client, "e_b"), -X)
        _model(b, "f", "Abs")  # a second repository holds f now
        client.load_model("g")  # another model's load: f serves on by its name, as in Triton
        np.testing.assert_array_equal(_y(client, "f"), -X)
        client.load_model("f")  # each copy, each ensemble running its repository's
        assert not client.is_model_ready("f") and client.is_model_ready("f@a") and client.is_model_ready("f@b")
        np.testing.assert_array_equal(_y(client, "e_a"), -X)
        np.testing.assert_array_equal(_y(client, "e_b"), np.abs(X))
        with pytest.raises(InferenceServerException, match="must be provided to resolve ambiguity"):
            _y(client, "f")
        shutil.rmtree(b / "f")  # one repository holds it again
        client.load_model("f")
        assert client.is_model_ready("f") and not client.is_model_ready("f@a") and not client.is_model_ready("f@b")
        np.testing.assert_array_equal(_y(client, "e_b"), -X)
        np.testing.assert_array_equal(_y(client, "f"), -X)
        _model(b, "f", "Abs")
        client.load_model("f")
        client.unload_model("f")  # every copy, and the name
        assert not any(client.is_model_ready(m) for m in ("f", "f@a", "f@b", "e_a", "e_b"))
        client.close()


def test_a_load_of_a_name_loads_every_copy_it_can_and_names_each_that_failed(tmp_path: Path) -> None:
    a, b = _repositories(tmp_path)
    (a / "f" / "config.pbtxt").write_text(_MODEL.replace('name: "x"', 'name: "nope"'))  # a's copy cannot load
    port = free_port()
    args = ["--model-repository", str(a), "--model-repository", str(b), "--model-namespacing", "true",
            "--model-control-mode", "explicit", "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException, match="'f@a'") as e:
            client.load_model("f")
        assert e.value.status() == "400", e.value
        assert client.is_model_ready("f@b") and not client.is_model_ready("f@a")  # b's loaded all the same
        with pytest.raises(InferenceServerException, match="must be provided to resolve ambiguity"):
            _y(client, "f")  # the copy that failed counts, as in Triton's model map
        client.close()


def test_a_repository_whose_folder_name_holds_the_mark_names_its_copies_all_the_same(tmp_path: Path) -> None:
    """helper-240: a copy in repository ``v1@2`` (``f@v1@2``) could not be loaded again: its name was split at
    its last '@'."""
    a, b = tmp_path / "v1@2", tmp_path / "b"
    _model(a, "f", "Neg")
    _model(b, "f", "Abs")
    port = free_port()
    args = ["--model-repository", str(a), "--model-repository", str(b), "--model-namespacing", "true",
            "--model-control-mode", "explicit", "--load-model", "f", "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_array_equal(_y(client, "f@v1@2"), -X)
        client.load_model("f@v1@2")
        client.load_model("f")
        np.testing.assert_array_equal(_y(client, "f@v1@2"), -X)
        np.testing.assert_array_equal(_y(client, "f@b"), np.abs(X))
        client.close()


_NAMES_MODEL = '''
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.names = [args["model_name"], config["name"], args["model_instance_name"]]

    def execute(self, requests):
        out = pb_utils.Tensor("names", np.array(self.names, dtype=object))
        return [pb_utils.InferenceResponse([out]) for _ in requests]
'''


def test_a_python_models_copy_is_handed_its_own_name_as_triton_hands_it(tmp_path: Path) -> None:
    for repo in (tmp_path / "a", tmp_path / "b"):
        (repo / "p" / "1").mkdir(parents=True)
        (repo / "p" / "1" / "model.py").write_text(_NAMES_MODEL)
        (repo / "p" / "config.pbtxt").write_text(
            'backend: "python"\noutput [ { name: "names", data_type: TYPE_STRING, dims: [ 3 ] } ]\n'
        )
    port = free_port()
    args = ["--model-repository", str(tmp_path / "a"), "--model-repository", str(tmp_path / "b"),
            "--model-namespacing", "true", "--allow-python-models", "--model-control-mode", "explicit",
            "--load-model", "*", "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for copy in ("p@a", "p@b"):  # the model's name, config and instance as Triton's are: the folder's, p
            names = client.infer(copy, []).as_numpy("names")
            assert [n.decode() for n in names] == ["p", "p", "p_0"]
        client.load_model("p@a", config=json.dumps(client.get_model_config("p@a")))  # its config as GET gives it
        assert [n.decode() for n in client.infer("p@a", []).as_numpy("names")] == ["p", "p", "p_0"]
