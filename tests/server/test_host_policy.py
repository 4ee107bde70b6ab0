"""Triton's host policies (``serve --host-policy cpu,<setting>=<value>``): read as tritonserver reads them, the
instances' cores pinned as ``--runtime-cpus`` pins them, and their memory bound to a NUMA node by the kernel's
memory policy, read back from the kernel."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from servekit import cli_server, free_port, refused_at_start

from polystack.errors import InvalidRequest
from polystack.server import host_policy
from polystack.server.host_policy import HostPolicy
from polystack.store import ModelRecord, Store

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
linux = pytest.mark.skipif(not CPUS, reason="host policies need Linux")


def test_settings_are_read_as_tritonserver_reads_them() -> None:
    assert host_policy.parse([]) is None
    assert host_policy.parse(["cpu,cpu-cores=0-1,3-3", "cpu,numa-node=0"]) == HostPolicy(frozenset({0, 1, 3}), 0)
    assert host_policy.parse(["cpu,cpu-cores=0-0", "cpu,cpu-cores=1-1"]) == HostPolicy(frozenset({1}))  # the last


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("cpu", "--host-policy option format is '<policy name>,<setting>=<value>'. Got cpu"),
        ("cpu,cpu-cores=", "--host-policy option format is '<policy name>,<setting>=<value>'. Got cpu,cpu-cores="),
        (",cpu-cores=0-1", "--host-policy option format is"),
        ("cpu,cores=0-1", "Unsupported host policy setting 'cores' is specified, supported settings are 'numa-node', "
                          "'cpu-cores'"),
        ("cpu,cpu-cores=3", "host policy setting 'cpu-cores' format is '<lower_cpu_core_id>-<upper_cpu_core_id>'. "
                            "Got 3; write one core as 3-3"),
        ("cpu,cpu-cores=a-3", "Parsing 'cpu-cores' value: Can't parse 'a' to integer"),
        ("cpu,cpu-cores=3-1", "give a range of cores, low to high"),
        ("cpu,numa-node=x", "Parsing 'numa-node' value: Can't parse 'x' to integer"),
        ("cpu,numa-node=4095", "host policy setting 'numa-node' 4095: this machine's NUMA nodes are"),
        ("gpu_0,numa-node=0", "polystack applies one host policy to every model instance, the one Triton applies to "
                              "CPU instances, 'cpu'"),
    ],
)  # fmt: skip
def test_what_tritonserver_refuses_or_polystack_lacks_is_refused_in_its_words(value: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        host_policy.parse([value])
    assert words in caught.value.message


@linux
def test_a_bound_thread_and_the_threads_it_starts_take_their_memory_from_the_node() -> None:
    node = host_policy.nodes()[0]
    seen: list[tuple[int, frozenset[int]]] = []

    def bound() -> None:
        host_policy.bind_memory(node)
        seen.append(host_policy.memory_policy())
        child = threading.Thread(target=lambda: seen.append(host_policy.memory_policy()))
        child.start()
        child.join()

    thread = threading.Thread(target=bound)
    thread.start()
    thread.join()
    assert seen == [(2, frozenset({node}))] * 2  # MPOL_BIND to the node, inherited
    assert host_policy.memory_policy() == (0, frozenset())  # this thread is as it was


@linux
def test_serve_pins_the_instances_and_binds_their_memory(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    core, node = CPUS[-1], host_policy.nodes()[0]
    port, log_path = free_port(), tmp_path / "serve.log"
    args = ["mlp", "--grpc-port", "-1", "--host-policy", f"cpu,cpu-cores={core}-{core}",
            "--host-policy", f"cpu,numa-node={node}"]  # fmt: skip
    with cli_server(store.home, args, port, log_path) as proc:
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        assert httpx.post(f"http://127.0.0.1:{port}/v2/models/mlp/infer", json=body).status_code == 200
        threads = {int(t): set(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{proc.pid}/task")}
        assert {core} in threads.values()  # the model's threads
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(r["msg"] == "memory bound to a NUMA node (--host-policy)" and r["numa_node"] == node for r in lines)
    serving = next(r for r in lines if r["msg"] == "serving")
    assert serving["runtime_cpus"] == str(core)  # the front end gets the other cores, or every core if none is left


def test_serve_refuses_a_bad_host_policy_with_one_line(tmp_path: Path) -> None:
    assert "Unsupported host policy setting 'cores'" in refused_at_start(tmp_path, ["--host-policy", "cpu,cores=1"])
    assert "per instance group" in refused_at_start(tmp_path, ["--host-policy", "numa1,numa-node=0"])
    if len(CPUS) >= 2:
        args = ["--host-policy", f"cpu,cpu-cores={CPUS[0]}-{CPUS[0]}", "--runtime-cpus", str(CPUS[1])]
        assert "name different cores for the model instances" in refused_at_start(tmp_path, args)
