"""Who is calling: bearer tokens, dashboard cookie sessions with CSRF protection, and roles.

Credentials, in order:

1. ``Authorization: Bearer TOKEN``: an operator token from ``fleetwarden users add NAME --role ROLE``
   (:func:`fleetwarden.app.identity.authenticate`: only its SHA-256 is stored).
2. The session cookie ``fw_session`` set by ``POST /api/v1/session`` (a token exchanged once): the
   value ``SID.OPERATOR_ID.EXPIRY.MAC`` with a random session id and an HMAC-SHA256 under a key held
   by the app (random per process unless ``ApiSettings.session_key`` is set).  It carries no secret
   of the operator; the operator is re-read on every request, so disabling a user ends its sessions.
   The cookie is HttpOnly, SameSite=Strict and Secure when the request came over HTTPS.
   Unsafe methods (POST, PUT, PATCH, DELETE) authenticated by the cookie need the double-submit
   token: header ``X-CSRF-Token`` equal to the ``fw_csrf`` cookie (returned by ``POST /session``),
   and an ``Origin`` header, when present, equal to the request's own origin (or an allowed one).

Roles (:data:`ROLE_RIGHTS`): admin everything; operator approves, executes and rolls back actions and
manages devices; analyst records verdicts; viewer reads; service only ingests events.
:func:`require` makes the route dependency.  No credentials or bad ones: 401; the wrong role: 403;
both with a JSON ``detail``.

Blind spots: sessions die with the process when no ``session_key`` is configured; a signed-out
session id is remembered in memory only until it expires (a restart forgets it, and with a
configured key such a cookie would be accepted again until its expiry).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Response

from fleetwarden.app import identity as identity_svc
from fleetwarden.app import queries

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "ROLES",
    "SESSION_COOKIE",
    "Principal",
    "current_principal",
    "end_session",
    "require",
    "start_session",
]

SESSION_COOKIE = "fw_session"
CSRF_COOKIE = "fw_csrf"
CSRF_HEADER = "X-CSRF-Token"
ROLES = ("admin", "operator", "analyst", "viewer", "service")
READERS = ("viewer", "analyst", "operator")  # admin is always allowed
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: an operator (``via`` = ``token`` or ``session``) or a device
    (``via`` = ``certificate``, role ``device``)."""

    name: str
    role: str
    via: str
    operator_id: int | None = None


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status_code=401, detail=reason, headers={"WWW-Authenticate": "Bearer"})


# ------------------------------------------------------------------------------------- sessions


class SessionSigner:
    """Makes and checks session cookie values (see the module docstring for the format)."""

    def __init__(self, key: bytes | None, ttl_s: float) -> None:
        self._key = key or secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self._ended: dict[str, float] = {}  # session id -> expiry, for signed-out sessions

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def make(self, operator_id: int, now: float) -> tuple[str, float]:
        expiry = int(now + self.ttl_s)
        payload = f"{secrets.token_urlsafe(24)}.{operator_id}.{expiry}"
        return f"{payload}.{self._mac(payload)}", expiry

    def check(self, value: str, now: float) -> int | None:
        """The operator id of a valid, unexpired, not signed-out cookie value, else None."""
        parts = value.split(".") if len(value) <= 300 else []
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        sid, op, exp, mac = parts
        if not hmac.compare_digest(mac, self._mac(f"{sid}.{op}.{exp}")):
            return None
        if int(exp) < now or sid in self._ended:
            return None
        return int(op)

    def end(self, value: str, now: float) -> None:
        parts = value.split(".")
        if len(parts) == 4 and self.check(value, now) is not None:
            self._ended[parts[0]] = float(parts[2])
        self._ended = {k: v for k, v in self._ended.items() if v >= now}


def signer_of(request: Request) -> SessionSigner:
    return request.app.state.session_signer


def _secure(request: Request) -> bool:
    forced = request.app.state.settings.secure_cookies
    return request.url.scheme == "https" if forced is None else bool(forced)


def start_session(request: Request, response: Response, token: str) -> dict:
    """Exchange an operator token for a session cookie; returns the body (user, role, CSRF token)."""
    op = identity_svc.authenticate(request.app.state.store, token)
    if op is None:
        raise _unauthorized("unknown, malformed or disabled token")
    value, expiry = signer_of(request).make(op.id, time.time())
    csrf = secrets.token_urlsafe(24)
    secure, max_age = _secure(request), int(signer_of(request).ttl_s)
    response.set_cookie(SESSION_COOKIE, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=secure, path="/")  # fmt: skip
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False, samesite="strict",
                        secure=secure, path="/")  # fmt: skip
    return {"user": op.name, "role": op.role, "csrf_token": csrf, "expires_at": expiry}


def end_session(request: Request, response: Response) -> None:
    value = request.cookies.get(SESSION_COOKIE)
    if value:
        signer_of(request).end(value, time.time())
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")


# ------------------------------------------------------------------------------------- who is it


def _from_token(request: Request, header: str) -> Principal:
    if not header.lower().startswith(_BEARER):
        raise _unauthorized("the Authorization header must be 'Bearer TOKEN'")
    op = identity_svc.authenticate(request.app.state.store, header[len(_BEARER) :].strip())
    if op is None:
        raise _unauthorized("unknown, malformed or disabled token")
    return Principal(op.name, op.role, "token", op.id)


def _check_csrf(request: Request) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(status_code=403, detail=f"CSRF check failed: send the {CSRF_HEADER} header")
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own and origin not in request.app.state.settings.allowed_origins:
            raise HTTPException(status_code=403, detail="CSRF check failed: cross-origin request")


def _from_cookie(request: Request, value: str) -> Principal:
    op_id = signer_of(request).check(value, time.time())
    op = queries.operator_by_id(request.app.state.store, op_id) if op_id is not None else None
    if op is None:
        raise _unauthorized("session expired, signed out or invalid: sign in again")
    if request.method in UNSAFE:
        _check_csrf(request)
    return Principal(op.name, op.role, "session", op.id)


def current_principal(request: Request) -> Principal:
    """The caller, from the bearer token or else the session cookie; 401 without either."""
    header = request.headers.get("authorization")
    if header:
        return _from_token(request, header)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return _from_cookie(request, cookie)
    raise _unauthorized("authentication required: Authorization: Bearer TOKEN or a session cookie")


def require(*roles: str) -> Callable[..., Principal]:
    """A dependency admitting ``roles`` (and always admin); ``require("read")`` admits every operator
    role but service."""
    allowed = set(READERS if roles == ("read",) else roles) | {"admin"}
    unknown = allowed - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")

    def dependency(principal: Principal = Depends(current_principal)) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(
                status_code=403, detail=f"role {principal.role!r} may not do this (needs {' or '.join(sorted(allowed))})"
            )
        return principal

    return dependency
