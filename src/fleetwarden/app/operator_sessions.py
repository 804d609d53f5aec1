"""Operators' browser sessions: an operator token exchanged once for a session secret kept in a cookie.

Both faces use it: the API's ``fw_session`` cookie (:mod:`fleetwarden.api.auth`, face ``api``) and
the console's ``fw_console`` cookie (:mod:`fleetwarden.web.auth`, face ``console``); a cookie of one
face is refused by the other.  :func:`sign_in` returns a fresh secret (32 random bytes, URL-safe)
exactly once; the store keeps only its SHA-256 (:mod:`fleetwarden.store.sessions`), so sessions
survive restarts, are shared by every server process, and end for all of them at sign-out, by
:func:`end_sessions` (``fleetwarden users end-sessions NAME``, audited) or when the operator is
disabled.  Each lookup re-reads the operator: a disabled one is refused even before its sessions
are ended.

The console's form CSRF token is derived from the secret (:func:`csrf_of`), so it needs no storage
and is as unguessable as the cookie; the API keeps its own double-submit cookie.

Blind spot: a lookup is one indexed read per request (plus a write at most once a minute per
session); a stolen cookie works until it expires or is ended, like any bearer secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fleetwarden.app.identity import Operator, _check_name, authenticate
from fleetwarden.store import Store
from fleetwarden.store import sessions as stored

__all__ = [
    "SignedIn",
    "csrf_of",
    "end_sessions",
    "list_sessions",
    "session_operator",
    "sign_in",
    "sign_out",
]

SECRET_BYTES = 32
MAX_SECRET_CHARS = 100  # a longer cookie is refused before it is hashed


@dataclass(frozen=True)
class SignedIn:
    """A new session: ``secret`` is the cookie value, shown only in this return value."""

    secret: str
    operator: Operator
    expires_at: float


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def sign_in(
    store: Store, token: str, *, face: str, ttl_s: float, user_agent: str | None = None, source: str | None = None
) -> SignedIn | None:
    """A session for the enabled operator holding ``token``, else None."""
    op = authenticate(store, token)
    if op is None:
        return None
    secret = secrets.token_urlsafe(SECRET_BYTES)
    row = stored.open_session(
        store, _hash(secret), op.id, face=face, now=time.time(), ttl_s=ttl_s, user_agent=user_agent, source=source
    )
    return SignedIn(secret, op, row.expires_at)


def session_operator(store: Store, secret: str | None, *, face: str) -> Operator | None:
    """The operator of the live session ``secret`` of ``face``, else None (unknown, forged, expired,
    ended, of the other face, or its operator disabled)."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        return None
    live = stored.live_session(store, _hash(secret), now=time.time(), face=face)
    return None if live is None else Operator(live.operator_id, live.operator_name, live.role)


def sign_out(store: Store, secret: str | None) -> bool:
    """End the session ``secret`` for every process; False when it was not open."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        return False
    return stored.end_session(store, _hash(secret), now=time.time())


def csrf_of(secret: str) -> str:
    """The console's CSRF token of session ``secret`` (an HMAC of a fixed label under the secret)."""
    return hmac.new(secret.encode("utf-8"), b"fleetwarden console csrf", hashlib.sha256).hexdigest()


def list_sessions(store: Store, name: str | None = None, *, include_closed: bool = False) -> list[dict[str, Any]]:
    """Open sessions (with ``include_closed`` also the expired and ended ones still kept), newest
    first, optionally of user ``name``; never their secrets or hashes."""
    if name is not None:
        _check_name(name)
    return stored.list_sessions(store, now=time.time(), operator_name=name, include_closed=include_closed)


def end_sessions(store: Store, name: str, *, actor: str = "cli") -> int:
    """End every open session of user ``name`` (audited); how many were open."""
    _check_name(name)
    return stored.end_sessions_of(store, name, now=time.time(), actor=actor)
