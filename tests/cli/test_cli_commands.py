"""The CLI as a user runs it: a real subprocess per command, a store in a temp folder."""

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from polystack import samples as samples_mod
from polystack.store import Store


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POLYSTACK_HOME": str(home), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "polystack", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def fails_with(out: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line that says what to do
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out.stderr


def test_register_list_show_predict_remove(home: Path, mlp_path: Path, tmp_path: Path) -> None:
    out = run(home, "register", str(mlp_path), "--name", "mlp", "--tag", "team=search", "--json")
    rec = json.loads(out.stdout)
    assert rec["name"] == "mlp" and rec["version"] == 1 and rec["created"] is True
    assert rec["signature"]["inputs"][0]["shape"] == [-1, 8]
    assert "already registered" in run(home, "register", str(mlp_path), "--name", "mlp").stdout

    listed = json.loads(run(home, "models", "--json").stdout)
    assert [(m["name"], m["version"], m["tags"]) for m in listed] == [("mlp", 1, {"team": "search"})]
    assert "x: FP32[batch, 8]" in run(home, "show", "mlp:1").stdout

    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    y = json.loads(run(home, "predict", "mlp", "--input", str(tmp_path / "x.npy")).stdout)["y"]
    assert np.asarray(y).shape == (2, 3)
    (tmp_path / "x.json").write_text(json.dumps({"x": x.tolist()}))
    run(home, "predict", "mlp:1", "--input", str(tmp_path / "x.json"), "--output", str(tmp_path / "y.npz"))
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_allclose(z["y"], np.asarray(y), rtol=1e-5)

    orphan = home / "blobs" / "sha256" / ("ab" * 32)  # a blob a killed writer left, named by no row, hours old
    orphan.write_bytes(b"left behind")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    removed = run(home, "remove", "mlp").stdout
    assert "removed mlp:1" in removed and "deleted 1 file nothing names" in removed
    assert json.loads(run(home, "models", "--json").stdout) == []
    assert not orphan.exists() and list((home / "blobs" / "sha256").iterdir()) == []


def test_bad_input_exits_2_with_one_line(home: Path, mlp_path: Path, tmp_path: Path) -> None:
    run(home, "register", str(mlp_path), "--name", "mlp")
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model at all\n" * 20)
    fails_with(run(home, "register", str(notes), check=False), "not a")
    fails_with(run(home, "register", str(mlp_path), "--name", "../etc", check=False), "not allowed")
    fails_with(run(home, "register", str(tmp_path / "missing.onnx"), check=False), "does not exist")
    fails_with(run(home, "register", str(mlp_path), "--tag", "oops", check=False), "KEY=VALUE")
    fails_with(run(home, "show", "ghost", check=False), "no model named 'ghost'")
    fails_with(run(home, "show", "mlp:9", check=False), "has no version 9")
    fails_with(run(home, "show", "mlp:x", check=False), "not a positive integer")
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path / "bad.npy"), check=False), "Expected [-1,8], got [2,5]")
    np.save(tmp_path / "int.npy", np.zeros((2, 8), np.int64))
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path / "int.npy"), check=False), "data-type is 'INT64'")
    (tmp_path / "wrong.json").write_text(json.dumps({"z": [[0.0] * 8]}))
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path / "wrong.json"), check=False), "unexpected inference input 'z'")
    (tmp_path / "broken.json").write_text("{not json")
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path / "broken.json"), check=False), "cannot read inputs")
    # a folder is named as one (helper-86: "does not exist"), and so is a store's home that is a file ("File exists")
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path), check=False), "is a folder; name a file in it")
    fails_with(run(home, "register", str(mlp_path), "--samples", str(tmp_path), check=False), "is a folder")
    fails_with(run(tmp_path / "broken.json", "models", check=False), "is a file; give --home (or POLYSTACK_HOME) a folder")
    # the store is intact after all of that
    assert [m["name"] for m in json.loads(run(home, "models", "--json").stdout)] == ["mlp"]


def test_command_line_mistakes_exit_2_with_one_line(home: Path, mlp_path: Path, tmp_path: Path) -> None:
    # click's usage errors were boxes of five or six lines; the others tracebacks, "Aborted." (exit 1), or success
    run(home, "register", str(mlp_path), "--name", "mlp")
    fails_with(run(home, "tune", "mlp", "--budget-s", "abc", check=False), "'--budget-s'")
    fails_with(run(home, "tune", "mlp", "--budget-s", "abc", check=False), "polystack tune --help")
    fails_with(run(home, "tunee", check=False), "No such command 'tunee'")
    fails_with(run(home, "tune", "mlp", "--budget-s", "nan", check=False), "--budget-s must be a positive number")
    fails_with(run(home, "tune", "mlp", "--slo-ms", "nan", "-p", "edge", check=False), "--slo-ms must be a positive")
    fails_with(run(home, "tune", "mlp", "--budget-s", "5", "--duration-ms", "30000", check=False), "outlast the whole")
    fails_with(run(home, "show", "mlp:" + "9" * 30, check=False), "not a positive integer up to")
    fails_with(run(home, "plan", "show", "mlp", "--profile", "foo", check=False), "unknown profile 'foo'")
    (tmp_path / "empty.npy").write_bytes(b"")
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path / "empty.npy"), check=False), "empty.npy is empty")
    (tmp_path / "empty.npz").write_bytes(b"")
    fails_with(run(home, "register", str(mlp_path), "--samples", str(tmp_path / "empty.npz"), check=False), "is empty")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")  # a file that ends in its header: numpy's EOFError
    fails_with(run(home, "predict", "mlp", "--input", str(tmp_path / "cut.npy"), check=False), "cannot read inputs")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 8), np.float32))
    fails_with(run(home, "predict", "mlp", "--input", str(x), "--variant", "v", "--device", "cuda:0", check=False),
               "leave out --device")  # fmt: skip
    fails_with(run(home, "register", str(tmp_path), check=False), "is a folder; give the model's file in it")
    out = tmp_path / "scored"
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    csv = str(tmp_path / "rows.csv")
    fails_with(run(home, "batch", "mlp", "-i", csv, "-o", str(out), "-c", "x=", check=False), "names no column")
    np.save(tmp_path / "narrow.npy", np.zeros((5, 3), np.float32))  # rows of 3 for a model taking 8: its schema says so
    refused = run(home, "batch", "mlp", "-i", str(tmp_path / "narrow.npy"), "-o", str(out), "--no-progress", check=False)
    fails_with(refused, "takes 8 values a row, and column 'x' holds lists of 3; give a column of 8-value lists")
    (tmp_path / "narrow.jsonl").write_text('{"x": [0, 0, 0]}\n' * 5)  # the same rows, which only reading them shows
    narrow = str(tmp_path / "narrow.jsonl")
    refused = run(home, "batch", "mlp", "-i", narrow, "-o", str(out), "--no-progress", check=False)
    fails_with(refused, "every row was refused (5 of 5), the first because input 'x' has shape [3]")
    # an empty POLYSTACK_HOME is no POLYSTACK_HOME (it made a store in the working folder)
    env = {**os.environ, "POLYSTACK_HOME": "", "HOME": str(tmp_path / "user")}
    (tmp_path / "cwd").mkdir()
    done = subprocess.run([sys.executable, "-m", "polystack", "models"], cwd=tmp_path / "cwd", env=env, timeout=120,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "cwd").iterdir()) == [] and (tmp_path / "user" / ".polystack" / "catalog.db").is_file()


def test_a_pickle_is_refused_without_being_unpickled(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    for name in ("model.pkl", "model.onnx", "weights"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps(Payload()))
        fails_with(run(home, "register", str(p), check=False), "pickle")
    assert not marker.exists()


def test_doctor_describes_this_machine(home: Path) -> None:
    report = json.loads(run(home, "doctor", "--json").stdout)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert report["logical_cores"] == os.cpu_count()
    model_name = next(line for line in cpuinfo.splitlines() if line.startswith("model name")).split(":")[1].strip()
    assert report["cpu_model"].startswith(model_name)
    flags = set(next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split(":")[1].split())
    assert ("AVX2" in report["isa"]) == ("avx2" in flags)
    assert ("AVX512_BF16" in report["isa"]) == ("avx512_bf16" in flags)
    assert ("AMX" in report["isa"]) == ("amx_tile" in flags)
    ort = next(r for r in report["runtimes"] if r["name"] == "onnxruntime")
    assert ort["installed"] and "CPUExecutionProvider" in ort["devices"]
    assert {b["backend"] for b in report["backends"]} >= {"null", "onnxruntime"}
    assert report["memory_bytes"] > 2**30
    from polystack.tuning.plan import fingerprint

    assert report["fingerprint"] == fingerprint()  # the identity plans are stored under
    text = run(home, "doctor").stdout
    assert "onnxruntime" in text and "fingerprint" in text


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = run(tmp_path / "unused", "demo", "--demo-home", str(tmp_path / "demo"))
    assert "demo finished" in out.stdout


def test_register_keeps_class_labels_and_refuses_files_that_do_not_fit(
    home: Path, mlp_path: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfish\n")
    out = run(home, "register", str(mlp_path), "--name", "mlp", "--labels", f"y={labels}", "--json")
    settings = json.loads(out.stdout)["settings"]
    assert settings["labels"] == {"y": ["cat", "dog", "fish"]} and settings["label_files"] == {"y": "labels.txt"}
    labels.write_text("cat\ndog\n")
    fails_with(run(home, "register", str(mlp_path), "--labels", str(labels), check=False), "3 classes")
    fails_with(run(home, "register", str(mlp_path), "--labels", f"z={labels}", check=False), "no output 'z'")


def test_register_refuses_samples_and_tolerances_that_would_blind_the_gate(
    home: Path, mlp_path: Path, tmp_path: Path
) -> None:
    """helper-258: samples of no rows made every variant verified on nothing, a class_outputs naming no output
    dropped the top-1 check, and an infinite bound was no bound; a few rows are taken, with a warning."""
    np.save(tmp_path / "none.npy", np.zeros((0, 8), np.float32))
    fails_with(run(home, "register", str(mlp_path), "--samples", str(tmp_path / "none.npy"), check=False), "no rows")
    fails_with(run(home, "register", str(mlp_path), "--tolerance", "class_outputs=logits", check=False),
               "names no output 'logits'; the model's outputs are y")  # fmt: skip
    fails_with(run(home, "register", str(mlp_path), "--tolerance", "fp32_rtol=inf", check=False), "invalid tolerance")
    np.save(tmp_path / "two.npy", np.ones((2, 8), np.float32))
    out = run(home, "register", str(mlp_path), "--name", "mlp", "--samples", str(tmp_path / "two.npy"))
    assert "warning: the samples hold 2 rows" in " ".join(out.stderr.split()), out.stderr
    run(home, "variants", "mlp")
    again = run(home, "register", str(mlp_path), "--name", "mlp", "--tolerance", "int8_min_cosine=0.999")
    assert "has tolerances given again" in again.stderr and "--rebuild" in again.stderr, again.stderr


def test_registering_the_same_bytes_with_samples_gives_the_model_those_samples(
    home: Path, mlp_path: Path, tmp_path: Path
) -> None:
    """The README's sequence: register, then register again with --samples (helper-86: the second said
    "already registered" and kept the synthesized samples, so `variants` kept warning about them)."""
    first = json.loads(run(home, "register", str(mlp_path), "--name", "mlp", "--json").stdout)
    assert first["settings"].get("samples_synthesized") is True
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", x=x)
    again = run(home, "register", str(mlp_path), "--name", "mlp", "--samples", str(tmp_path / "samples.npz"), "--json")
    record = json.loads(again.stdout)
    assert record["created"] is False and record["version"] == 1 and "samples_synthesized" not in record["settings"]

    def samples() -> dict[str, np.ndarray]:
        store = Store.at(home)
        try:
            found = samples_mod.load(store, store.get("mlp:1"))
            assert found is not None
            return found
        finally:
            store.close()

    np.testing.assert_array_equal(samples()["x"], x)
    # registering without samples now keeps the given ones
    kept = json.loads(run(home, "register", str(mlp_path), "--name", "mlp", "--json").stdout)
    assert "samples_synthesized" not in kept["settings"]
    np.testing.assert_array_equal(samples()["x"], x)
