"""`polystack serve --profile P` loads the tuned plan's variant, threads and batch policy when one exists here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from servekit import start

from polystack.batching import BatchPolicy
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
