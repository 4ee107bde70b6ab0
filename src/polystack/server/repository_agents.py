"""Triton's model repository agents, as a model's config names them (``model_repository_agents``), run on the
model's files before they are registered and loaded, as Triton runs them on every load.

polystack runs the one agent Triton ships for integrity, the checksum agent (``checksum_repository_agent``):
each of its parameters ``MD5:<path in the model's folder>`` gives the MD5 of that file (lowercase hex), and a
file that does not match (or is not there) fails the load in that agent's words, before the store changes.
Other agents (relocation, decryption, ...) are refused by name, since polystack cannot do what they would
do. A repository folder's config.pbtxt runs them on the folder (``model_repository``); a load that carries
the model's files runs them on those (``model_files``). Written by hand: it is a loop over hashlib.

Paths are read as Triton's agent reads them, in the model's folder (links in it are followed, as a version
folder linked to shared storage needs), but a path that climbs out of the folder (``..``, absolute) is
refused, only regular files are read (a FIFO or a device would hold the loader forever), and each file is
hashed once per load, however many keys name it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from polystack.errors import InvalidRequest, quote

# where agents can run: a config given without the model's files (serve --model-config, a load by version) is refused
WHERE = (
    "repository agents run on a model's files: polystack runs Triton's checksum agent from a repository folder's "
    "config.pbtxt, or from a load's config that carries the model's files (load_model(..., files=...))"
)
KEYS = ("model_repository_agents", "modelRepositoryAgents")  # the config field, in protobuf JSON's two spellings
_AGENT = "checksum"
_MAX_AGENTS = 64
_MAX_FILES = 4096
_CHUNK = 1 << 20

# a model's files, by their path in its folder: the MD5 (hex) of one (OSError or InvalidRequest when it cannot
# be read)
Digest = Callable[[str], str]


def split(doc: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A config ``doc`` (JSON object) split into its ``model_repository_agents`` (None: not given) and the rest,
    which the server applies."""
    given = [k for k in KEYS if k in doc]
    if len(given) > 1:
        raise InvalidRequest("the config sets model_repository_agents twice")
    rest = {k: v for k, v in doc.items() if k not in KEYS}
    return (doc[given[0]] if given else None), rest


# a config's agents, read: (agent name, its parameters as (key, value), in the config's order), in order
Agents = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


def read(agents: Any) -> Agents:
    """The ``agents`` a config names (its ``model_repository_agents`` message; None: none), checked as far as
    can be without the model's files: InvalidRequest, saying what to do, for an agent polystack does not run
    or a parameter the checksum agent would refuse."""
    if agents is None:
        return ()
    if not isinstance(agents, dict) or set(agents) - {"agents"}:
        raise InvalidRequest("model_repository_agents must be a message holding 'agents', a list of agents")
    listed = agents.get("agents")
    listed = [] if listed is None else listed  # protobuf JSON's null: the default, none
    if not isinstance(listed, list):
        raise InvalidRequest("model_repository_agents.agents must be a list of agents ({name, parameters})")
    if len(listed) > _MAX_AGENTS:
        raise InvalidRequest(f"model_repository_agents.agents lists {len(listed)} agents; give at most {_MAX_AGENTS}")
    out = []
    for i, agent in enumerate(listed):
        where = f"model_repository_agents.agents[{i}]"
        if not isinstance(agent, dict) or set(agent) - {"name", "parameters"}:
            raise InvalidRequest(f"{where} must be a message of 'name' and 'parameters'")
        name = agent.get("name")
        if name != _AGENT:
            named = f"repository agent {quote(name)}" if isinstance(name, str) and name else "no repository agent"
            raise InvalidRequest(
                f"{where} names {named}, which polystack does not run; it runs Triton's {_AGENT!r} agent only "
                "(MD5:<file> parameters): name it, leave the agent out, or do its work before serving"
            )
        parameters = agent.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"{where}.parameters must map 'MD5:<file>' keys to the files' MD5s")
        if len(parameters) > _MAX_FILES:
            raise InvalidRequest(f"{where}.parameters names {len(parameters)} files; give at most {_MAX_FILES}")
        out.append((name, tuple((str(key), _checked(str(key), value)) for key, value in parameters.items())))
    return tuple(out)


def verify(agents: Any, digest: Digest) -> Agents:
    """Run the ``agents`` a config names (``read``) on a model's files, whose MD5s ``digest`` gives by their
    path in the model's folder (``1/model.onnx``); InvalidRequest, saying which file and what to do, when
    one is not what they vouch for. What ran, read."""
    ran = read(agents)
    for _, parameters in ran:
        for key, expected in parameters:
            _check(key, expected, digest)
    return ran


def render(agents: Agents) -> dict[str, Any]:
    """``agents`` as Triton's ``ModelRepositoryAgents`` message, as a config gives it and GET config shows it."""
    return {"agents": [{"name": name, "parameters": dict(parameters)} for name, parameters in agents]}


def _checked(key: str, expected: Any) -> str:
    """One checksum parameter's value, its key checked, in the checksum agent's words (ParseAlgorithmAndFile)."""
    algorithm, colon, relative = key.partition(":")
    if not colon:
        raise InvalidRequest(f"failed to parse key: {quote(key)}; name a file as MD5:<path in the model's folder>")
    if algorithm.lower() != "md5":
        raise InvalidRequest(
            f"Unsupported checksum algorithm: {quote(algorithm)}; the checksum agent checks MD5 (MD5:<path in the "
            "model's folder>)"
        )
    if not isinstance(expected, str):
        raise InvalidRequest(f"the checksum of {quote(relative)} must be a string (the file's MD5, in lowercase hex)")
    path = PurePosixPath(relative)
    if not relative.isprintable() or "\\" in relative or path.is_absolute() or ".." in path.parts or not path.parts:
        raise InvalidRequest(f"checksum key {quote(key)} must name a file in the model's folder (1/model.onnx, ...)")
    return expected


def _check(key: str, expected: str, digest: Digest) -> None:
    """One checksum parameter (``_checked``) against the file it names, in the checksum agent's words (ReadFile)."""
    relative = key.partition(":")[2]
    try:
        got = digest(str(PurePosixPath(relative)))  # normalised: 1/./model.onnx and 1//model.onnx are 1/model.onnx
    except OSError as e:
        raise InvalidRequest(
            f"failed to open text file for read {relative}: {e.strerror or e}; name a file of the model's folder"
        ) from None
    if got != expected:
        raise InvalidRequest(
            f"Mismatched MD5 hash for file {relative}, expect: {expected}, got: {got}; the file is not the one the "
            "config vouches for: replace it, or give its MD5 (md5sum, lowercase hex)"
        )


def md5_of(chunks: Iterable[bytes]) -> str:
    """The MD5 (lowercase hex) of the bytes ``chunks`` (an iterable of bytes) hold."""
    h = hashlib.md5(usedforsecurity=False)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def in_folder(folder: Path) -> Digest:
    """The MD5s of a model folder's regular files by their path in it (the checksum agent reads
    model_dir/path), each file read once however many paths (links, aliases) reach it."""
    seen: dict[str, str] = {}

    def digest(relative: str) -> str:
        real = os.path.realpath(folder / relative)
        if real in seen:
            return seen[real]
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, and is refused below
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                raise InvalidRequest(
                    f"failed to open text file for read {relative}: it is {what}; the checksum agent checks files"
                )
            os.set_blocking(fd, True)
            f = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        with f:
            seen[real] = md5_of(iter(lambda: f.read(_CHUNK), b""))
        return seen[real]

    return digest


def of_files(files: Mapping[str, bytes]) -> Digest:
    """The MD5s of a load's files (``file:`` parameters) by their path in the folder Triton makes of them,
    each hashed once."""
    seen: dict[str, str] = {}

    def digest(relative: str) -> str:
        if relative not in files:
            raise FileNotFoundError(2, "No such file or directory (not among the load's files)")
        if relative not in seen:
            seen[relative] = md5_of([files[relative]])
        return seen[relative]

    return digest
