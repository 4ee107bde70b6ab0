"""`polystack serve --profile P` loads the tuned plan's variant, threads and batch policy when one exists here."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from servekit import caught_logs, cli_server, free_port, refused_at_start, start

from polystack.batching import BatchOverrides, BatchPolicy
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.server.app import policy_for, spec_for
from polystack.store import ModelRecord, Store
from polystack.tuning.plan import fingerprint


def test_serve_follows_a_fresh_plan_and_ignores_a_stale_one(store: Store, mlp_path: Path) -> None:
    imported = import_model(mlp_path, mlp_path.parent)
    record, _ = store.register(imported.artifact, name="mlp", format="onnx", signature=imported.signature)
    assert spec_for(store, record, "server").variant_id is None  # no plan: the default spec
    assert policy_for(store, record, "server") is not None and policy_for(store, record, "realtime") is None

    variant = store.variants.upsert(
        record, backend="onnxruntime", device="cpu", precision="fp32", options={}, format="onnx",
        digest=record.digest, size_bytes=record.size_bytes, status="verified",
    )  # fmt: skip
    settings = {
        "profile": "server", "threads": 1, "thread_option": "intra_op_threads", "instances": 2,
        "dynamic_batching": True, "max_batch_size": 16, "max_delay_ms": 0.5,
    }  # fmt: skip
    common = {"variant_id": variant.id, "measurements": [], "explanation": "", "machine": {}}
    store.plans.put(record, profile="server", fingerprint="another-machine", settings=settings, **common)
    assert spec_for(store, record, "server").variant_id is None  # stale: measured elsewhere

    store.plans.put(record, profile="server", fingerprint=fingerprint(), settings=settings, **common)
    spec = spec_for(store, record, "server")
    assert spec.variant_id == variant.id and spec.options == {"intra_op_threads": 1}
    policy = policy_for(store, record, "server")
    assert policy is not None
    assert (policy.max_batch_size, policy.max_queue_delay_ms, policy.instances) == (16, 0.5, 2)

    store.plans.put(
        record,
        profile="realtime",
        fingerprint=fingerprint(),
        settings={**settings, "dynamic_batching": False},
        **common,
    )
    assert policy_for(store, record, "realtime") is None


def test_threads_and_instances_from_the_command_line_set_the_runtime_up(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    st = start(store, models=["mlp"], batching=BatchPolicy(max_batch_size=8, instances=2), threads=1)
    try:
        (entry,) = [e for e in st.server.plane.engine.loaded() if e.name == "mlp"]
        assert entry.spec.backend == "onnxruntime" and entry.spec.options["intra_op_threads"] == 1
        client = httpclient.InferenceServerClient(st.http_url)
        x = httpclient.InferInput("x", [3, 16], "FP32")
        x.set_data_from_numpy(np.ones((3, 16), np.float32))
        assert client.infer("mlp", [x]).as_numpy("y").shape[0] == 3
    finally:
        st.stop()


PLANNED = BatchPolicy(max_batch_size=16, max_queue_delay_ms=4, instances=2)


def _config(st: Any, model: str = "mlp") -> dict[str, Any]:
    return httpclient.InferenceServerClient(st.http_url).get_model_config(model)


def test_batching_settings_replace_only_what_they_name_in_the_plans_policy(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """`serve --profile server --max-batch-size 8` batched with the plan's 16, silently; with --batching it
    lost the plan's instances and delay to the flags' defaults."""
    store, _ = model_store
    overrides = BatchOverrides(max_batch_size=8)
    with caught_logs("polystack.server", logging.INFO) as records:
        st = start(store, models=["mlp"], policy_for=lambda *_: PLANNED, batch_overrides=overrides)
        try:
            config = _config(st)
            assert config["max_batch_size"] == 8 and config["instance_group"][0]["count"] == 2
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 4000
        finally:
            st.stop()
    # the log says what was loaded and how it is batched
    (loaded,) = [r.__dict__ for r in records if r.getMessage() == "model loaded"]
    assert loaded["backend"] == "onnxruntime" and loaded["variant"] is None and loaded["device"] == "cpu"
    assert loaded["batching"]["max_batch_size"] == 8 and loaded["batching"]["instances"] == 2


def test_batching_settings_on_a_model_the_profile_does_not_batch_warn_unless_batching_is_forced(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    overrides = BatchOverrides(max_queue_delay_ms=1, instances=2)
    with caught_logs("polystack.server") as records:
        st = start(store, models=["mlp"], batch_overrides=overrides)
        try:
            assert "dynamic_batching" not in _config(st)
        finally:
            st.stop()
    assert any("do not apply" in r.getMessage() for r in records)
    st = start(store, models=["mlp"], batch_overrides=overrides, force_batching=True)
    try:
        config = _config(st)
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
        assert config["instance_group"][0]["count"] == 2 and config["max_batch_size"] == 32
    finally:
        st.stop()


def test_batching_settings_with_no_batching_or_out_of_range_exit_2(tmp_path: Path) -> None:
    assert "--no-batching" in refused_at_start(tmp_path, ["--no-batching", "--max-batch-size", "8"])
    assert "--max-batch-size must be" in refused_at_start(tmp_path, ["--max-batch-size", "0"])  # the flag, by name
    assert "--timeout-s must be" in refused_at_start(tmp_path, ["--timeout-s", "0"])


def test_serve_cli_applies_batching_settings_to_the_profiles_policy(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    http_port = free_port()
    args = ["mlp", "--profile", "server", "--grpc-port", "-1", "--max-batch-size", "8", "--max-queue-size", "0"]
    with cli_server(store.settings.home, args, http_port, tmp_path / "log") as proc:
        config = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").get_model_config("mlp")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 0


def test_a_plan_whose_variant_was_rejected_since_is_said_to_be_unusable(store: Store, mlp_path: Path) -> None:
    """It was skipped in silence: the server served the source, unbatched, and nothing said why."""
    imported = import_model(mlp_path, mlp_path.parent)
    record, _ = store.register(imported.artifact, name="mlp", format="onnx", signature=imported.signature)
    variant_kw: dict[str, Any] = {
        "backend": "onnxruntime", "device": "cpu", "precision": "fp32", "options": {}, "format": "onnx",
        "digest": record.digest, "size_bytes": record.size_bytes,
    }  # fmt: skip
    variant = store.variants.upsert(record, status="verified", **variant_kw)
    settings = {"profile": "edge", "threads": 1, "thread_option": "intra_op_threads", "instances": 1}
    store.plans.put(
        record, profile="edge", fingerprint=fingerprint(), settings=settings, variant_id=variant.id,
        measurements=[], explanation="", machine={},
    )  # fmt: skip
    store.variants.upsert(record, status="rejected", **variant_kw)
    with caught_logs("polystack.server") as records:
        assert spec_for(store, record, "edge").variant_id is None
    assert any("cannot be used" in r.getMessage() for r in records)


def test_an_unbatched_plans_instances_are_served_as_it_was_measured(store: Store, mlp_path: Path, tmp_path: Path) -> None:
    """A realtime plan of 1 instance x 2 threads was served on the shared threads, two requests at once with 2 runtime
    threads each on 2 cores, though `serve --help` said the plan's count (helper-261)."""
    imported = import_model(mlp_path, mlp_path.parent)
    record, _ = store.register(imported.artifact, name="mlp", format="onnx", signature=imported.signature)
    variant = store.variants.upsert(
        record, backend="onnxruntime", device="cpu", precision="fp32", options={}, format="onnx",
        digest=record.digest, size_bytes=record.size_bytes, status="verified",
    )  # fmt: skip
    settings = {"profile": "realtime", "threads": 1, "thread_option": "intra_op_threads", "instances": 3}
    store.plans.put(
        record, profile="realtime", fingerprint=fingerprint(), settings=settings, variant_id=variant.id,
        measurements=[], explanation="", machine={},
    )  # fmt: skip
    port = free_port()
    args = ["mlp", "--profile", "realtime", "--grpc-port", "-1"]
    with cli_server(store.settings.home, args, port, tmp_path / "serve.log"):
        config = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_config("mlp")
    assert [g["count"] for g in config["instance_group"]] == [3], config
    assert '"instances":3' in (tmp_path / "serve.log").read_text()


def test_serving_the_default_in_place_of_a_plan_says_why(store: Store, mlp_path: Path, tmp_path: Path) -> None:
    """A stale plan, or a plan of another version, left the default served in silence (helper-261)."""
    imported = import_model(mlp_path, mlp_path.parent)
    record, _ = store.register(imported.artifact, name="mlp", format="onnx", signature=imported.signature)
    plan = {"variant_id": None, "measurements": [], "explanation": "", "machine": {}}
    store.plans.put(record, profile="server", fingerprint="another-machine", settings={"profile": "server"}, **plan)
    with caught_logs("polystack.server") as records:
        assert spec_for(store, record, "server").variant_id is None
        assert spec_for(store, record, "edge").variant_id is None  # no plan at all: the default, as documented
    said = [r.getMessage() for r in records]
    assert len(said) == 1 and "measured on another machine" in said[0] and "--profile server" in said[0], said
    store.plans.put(record, profile="edge", fingerprint=fingerprint(), settings={"profile": "edge"}, **plan)
    newer = mlp_onnx(tmp_path / "mlp2.onnx", sizes=(8, 16, 3), seed=7)  # other weights: version 2
    imported = import_model(newer, tmp_path)
    second, _ = store.register(imported.artifact, name="mlp", format="onnx", signature=imported.signature)
    assert second.version == 2
    with caught_logs("polystack.server") as records:
        spec_for(store, second, "edge")
    said = [r.getMessage() for r in records]
    assert len(said) == 1 and "version 1 has one" in said[0] and "serve mlp:1" in said[0], said
