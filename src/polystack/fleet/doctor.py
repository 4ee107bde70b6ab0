"""Describe this machine: Python, CPU model and ISA flags, memory, accelerators, runtimes.

Runtimes are probed by importing them, so this is slow-ish (seconds) and only runs on request.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from polystack.backends import registry

# ISA features worth naming, keyed by the /proc/cpuinfo flag (x86) or Features entry (ARM).
ISA_FLAGS = {
    "sse4_2": "SSE4.2",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512_VNNI",
    "avx512_bf16": "AVX512_BF16",
    "avx512_fp16": "AVX512_FP16",
    "avx_vnni": "AVX_VNNI",
    "amx_tile": "AMX",
    "amx_bf16": "AMX_BF16",
    "amx_int8": "AMX_INT8",
    "asimd": "NEON",
    "asimddp": "NEON_DOTPROD",
    "sve": "SVE",
    "sve2": "SVE2",
    "bf16": "ARM_BF16",
    "i8mm": "ARM_I8MM",
}


@dataclass
class Runtime:
    name: str
    installed: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass
class MachineReport:
    python: str
    platform: str
    cpu_model: str
    cpu_arch: str
    logical_cores: int
    physical_cores: int | None
    isa: list[str]
    memory_bytes: int
    accelerators: list[str]
    runtimes: list[Runtime]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _microarchitecture(vendor: str, family: int, model: int) -> str:
    """Best-effort core generation from CPUID family/model (virtual machines often hide the brand)."""
    if vendor == "AuthenticAMD":
        if family == 0x17:
            return "Zen 2" if model >= 0x30 else "Zen/Zen+"
        if family == 0x19:
            return "Zen 3" if model < 0x10 or 0x20 <= model < 0x60 else "Zen 4"
        if family == 0x1A:
            return "Zen 5"
    return ""


def _cpuinfo() -> tuple[str, set[str]]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    fields: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields.setdefault(key, value.strip())
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
        if fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
            arch = _microarchitecture(fields.get("vendor_id", ""), int(fields["cpu family"]), int(fields["model"]))
            ident = f"family {fields['cpu family']} model {fields['model']}"
            model = f"{model} ({arch}, {ident})" if arch else f"{model} ({ident})"
    elif sys.platform == "darwin":  # pragma: no cover - not reachable on Linux CI
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        model = out.stdout.strip() or model
        if platform.machine() == "arm64":
            flags = {"asimd"}
    return model, flags


def _accelerators() -> list[str]:
    found: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            found += [f"NVIDIA {line.strip()}" for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    if Path("/dev/kfd").exists():
        found.append("AMD GPU (ROCm /dev/kfd)")
    accel = sorted(p.name for p in Path("/dev").glob("accel*"))
    if accel:  # TPUs and other accelerators exposed through the kernel's accel subsystem
        found.append(f"accelerator device nodes: {', '.join(accel)}")
    return found


def _probe(name: str) -> Runtime:
    """Import one runtime and ask it what it offers."""
    try:
        if name == "onnxruntime":
            import onnxruntime as ort

            return Runtime(name, True, ort.__version__, list(ort.get_available_providers()))
        if name == "openvino":
            import openvino as ov

            return Runtime(name, True, ov.get_version().split("-")[0], list(ov.Core().available_devices))
        if name == "torch":
            import torch

            devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                devices.append("mps")
            hip = getattr(torch.version, "hip", None)
            return Runtime(name, True, torch.__version__, devices, f"ROCm {hip}" if hip else "")
        if name == "jax":
            import jax

            return Runtime(name, True, jax.__version__, [str(d) for d in jax.devices()])
        if name == "xgboost":
            import xgboost

            return Runtime(name, True, xgboost.__version__, ["cpu"])
        if name == "lightgbm":
            import lightgbm

            return Runtime(name, True, lightgbm.__version__, ["cpu"])
        if name == "sklearn":
            import sklearn

            return Runtime(name, True, sklearn.__version__, ["cpu"])
        if name == "litert":
            import importlib.metadata

            return Runtime(name, True, importlib.metadata.version("ai-edge-litert"), ["cpu"])
        if name == "treelite":  # Triton's FIL backend's models (backends/fil.py)
            import treelite

            return Runtime(name, True, treelite.__version__, ["cpu"])
    except ImportError:
        return Runtime(name, False)
    except Exception as e:  # a runtime that imports but fails to start is reported, not fatal
        return Runtime(name, True, None, [], f"error: {type(e).__name__}: {e}")
    return Runtime(name, False)


RUNTIMES = ("onnxruntime", "openvino", "torch", "jax", "xgboost", "lightgbm", "sklearn", "litert", "treelite")


def report(probe_runtimes: bool = True) -> MachineReport:
    model, flags = _cpuinfo()
    isa = [label for flag, label in ISA_FLAGS.items() if flag in flags]
    runtimes = [_probe(n) for n in RUNTIMES] if probe_runtimes else []
    return MachineReport(
        python=f"{platform.python_implementation()} {platform.python_version()}",
        platform=platform.platform(),
        cpu_model=model,
        cpu_arch=platform.machine(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        isa=isa,
        memory_bytes=psutil.virtual_memory().total,
        accelerators=_accelerators(),
        runtimes=runtimes,
    )


def fingerprint(rep: MachineReport) -> str:
    """A short id for "the same machine" as far as measurements go: CPU, cores, accelerators, runtimes."""
    key = {
        "cpu": rep.cpu_model,
        "isa": rep.isa,
        "cores": rep.logical_cores,
        "accelerators": rep.accelerators,
        "runtimes": {r.name: r.version for r in rep.runtimes if r.installed},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# runtime name (as `polystack doctor` reports it) -> distributions that carry it
_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "torch": ("torch",),
    "jax": ("jax",),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "lightgbm": ("lightgbm",),
    "sklearn": ("scikit-learn",),
    "litert": ("ai-edge-litert",),
}


def _installed_version(dists: tuple[str, ...]) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def machine() -> tuple[str, dict[str, Any]]:
    """(fingerprint, facts) of this machine: the one identity plans are stored under.

    Runtime versions come from package metadata, so this imports no runtime and gives the same
    answer in `polystack doctor`, `polystack tune` and a server deciding whether a plan is fresh.
    """
    rep = report(probe_runtimes=False)
    for name in RUNTIMES:
        version = _installed_version(_DISTRIBUTIONS.get(name, (name,)))
        if version is not None:
            rep.runtimes.append(Runtime(name, True, version))
    facts = {
        "cpu": rep.cpu_model,
        "isa": rep.isa,
        "cores": rep.logical_cores,
        "memory_bytes": rep.memory_bytes,
        "accelerators": rep.accelerators,
        "runtimes": {r.name: r.version for r in rep.runtimes},
        "python": rep.python,
    }
    return fingerprint(rep), facts


def backends_table() -> list[dict[str, Any]]:
    """Every registered polystack backend and whether it can run here."""
    rows = []
    for name in registry.names():
        b = registry.get(name)
        ok = b.available()
        rows.append(
            {
                "backend": name,
                "available": ok,
                "version": b.version() if ok else None,
                "formats": sorted(b.formats),
                "devices": b.devices() if ok else [],
            }
        )
    return rows
