"""OpenVINO: ONNX models and OpenVINO IR, on the devices ``openvino.Core().available_devices`` lists.

Device names are lower-cased: ``CPU`` -> ``cpu``, ``GPU.1`` -> ``gpu:1``, ``NPU`` -> ``npu:0``.
``inference_precision`` sets ``INFERENCE_PRECISION_HINT``; unset, OpenVINO picks the hardware's
default, which is bf16 on CPUs with AVX512_BF16 or AMX (a precision change: the gate treats it so).
The IR (``model.xml`` + ``model.bin``) is stored as one uncompressed tar and read from memory.
"""

from __future__ import annotations

import queue
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable, InvalidModelFile, RuntimeRefused
from polystack.types import Signature

IR_XML = "model.xml"
IR_BIN = "model.bin"


class OpenVinoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference_precision: Literal["f32", "bf16", "f16"] | None = Field(
        default=None, description="INFERENCE_PRECISION_HINT; None lets OpenVINO choose (bf16 on some CPUs)"
    )
    performance_hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] | None = None
    num_streams: Annotated[int, Field(ge=1)] | Literal["AUTO", "NUMA"] | None = Field(
        default=None, description="a number, or OpenVINO's AUTO or NUMA"
    )
    inference_num_threads: int | None = Field(default=None, ge=1)
    cpu_pinning: bool | None = Field(default=None, description="ENABLE_CPU_PINNING; None lets OpenVINO choose")


def to_ov_device(device: str, available: list[str] | None = None) -> str:
    """polystack's device name to OpenVINO's, as OpenVINO lists it ("gpu:1" -> "GPU.1", "npu:0" -> "NPU")."""
    for name in available or []:
        if from_ov_device(name) == device:
            return name
    kind, _, index = device.partition(":")
    return kind.upper() if kind == "cpu" or not index else f"{kind.upper()}.{index}"


def from_ov_device(name: str) -> str:
    kind, _, index = name.partition(".")
    return "cpu" if kind == "CPU" else f"{kind.lower()}:{index or 0}"


def pack_ir(xml: Path, weights: Path, out: Path) -> Path:
    """Write the IR pair as one uncompressed tar (deterministic: fixed names, times and owners)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:  # PAX: weights of 8 GiB and more too
        for src, arcname in ((xml, IR_XML), (weights, IR_BIN)):
            info = tarfile.TarInfo(arcname)
            info.size = src.stat().st_size
            info.mtime = 0
            info.mode = 0o444
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return out


def reason_of(error: BaseException) -> str:
    """The line of an OpenVINO exception that says why: not those that say where (``Exception from ...:84:``,
    ``Check '...' failed at ...``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(error).__name__])[0][:300]


def read_ir(core: Any, artifact: Path) -> Any:
    import openvino as ov

    with tarfile.open(artifact, "r:") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        if IR_XML not in members or IR_BIN not in members:
            raise InvalidModelFile(f"{artifact.name} is not a polystack OpenVINO IR archive (model.xml + model.bin)")
        xml = tar.extractfile(members[IR_XML]).read()  # type: ignore[union-attr]
        weights = tar.extractfile(members[IR_BIN]).read()  # type: ignore[union-attr]
    return core.read_model(xml.decode("utf-8"), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))


class OpenVinoModel:
    """A compiled model and a pool of InferRequests: concurrent callers each take their own request, so
    calls overlap up to the model's streams (``num_streams``) instead of queueing on one request."""

    def __init__(self, compiled: Any, signature: Signature) -> None:
        self.compiled = compiled
        self.signature = signature
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(compiled.create_infer_request())  # the first is made now: a failure shows at load
        ports = list(compiled.outputs)
        wanted = signature.output_names
        self._ports: list[tuple[str, Any]] = []
        for i, name in enumerate(wanted):
            port = next((p for p in ports if name in p.get_names()), ports[i] if i < len(ports) else None)
            if port is None:
                raise InvalidModelFile(f"OpenVINO model has no output {name!r}")
            self._ports.append((name, port))

    def _take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            if self.compiled is None:
                raise BackendError("the OpenVINO model was closed; load it again") from None
            return self.compiled.create_infer_request()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._take()
        try:
            result = request.infer({k: np.ascontiguousarray(v) for k, v in inputs.items()})
            return {name: np.array(result[port], copy=True) for name, port in self._ports}
        except (TypeError, ValueError) as e:
            raise RuntimeRefused(f"OpenVINO refused the inputs: {e}") from e
        except Exception as e:
            raise BackendError(f"OpenVINO failed: {type(e).__name__}: {e}") from e
        finally:
            self._idle.put(request)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        self.compiled = None


class OpenVinoBackend(Backend):
    name = "openvino"
    Options = OpenVinoOptions
    formats = frozenset({"onnx", "openvino"})
    requires = ("openvino",)
    distribution = "openvino"
    streams_option = "num_streams"  # one stream runs one call at a time; instances need a stream each
    pinning_option = "cpu_pinning"

    def devices(self) -> list[str]:
        import openvino as ov

        return [from_ov_device(d) for d in ov.Core().available_devices]

    def capabilities(self, device: str) -> list[str]:
        """OPTIMIZATION_CAPABILITIES of a device (e.g. FP32, BF16, FP16, INT8)."""
        import openvino as ov

        core = ov.Core()
        name = to_ov_device(device, core.available_devices)
        return [str(c) for c in core.get_property(name, "OPTIMIZATION_CAPABILITIES")]

    def lower_precision(self, device: str) -> str | None:
        """The hardware's lower-precision inference hint on ``device`` ("bf16", "f16"), if it has one."""
        caps = self.capabilities(device)
        if "BF16" in caps:
            return "bf16"
        if "FP16" in caps and not device.startswith("cpu"):
            return "f16"
        return None

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        import openvino as ov

        assert isinstance(options, OpenVinoOptions)
        core = ov.Core()
        if device not in self.devices():
            raise BackendUnavailable(f"openvino cannot use device {device!r} here; it offers {self.devices()}")
        try:
            model = read_ir(core, artifact) if tarfile.is_tarfile(artifact) else core.read_model(str(artifact))
        except InvalidModelFile:
            raise
        except Exception as e:
            raise InvalidModelFile(f"OpenVINO cannot read this model: {reason_of(e)}") from e
        config: dict[str, Any] = {}
        if options.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = options.inference_precision
        if options.performance_hint:
            config["PERFORMANCE_HINT"] = options.performance_hint
        if options.num_streams:
            config["NUM_STREAMS"] = options.num_streams
        if options.inference_num_threads:
            config["INFERENCE_NUM_THREADS"] = options.inference_num_threads
        if options.cpu_pinning is not None:
            config["ENABLE_CPU_PINNING"] = options.cpu_pinning
        try:
            compiled = core.compile_model(model, to_ov_device(device, core.available_devices), config)
        except Exception as e:
            raise InvalidModelFile(f"OpenVINO cannot compile this model for {device}: {reason_of(e)}") from e
        return OpenVinoModel(compiled, signature)


def ir_bytes(artifact: Path) -> tuple[bytes, bytes]:
    """The (xml, bin) pair inside a stored IR archive."""
    with tarfile.open(artifact, "r:") as tar:
        xml = tar.extractfile(IR_XML).read()  # type: ignore[union-attr]
        weights = tar.extractfile(IR_BIN).read()  # type: ignore[union-attr]
    return xml, weights
