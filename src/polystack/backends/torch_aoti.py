"""AOTInductor packages (``formats/torch_aoti.py``), run as Triton's PyTorch backend runs them
(``platform: "torch_aoti"``): torch's ``AOTIModelPackageLoader`` on the package's model ``model``, one ``run`` per
batch, the inputs in the order of the call spec's leaves, under ``torch.inference_mode`` (unless a config's
``INFERENCE_MODE`` is off) and ``torch.no_grad``.

What the package returns is checked as Triton's backend checks it, in its words: each output of the config's type
exactly (no casting) and not a scalar; a batching model's outputs must also hold a row per row of the batch, and
each request gets its own rows (Triton's backend hands every request the whole batch's outputs). The inputs are
checked against the shapes the package was compiled for, where its source says them (AOTInductor checks none).

A model's instances are the loader's runners: each runs one call at a time on the package's one copy of the
weights. Devices are torch's; a package runs on the kind of device it was compiled for (its ``AOTI_DEVICE_KEY``).
Thread counts are torch's and process-wide, set as for TorchScript (``backends/torchscript.py``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.backends.torchscript import set_threads
from polystack.errors import BackendError, BackendUnavailable, InvalidModelFile, RuntimeRefused
from polystack.formats.torch_aoti import MODEL, PACKAGE_MODEL, Binding, Compiled, unpack
from polystack.formats.torchscript import TORCH_TYPES
from polystack.types import DType, Signature

log = logging.getLogger("polystack.backends")

_loading = threading.Lock()  # a failed load leaves torch's extraction folder behind: found by what a load added


class TorchAotiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference_mode: bool = Field(default=True, description="run under torch.inference_mode (INFERENCE_MODE)")
    intra_op_threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads, process-wide")
    inter_op_threads: int | None = Field(
        default=None, ge=1, description="torch.set_num_interop_threads, process-wide, once"
    )
    runners: int = Field(default=1, ge=1, le=1024, description="calls that run at once (Triton's model instances)")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_package(path: Path, shown: str, device: str = "cpu", runners: int = 1) -> Any:
    """torch's loader of the package at ``path`` for ``device`` (its model ``model``, as Triton's backend loads
    it), with ``runners`` calls at once; refused in one line where torch cannot load it."""
    import torch

    index = -1 if device == "cpu" else int(device.partition(":")[2] or 0)
    tmp = Path(tempfile.gettempdir())
    with _loading:
        before = set(tmp.glob("aotinductor_*"))
        try:
            return torch._C._aoti.AOTIModelPackageLoader(str(path), PACKAGE_MODEL, False, runners, index)
        except Exception as e:
            for left in set(tmp.glob("aotinductor_*")) - before:  # torch leaves it where its constructor throws
                shutil.rmtree(left, ignore_errors=True)
            raise InvalidModelFile(
                f"torch cannot load the AOTInductor package {shown}: {_first_line(e)}; compile it with this torch "
                f"({torch.__version__}) for this machine's device"
            ) from None


def device_key(path: Path, shown: str) -> str:
    """The kind of device the package at ``path`` was compiled for (``cpu``, ``cuda``), from its metadata (its
    library is not loaded)."""
    import torch

    loader = torch._C._aoti.AOTIModelPackageLoader
    try:
        metadata = loader.load_metadata_from_package(str(path), PACKAGE_MODEL)  # type: ignore[attr-defined]
    except Exception as e:
        raise InvalidModelFile(f"torch cannot read the AOTInductor package {shown}: {_first_line(e)}") from None
    return str(metadata.get("AOTI_DEVICE_KEY", "cpu"))


def call_spec(path: Path, shown: str) -> tuple[str, str]:
    """The call spec (in, out) of the package at ``path``, from its loaded library (a package without its
    generated source), loaded on the kind of device it was compiled for."""
    key = device_key(path, shown)
    loader = open_package(path, shown, "cpu" if key == "cpu" else f"{key}:0")
    spec = loader.get_call_spec()
    return str(spec[0]), str(spec[1])


class TorchAotiModel:
    def __init__(
        self,
        loader: Any,
        binding: Binding,
        compiled: Compiled | None,
        signature: Signature,
        device: str,
        options: TorchAotiOptions,
        batching: bool,
    ) -> None:
        self._loader = loader
        self.binding = binding
        self.compiled = compiled
        self.signature = signature
        self.device = device
        self.options = options
        self._types = {t.name: t.dtype for t in signature.outputs}
        # with a batch dimension (a config's max_batch_size): the outputs that hold a row per row of the inputs
        self._batched = {t.name for t in signature.outputs if t.shape[:1] == (-1,)} if batching else set()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self.compiled is not None:
            for index, name in enumerate(self.binding.inputs):
                self.compiled.check(index, name, inputs[name].shape)
        rows = len(inputs[self.binding.inputs[0]]) if self._batched else None
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.binding.inputs]
        loader = self._loader
        if loader is None:
            raise BackendError("the model was closed; load it again")
        try:
            with torch.inference_mode(self.options.inference_mode), torch.no_grad():
                results = loader.run(tensors)
        except Exception as e:
            raise BackendError(f"Inductor model instance execution failure: {_first_line(e)}") from e
        return {name: self._output(torch, name, results[index], rows) for name, index in self.binding.outputs}

    def _output(self, torch: Any, name: str, value: Any, rows: int | None) -> np.ndarray:
        want = self._types[name]
        got = next((d for d, t in TORCH_TYPES.items() if getattr(torch, t) == value.dtype), None)
        if got is not want:
            raise RuntimeRefused(
                f'output tensor "{name}" has datatype TYPE_{got.value if got else "INVALID"} but model configuration '
                f"expects TYPE_{want.value}; give the config the type the package returns"
            )
        if value.dim() == 0:
            raise RuntimeRefused(
                f'output tensor "{name}" is a scalar which is not supported: return a tensor of at least one dimension'
            )
        array = value.detach().cpu().numpy()
        if want is DType.BOOL:
            array = array.astype(bool, copy=False)
        if rows is not None and name in self._batched and array.shape[0] != rows:
            raise RuntimeRefused(
                f"output '{name}' has {array.shape[0]} rows for a batch of {rows}: a batching model's outputs hold a "
                "row per row of its inputs; compile it with a dynamic batch (torch.export.Dim), or set max_batch_size 0"
            )
        return array

    def close(self) -> None:
        self._loader = None  # torch frees the library and its folder with the last reference


class TorchAotiBackend(Backend):
    name = "torch_aoti"
    Options = TorchAotiOptions
    formats = frozenset({"torch_aoti"})
    requires = ("torch",)
    distribution = "torch"
    copies_option = "runners"

    def devices(self) -> list[str]:
        from polystack.backends.torch import TorchBackend

        return TorchBackend().devices()

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        import torch

        assert isinstance(options, TorchAotiOptions)
        if device not in self.devices():
            raise BackendUnavailable(f"torch cannot use device {device!r} here; it offers {self.devices()}")
        config, binding, compiled = unpack(artifact)
        name = config.get("name")
        set_threads(torch, options, name)
        with tempfile.TemporaryDirectory(prefix="polystack-aoti-") as tmp:
            path = Path(tmp) / MODEL
            with zipfile.ZipFile(artifact) as zf, zf.open(MODEL) as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            key = device_key(path, f"of model {name!r}")
            if key != device.partition(":")[0]:
                raise BackendUnavailable(
                    f"the AOTInductor package of model {name!r} was compiled for {key}, not {device}: serve it on a "
                    f"{key} device (instance_group kind), or compile it for {device.partition(':')[0]}"
                )
            with torch.inference_mode(options.inference_mode):
                loader = open_package(path, f"of model {name!r}", device, options.runners)
        batching = int(config.get("max_batch_size") or 0) > 0
        return TorchAotiModel(loader, binding, compiled, signature, device, options, batching)
