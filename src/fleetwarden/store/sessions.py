"""Repository of browser sign-ins (table ``console_sessions``, migration 0012).

Functions over a :class:`~fleetwarden.store.repository.Store`, one transaction each.  A session is
found by the SHA-256 of its secret (``secret_sha256``); the secret itself never reaches the store.
A session counts while it has not expired, has not ended and its operator is enabled: all three
are checked on every lookup, so an ending (sign-out, ``users end-sessions``, a disabled operator)
holds in every server process and across restarts.

Sign-in and sign-out are not audited (they change no control-plane state, like a token's use);
an admin ending someone's sessions is (``operator.sessions.end``), and so is disabling an operator,
which ends its sessions in the same transaction (:func:`fleetwarden.store.identity.disable_operator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from fleetwarden.store.models import SESSION_FACES, ConsoleSessionRecord, OperatorRecord
from fleetwarden.store.repository import Store, StoreError, _audit

__all__ = [
    "KEEP_AFTER_EXPIRY_S",
    "MAX_OPEN_PER_OPERATOR",
    "MAX_ROWS_PER_OPERATOR",
    "TOUCH_EVERY_S",
    "LiveSession",
    "end_operator_sessions",
    "end_session",
    "end_sessions_of",
    "list_sessions",
    "live_session",
    "open_session",
]

KEEP_AFTER_EXPIRY_S = 7 * 86400.0  # expired or ended rows are purged this long after
MAX_OPEN_PER_OPERATOR = 20  # a sign-in beyond it ends the operator's oldest open session
MAX_ROWS_PER_OPERATOR = 100  # open or ended, kept per operator (the newest)
TOUCH_EVERY_S = 60.0  # last_seen_at is refreshed at most this often
MAX_USER_AGENT = 200
MAX_SOURCE = 64


@dataclass(frozen=True)
class LiveSession:
    """A session that counts now, with its operator as stored now."""

    id: int
    face: str
    expires_at: float
    operator_id: int
    operator_name: str
    role: str


def open_session(
    store: Store,
    secret_sha256: str,
    operator_id: int,
    *,
    face: str,
    now: float,
    ttl_s: float,
    user_agent: str | None = None,
    source: str | None = None,
) -> ConsoleSessionRecord:
    """Record a new session of ``operator_id`` lasting ``ttl_s``; in the same transaction, ends the
    operator's oldest open sessions beyond :data:`MAX_OPEN_PER_OPERATOR`, deletes its oldest rows
    beyond :data:`MAX_ROWS_PER_OPERATOR` and purges rows expired or ended more than
    :data:`KEEP_AFTER_EXPIRY_S` ago: a client signing in in a loop keeps a bounded table."""
    if face not in SESSION_FACES:
        raise StoreError(f"unknown session face {face!r}: one of {', '.join(SESSION_FACES)}")
    if len(secret_sha256) != 64:
        raise StoreError("secret_sha256 must be a SHA-256 hex digest")
    if ttl_s <= 0:
        raise StoreError("a session needs a positive lifetime")
    with store._write() as s:
        _purge(s, now)
        row = ConsoleSessionRecord(
            secret_sha256=secret_sha256, operator_id=operator_id, face=face, created_at=now,
            expires_at=now + ttl_s, last_seen_at=now, user_agent=_clip(user_agent, MAX_USER_AGENT),
            source=_clip(source, MAX_SOURCE),
        )  # fmt: skip
        s.add(row)
        s.flush()
        _bound(s, operator_id, now)
        return row


def _bound(s: Session, operator_id: int, now: float) -> None:
    """The operator's open sessions beyond the newest MAX_OPEN_PER_OPERATOR end now, and its rows
    beyond the newest MAX_ROWS_PER_OPERATOR go."""
    newest_first = (ConsoleSessionRecord.created_at.desc(), ConsoleSessionRecord.id.desc())
    mine = ConsoleSessionRecord.operator_id == operator_id
    open_ids = s.scalars(
        select(ConsoleSessionRecord.id)
        .where(mine, ConsoleSessionRecord.ended_at.is_(None), ConsoleSessionRecord.expires_at > now)
        .order_by(*newest_first)
        .offset(MAX_OPEN_PER_OPERATOR)
    ).all()
    if open_ids:
        s.execute(update(ConsoleSessionRecord).where(ConsoleSessionRecord.id.in_(open_ids)).values(ended_at=now))
    old_ids = s.scalars(
        select(ConsoleSessionRecord.id).where(mine).order_by(*newest_first).offset(MAX_ROWS_PER_OPERATOR)
    ).all()
    if old_ids:
        s.execute(delete(ConsoleSessionRecord).where(ConsoleSessionRecord.id.in_(old_ids)))


def _clip(text: str | None, limit: int) -> str | None:
    return text[:limit] if text else None


def _purge(s: Session, now: float) -> None:
    cutoff = now - KEEP_AFTER_EXPIRY_S
    s.execute(
        delete(ConsoleSessionRecord).where(
            or_(ConsoleSessionRecord.expires_at < cutoff, ConsoleSessionRecord.ended_at < cutoff)
        )
    )


def live_session(store: Store, secret_sha256: str, *, now: float, face: str | None = None) -> LiveSession | None:
    """The session with ``secret_sha256`` if it counts at ``now`` (unexpired, not ended, operator
    enabled, and of ``face`` when given), else None.  Refreshes ``last_seen_at`` at most once per
    :data:`TOUCH_EVERY_S` (the only write, so most lookups are reads)."""
    q = (
        select(ConsoleSessionRecord, OperatorRecord)
        .join(OperatorRecord, OperatorRecord.id == ConsoleSessionRecord.operator_id)
        .where(
            ConsoleSessionRecord.secret_sha256 == secret_sha256,
            ConsoleSessionRecord.ended_at.is_(None),
            ConsoleSessionRecord.expires_at > now,
            OperatorRecord.disabled.is_(False),
        )
    )
    with store._read() as s:
        found = s.execute(q).first()
    if found is None:
        return None
    row, op = found
    if face is not None and row.face != face:
        return None
    if row.last_seen_at is None or now - row.last_seen_at >= TOUCH_EVERY_S:
        with store._write() as s:
            s.execute(update(ConsoleSessionRecord).where(ConsoleSessionRecord.id == row.id).values(last_seen_at=now))
    return LiveSession(row.id, row.face, row.expires_at, op.id, op.name, op.role)


def end_session(store: Store, secret_sha256: str, *, now: float) -> bool:
    """Sign-out: end the session with ``secret_sha256``; False when there was none still open."""
    with store._write() as s:
        done = s.execute(
            update(ConsoleSessionRecord)
            .where(ConsoleSessionRecord.secret_sha256 == secret_sha256, ConsoleSessionRecord.ended_at.is_(None))
            .values(ended_at=now)
        )
        return bool(done.rowcount)


def end_operator_sessions(s: Session, operator_id: int, now: float) -> int:
    """Inside the caller's write transaction: end every open session of ``operator_id``; the count."""
    done = s.execute(
        update(ConsoleSessionRecord)
        .where(
            ConsoleSessionRecord.operator_id == operator_id,
            ConsoleSessionRecord.ended_at.is_(None),
            ConsoleSessionRecord.expires_at > now,
        )
        .values(ended_at=now)
    )
    return int(done.rowcount or 0)


def _operator(s: Session, name: str) -> OperatorRecord:
    row = s.scalar(select(OperatorRecord).where(OperatorRecord.name == name))
    if row is None:
        raise StoreError(f"no operator named {name!r}")
    return row


def end_sessions_of(store: Store, name: str, *, now: float, actor: str) -> int:
    """End every open session of operator ``name`` (audited as ``operator.sessions.end``); the count."""
    with store._write() as s:
        op = _operator(s, name)
        count = end_operator_sessions(s, op.id, now)
        _audit(s, actor, "operator.sessions.end", f"operator:{name}", {"sessions": count})
        return count


def list_sessions(
    store: Store, *, now: float, operator_name: str | None = None, include_closed: bool = False
) -> list[dict[str, Any]]:
    """Sessions (never their hashes), newest first, with the operator's name: the open ones, or
    with ``include_closed`` the expired and ended ones kept too."""
    q = (
        select(ConsoleSessionRecord, OperatorRecord.name)
        .join(OperatorRecord, OperatorRecord.id == ConsoleSessionRecord.operator_id)
        .order_by(ConsoleSessionRecord.created_at.desc(), ConsoleSessionRecord.id.desc())
    )
    if not include_closed:
        q = q.where(ConsoleSessionRecord.ended_at.is_(None), ConsoleSessionRecord.expires_at > now)
    with store._read() as s:
        if operator_name is not None:
            _operator(s, operator_name)
            q = q.where(OperatorRecord.name == operator_name)
        rows = s.execute(q).all()
    return [
        {**{k: v for k, v in row.to_dict().items() if k != "secret_sha256"}, "operator": name}
        for row, name in rows
    ]
