"""Console sessions: a token typed once on the login page becomes a session cookie.

*Contract.* ``POST /console/login`` checks the token with :func:`fleetwarden.app.identity.authenticate`
and opens a session: a random 256-bit id in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure``
over HTTPS) scoped to ``/console``; the token itself is never stored, logged or echoed.  Each
session carries a CSRF token that every state-changing form must send back (``csrf``), and the
operator's role, checked by the :func:`require_role` dependency on the route, never inside a
handler.  Sessions expire after :data:`SESSION_TTL_S` and on logout.

*Blind spots.* Sessions live in the memory of one server process: a restart logs everybody out and
several server processes do not share them.  A role changed or an operator disabled in the store
takes effect at the next login (at most :data:`SESSION_TTL_S` later).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from fastapi import Depends, Request

__all__ = [
    "COOKIE",
    "ConsoleSession",
    "LoginRequired",
    "RoleRefused",
    "SessionBook",
    "current_session",
    "require_role",
]

COOKIE = "fw_console"
SESSION_TTL_S = 8 * 3600.0
MAX_SESSIONS = 10_000
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
    expires: float

    @property
    def may_decide(self) -> bool:
        return self.role in DECIDERS


@dataclass
class SessionBook:
    """The open sessions of one server process (thread-safe)."""

    ttl_s: float = SESSION_TTL_S
    _sessions: dict[str, ConsoleSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, name: str, role: str) -> tuple[str, ConsoleSession]:
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(name, role, secrets.token_urlsafe(24), time.time() + self.ttl_s)
        with self._lock:
            self._expire()
            if len(self._sessions) >= MAX_SESSIONS:  # a flood of logins cannot grow memory unbounded
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> ConsoleSession | None:
        if not sid or len(sid) > 100:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires <= time.time():
                self._sessions.pop(sid, None)
                return None
            return session

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def _expire(self) -> None:
        now = time.time()
        for sid in [k for k, v in self._sessions.items() if v.expires <= now]:
            del self._sessions[sid]


def book_of(request: Request) -> SessionBook:
    state = request.app.state
    if getattr(state, "console_sessions", None) is None:
        state.console_sessions = SessionBook()
    return state.console_sessions


def current_session(request: Request) -> ConsoleSession:
    """The request's session, else :class:`LoginRequired`."""
    session = book_of(request).get(request.cookies.get(COOKIE))
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
