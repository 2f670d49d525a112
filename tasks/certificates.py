"""TLS certificates: how many days a host's certificate has left, and whether clients trust it.

The certificate is read from a handshake that verifies nothing, so that an expired,
self-signed or misnamed certificate can still be read and reported. A second handshake,
verifying the chain and the name (against `ca_file`, else the system's trust store), says
whether a client would accept it, and if not, why.

Network failures are TransientError (refused, timed out, reset: a retry may succeed) or
PermanentError (the name does not resolve, the server does not speak TLS); both name
host:port.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from tasks.errors import ConfigError, PermanentError, RunbookError, TransientError

FETCH_TIMEOUT_S = 5.0
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class Certificate:
    """A host's certificate as fetched: `days_left` as of the fetch."""

    host: str
    port: int
    server_name: str  # sent as SNI, and the name verified
    subject: str  # its common name, or the whole subject when it has none
    issuer: str  # the whole issuer name (RFC 4514)
    not_after: datetime  # aware, UTC
    days_left: float  # negative once expired
    verified: bool
    error: str | None  # why it did not verify; None when it did


def _subject(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


def _network_error(where: str, exc: OSError, timeout: float) -> RunbookError:
    # ssl.SSLError and socket.gaierror are OSErrors too: the specific ones first.
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_AGAIN:
            return TransientError(f"{where}: the name lookup failed for now: {exc.strerror}")
        return PermanentError(f"{where}: the host name does not resolve: {exc.strerror}")
    if isinstance(exc, TimeoutError):
        return TransientError(f"{where}: no answer within {timeout:g} s")
    if isinstance(exc, ssl.SSLEOFError):
        return TransientError(f"{where}: the server closed the connection during the TLS handshake")
    if isinstance(exc, ssl.SSLError):
        return PermanentError(f"{where}: no TLS handshake (is it a TLS port?): {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"{where}: connection refused (nothing listens there)")
    return TransientError(f"{where}: {exc.strerror or exc}")


def _peer_certificate(host: str, port: int, server_name: str, context: ssl.SSLContext, timeout: float) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise PermanentError(f"{host}:{port}: the server sent no certificate")
    return der


def _verifying_context(ca_file: str | Path | None) -> ssl.SSLContext:
    if ca_file is None:
        return ssl.create_default_context()
    if not Path(ca_file).is_file():
        raise ConfigError(f"ca_file {str(ca_file)!r} is not a file")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"ca_file {str(ca_file)!r} holds no usable PEM certificate: {exc.reason or exc}") from None


def fetch(host: str, port: int, server_name: str | None = None, timeout: float = FETCH_TIMEOUT_S,
          ca_file: str | Path | None = None) -> Certificate:
    """The certificate `host:port` presents for `server_name` (default: `host`), read even if
    it does not verify, and whether it verifies against `ca_file` (else the system store)."""
    if not 0 < port < 65536:
        raise ConfigError(f"port {port!r} is not a TCP port (1-65535)")
    if timeout <= 0:
        raise ConfigError(f"timeout {timeout!r} must be positive")
    name = server_name or host
    where = f"{host}:{port}"
    verifying = _verifying_context(ca_file)  # a bad ca_file fails before any connection
    reading = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reading.check_hostname = False
    reading.verify_mode = ssl.CERT_NONE
    try:
        der = _peer_certificate(host, port, name, reading, timeout)
    except OSError as exc:
        raise _network_error(where, exc, timeout) from None
    cert = x509.load_der_x509_certificate(der)
    error: str | None = None
    try:
        _peer_certificate(host, port, name, verifying, timeout)
    except ssl.SSLCertVerificationError as exc:
        error = str(exc.verify_message or exc)
    except ssl.SSLEOFError as exc:
        raise _network_error(where, exc, timeout) from None
    except ssl.SSLError as exc:  # the server refused the verifying client's handshake
        error = f"verifying handshake failed: {exc.reason or exc}"
    except OSError as exc:
        raise _network_error(where, exc, timeout) from None
    not_after = cert.not_valid_after_utc
    return Certificate(
        host=host,
        port=port,
        server_name=name,
        subject=_subject(cert.subject),
        issuer=cert.issuer.rfc4514_string(),
        not_after=not_after,
        days_left=(not_after - datetime.now(UTC)).total_seconds() / SECONDS_PER_DAY,
        verified=error is None,
        error=error,
    )


# --- decision ----------------------------------------------------------------------------------


def verdict(cert: Certificate, warn_days: float, fail_days: float, now: datetime) -> tuple[str, str]:
    """("pass" | "warn" | "fail", reason). Fail: expired, under `fail_days` left, or not
    verified (every such reason is given); warn: under `warn_days` left."""
    if now.tzinfo is None or cert.not_after.tzinfo is None:
        raise ConfigError("now and the certificate's not_after must be aware datetimes (UTC)")
    if not 0 <= fail_days <= warn_days:
        raise ConfigError(f"warn_days ({warn_days:g}) must be at least fail_days ({fail_days:g}), "
                          "and both at least 0")
    days_left = (cert.not_after - now).total_seconds() / SECONDS_PER_DAY
    expiry = f"not after {cert.not_after.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    problems = []
    if days_left <= 0:
        problems.append(f"expired {abs(days_left):.1f} days ago ({expiry})")
    elif days_left < fail_days:
        problems.append(f"{days_left:.1f} days left ({expiry}), under the {fail_days:g}-day limit")
    if not cert.verified:
        problems.append(f"does not verify: {cert.error or 'no reason given'}")
    if problems:
        return "fail", "; ".join(problems)
    if days_left < warn_days:
        return "warn", f"{days_left:.1f} days left ({expiry}), under the {warn_days:g}-day warning"
    return "pass", f"{days_left:.1f} days left ({expiry})"
