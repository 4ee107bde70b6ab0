"""Peak memory of a variant, measured in a fresh subprocess.

The child imports polystack and numpy, records its peak RSS (Linux ``VmHWM``) as the baseline, then loads the variant (importing its runtime), runs a few inferences and records the
peak again. ``model_bytes = peak - baseline`` counts the runtime's own import, the weights and the
working memory of inference: what a deployment of that variant adds to a bare Python process.
A subprocess is used because RSS deltas inside the tuning process are polluted by every runtime
and model loaded before.

The child runs ``_child()`` with a JSON request on stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polystack.engine import LoadSpec
from polystack.types import Signature


@dataclass(frozen=True)
class MemoryFacts:
    peak_rss_bytes: int  # the child's peak RSS, all told
    model_bytes: int  # the part the variant added (runtime import + weights + inference)
    method: str = "subprocess peak RSS (VmHWM) delta"


def _peak_rss() -> int:
    """Peak RSS of this process: VmHWM on Linux (reset by exec, unlike ru_maxrss, which a child
    inherits from its parent), ``ru_maxrss`` elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def measure(
    spec: LoadSpec, signature: Signature, inputs: dict[str, np.ndarray], timeout_s: float = 180.0
) -> MemoryFacts:
    """Load ``spec`` in a fresh interpreter, infer ``inputs`` three times, report peak memory."""
    with tempfile.TemporaryDirectory(prefix="polystack-mem-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, **inputs)  # type: ignore[arg-type]
        request = {
            "artifact": str(spec.artifact),
            "format": spec.format,
            "backend": spec.backend,
            "device": spec.device,
            "options": dict(spec.options),
            "signature": signature.to_dict(),
            "inputs": str(npz),
        }
        proc = subprocess.run(
            [sys.executable, "-c", "from polystack.tuning.memory import _child; _child()"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return MemoryFacts(peak_rss_bytes=int(out["peak_rss_bytes"]), model_bytes=int(out["model_bytes"]))


def _child() -> None:
    from polystack.backends import registry

    req: dict[str, Any] = json.loads(sys.stdin.read())
    signature = Signature.from_dict(req["signature"])
    with np.load(req["inputs"], allow_pickle=False) as z:
        inputs = {k: z[k] for k in z.files}
    baseline = _peak_rss()
    backend = registry.require(req["backend"])
    model = backend.load(Path(req["artifact"]), signature, backend.parse_options(req["options"]), req["device"])
    for _ in range(3):
        model.infer(inputs)
    peak = _peak_rss()
    model.close()
    sys.stdout.write(json.dumps({"peak_rss_bytes": peak, "model_bytes": max(0, peak - baseline)}) + "\n")
