"""TLS on both transports: tritonclient's ``ssl=True`` works over HTTP and gRPC, mutual TLS refuses clients
without a certificate from the CA, and bad TLS files stop ``polystack serve`` with exit 2.

The certificates come from ``trustme``: a throwaway CA, a server certificate for 127.0.0.1 and
localhost, and client certificates, written to PEM files as a user's would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, start
from tritonclient.utils import InferenceServerException

from polystack.server import app as server_app
from polystack.server.app import ServerThread
from polystack.server.tls import TlsConfig
from polystack.store import ModelRecord, Store

trustme = pytest.importorskip("trustme")


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that issued the server's and the good client's certificates
    cert: Path  # server chain
    key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


def _write_pair(cert: trustme.LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    chain, key = folder / f"{name}.pem", folder / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert, key = _write_pair(ca.issue_cert("127.0.0.1", "localhost"), folder, "server")
    client_cert, client_key = _write_pair(ca.issue_cert("client@example.com"), folder, "client")
    stranger_cert, stranger_key = _write_pair(other.issue_cert("stranger@example.com"), folder, "stranger")
    return Pki(folder / "ca.pem", cert, key, client_cert, client_key, stranger_cert, stranger_key)


@pytest.fixture(scope="module")
def tls_server(model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki) -> Iterator[ServerThread]:
    store, _ = model_store
    st = start(store, models=["mlp", "two"], tls=TlsConfig.resolve(pki.cert, pki.key, None))
    yield st
    st.stop()


@pytest.fixture(scope="module")
def mtls_server(model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki) -> Iterator[ServerThread]:
    store, _ = model_store
    st = start(store, models=["mlp"], tls=TlsConfig.resolve(pki.cert, pki.key, pki.ca))
    yield st
    st.stop()


def _reference(store: Store, record: ModelRecord, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(store.artifact_path(record)), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _https_client(url: str, pki: Pki, cert: tuple[Path, Path] | None = None) -> httpclient.InferenceServerClient:
    def context() -> ssl.SSLContext:
        import gevent.ssl

        ctx = gevent.ssl.create_default_context(cafile=str(pki.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx

    return httpclient.InferenceServerClient(url, ssl=True, ssl_context_factory=context, network_timeout=10)


def _grpcs_client(url: str, pki: Pki, cert: tuple[Path, Path] | None = None) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        url,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=None if cert is None else str(cert[1]),
        certificate_chain=None if cert is None else str(cert[0]),
    )


def _infer_both(
    http: httpclient.InferenceServerClient, grpcc: grpcclient.InferenceServerClient, x: np.ndarray
) -> list[np.ndarray]:
    answers = []
    for binary in (True, False):  # the binary tensor extension (tritonclient's default) and JSON
        hin = httpclient.InferInput("x", list(x.shape), "FP32")
        hin.set_data_from_numpy(x, binary_data=binary)
        answers.append(http.infer("mlp", [hin], outputs=[httpclient.InferRequestedOutput("y", binary)]).as_numpy("y"))
    gin = grpcclient.InferInput("x", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    answers.append(grpcc.infer("mlp", [gin]).as_numpy("y"))
    return answers


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_tritonclient_infers_over_https_and_grpc_with_tls(
    tls_server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki
) -> None:
    store, records = model_store
    http = _https_client(tls_server.http_url, pki)
    grpcc = _grpcs_client(tls_server.grpc_url, pki)
    assert http.is_server_ready() and grpcc.is_server_ready()
    assert http.get_model_metadata("mlp")["inputs"][0]["name"] == "x"
    assert grpcc.get_model_config("mlp").config.name == "mlp"
    x = _rows(3)
    for y in _infer_both(http, grpcc, x):
        np.testing.assert_allclose(y, _reference(store, records["mlp"], x), rtol=1e-5, atol=1e-6)
    # the server's certificate is what the client checked: a client trusting another CA is refused
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx = ssl.create_default_context(cafile=str(pki.stranger_cert))
        with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=5) as raw:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_large_binary_tensors_cross_tls_whole(tls_server: ServerThread, pki: Pki) -> None:
    # 2 MiB per output: the uncopied binary outputs and the write flow control, under TLS
    x = np.random.default_rng(7).standard_normal((1 << 17, 4)).astype(np.float32)
    http = _https_client(tls_server.http_url, pki)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [httpclient.InferRequestedOutput(name) for name in ("same", "neg")]
    for _ in range(3):
        result = http.infer("two", [inp], outputs=outs)
        np.testing.assert_array_equal(result.as_numpy("same"), x)
        np.testing.assert_array_equal(result.as_numpy("neg"), -x)


def test_the_asyncio_clients_work_over_tls(
    tls_server: ServerThread, model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki
) -> None:
    import tritonclient.grpc.aio as agrpc
    import tritonclient.http.aio as ahttp

    store, records = model_store
    x = _rows(2, seed=1)

    async def main() -> list[np.ndarray]:
        http = ahttp.InferenceServerClient(
            tls_server.http_url, ssl=True, ssl_context=ssl.create_default_context(cafile=str(pki.ca))
        )
        grpcc = agrpc.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(pki.ca))
        try:
            hin = ahttp.InferInput("x", list(x.shape), "FP32")
            hin.set_data_from_numpy(x)
            gin = agrpc.InferInput("x", list(x.shape), "FP32")
            gin.set_data_from_numpy(x)
            return [(await http.infer("mlp", [hin])).as_numpy("y"), (await grpcc.infer("mlp", [gin])).as_numpy("y")]
        finally:
            await http.close()
            await grpcc.close()

    for y in asyncio.run(main()):
        np.testing.assert_allclose(y, _reference(store, records["mlp"], x), rtol=1e-5, atol=1e-6)


def test_plain_http_on_the_tls_port_is_dropped_and_the_server_keeps_serving(tls_server: ServerThread, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=5) as raw:
        raw.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert not raw.recv(65536).startswith(b"HTTP/1.1 200")  # an alert or nothing, never an answer
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(tls_server.grpc_url).is_server_live()  # plaintext gRPC: no channel
    assert _https_client(tls_server.http_url, pki).is_server_live()


def test_the_metrics_port_speaks_tls_when_the_server_does(
    model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki
) -> None:
    """One security policy: ``--metrics-port`` on a TLS server is not a plaintext side door."""
    import http.client

    store, _ = model_store
    st = start(store, models=["mlp"], tls=TlsConfig.resolve(pki.cert, pki.key, None), metrics_port=0)
    try:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", st.metrics_port, timeout=10, context=ssl.create_default_context(cafile=str(pki.ca))
        )
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and b"polystack_models_loaded 1.0" in resp.read()
        conn.close()
        with socket.create_connection(("127.0.0.1", st.metrics_port), timeout=5) as raw:  # type: ignore[arg-type]
            raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert not raw.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        st.stop()


def test_a_connection_that_never_finishes_its_handshake_is_dropped(
    model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_app, "HANDSHAKE_TIMEOUT_S", 0.5)
    store, _ = model_store
    st = start(store, models=["mlp"], grpc_port=None, tls=TlsConfig.resolve(pki.cert, pki.key, None))
    try:
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=10) as silent:
            started = time.monotonic()
            assert _https_client(st.http_url, pki).is_server_ready()  # others are served meanwhile
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""  # closed by the server
            assert time.monotonic() - started < 5
    finally:
        st.stop()


def _first_answer(ctx: ssl.SSLContext, port: int) -> bytes:
    """What the server answers a request on a TLS connection made with ``ctx``; b"" when it refuses the
    handshake (TLS 1.3 finishes the client's side first, so the refusal may arrive with the first read)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            return tls.recv(65536)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_ca(mtls_server: ServerThread, pki: Pki) -> None:
    good = (pki.client_cert, pki.client_key)
    x = _rows(1, seed=2)
    a, b, c = _infer_both(
        _https_client(mtls_server.http_url, pki, good), _grpcs_client(mtls_server.grpc_url, pki, good), x
    )
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(good[0]), str(good[1]))
    assert _first_answer(with_cert, mtls_server.http_port).startswith(b"HTTP/1.1 200")
    for cert in (None, (pki.stranger_cert, pki.stranger_key)):  # no certificate; one from another CA
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        assert _first_answer(ctx, mtls_server.http_port) == b""
        with pytest.raises(InferenceServerException) as refused:
            _grpcs_client(mtls_server.grpc_url, pki, cert).is_server_live()
        assert "UNAVAILABLE" in str(refused.value.status())
    assert _https_client(mtls_server.http_url, pki, good).is_server_live()  # and still serving


def _serve(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polystack", "--home", str(home), "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_tls_files_stop_serve_with_one_line(tmp_path: Path, pki: Pki) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.key), "-out", str(encrypted), "-aes256", "-passout", "pass:x"], check=True
    )
    home = tmp_path / "home"
    cases = {
        "--tls-key": ["--tls-cert", str(pki.cert)],
        "cannot read": ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.key)],
        "not a PEM": ["--tls-cert", str(_text(tmp_path / "cert.der", "not pem")), "--tls-key", str(pki.key)],
        "do not make": ["--tls-cert", str(pki.cert), "--tls-key", str(pki.stranger_key)],
        "encrypted": ["--tls-cert", str(pki.cert), "--tls-key", str(encrypted)],
        "no usable CA": ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca", str(pki.key)],
        "--engine local": ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-client-ca", str(pki.ca),
                           "--engine", "ray"],
    }  # fmt: skip
    for expect, args in cases.items():
        out = _serve(home, *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and expect in lines[0], (args, out.stderr)


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_polystack_serve_with_tls_answers_tritonclient_and_drains_on_sigterm(
    model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki, tmp_path: Path
) -> None:
    store, records = model_store
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    args = ["mlp", "--grpc-port", str(grpc_port), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    http = _https_client(f"127.0.0.1:{http_port}", pki)
    with cli_server(store.settings.home, args, http_port, log, client=http) as proc:
        x = _rows(4, seed=3)
        for y in _infer_both(http, _grpcs_client(f"127.0.0.1:{grpc_port}", pki), x):
            np.testing.assert_allclose(y, _reference(store, records["mlp"], x), rtol=1e-5, atol=1e-6)
        assert '"tls":true' in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_tritons_grpc_tls_flags_serve_grpc_over_tls_and_http_plain(
    model_store: tuple[Store, dict[str, ModelRecord]], pki: Pki, tmp_path: Path
) -> None:
    """tritonserver's --grpc-use-ssl, --grpc-server-cert, --grpc-server-key, --grpc-root-cert and
    --grpc-use-ssl-mutual: gRPC over (mutual) TLS, HTTP plain, as in Triton; they were refused as unknown."""
    store, records = model_store
    http_port, grpc_port = free_port(), free_port()
    args = ["mlp", "--grpc-port", str(grpc_port), "--grpc-use-ssl-mutual=true", "--grpc-server-cert", str(pki.cert),
            "--grpc-server-key", str(pki.key), "--grpc-root-cert", str(pki.ca)]  # fmt: skip
    with cli_server(store.settings.home, args, http_port, tmp_path / "serve.log"):  # plain HTTP answers ready
        x = _rows(2, seed=5)
        hin = httpclient.InferInput("x", list(x.shape), "FP32")
        hin.set_data_from_numpy(x)
        plain = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").infer("mlp", [hin]).as_numpy("y")
        client = _grpcs_client(f"127.0.0.1:{grpc_port}", pki, (pki.client_cert, pki.client_key))
        gin = grpcclient.InferInput("x", list(x.shape), "FP32")
        gin.set_data_from_numpy(x)
        secure = client.infer("mlp", [gin]).as_numpy("y")
        for y in (plain, secure):
            np.testing.assert_allclose(y, _reference(store, records["mlp"], x), rtol=1e-5, atol=1e-6)
        with pytest.raises(InferenceServerException):  # mutual: no client certificate, no answer
            _grpcs_client(f"127.0.0.1:{grpc_port}", pki).is_server_live(client_timeout=5)
        client.close()
    assert '"grpc_tls":true,"grpc_tls_mutual":true' in (tmp_path / "serve.log").read_text()
    home = tmp_path / "home"
    cases = {
        "--grpc-use-ssl needs --grpc-server-cert": ["--grpc-use-ssl=1"],
        "--grpc-use-ssl-mutual needs --grpc-root-cert": ["--grpc-use-ssl-mutual", "true", "--grpc-server-cert",
                                                         str(pki.cert), "--grpc-server-key", str(pki.key)],
        "--grpc-server-cert": ["--grpc-use-ssl=true", "--grpc-server-cert", str(tmp_path / "missing.pem"),
                               "--grpc-server-key", str(pki.key)],
        "give one of them": ["--grpc-use-ssl=true", "--grpc-server-cert", str(pki.cert), "--grpc-server-key",
                             str(pki.key), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)],
    }  # fmt: skip
    for expect, case in cases.items():
        out = _serve(home, *case)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and expect in lines[0], (case, out.stderr)
