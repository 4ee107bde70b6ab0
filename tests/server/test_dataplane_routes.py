"""The data plane's route cache (``DataPlane.served_model``) never pins a model an unload replaced, wherever the
unload lands in a lookup running on another thread (helper-235: a route stored after the unload's clear kept the
unloaded model, its instances and weights, alive until the next lookup of another model). The plane is a stand-in
holding what ``served_model`` reads: the race needs an unload landing at one exact point, which a real server cannot
be made to hit."""

from __future__ import annotations

import gc
import types
import weakref

import pytest

from polystack.server.dataplane import DataPlane
from polystack.server.model_repository import FolderRules


class _Model:
    pass


class _Engine:
    """Its ``generation`` read by ``served_model``; the read numbered ``at`` runs the unload first."""

    def __init__(self, unload: object, at: int) -> None:
        self._generation, self._reads, self._at, self._unload = 0, 0, at, unload

    @property
    def generation(self) -> int:
        self._reads += 1
        if self._reads == self._at:
            self._unload()  # type: ignore[operator]
        return self._generation


class _Routes(dict):  # type: ignore[type-arg]
    """The cache; its size, which ``served_model`` asks before it stores, runs the unload when ``armed``."""

    armed = False
    unload: object = None

    def __len__(self) -> int:
        if self.armed:
            self.armed = False
            self.unload()  # type: ignore[operator]
        return dict.__len__(self)


@pytest.mark.parametrize("where", ["in resolve", "before the store", "at the check after it", "never"])
def test_an_unload_landing_anywhere_in_a_lookup_leaves_no_route_to_the_model_it_unloaded(where: str) -> None:
    old = _Model()
    served: dict[str, _Model] = {"m": old}
    routes = _Routes()
    plane = types.SimpleNamespace(  # routes of this one
        _generation=0, _routes=routes, _routes_generation=(0, 0), folder_rules=FolderRules()
    )
    plane.served_changed = types.MethodType(DataPlane.served_changed, plane)

    def unload() -> None:  # as an unload does: routing changes, then the plane's generation moves and clears
        plane.engine._generation += 1
        served.pop("m", None)
        plane.served_changed()

    plane.engine = _Engine(unload, 2 if where == "at the check after it" else 0)  # read 1: the lookup's start
    routes.unload = unload
    routes.armed = where == "before the store"

    def resolve(name: str, version: str | None) -> _Model:
        got = served[name]
        if where == "in resolve":
            unload()
        return got

    plane._resolve = resolve
    assert types.MethodType(DataPlane.served_model, plane)("m", None) is old  # the lookup answers with what it found
    kept = weakref.ref(old)
    del old
    gc.collect()
    if where == "never":  # no unload: the route is kept, and the next lookup is a hit
        assert kept() is not None and len(dict(routes)) == 1
    else:
        assert not served, "the unload never ran"
        assert kept() is None, f"an unload {where} left a route to the model it unloaded"
