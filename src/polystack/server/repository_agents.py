"""Triton's model repository agents, as a model's config names them (``model_repository_agents``), run on the
model's files before they are registered and loaded, as Triton runs them on every load.

polystack runs the one agent Triton ships for integrity, the checksum agent (``checksum_repository_agent``):
each of its parameters ``MD5:<path in the model's folder>`` gives the MD5 of that file (lowercase hex), and a
file that does not match (or is not there) fails the load in that agent's words, before the store changes.
Other agents (relocation, decryption, ...) are refused by name, since polystack cannot do what they would
do. A repository folder's config.pbtxt runs them on the folder (``model_repository``); a load that carries
the model's files runs them on those (``model_files``). Written by hand: it is a loop over hashlib.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

from polystack.errors import InvalidRequest, quote

KEYS = ("model_repository_agents", "modelRepositoryAgents")  # the config field, in protobuf JSON's two spellings
_AGENT = "checksum"
_MAX_AGENTS = 64
_MAX_FILES = 4096
_CHUNK = 1 << 20


def split(doc: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A config ``doc`` (JSON object) split into its ``model_repository_agents`` (None: not given) and the rest,
    which the server applies."""
    given = [k for k in KEYS if k in doc]
    if len(given) > 1:
        raise InvalidRequest("the config sets model_repository_agents twice")
    rest = {k: v for k, v in doc.items() if k not in KEYS}
    return (doc[given[0]] if given else None), rest


def verify(agents: Any, open_file: Callable[[str], IO[bytes]]) -> None:
    """Run the ``agents`` a config names (its ``model_repository_agents`` message) on a model's files, which
    ``open_file`` opens by their path in the model's folder (``1/model.onnx``; InvalidRequest, or OSError,
    when it cannot); InvalidRequest, saying which file and what to do, when one is not what they vouch for."""
    if agents is None:
        return
    if not isinstance(agents, dict) or set(agents) - {"agents"}:
        raise InvalidRequest("model_repository_agents must be a message holding 'agents', a list of agents")
    listed = agents.get("agents") or []
    if not isinstance(listed, list) or len(listed) > _MAX_AGENTS:
        raise InvalidRequest(f"model_repository_agents.agents must be a list of at most {_MAX_AGENTS} agents")
    for i, agent in enumerate(listed):
        where = f"model_repository_agents.agents[{i}]"
        if not isinstance(agent, dict) or set(agent) - {"name", "parameters"}:
            raise InvalidRequest(f"{where} must be a message of 'name' and 'parameters'")
        name = agent.get("name")
        if name != _AGENT:
            raise InvalidRequest(
                f"{where} names repository agent {quote(name)}, which polystack does not run; it runs Triton's "
                f"{_AGENT!r} agent only (MD5:<file> parameters): leave the agent out, or do its work before serving"
            )
        parameters = agent.get("parameters") or {}
        if not isinstance(parameters, dict) or len(parameters) > _MAX_FILES:
            raise InvalidRequest(f"{where}.parameters must map at most {_MAX_FILES} 'MD5:<file>' keys to hashes")
        for key, expected in parameters.items():
            _check(str(key), expected, open_file)


def _check(key: str, expected: Any, open_file: Callable[[str], IO[bytes]]) -> None:
    """One checksum parameter, in the checksum agent's words and order (ParseAlgorithmAndFile, ReadFile)."""
    algorithm, colon, relative = key.partition(":")
    if not colon:
        raise InvalidRequest(f"failed to parse key: {key}; name a file as MD5:<path in the model's folder>")
    if algorithm.lower() != "md5":
        raise InvalidRequest(
            f"Unsupported checksum algorithm: {algorithm}; the checksum agent checks MD5 (MD5:<path in the model's "
            "folder>)"
        )
    if not isinstance(expected, str):
        raise InvalidRequest(f"the checksum of {relative} must be a string (the file's MD5, in lowercase hex)")
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or ".." in path.parts or "\\" in relative:
        raise InvalidRequest(f"checksum key {quote(key)} must name a file in the model's folder (1/model.onnx, ...)")
    try:
        with open_file(relative) as f:
            digest = hashlib.md5(usedforsecurity=False)
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise InvalidRequest(
            f"failed to open text file for read {relative}: {e.strerror or e}; name a file of the model's folder"
        ) from None
    got = digest.hexdigest()
    if got != expected:
        raise InvalidRequest(
            f"Mismatched MD5 hash for file {relative}, expect: {expected}, got: {got}; the file is not the one the "
            "config vouches for: replace it, or give its MD5 (md5sum, lowercase hex)"
        )


def in_folder(folder: Path) -> Callable[[str], IO[bytes]]:
    """Opens a model folder's files by their path in it (the checksum agent reads model_dir/path)."""

    def open_file(relative: str) -> IO[bytes]:
        path = folder / relative
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        return path.open("rb")

    return open_file
