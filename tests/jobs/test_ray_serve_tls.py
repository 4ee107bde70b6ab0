"""Ray Serve with ``--tls-cert``/``--tls-key``: its proxy terminates TLS with the server's files, and
tritonclient's ``ssl=True`` infers against it unchanged.

Marked ``ray``: `make test` runs it inside a loopback-only network namespace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from jobdata import FEATURES, reference, register_mlp
from ports import free_port

from polystack.config import StoreSettings
from polystack.store import Store

pytestmark = pytest.mark.ray


def test_tritonclient_infers_over_https_against_ray_serve(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    trustme = pytest.importorskip("trustme")
    import gevent.ssl
    import tritonclient.http as httpclient
    from ray import serve

    from polystack.server.app import ServeConfig
    from polystack.server.ray_serve import build_app, proxy_options
    from polystack.server.tls import TlsConfig

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    (tmp_path / "server.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    store = Store(StoreSettings(home=tmp_path / "home"))
    register_mlp(store, tmp_path)
    store.close()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        port = free_port()  # once Ray's own processes hold their ports: one of them took one chosen before
        tls = TlsConfig.resolve(tmp_path / "server.pem", tmp_path / "server.key", None)
        config = ServeConfig(host="127.0.0.1", http_port=port, grpc_port=None, tls=tls)
        serve.start(http_options=proxy_options(config))
        app = build_app(tmp_path / "home", config, replicas=1)
        # the proxy terminates TLS: replicas get no key to carry through Ray's object store
        assert [a.tls for a in app._bound_deployment.init_args if isinstance(a, ServeConfig)] == [None]
        serve.run(app, name="polystack", route_prefix="/")
        client = httpclient.InferenceServerClient(
            f"127.0.0.1:{port}",
            ssl=True,
            ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
        )
        assert client.is_server_ready()
        x = np.random.default_rng(5).standard_normal((3, FEATURES)).astype(np.float32)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("mlp", [inp]).as_numpy("y")
        np.testing.assert_allclose(got, reference(tmp_path / "mlp.onnx", x), rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception):  # noqa: B017 - plain HTTP gets no answer from the TLS proxy
            httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=5).is_server_live()
    finally:
        serve.shutdown()
        ray.shutdown()
