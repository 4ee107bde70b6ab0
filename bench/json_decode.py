"""JSON decode floor: how many batch-1 requests one front-end core can decode, against the batching target.

    .venv/bin/python bench/json_decode.py            # about 1 minute
    .venv/bin/python bench/json_decode.py --quick    # 0.5 s per cell, for a smoke check

The serving benchmark's batching target is items/s through the server >= 0.85 x in-process Offline items/s
at batch 32. Sent as batch-1 JSON, every item is a JSON text of its own that the server must read before
anything else. This measures that reading alone: no HTTP, no batching, no model, no answer, one thread on
the front-end core of the serving benchmark's pinned server (the first core), for the same request bodies
(`serving.request_bytes`), in three ways:
- `simdjson`: parse, then the tensor's numbers into a float32 array (what the serving benchmark's minimal
  server does; simdjson is the fastest JSON reader on PyPI that we found);
- `polystack json`: `http_codec.decode_infer_request` on the same body (simdjson into numpy, plus the checks);
- `polystack binary`: the same tensor sent with the binary tensor extension, as tritonclient sends it.
Requests/s is the best of the repeats (the ways take turns, after a warm-up of each): the most any server
with that one core for its front end could take in, with no other work at all. Against it, the target: 0.85 x the Offline figure on the runtime cores (the
pinned server's other cores, one runtime thread each, as in the serving benchmark; the best of as many
runs); `core_at_target` is the
share of the front-end core reading alone takes at the target's rate. Where `simdjson`'s is 1 or more, no
server reaches the target with batch-1 JSON requests on these cores.

Results go to bench/results/json_decode.json and a table into BENCHMARKS.md (between json-decode markers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, request bodies, Offline figure and summaries

RESULTS = serving.ROOT / "bench" / "results" / "json_decode.json"
START, END = "<!-- json-decode:start -->", "<!-- json-decode:end -->"
TARGET = 0.85


def body_of(request: bytes) -> tuple[bytes, int | None]:
    """The body of a raw HTTP request, and its Inference-Header-Content-Length (None: plain JSON)."""
    head, body = request.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"inference-header-content-length":
            return body, int(value)
    return body, None


def rate(decode: Callable[[], object], duration_s: float) -> float:
    """Calls of ``decode`` per second on this thread, over ``duration_s``."""
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < duration_s:
        for _ in range(20):
            decode()
        n += 20
    return n / elapsed


def best_rates(ways: dict[str, Callable[[], object]], duration_s: float, repeats: int) -> dict[str, float]:
    """Each way's best rate over ``repeats`` rounds, the ways taking turns (order rotated each round) after
    a warm-up of each, so that a slow start or drift on the core hits no way alone."""
    for decode in ways.values():
        rate(decode, min(0.5, duration_s))
    best = dict.fromkeys(ways, 0.0)
    names = list(ways)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            best[name] = max(best[name], rate(ways[name], duration_s))
    return best


def decoders(name: str, shape: list[int]) -> dict[str, tuple[int, Callable[[], object]]]:
    """Each way's (body bytes, a call that reads one request's tensor)."""
    import simdjson

    from polystack.protocol import http_codec

    json_body, _ = body_of(serving.request_bytes(name, shape, 0))
    binary_body, header = body_of(serving.request_bytes(name, shape, 0, binary=True))
    parser = simdjson.Parser()

    def minimal() -> object:
        doc = parser.parse(json_body)
        x = np.frombuffer(doc["inputs"][0]["data"].as_buffer(of_type="d"), dtype=np.float64).astype(np.float32)
        del doc  # simdjson's views into its parser go before the next parse
        return x.reshape(shape)

    return {
        "simdjson": (len(json_body), minimal),
        "polystack json": (len(json_body), lambda: http_codec.decode_infer_request(json_body)),
        "polystack binary": (len(binary_body), lambda: http_codec.decode_infer_request(binary_body, header)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.5 s per cell, one run")
    ap.add_argument("--duration-s", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    duration, repeats = (0.5, 1) if args.quick else (args.duration_s, max(1, args.repeats))
    cores = serving.placement()
    if cores is None:
        print("needs Linux and at least 2 cores (a front-end core and runtime cores)", file=sys.stderr)
        return 2
    front, runtime = cores
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-json-decode-"))
    home = work / "home"
    rows: list[dict[str, Any]] = []
    offline: dict[str, float] = {}
    try:
        for name, (path, shape) in serving.build_models(work).items():
            subprocess.run(
                [str(serving.ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "register", str(path),
                 "--name", name],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            x32 = np.random.default_rng(0).standard_normal([32, *shape[1:]]).astype(np.float32)
            # the best of the repeats too: the target is then the highest it could be (the bound is conservative)
            offline[name] = round(
                max(serving.offline_pinned(home, name, x32, duration, runtime) for _ in range(repeats)), 1
            )
            before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, front)
            try:
                ways = decoders(name, shape)
                rates = best_rates({way: decode for way, (_, decode) in ways.items()}, duration, repeats)
                for way, (size, _) in ways.items():
                    rps = rates[way]
                    rows.append({"model": name, "way": way, "body_bytes": size, "requests_per_s": round(rps, 1),
                                 "us_per_request": round(1e6 / rps, 2),
                                 "core_at_target": round(TARGET * offline[name] / rps, 3)})  # fmt: skip
                    print(rows[-1], flush=True)
            finally:
                os.sched_setaffinity(0, before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "json_decode",
        "command": " ".join(["python", "bench/json_decode.py", *sys.argv[1:]]),
        "duration_s": duration,
        "repeats": repeats,
        "front_end_cpus": sorted(front),
        "runtime_cpus": sorted(runtime),
        "offline_items_per_s_b32_pinned": offline,
        "rows": rows,
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    cells = f"{result['duration_s']:g} s per cell, best of {result['repeats']} runs"
    lines = [
        START,
        "## JSON decode floor (`bench/json_decode.py`)",
        "",
        f"Measured {result['measured_at']} on this machine ({result['machine']['cpus']} CPUs), {cells}. Command: "
        f"`.venv/bin/{result['command']}`. 1-minute load average at start / end: "
        f"{result['load_average_1m']['start']} / {result['load_average_1m']['end']}.",
        "One thread on the pinned server's front-end core (CPU "
        f"{','.join(map(str, result['front_end_cpus']))}) reads the serving benchmark's batch-1 request bodies "
        "and nothing else: no HTTP, batching, model or answer. `simdjson`: parse and the numbers into a float32 "
        "array (the minimal server's reading); `polystack json`: `http_codec.decode_infer_request`; "
        "`polystack binary`: the same tensor with the binary tensor extension. `target` is "
        f"{TARGET} x in-process Offline items/s at batch 32 on the runtime cores (CPU "
        f"{','.join(map(str, result['runtime_cpus']))}, one thread each): "
        + ", ".join(f"{m} {TARGET * v:,.0f} items/s" for m, v in result["offline_items_per_s_b32_pinned"].items())
        + ".",
        "",
        "| model | way | body bytes | us per request | requests/s | core at target |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['way']} | {r['body_bytes']:,} | {r['us_per_request']:.2f} | "
            f"{r['requests_per_s']:,.0f} | {r['core_at_target']:.2f} |"
        )
    lines += [
        "",
        "`core at target` is the share of the front-end core that reading the requests alone takes at the target's "
        "rate (target items/s x us per request). In the serving benchmark that core also runs the client, the HTTP "
        "layer, the batcher's hand-offs and the answers; at 1 or more, no server whose front end has that core "
        "meets the target with batch-1 JSON requests.",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
