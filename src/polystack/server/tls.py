"""TLS for both transports: one certificate chain and key, and optionally the CA client certificates must chain to.

    polystack serve --tls-cert server.pem --tls-key server.key                       # HTTPS, gRPC over TLS
    polystack serve --tls-cert server.pem --tls-key server.key --tls-client-ca ca.pem  # and mutual TLS

Triton offers TLS on gRPC only (``--grpc-use-ssl``, ``--grpc-server-cert``, ``--grpc-server-key``,
``--grpc-root-cert``, ``--grpc-use-ssl-mutual``) and leaves HTTPS to a proxy; here the same files serve
both, so tritonclient's ``ssl=True`` works on either. Triton's own flags are taken too, and do what they do
there: gRPC over TLS, HTTP left plain (``GRPC_FLAGS`` name the files in what a refusal says). The files are read and checked once, when the
server starts: a missing file, a key that does not match its certificate, an encrypted key or a CA
file with no certificate in it stops ``polystack serve`` with exit 2 and what to fix.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polystack.errors import InvalidRequest

# A client that opens a connection and never finishes the handshake is dropped after this long; the
# HTTP idle sweeper only sees connections once their handshake is done.
HANDSHAKE_TIMEOUT_S = 10.0


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and a server under a supervisor would hang.
    raise _EncryptedKey


FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca")  # polystack's: both transports
GRPC_FLAGS = ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert")  # tritonserver's: gRPC alone


@dataclass(frozen=True)
class TlsConfig:
    cert: Path  # PEM: the server's certificate, then any intermediates
    key: Path  # PEM: its private key, unencrypted
    client_ca: Path | None = None  # PEM: CA certificates; when set, clients must present a certificate they sign
    cert_pem: bytes = b""
    key_pem: bytes = b""
    client_ca_pem: bytes | None = None
    # the HTTP server's context, built (and so checked) once in ``resolve``
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def resolve(
        cls, cert: Path | None, key: Path | None, client_ca: Path | None, flags: tuple[str, str, str] = FLAGS
    ) -> TlsConfig | None:
        """The checked configuration the three options (named ``flags``) ask for; None when none is given."""
        if cert is None and key is None and client_ca is None:
            return None
        if cert is None or key is None:
            raise InvalidRequest(
                f"TLS needs both {flags[0]} (the server's certificate chain, PEM) and {flags[1]} (its private key)"
            )
        return cls(
            cert=cert,
            key=key,
            client_ca=client_ca,
            cert_pem=_read(cert, flags[0]),
            key_pem=_read(key, flags[1]),
            client_ca_pem=None if client_ca is None else _read(client_ca, flags[2]),
            context=_server_context(cert, key, client_ca, flags),  # every problem with the files shows here
        )

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> Any:
        """The gRPC server's credentials from the same files (``grpc.ServerCredentials``)."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.mutual,
        )

    def describe(self) -> dict[str, Any]:
        return {"tls": True, "tls_mutual": self.mutual}


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"{flag} {path}: cannot read it ({e.strerror}); give the path of a PEM file") from None
    if b"-----BEGIN " not in data:
        raise InvalidRequest(f"{flag} {path} is not a PEM file (no '-----BEGIN' line); convert it to PEM first")
    return data


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    return str(e)


def _server_context(cert: Path, key: Path, client_ca: Path | None, flags: tuple[str, str, str]) -> ssl.SSLContext:
    """The HTTP server's context: TLS 1.2 or later, HTTP/1.1, client certificates required when mutual."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise InvalidRequest(
            f"{flags[1]} {key} is encrypted; give the server an unencrypted key "
            f"(openssl pkey -in {key} -out server.key) kept readable by its user only"
        ) from None
    except (ssl.SSLError, OSError) as e:
        raise InvalidRequest(
            f"{flags[0]} {cert} and {flags[1]} {key} do not make a certificate chain and its key "
            f"({_reason(e)}); both must be PEM, the key the one the certificate was issued for"
        ) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as e:
            raise InvalidRequest(
                f"{flags[2]} {client_ca} holds no usable CA certificate ({_reason(e)}); "
                "give the PEM certificates of the CAs that issue client certificates"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
