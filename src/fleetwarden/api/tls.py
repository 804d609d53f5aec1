"""Mutual TLS for device ingestion: the peer certificate into the ASGI scope, and the dependency that
turns it into a device.

uvicorn does not hand the client certificate to the app.  :class:`PeerCertH11Protocol` (give it to
``uvicorn.Config(http=...)``) reads ``ssl_object.getpeercert(binary_form=True)`` when a TLS
connection is made and wraps the app for that connection so that every request's scope carries it
per the ASGI TLS extension: ``scope["extensions"]["tls"]["client_cert_chain"]`` (a list of PEM
strings, the peer's certificate first; uvicorn's ``ssl`` module exposes only the leaf).

:func:`ingest_principal` admits a device presenting a certificate of the FleetWarden CA (valid, not
revoked or superseded, active in the store: :func:`fleetwarden.app.ingest.device_for_certificate`),
else a bearer token or session of the service (or admin) role.  A certificate that is presented but
refused is a 401 even when a token is sent too.

Blind spots: the server must ask for client certificates (``ssl_cert_reqs=CERT_OPTIONAL`` with the
CA as ``ssl_ca_certs``: ``fleetwarden serve --client-ca``); a TLS-terminating proxy in front hides
the certificate (deploy uvicorn at the edge, or have the proxy verify it).
"""

from __future__ import annotations

import ssl
from typing import Any

from fastapi import HTTPException, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from fleetwarden.api.auth import Principal, current_principal
from fleetwarden.app import ingest
from fleetwarden.core.errors import InputError

__all__ = ["PeerCertH11Protocol", "client_cert_der", "ingest_principal", "with_client_cert"]


def with_client_cert(app: Any, chain: list[str]) -> Any:
    """``app`` with ``chain`` (PEM certificates) put into each HTTP scope's TLS extension."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = {**(extensions.get("tls") or {}), "client_cert_chain": chain}
            scope["extensions"] = extensions
        await app(scope, receive, send)

    return wrapped


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that puts the TLS peer certificate into the scope (module docstring)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = with_client_cert(self.app, [ssl.DER_cert_to_PEM_cert(der)])


def client_cert_der(request: Request) -> bytes | None:
    """The peer certificate (DER) of the request's TLS connection, None without one."""
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(chain[0])
    except ValueError:
        return None


def ingest_principal(request: Request) -> Principal:
    """Who may post events: a device by certificate, else the service or admin role."""
    der = client_cert_der(request)
    if der is not None:
        try:
            device = ingest.device_for_certificate(request.app.state.store, der)
        except InputError as exc:
            raise HTTPException(status_code=401, detail=str(exc)[:300]) from None
        return Principal(device, "device", "certificate")
    principal = current_principal(request)
    if principal.role not in ("service", "admin"):
        raise HTTPException(status_code=403, detail=f"role {principal.role!r} may not ingest events (needs service)")
    return principal
