"""JAX/XLA: functions serialized with ``jax.export``, on the devices ``jax.devices()`` lists.

Devices are ``cpu`` and ``<platform>:<id>`` (``gpu:0``, ``tpu:0``). A program exported for some
platforms only runs there (``jax.export.export(..., platforms=(...))`` chooses them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable, PolystackError
from polystack.types import Signature

# jax.Device.platform -> the lowering platform names jax.export records
_LOWERING = {"cpu": {"cpu"}, "gpu": {"cuda", "rocm"}, "cuda": {"cuda"}, "rocm": {"rocm"}, "tpu": {"tpu"}}


class JaxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jit: bool = True


def device_name(device: Any) -> str:
    return "cpu" if device.platform == "cpu" and device.id == 0 else f"{device.platform}:{device.id}"


class JaxModel:
    def __init__(self, exported: Any, signature: Signature, device: Any, jit: bool) -> None:
        import jax

        self.exported = exported
        self.signature = signature
        self.device = device
        self.fn = jax.jit(exported.call) if jit else exported.call

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import jax

        try:
            leaves = [jax.device_put(inputs[s.name], self.device) for s in self.signature.inputs]
            args, kwargs = jax.tree_util.tree_unflatten(self.exported.in_tree, leaves)
            result = self.fn(*args, **kwargs)
            flat = jax.tree_util.tree_leaves(result)
            return {s.name: np.asarray(v) for s, v in zip(self.signature.outputs, flat, strict=True)}
        except PolystackError:
            raise
        except Exception as e:
            raise BackendError(f"JAX failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def close(self) -> None:
        self.exported = None


class JaxBackend(Backend):
    name = "jax"
    Options = JaxOptions
    formats = frozenset({"jax.export"})
    requires = ("jax", "jaxlib")
    distribution = "jax"

    def devices(self) -> list[str]:
        import jax

        return [device_name(d) for d in jax.devices()] + (
            [] if jax.default_backend() == "cpu" else [device_name(d) for d in jax.devices("cpu")]
        )

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        import jax

        from polystack.formats.jax_export import deserialize

        assert isinstance(options, JaxOptions)
        exported = deserialize(artifact.read_bytes())
        platform, _, index = device.partition(":")
        try:
            dev = next(d for d in jax.devices(platform) if d.id == int(index or 0))
        except (RuntimeError, StopIteration):
            raise BackendUnavailable(f"jax cannot use device {device!r} here; it offers {self.devices()}") from None
        wanted = _LOWERING.get(dev.platform, {dev.platform})
        if not wanted & {p.lower() for p in exported.platforms}:
            raise BackendUnavailable(
                f"this function was exported for {', '.join(exported.platforms)}, not {dev.platform}; re-export it "
                f"with jax.export.export(f, platforms=({', '.join(repr(p) for p in sorted(wanted))}, ...))"
            )
        return JaxModel(exported, signature, dev, options.jit)
