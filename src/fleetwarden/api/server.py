"""Running the API: uvicorn over :func:`~fleetwarden.api.app.create_app`, optionally with TLS and
client certificates (mutual TLS for devices, :mod:`fleetwarden.api.tls`).

``serve`` binds 127.0.0.1 by default: exposing the API on other interfaces is a deliberate
``--host 0.0.0.0``, and should come with ``--tls-cert``/``--tls-key`` (tokens travel in headers).
With ``--client-ca`` the server asks for a client certificate (optional: operators use tokens) and
verifies it against that CA during the handshake; the app then checks it against the store's
revocations and maps its CN to the device (:func:`fleetwarden.app.ingest.device_for_certificate`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from fleetwarden.api.app import create_app
from fleetwarden.api.tls import PeerCertH11Protocol
from fleetwarden.core.errors import InputError

__all__ = ["ServeError", "serve", "server_config"]


class ServeError(InputError):
    """Bad ``serve`` options: a TLS file missing, a key without a certificate, a bad port."""


def _check(host: str, port: int, tls_cert: Path | None, tls_key: Path | None, client_ca: Path | None) -> None:
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port}: expected 1-65535")
    if not host or len(host) > 255:
        raise ServeError("--host: expected an address or a host name")
    if (tls_cert is None) != (tls_key is None):
        raise ServeError("--tls-cert and --tls-key go together")
    if client_ca is not None and tls_cert is None:
        raise ServeError("--client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--client-ca", client_ca)):
        if path is not None and not Path(path).is_file():
            raise ServeError(f"{flag} {path}: no such file")


def server_config(
    *, host: str = "127.0.0.1", port: int = 8080, db: str | None = None, tls_cert: Path | None = None,
    tls_key: Path | None = None, client_ca: Path | None = None, log_level: str = "info",
    factory: Callable[..., Any] = create_app, **settings: Any,
) -> uvicorn.Config:  # fmt: skip
    """The uvicorn configuration ``serve`` runs (tests run it in a thread).  ``factory(db,
    **settings)`` builds the ASGI app: :func:`create_app`, or a face that composes it (the console's
    ``create_console_app``: ``api`` may not import ``web``, so the caller passes it)."""
    _check(host, port, tls_cert, tls_key, client_ca)
    tls: dict[str, Any] = {}
    if tls_cert is not None:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
    if client_ca is not None:
        tls.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return uvicorn.Config(
        factory(db, **settings), host=host, port=port, http=PeerCertH11Protocol, log_level=log_level,
        access_log=True, server_header=False, proxy_headers=False, **tls,
    )  # fmt: skip


def serve(**options: Any) -> None:
    """Run the API until interrupted (options as :func:`server_config`)."""
    uvicorn.Server(server_config(**options)).run()
