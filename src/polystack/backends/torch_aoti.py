"""AOTInductor packages (``formats/torch_aoti.py``), run as Triton's PyTorch backend runs them
(``platform: "torch_aoti"``): the package's model ``model``, one run per batch, the inputs in the order of the call
spec's leaves, under ``torch.inference_mode`` (unless a config's ``INFERENCE_MODE`` is off) and ``torch.no_grad``.
It runs through the C functions of the model's library (``Container``), as torch's ``AOTIModelPackageLoader`` runs
it but without holding Python's GIL for the call.

What the package returns is checked as Triton's backend checks it, in its words: each output of the config's type
exactly (no casting) and not a scalar; a batching model's outputs must also hold a row per row of the batch, and
each request gets its own rows (Triton's backend hands every request the whole batch's outputs). The inputs are
checked against the shapes the package was compiled for, where its source says them (AOTInductor checks none).

A model's instances are the container's runners: each runs one call at a time, at once with the others, on the
package's one copy of the weights. Devices are torch's; a package runs on the kind of device it was compiled for (its ``AOTI_DEVICE_KEY``).
Thread counts are torch's and process-wide, set as for TorchScript (``backends/torchscript.py``).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import logging
import shutil
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack import temp_folders
from polystack.backends.base import Backend, LoadedModel, writable
from polystack.backends.torchscript import set_threads
from polystack.errors import BackendError, BackendUnavailable, InvalidModelFile, RuntimeRefused
from polystack.formats.aoti_source import PACKAGE_MODEL, Compiled
from polystack.formats.torch_aoti import MODEL, Binding, unpack
from polystack.formats.torchscript import TORCH_TYPES
from polystack.types import DType, Signature

log = logging.getLogger("polystack.backends")

_FOLDER = "polystack-aoti-"  # a package's compiled model, unpacked while it is served (temp_folders)
_LIBRARY_SUFFIXES = (".so", ".cpp", ".json", ".cubin", ".hsaco", ".spv", ".fatbin", ".o", ".ld", ".h")


class TorchAotiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference_mode: bool = Field(default=True, description="run under torch.inference_mode (INFERENCE_MODE)")
    intra_op_threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads, process-wide")
    inter_op_threads: int | None = Field(
        default=None, ge=1, description="torch.set_num_interop_threads, process-wide, once"
    )
    runners: int = Field(default=1, ge=1, le=1024, description="calls that run at once (Triton's model instances)")


def _first_line(e: Exception | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Container:
    """The package's compiled model, run through the C functions its library exports (AOTInductor's model
    container, ``aoti_runtime/interface.h``): ``runners`` models that each run one call at a time, without Python's
    GIL (ctypes lets it go for the call; torch's ``AOTIModelPackageLoader.run`` holds it, which stalled the
    server's event loop for the length of every call). What torch's loader does is done here: the model's files
    unpacked, its library opened, a container made for the device. A package whose weights are outside its
    library is refused.

    A library once opened stays mapped until the process ends whatever closes it (glibc cannot unload it: its C++
    unique symbols), so each is opened once per process, by its bytes' digest, from a folder of polystack's own
    (removed as the process exits, or by a later process where it was killed), and reloads of a package reuse it."""

    def __init__(self, package: Path | IO[bytes], shown: str, device: str = "cpu", runners: int = 1) -> None:
        import torch  # noqa: F401  (the library needs libtorch's: loaded with torch, found by name)

        self._lib = _library(package, shown)
        self._handle = ctypes.c_void_p()
        try:
            self._call(
                "AOTInductorModelContainerCreateWithDevice",
                ctypes.byref(self._handle), ctypes.c_size_t(runners), device.encode(), str(self._lib.folder).encode(),
                what=f"make the AOTInductor package {shown}'s model on {device}",
            )  # fmt: skip
            count = ctypes.c_size_t()
            self._call("AOTInductorModelContainerGetNumInputs", self._handle, ctypes.byref(count), what="count inputs")
            self.inputs = count.value
            self._call(
                "AOTInductorModelContainerGetNumOutputs", self._handle, ctypes.byref(count), what="count outputs"
            )
            self.outputs = count.value
        except BaseException:
            self.close()
            raise

    def _call(self, function: str, *args: Any, what: str) -> None:
        code = getattr(self._lib, function)(*args)
        if code != 0:
            raise InvalidModelFile(f"AOTInductor could not {what}: {self.last_error()}")

    def last_error(self) -> str:
        """The runtime's message for this thread's last failed call (AOTInductor writes it to stderr as well)."""
        message = ctypes.c_char_p()
        reader = getattr(self._lib, "AOTInductorGetLastError", None)
        if reader is None or reader(ctypes.byref(message)) != 0 or not message.value:
            return "it wrote why to the server's stderr"
        return _first_line(message.value.decode("utf-8", "replace"))

    def call_spec(self) -> tuple[str, str]:
        given, returned = ctypes.c_char_p(), ctypes.c_char_p()
        self._call(
            "AOTInductorModelContainerGetCallSpec", self._handle, ctypes.byref(given), ctypes.byref(returned),
            what="read the call spec",
        )  # fmt: skip
        return (given.value or b"").decode(), (returned.value or b"").decode()

    def run(self, tensors: list[Any]) -> list[Any]:
        """The model's outputs for ``tensors`` (its inputs, in order), the GIL let go while it runs."""
        import torch

        handles = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(tensors)  # taken by the run
        given = (ctypes.c_void_p * len(handles))(*(_POINTER(h, None) for h in handles))
        returned = (ctypes.c_void_p * self.outputs)()
        code = self._lib.AOTInductorModelContainerRun(
            self._handle, given, ctypes.c_size_t(len(handles)), returned, ctypes.c_size_t(self.outputs), None, None
        )
        if code != 0:
            raise BackendError(f"Inductor model instance execution failure: {self.last_error()}")
        return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(
            [_CAPSULE(returned[i], None, None) for i in range(self.outputs)]
        )

    def close(self) -> None:
        if self._handle.value:
            self._lib.AOTInductorModelContainerDelete(self._handle)
            self._handle = ctypes.c_void_p()


class _Library(ctypes.CDLL):
    folder: Path  # the model's files, the library among them (a CUDA package's cubins beside it)


_LIBRARIES: dict[str, _Library] = {}  # by the library's digest, each opened once in this process
_OPENING = threading.Lock()
_LIBRARY_FOLDERS: Path | None = None  # this process's, held (temp_folders) until it ends


def _library(package: Path | IO[bytes], shown: str) -> _Library:
    """The package model's library, opened in this process (once per library, by its bytes' digest)."""
    global _LIBRARY_FOLDERS
    try:
        with zipfile.ZipFile(package) as zf:
            names = [n for n in zf.namelist() if f"data/aotinductor/{PACKAGE_MODEL}/" in n and not n.endswith("/")]
            libraries = [n for n in names if n.endswith(".so")]
            apart = [n for n in names if not n.endswith(_LIBRARY_SUFFIXES)]
            if len(libraries) != 1 or apart:
                raise InvalidModelFile(
                    f"the AOTInductor package {shown} holds "
                    + (f"{len(libraries)} libraries for its model" if len(libraries) != 1 else f"{apart[0]}")
                    + ", where polystack serves a package whose model is one library with its weights inside (as "
                    "aoti_compile_and_package writes it by default); compile it so"
                )
            digest = hashlib.sha256()
            for name in sorted(names):
                with zf.open(name) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
            with _OPENING:
                found = _LIBRARIES.get(digest.hexdigest())
                if found is not None:
                    return found
                if _LIBRARY_FOLDERS is None:  # its lock held while this process lives; removed as it exits
                    _LIBRARY_FOLDERS, owner = temp_folders.make(_FOLDER)
                    atexit.register(temp_folders.release, _LIBRARY_FOLDERS, owner)
                folder = _LIBRARY_FOLDERS / digest.hexdigest()[:32]
                folder.mkdir(exist_ok=True)
                for name in names:
                    with zf.open(name) as src, (folder / Path(name).name).open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                try:
                    library = _Library(str(folder / Path(libraries[0]).name))
                except OSError as e:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise InvalidModelFile(
                        f"the AOTInductor package {shown}'s library does not load here: {_first_line(e)}; compile it "
                        "with this torch for this machine"
                    ) from None
                library.folder = folder
                _LIBRARIES[digest.hexdigest()] = library
                return library
    except (zipfile.BadZipFile, OSError, KeyError) as e:
        raise InvalidModelFile(f"the AOTInductor package {shown} cannot be read: {_first_line(e)}") from None


_POINTER = ctypes.pythonapi.PyCapsule_GetPointer
_POINTER.restype, _POINTER.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_CAPSULE = ctypes.pythonapi.PyCapsule_New
_CAPSULE.restype, _CAPSULE.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def device_key(path: Path | IO[bytes], shown: str) -> str:
    """The kind of device the package at ``path`` was compiled for (``cpu``, ``cuda``), from its metadata (its
    library is not loaded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            found = [
                n for n in zf.namelist() if f"data/aotinductor/{PACKAGE_MODEL}/" in n and n.endswith("_metadata.json")
            ]
            metadata = json.loads(zf.read(found[0])) if found else {}
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidModelFile(f"the AOTInductor package {shown} cannot be read: {_first_line(e)}") from None
    return str(metadata.get("AOTI_DEVICE_KEY", "cpu")) if isinstance(metadata, dict) else "cpu"


def call_spec(path: Path, shown: str) -> tuple[str, str]:
    """The call spec (in, out) of the package at ``path``, from its library (a package without its generated
    source), made on the kind of device it was compiled for."""
    key = device_key(path, shown)
    container = Container(path, shown, "cpu" if key == "cpu" else f"{key}:0")
    try:
        return container.call_spec()
    finally:
        container.close()


class TorchAotiModel:
    def __init__(
        self,
        container: Container,
        binding: Binding,
        compiled: Compiled | None,
        signature: Signature,
        device: str,
        options: TorchAotiOptions,
        batching: bool,
    ) -> None:
        self._container: Container | None = container
        self.binding = binding
        self.compiled = compiled
        self.signature = signature
        self.device = device
        self.options = options
        self._types = {t.name: t.dtype for t in signature.outputs}
        # with a batch dimension (a config's max_batch_size): the outputs that hold a row per row of the inputs
        self._batched = {t.name for t in signature.outputs if t.shape[:1] == (-1,)} if batching else set()
        # the fewest rows the compiled batch takes: 2 for a batch exported with min=1 (torch.export's 0/1 rule);
        # a batch of fewer is padded to it with copies of its last row, and answered with its own rows
        lows = [ds[0].low for ds in (compiled.dims if compiled else ()) if ds and ds[0].low]
        self._fewest = max(lows) if batching and lows else 1

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        given = {name: inputs[name] for name in self.binding.inputs}
        rows = len(given[self.binding.inputs[0]]) if self._fewest > 1 or self._batched else None
        if rows is not None and 0 < rows < self._fewest:  # never a buffer smaller than the kernels read
            given = {n: np.concatenate([a, np.repeat(a[-1:], self._fewest - rows, 0)]) for n, a in given.items()}
        if self.compiled is not None:
            self.compiled.check([(name, given[name].shape) for name in self.binding.inputs])
        tensors = [
            torch.from_numpy(writable(np.ascontiguousarray(given[n]))).to(self.device) for n in self.binding.inputs
        ]
        container = self._container
        if container is None:
            raise BackendError("the model was closed; load it again")
        with torch.inference_mode(self.options.inference_mode), torch.no_grad():
            results = container.run(tensors)
        padded = len(given[self.binding.inputs[0]]) if rows is not None else None
        answers = {name: self._output(torch, name, results[index], padded) for name, index in self.binding.outputs}
        if rows is not None and padded != rows:
            answers = {n: a[:rows] if n in self._batched else a for n, a in answers.items()}
        return answers

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
        container, self._container = self._container, None
        if container is not None:
            container.close()


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
        shown = f"of model {name!r}"
        set_threads(torch, options, name)
        with zipfile.ZipFile(artifact) as outer, outer.open(MODEL) as package:
            key = device_key(package, shown)
            if key != device.partition(":")[0]:
                raise BackendUnavailable(
                    f"the AOTInductor package of model {name!r} was compiled for {key}, not {device}: serve it on a "
                    f"{key} device (instance_group kind), or compile it for {device.partition(':')[0]}"
                )
            with torch.inference_mode(options.inference_mode):
                container = Container(package, shown, device, options.runners)
        try:
            check_library(container, binding, shown)
        except BaseException:
            container.close()
            raise
        batching = int(config.get("max_batch_size") or 0) > 0
        return TorchAotiModel(container, binding, compiled, signature, device, options, batching)


def check_library(container: Container, binding: Binding, shown: str) -> None:
    """Refuse a package whose library takes other tensors than its call spec says (an argument that is not a
    tensor, compiled into it), or whose generated source, which the binding was read from, is not its library's."""
    if container.inputs != len(binding.inputs):
        raise InvalidModelFile(
            f"the AOTInductor package {shown} takes {container.inputs} tensors, but its call spec has "
            f"{len(binding.inputs)} arguments: an argument that is not a tensor (a number, None) was compiled into it, "
            "which no request can give; export the model with tensors only"
        )
    if binding.spec is not None and binding.spec != container.call_spec():
        raise InvalidModelFile(
            f"the AOTInductor package {shown}'s generated source does not match its library (another call spec); "
            "compile the package again"
        )
