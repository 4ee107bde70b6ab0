"""What a server keeps of each model name's loads beyond what it serves now.

The data plane (its loads, routing and readiness) and the repository extension (its index, loads by name and
polls, ``repository_extension``) both read and write it: why the last load of a name failed, the versions it
stopped serving, the repository ensembles waiting for their models, and the config and version policy the last
load gave. Triton's repository index lists these, its readiness counts them, and its loads without a config
keep the last one's while the folder is unchanged; an object both hold rather than state of either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from polystack.errors import InvalidName, NotUnique, PolystackError
from polystack.server import model_repository

MAX_LOAD_FAILURES = 4096  # the load failures the repository index keeps, the newest


@dataclass(frozen=True)
class Configured:
    """A repository model's last load with a config: its folder then, and that config (and version policy),
    which a load without a config keeps, as Triton does, while the folder is unchanged."""

    folder: model_repository.Fingerprint
    config: str
    policy: Any


@dataclass
class LoadHistory:
    # repository ensembles not served for want of their models as they are: a poll that changes models loads them
    # again (Triton's poll mode reloads an ensemble's dependents)
    unmet: set[str] = field(default_factory=set)
    # the models each of those runs, where known: explicit mode loads one again once they are all served
    unmet_runs: dict[str, frozenset[str]] = field(default_factory=dict)
    # repository models whose last load had a config: their folder then, which a load without one compares
    configured: dict[str, Configured] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)  # by name: the version_policy the last load's config gave
    # what the repository index says of models not served now, as Triton's does: the versions this server stopped
    # serving ("unloaded"), and why a repository load of a name failed last (until one succeeds)
    stopped: set[tuple[str, int]] = field(default_factory=set)
    failures: dict[str, tuple[int | None, str]] = field(default_factory=dict)  # by name: the version failed, why
    unread: set[str] = field(default_factory=set)  # names whose last failure came before their model was read
    noted: set[str] = field(default_factory=set)  # models that failed to load at start, the server serving on

    def failed(self, name: str, e: PolystackError) -> None:
        """Keep why the last load of ``name`` failed (``e``, in its words), and at which version, for the index
        (which lists it only while a load could serve the name); the oldest go past ``MAX_LOAD_FAILURES`` (loads of
        names nothing knows could grow it); not a name no model can have (helper-268: 300 loads of 1 MiB names
        kept 660 MB)."""
        if isinstance(e, InvalidName):
            return
        self.failures.pop(name, None)
        self.failures[name] = (e.failed_version, NotUnique.TRITON if isinstance(e, NotUnique) else e.message)
        if e.unread:
            self.unread.add(name)
        else:
            self.unread.discard(name)
        while len(self.failures) > MAX_LOAD_FAILURES:
            self.unread.discard(next(iter(self.failures)))
            self.failures.pop(next(iter(self.failures)))

    def unloaded(self, name: str) -> None:
        """``name`` unloaded by name: no load of the models it runs brings it back (as in Triton), the index no
        longer lists a failure of it (nor is the server unready for one), and its next load's config decides."""
        self.unmet.discard(name)
        self.failures.pop(name, None)
        self.policies.pop(name, None)
