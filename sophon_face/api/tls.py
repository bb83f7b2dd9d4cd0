"""TLS for the HTTP API and the WebSocket servers (``server.tls_cert`` / ``server.tls_key``).

Off by default: upstream clients speak plain HTTP and ``ws://``. With a certificate every
listening port of the daemon speaks TLS only (``https://``, ``wss://``); there is no plain
port beside it. TLS 1.2 is the minimum; the rest is Python's server defaults.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsError(ValueError):
    """The certificate or key cannot be used; ``str()`` names the file and the reason."""


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server context from a PEM certificate (chain) and its PEM private key
    (unencrypted: the daemon starts unattended)."""
    for what, path in (("server.tls_cert", cert_path), ("server.tls_key", key_path)):
        if not Path(path).is_file():
            raise TlsError(f"{what}: {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # An encrypted key fails here instead of OpenSSL prompting on a terminal.
        context.load_cert_chain(str(cert_path), str(key_path), password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"server.tls_cert/tls_key: cannot load {cert_path} with {key_path}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from None
    return context
