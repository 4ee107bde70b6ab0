"""TorchScript modules (``formats/torchscript.py``), run as Triton's PyTorch backend runs them: one ``forward``
per batch, its arguments bound as the format's ``Binding`` says, under ``torch.inference_mode`` and
``torch.no_grad``, with TorchScript's optimized execution unless a config turns it off; the module as it was
saved (no ``eval()``: a module saved in training mode runs so, as in Triton, and a warning says so).

What forward returns is checked as Triton's backend checks it, in its words (answered 400, as Triton answers
INVALID_ARG): a tensor, a tuple of tensors and ``List[str]``, or a ``List[str]``; each output of the config's type
exactly (no casting) and not a scalar. A
``Dict[str, Tensor]`` is taken by output name. A batched output must hold a row per row of the batch.

A model's instances each run their own copy of the module (attributes a forward changes are its copy's), one call
at a time, as Triton's instances do; with ``ENABLE_WEIGHT_SHARING`` they run the one module, calls at once.

Devices are torch's (``backends/torch.py``). Thread counts are torch's and process-wide: each load sets the
intra-op count it asks for, as the torch backend does (Triton's backend keeps the first model's); the inter-op
count can be set once, before torch's first parallel work.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel, writable
from polystack.errors import (
    BackendError,
    BackendUnavailable,
    InvalidRequest,
    PolystackError,
    RuntimeRefused,
    Unavailable,
)
from polystack.formats.torchscript import TORCH_TYPES, Binding, is_ragged, load_module, unpack
from polystack.types import DType, Signature

log = logging.getLogger("polystack.backends")

_threads_set = threading.Lock()
_THREADS: dict[str, int] = {}  # the counts set, process-wide


class TorchScriptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference_mode: bool = Field(default=True, description="run under torch.inference_mode (INFERENCE_MODE)")
    optimized_execution: bool = Field(
        default=True, description="TorchScript's graph optimizations (off: DISABLE_OPTIMIZED_EXECUTION)"
    )
    intra_op_threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads, process-wide, once")
    inter_op_threads: int | None = Field(
        default=None, ge=1, description="torch.set_num_interop_threads, process-wide, once"
    )
    tensor_fuser: bool | None = Field(default=None, description="TorchScript's tensor-expression fuser (None: torch's)")
    jit_profiling: bool | None = Field(default=None, description="TorchScript's profiling mode (None: torch's)")
    jit_executor: bool | None = Field(default=None, description="TorchScript's profiling executor (None: torch's)")
    instances: int = Field(
        default=1, ge=1, le=1024, description="modules loaded, one per concurrent call (Triton's model instances)"
    )
    weight_sharing: bool = Field(
        default=False, description="one module for every instance, calls at once (ENABLE_WEIGHT_SHARING)"
    )


class TorchScriptModel:
    """Runs ``modules``, one call on each at a time, taken in turn, as Triton's instances each run their own copy of
    the module, loaded alike (attributes a forward changes are that copy's); with ``weight_sharing``, the one
    module, calls at once."""

    def __init__(
        self,
        modules: list[Any],
        binding: Binding,
        signature: Signature,
        device: str,
        options: TorchScriptOptions,
        batching: bool = True,
    ) -> None:
        self._free = collections.deque(modules)
        self._modules = len(modules)
        self._turn = threading.Condition()
        self._closed = False
        self.binding = binding
        self.signature = signature
        self.device = device
        self.options = options
        self._types = {t.name: t.dtype for t in (*signature.inputs, *signature.outputs)}
        # with a batch dimension (a config's max_batch_size): the outputs that hold a row per row of the inputs
        self._batched = {t.name for t in signature.outputs if t.shape[:1] == (-1,)} if batching else set()

    @property
    def instance_count(self) -> int:
        """The modules calls take in turn (one with weight sharing): ``instance_count`` calls run one on each."""
        return self._modules

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        rows = next((len(inputs[t.name]) for t in self.signature.inputs if t.shape[:1] == (-1,)), None)
        rows = rows if self._batched else None
        arguments = [self._argument(torch, name, inputs[name]) for name in self.binding.arguments]
        try:
            with (
                torch.jit.optimized_execution(self.options.optimized_execution),
                torch.inference_mode(self.options.inference_mode),
                torch.no_grad(),
                self._module() as module,
            ):
                if self.binding.dict_input:
                    result = module(dict(zip(self.binding.arguments, arguments, strict=True)))
                else:
                    result = module(*arguments)
        except PolystackError:
            raise
        except Exception as e:
            text = str(e).strip()
            raise BackendError(f"PyTorch execute failure: {text.splitlines()[-1] if text else type(e).__name__}") from e
        return self._outputs(torch, result, rows)

    @contextlib.contextmanager
    def _module(self) -> Iterator[Any]:
        """The next free module (the longest free: copies take calls in turn), held for one call; the shared one
        with weight sharing."""
        with self._turn:
            self._turn.wait_for(lambda: bool(self._free) or self._closed)
            if self._closed:
                raise Unavailable("the model was unloaded while this request waited for it; send it again")
            module = self._free[0] if self.options.weight_sharing else self._free.popleft()
        if self.options.weight_sharing:
            yield module
            return
        try:
            yield module
        finally:
            with self._turn:
                self._free.append(module)
                self._turn.notify()

    def _argument(self, torch: Any, name: str, array: np.ndarray) -> Any:
        if self._types[name] is DType.BYTES:  # a List[str]: every element, in order, as Triton hands them
            try:
                return [bytes(v).decode("utf-8") if not isinstance(v, str) else v for v in array.reshape(-1)]
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"input {name!r} holds bytes that are not UTF-8 text; the model takes it as a List[str]: send text"
                ) from None
        return torch.from_numpy(writable(np.ascontiguousarray(array))).to(self.device)  # it may write into it

    def _outputs(self, torch: Any, result: Any, rows: int | None) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            missing = [n for n, _ in self.binding.outputs if n not in result]
            if missing:
                raise RuntimeRefused(
                    f"forward returned a dict without {', '.join(map(repr, missing))}: a dict's keys are the config's "
                    f"output names (it has {', '.join(map(repr, sorted(map(str, result))))}); name the config's "
                    "outputs so"
                )
            values = {n: result[n] for n, _ in self.binding.outputs}
        else:
            returned = _returned(torch, result)
            values = {}
            for name, index in self.binding.outputs:
                if index >= len(returned):
                    raise RuntimeRefused(
                        f"The output {name} in the model configuration refers to an output index which doesn't exist. "
                        f"This model has {len(returned)} outputs; name the config's outputs <name>__0 to "
                        f"<name>__{len(returned) - 1}, by what forward returns"
                    )
                values[name] = returned[index]
        return {name: self._output(torch, name, value, rows) for name, value in values.items()}

    def _output(self, torch: Any, name: str, value: Any, rows: int | None) -> np.ndarray:
        want = self._types[name]
        if isinstance(value, list):
            if want is not DType.BYTES:
                raise RuntimeRefused(
                    f"configuration expects datatype TYPE_{want.value} for output '{name}', model provides List[str]; "
                    "set its data_type to TYPE_STRING in the config"
                )
            array = np.array([str(s).encode("utf-8") for s in value] or [], dtype=object)
        elif isinstance(value, torch.Tensor):
            got = next((d for d, t in TORCH_TYPES.items() if getattr(torch, t) == value.dtype), None)
            if got is not want:
                shown = f"TYPE_{got.value}" if got is not None else "TYPE_<invalid>"
                raise RuntimeRefused(
                    f"configuration expects datatype TYPE_{'STRING' if want is DType.BYTES else want.value} for "
                    f"output '{name}', model provides {shown}; set its data_type to {shown} in the config (or cast "
                    "in forward)"
                )
            if value.dim() == 0:
                raise RuntimeRefused(
                    f"output '{name}' is a scalar which is not supported: return it with a dimension (x.reshape(1))"
                )
            array = value.detach().to("cpu").contiguous().numpy()
        else:
            raise RuntimeRefused(
                f"output '{name}' must be of type Tensor or List[str]; forward returns a {type(value).__name__}"
            )
        if rows is not None and name in self._batched and (array.ndim == 0 or array.shape[0] != rows):
            raise RuntimeRefused(
                f"output '{name}' has {array.shape[0] if array.ndim else 0} rows for a batch of {rows}: a batching "
                "model's outputs hold a row per row of its inputs; make forward keep the batch on dimension 0, or set "
                "max_batch_size 0"
            )
        return array

    def close(self) -> None:
        with self._turn:
            self._closed = True
            self._free.clear()
            self._turn.notify_all()


def _returned(torch: Any, result: Any) -> list[Any]:
    """What forward returned as Triton's backend takes it: a tensor, a tuple, or a List[str]."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, tuple):
        for i, value in enumerate(result):
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise RuntimeRefused(
                    f"output at index {i} must be of type Tensor or List[str], received List[{_kind(value)}]"
                )
        return list(result)
    if isinstance(result, list) and all(isinstance(v, str) for v in result):
        return [result]
    if isinstance(result, list):
        raise RuntimeRefused(f"output must be of type Tensor or List[str], received List[{_kind(result)}]")
    raise RuntimeRefused(
        "output must be of type Tensor, List[str] or Tuple containing one of these two types. It should not be a "
        "List / Dictionary of Tensors or a Scalar"
    )


def _kind(values: list[Any]) -> str:
    return type(next((v for v in values if not isinstance(v, str)), "")).__name__


def set_threads(torch: Any, options: Any, model: object) -> None:
    """The thread counts torch runs with (``options``: TorchScript's or AOTInductor's), which are the process's: the
    intra-op count as each load asks (as polystack's torch backend sets it, so that a plan's count holds; Triton's
    backend keeps the first model's), with a warning where it changes another model's; the inter-op count once,
    before torch's first parallel work."""
    with _threads_set:
        asked = options.intra_op_threads
        if asked:
            if _THREADS.get("intra", asked) != asked:
                log.warning(
                    "torch's intra-op thread count is the process's: this model's sets it for every TorchScript and "
                    "torch model served here",
                    extra={"model": model, "threads": asked, "was": _THREADS["intra"]},
                )
            torch.set_num_threads(asked)
            _THREADS["intra"] = asked
        if options.inter_op_threads and "inter" not in _THREADS:
            try:
                torch.set_num_interop_threads(options.inter_op_threads)
            except RuntimeError:  # torch takes it only before its first parallel work; Triton ignores it too
                log.warning(
                    "torch's inter-op thread count was fixed before this model loaded; INTER_OP_THREAD_COUNT is ignored",
                    extra={
                        "model": model,
                        "asked": options.inter_op_threads,
                        "threads": torch.get_num_interop_threads(),
                    },
                )
            _THREADS["inter"] = options.inter_op_threads


class TorchScriptBackend(Backend):
    name = "torchscript"
    Options = TorchScriptOptions
    copies_option = "instances"
    formats = frozenset({"torchscript"})
    requires = ("torch",)
    distribution = "torch"

    def devices(self) -> list[str]:
        from polystack.backends.torch import TorchBackend

        return TorchBackend().devices()

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        import torch

        assert isinstance(options, TorchScriptOptions)
        if device not in self.devices():
            raise BackendUnavailable(f"torch cannot use device {device!r} here; it offers {self.devices()}")
        config, binding, data = unpack(artifact)
        set_threads(torch, options, config.get("name"))
        if options.tensor_fuser is not None:
            torch._C._jit_set_texpr_fuser_enabled(options.tensor_fuser)
        if options.jit_profiling is not None:
            torch._C._jit_set_profiling_mode(options.jit_profiling)
        if options.jit_executor is not None:
            torch._C._jit_set_profiling_executor(options.jit_executor)
        with torch.inference_mode(options.inference_mode):  # checked again: the store's blob, as torch reads it
            module = load_module(data, f"the TorchScript module of model {config.get('name')!r}", device)
        if getattr(module, "training", False):
            log.warning(
                "the TorchScript module was saved in training mode (dropout and batch norm behave as in training); "
                "it runs so, as Triton's PyTorch backend runs it: save it after model.eval()",
                extra={"model": config.get("name")},
            )
        copies = 1 if options.weight_sharing else options.instances
        modules = [module] + [copy.deepcopy(module) for _ in range(copies - 1)]  # as loaded: before any call
        # a ragged batch's rows are the server's to check (backends/ragged.py): forward takes its elements, not rows
        batching = int(config.get("max_batch_size") or 0) > 0 and not is_ragged(config)
        return TorchScriptModel(modules, binding, signature, device, options, batching)
