"""repository_agents on its own: Triton's checksum agent run on a model's files, in that agent's words."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from polystack.errors import InvalidRequest
from polystack.server import repository_agents


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"model bytes" * 1000)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    return tmp_path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _agents(**parameters: Any) -> dict[str, Any]:
    return {"agents": [{"name": "checksum", "parameters": parameters}]}


def test_the_checksum_agent_passes_files_that_match_and_names_the_one_that_does_not(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    good = {"MD5:1/model.onnx": _md5(folder / "1" / "model.onnx"), "md5:labels.txt": _md5(folder / "labels.txt")}
    repository_agents.verify({"agents": [{"name": "checksum", "parameters": good}]}, repository_agents.in_folder(folder))
    repository_agents.verify(None, repository_agents.in_folder(folder))  # none named: nothing to run
    wrong = "0" * 32
    with pytest.raises(InvalidRequest) as e:
        repository_agents.verify(_agents(**{**good, "MD5:1/model.onnx": wrong}), repository_agents.in_folder(folder))
    assert e.value.message.startswith(
        f"Mismatched MD5 hash for file 1/model.onnx, expect: {wrong}, got: {good['MD5:1/model.onnx']}; "
    )
    upper = good["MD5:1/model.onnx"].upper()  # the agent compares the hex strings as they are
    with pytest.raises(InvalidRequest, match="Mismatched MD5 hash"):
        repository_agents.verify(_agents(**{"MD5:1/model.onnx": upper}), repository_agents.in_folder(folder))


@pytest.mark.parametrize(
    ("agents", "says"),
    [
        (_agents(**{"1/model.onnx": "x"}), "failed to parse key: '1/model.onnx'"),
        (_agents(**{"SHA256:1/model.onnx": "x"}), "Unsupported checksum algorithm: 'SHA256'"),
        (_agents(**{"MD5:2/model.onnx": "x"}), "failed to open text file for read 2/model.onnx: No such file"),
        (_agents(**{"MD5:1": "x"}), "failed to open text file for read 1: it is a folder"),
        (_agents(**{"MD5:1/model.onnx\x00": "x"}), "must name a file in the model's folder"),
        (_agents(**{"MD5:../secret": "x"}), "must name a file in the model's folder"),
        (_agents(**{"MD5:/etc/passwd": "x"}), "must name a file in the model's folder"),
        (_agents(**{"MD5:1/model.onnx": 5}), "must be a string"),
        ({"agents": [{"name": "relocation", "parameters": {}}]}, "names repository agent 'relocation', which polystack does not run"),
        ({"agents": [{"name": "checksum", "params": {}}]}, "must be a message of 'name' and 'parameters'"),
        ({"agent": []}, "must be a message holding 'agents'"),
        ({"agents": {"name": "checksum"}}, "must be a list"),
        ({"agents": 0}, "must be a list"),
        ({"agents": ""}, "must be a list"),
        ({"agents": [{"name": "checksum", "parameters": 0}]}, "parameters must map"),
        ({"agents": [{"name": "checksum", "parameters": ""}]}, "parameters must map"),
        ({"agents": [{"parameters": {}}]}, "names no repository agent"),
    ],
    ids=[
        "no-algorithm", "sha256", "missing", "folder", "nul", "outside", "absolute", "not-text", "other-agent", "typo",
        "no-agents", "not-a-list", "agents-0", "agents-empty", "parameters-0", "parameters-empty", "no-name",
    ],
)
def test_an_agent_polystack_cannot_run_as_given_is_refused_saying_why(tmp_path: Path, agents: Any, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        repository_agents.verify(agents, repository_agents.in_folder(_folder(tmp_path)))


def test_split_takes_the_agents_out_of_the_config_in_either_spelling() -> None:
    agents = _agents(**{"MD5:1/model.onnx": "x"})
    assert repository_agents.split({"max_batch_size": 8, "modelRepositoryAgents": agents}) == (agents, {"max_batch_size": 8})
    assert repository_agents.split({"max_batch_size": 8}) == (None, {"max_batch_size": 8})
    with pytest.raises(InvalidRequest, match="twice"):
        repository_agents.split({"model_repository_agents": agents, "modelRepositoryAgents": agents})


def test_only_regular_files_are_read_and_each_once_however_many_keys_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO or a device (a link to /dev/zero) would hold the loader forever: refused at once. Aliases of one
    file (1/./model.onnx, a link to it, md5: and MD5:) hash it once, so a config cannot multiply the work."""
    import os

    folder = _folder(tmp_path)
    os.mkfifo(folder / "fifo")
    (folder / "zero").symlink_to("/dev/zero")
    (folder / "same").symlink_to(folder / "1" / "model.onnx")
    for name in ("fifo", "zero"):
        with pytest.raises(InvalidRequest, match=f"failed to open text file for read {name}: it is not a regular file"):
            repository_agents.verify(_agents(**{f"MD5:{name}": "x"}), repository_agents.in_folder(folder))
    calls = []
    real = repository_agents.md5_of
    monkeypatch.setattr(repository_agents, "md5_of", lambda chunks: calls.append(1) or real(chunks))
    md5 = _md5(folder / "1" / "model.onnx")
    aliases = {"MD5:1/model.onnx": md5, "md5:1/./model.onnx": md5, "MD5:1//model.onnx": md5, "MD5:same": md5}
    repository_agents.verify(_agents(**aliases), repository_agents.in_folder(folder))
    assert len(calls) == 1
    files = repository_agents.of_files({"1/model.onnx": b"abc"})
    abc = hashlib.md5(b"abc").hexdigest()
    repository_agents.verify(_agents(**{"MD5:1/model.onnx": abc, "md5:1/./model.onnx": abc}), files)
    assert len(calls) == 2
