"""Who is calling: bearer tokens, dashboard cookie sessions with CSRF protection, and roles.

Credentials, in order:

1. ``Authorization: Bearer TOKEN``: an operator token from ``fleetwarden users add NAME --role ROLE``
   (:func:`fleetwarden.app.identity.authenticate`: only its SHA-256 is stored).
2. The session cookie ``fw_session`` set by ``POST /api/v1/session`` (a token exchanged once): a
   random secret (32 bytes, URL-safe) whose SHA-256 the store keeps with the operator, expiry and
   end (:mod:`fleetwarden.app.operator_sessions`, face ``api``).  It carries no secret of the
   operator; the session and the operator are re-read on every request, so a sign-out, an admin's
   ``users end-sessions`` or a disabled user ends it at once, in every server process and across
   restarts.  The cookie is HttpOnly, SameSite=Strict and Secure when the request came over HTTPS.
   Unsafe methods (POST, PUT, PATCH, DELETE) authenticated by the cookie need the double-submit
   token: header ``X-CSRF-Token`` equal to the ``fw_csrf`` cookie (returned by ``POST /session``),
   and an ``Origin`` header, when present, equal to the request's own origin (or an allowed one).

Roles (:data:`ROLE_RIGHTS`): admin everything; operator approves, executes and rolls back actions and
manages devices; analyst records verdicts; viewer reads; service only ingests events.
:func:`require` makes the route dependency.  No credentials or bad ones: 401; the wrong role: 403;
both with a JSON ``detail``.

Blind spots: a cookie session costs one indexed store read per request (and a write at most once a
minute); a stolen session cookie works, like a bearer token, until it expires or is ended
(``fleetwarden users end-sessions NAME``).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Response

from fleetwarden.app import identity as identity_svc
from fleetwarden.app import operator_sessions as sessions_svc

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
FACE = "api"  # this cookie's face in the session store (the console's is "console")


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


def _secure(request: Request) -> bool:
    forced = request.app.state.settings.secure_cookies
    return request.url.scheme == "https" if forced is None else bool(forced)


def client_details(request: Request) -> dict[str, str | None]:
    """What a session row remembers of the browser: its user agent and address (for the admin's
    ``users sessions`` listing, never for authentication)."""
    return {
        "user_agent": request.headers.get("user-agent"),
        "source": request.client.host if request.client is not None else None,
    }


def start_session(request: Request, response: Response, token: str) -> dict:
    """Exchange an operator token for a session cookie; returns the body (user, role, CSRF token)."""
    ttl_s = request.app.state.settings.session_ttl_s
    started = sessions_svc.sign_in(
        request.app.state.store, token, face=FACE, ttl_s=ttl_s, **client_details(request)
    )
    if started is None:
        raise _unauthorized("unknown, malformed or disabled token")
    csrf = secrets.token_urlsafe(24)
    secure, max_age = _secure(request), int(ttl_s)
    response.set_cookie(SESSION_COOKIE, started.secret, max_age=max_age, httponly=True, samesite="strict",
                        secure=secure, path="/")  # fmt: skip
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False, samesite="strict",
                        secure=secure, path="/")  # fmt: skip
    op = started.operator
    return {"user": op.name, "role": op.role, "csrf_token": csrf, "expires_at": int(started.expires_at)}


def end_session(request: Request, response: Response) -> None:
    """Sign-out: the session ends in the store (for every process, across restarts)."""
    sessions_svc.sign_out(request.app.state.store, request.cookies.get(SESSION_COOKIE))
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
    op = sessions_svc.session_operator(request.app.state.store, value, face=FACE)
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
