"""Wake-up benchmark: what the same Python work costs an event loop that idles between events.

    .venv/bin/python bench/wakeup.py            # about 1 minute
    .venv/bin/python bench/wakeup.py --quick    # fewer events, for a smoke check

Why: on this machine the serving front end spent 140-240 us of CPU per 32-item binary request when
the runtime was busy, against ~65 us when it ran back to back. Two measurements, each at gaps of
0 (back to back), 0.2, 1 and 3 ms between events, rounds interleaved, medians kept:

- ``python``: a uvloop loop on core 0 runs the same pure-Python callback (a fixed loop of integer
  arithmetic) for each ``call_soon_threadsafe`` from a thread on core 1 that sleeps the gap between
  calls. CPU seconds of the loop thread per event.
- ``front end``: polystack's HTTP front end (``HttpProtocol`` and everything behind it: decoding,
  the dynamic batcher, encoding) driven without sockets, 8 requests in flight, each a 32-item binary
  FP32 request to an MLP on the null backend, which answers after the gap (sleeping, no CPU). CPU
  seconds of the loop thread per request.

Results go to bench/results/wakeup.json and a table into BENCHMARKS.md (between markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, request bytes and BENCHMARKS.md writer

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "wakeup.json"
START, END = "<!-- wakeup:start -->", "<!-- wakeup:end -->"
GAPS_MS = (0.0, 0.2, 1.0, 3.0)


def _work() -> int:
    total = 0
    for i in range(1000):
        total += i * i
    return total


def python_cpu_per_event(gap_s: float, events: int) -> float:
    """Loop-thread CPU microseconds per event: the same callback for each wake-up from another core."""
    import uvloop

    async def main() -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        count = [0]

        def callback() -> None:
            _work()
            count[0] += 1
            if count[0] == events and not done.done():
                done.set_result(None)

        def feeder() -> None:
            os.sched_setaffinity(0, {1})
            for _ in range(events):
                loop.call_soon_threadsafe(callback)
                if gap_s:
                    time.sleep(gap_s)

        started = time.thread_time()
        thread = threading.Thread(target=feeder)
        thread.start()
        await done
        thread.join()
        return (time.thread_time() - started) / events * 1e6

    return uvloop.run(main())


class FakeTransport:
    """What ``HttpProtocol`` writes its answers to in process, with no socket: each answer's first part (its
    head: the status line) goes to ``answered``, which may feed the connection its next request."""

    def __init__(self, answered: Callable[[bytes], None]) -> None:
        self.answered = answered

    def write(self, data: bytes) -> None:
        self.answered(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.answered(parts[0])

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, *args: Any, **kw: Any) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def front_end_cpu_per_request(store: Any, request: bytes, gap_ms: float, requests: int) -> float:
    """Loop-thread CPU microseconds per request through ``HttpProtocol`` with a fake transport."""
    import uvloop

    from polystack.server.http_connection import HttpProtocol

    server = null_server(store, gap_ms)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        left = [requests]
        done = loop.create_future()
        connections = []
        for _ in range(8):
            conn = HttpProtocol(server.http)

            def answered(head: bytes, conn: HttpProtocol = conn) -> None:
                left[0] -= 1
                if left[0] <= 0:
                    if not done.done():
                        done.set_result(None)
                    return
                loop.call_soon(conn.data_received, request)

            conn.connection_made(FakeTransport(answered))  # type: ignore[arg-type]
            connections.append(conn)
        started = time.thread_time()
        for conn in connections:
            conn.data_received(request)
        await done
        return (time.thread_time() - started) / requests * 1e6

    os.sched_setaffinity(0, {0})
    try:
        return uvloop.run(main())
    finally:
        server.close()
        server.engine.close()


def null_server(store: Any, delay_ms: float) -> Any:
    """The MLP served with batching (32 items, 2 ms) on the null backend, which answers after ``delay_ms``."""
    from polystack.batching import BatchPolicy
    from polystack.engine import Engine, LoadSpec
    from polystack.server.app import ServeConfig, Server

    config = ServeConfig(
        http_port=0, grpc_port=None, batching=BatchPolicy(max_batch_size=32, max_queue_delay_ms=2), models=["mlp"]
    )

    def null_spec(store: Any, record: Any, profile: str) -> LoadSpec:
        options = {"delay_ms": delay_ms}
        return LoadSpec(artifact=store.artifact_path(record), format=record.format, backend="null", options=options)

    server = Server(Engine(store), config, spec_for=null_spec)
    server.load_models()
    return server


def register_mlp(work: Path) -> tuple[Any, bytes]:
    from polystack.config import StoreSettings
    from polystack.formats import import_model
    from polystack.store import Store

    path, shape = serving.build_models(work)["mlp"]
    store = Store(StoreSettings(home=work / "home"))
    imported = import_model(path, work / "import")
    store.register(imported.artifact, name="mlp", format=imported.format, signature=imported.signature)
    return store, serving.request_bytes("mlp", [32, *shape[1:]], 1, binary=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 cores (the loop on one, the feeder or runtime on another)", file=sys.stderr)
        return 2
    rounds = 1 if args.quick else 3
    scale = 0.2 if args.quick else 1.0
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wakeup-") as tmp:
        store, request = register_mlp(Path(tmp))
        samples: dict[str, dict[float, list[float]]] = {"python": {}, "front end": {}}
        try:
            for r in range(rounds):
                for gap in GAPS_MS if r % 2 == 0 else tuple(reversed(GAPS_MS)):
                    events = int((20000 if gap == 0 else 1000) * scale)
                    samples["python"].setdefault(gap, []).append(python_cpu_per_event(gap / 1000.0, events))
                    n = int((8000 if gap == 0 else 1500) * scale)
                    samples["front end"].setdefault(gap, []).append(front_end_cpu_per_request(store, request, gap, n))
                    print(
                        f"round {r + 1} gap {gap} ms:",
                        {k: round(v[gap][-1], 1) for k, v in samples.items()},
                        flush=True,
                    )
        finally:
            store.close()
    rows = [
        {"what": what, "gap_ms": gap, "cpu_us": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v]}
        for what, by_gap in samples.items()
        for gap, v in by_gap.items()
    ]
    result = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "rounds": rounds,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        write_markdown(result)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    by = {(r["what"], r["gap_ms"]): r["cpu_us"] for r in result["rows"]}
    lines = [
        START,
        "## Wake-up cost (`bench/wakeup.py`)",
        "",
        f"Measured {result['measured']} on this machine ({result['machine']}), median of {result['rounds']} "
        f"interleaved rounds. Command: `.venv/bin/python bench/wakeup.py`. 1-minute load average at start / end: "
        f"{result['load_average'][0]} / {result['load_average'][1]}.",
        "CPU microseconds of the event loop's thread per event: `python` is one fixed pure-Python callback per "
        "`call_soon_threadsafe` from a thread on the other core that sleeps the gap; `front end` is polystack's "
        "`HttpProtocol` (decode, dynamic batcher, encode) driven without sockets, 8 requests in flight of 32 "
        "items each (binary FP32, MLP) on the null backend, which answers after the gap without using CPU.",
        "",
        "| gap between events | python (us/event) | ratio to back to back | front end (us/request) | ratio |",
        "|---|---|---|---|---|",
    ]
    base_p, base_f = by[("python", 0.0)], by[("front end", 0.0)]
    for gap in GAPS_MS:
        p, f = by[("python", gap)], by[("front end", gap)]
        label = "0 (back to back)" if gap == 0 else f"{gap:g} ms"
        lines.append(f"| {label} | {p:.1f} | {p / base_p:.2f} | {f:.1f} | {f / base_f:.2f} |")
    lines += [
        "",
        "The same work costs more CPU when the thread sleeps between events, and the front end's work (more "
        "code and data than one callback) more so. Why was not measured; cold caches and branch predictors after "
        "the sleep are the likely cause (on a virtual machine an idle vCPU may also be descheduled). It is consistent with the "
        "front end's CPU per request being higher in the serving benchmark's shared-core cells, where the loop waits "
        "on the runtime, than when it runs back to back.",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
