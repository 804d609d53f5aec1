"""Console sessions: a token typed once on the login page becomes a session cookie.

*Contract.* ``POST /console/login`` checks the token and opens a session in the store
(:mod:`fleetwarden.app.operator_sessions`, face ``console``): a random 256-bit secret in an
``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS) scoped to ``/console``, of which the
store keeps only the SHA-256; the token itself is never stored, logged or echoed.  Each session
carries a CSRF token derived from its secret that every state-changing form must send back
(``csrf``), and the operator's role, re-read from the store on every request and checked by the
:func:`require_role` dependency on the route, never inside a handler.  Sessions expire after the
app's ``session_ttl_s`` and end at logout, by ``fleetwarden users end-sessions NAME`` or when the
operator is disabled; they survive restarts and are shared by every server process of the store.

*Blind spots.* Every console request costs one indexed store read; a stolen cookie works until it
expires or is ended.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, Request

from fleetwarden.app import operator_sessions as sessions_svc

__all__ = [
    "COOKIE",
    "ConsoleSession",
    "LoginRequired",
    "RoleRefused",
    "current_session",
    "require_role",
    "session_of",
]

COOKIE = "fw_console"
FACE = "console"  # this cookie's face in the session store (the API's is "api")
DECIDERS = ("admin", "operator")  # who may approve, deny, execute and roll back actions


class LoginRequired(Exception):
    """No valid session: pages redirect to the login page, other requests get 401."""


class RoleRefused(Exception):
    """A session whose role may not do this: 403."""


@dataclass(frozen=True)
class ConsoleSession:
    name: str
    role: str
    csrf: str

    @property
    def may_decide(self) -> bool:
        return self.role in DECIDERS


def session_of(request: Request) -> ConsoleSession | None:
    """The request's live console session, else None."""
    secret = request.cookies.get(COOKIE)
    op = sessions_svc.session_operator(request.app.state.store, secret, face=FACE)
    if op is None or secret is None:
        return None
    return ConsoleSession(op.name, op.role, sessions_svc.csrf_of(secret))


def current_session(request: Request) -> ConsoleSession:
    """The request's session, else :class:`LoginRequired`."""
    session = session_of(request)
    if session is None:
        raise LoginRequired()
    return session


def require_role(*roles: str):
    """A dependency: the session, refused with 403 unless its role is one of ``roles``."""

    def check(session: ConsoleSession = Depends(current_session)) -> ConsoleSession:
        if session.role not in roles:
            raise RoleRefused(f"the {session.role} role may not do this")
        return session

    return check


def check_csrf(session: ConsoleSession, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(session.csrf.encode(), sent.encode()[:200]):
        raise RoleRefused("missing or wrong CSRF token: reload the page")
