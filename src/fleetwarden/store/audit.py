"""Hash-chained audit log: the pure functions, free of any database.

Every entry carries ``seq`` (1, 2, 3, … without gaps), ``ts`` (epoch seconds), ``actor``,
``action``, ``subject``, ``details`` (JSON) and ``prev_hash``, the hash of the entry
before it (:data:`GENESIS` for the first).  Its own ``hash`` is

    SHA-256( prev_hash  "\\n"  canonical_json({seq, ts, actor, action, subject, details}) )

so editing any field changes that entry's hash, deleting an entry breaks the ``seq``
run and the ``prev_hash`` link of the next one, and swapping two entries breaks both.
The store (``fleetwarden.store``) persists entries; :func:`verify_chain` checks them.

Blind spot: dropping the *newest* entries (truncation) leaves a valid shorter chain.
Anchor the head (``seq``, ``hash``) somewhere else (a SIEM, a ticket, a signed export)
and pass it as ``anchor`` to detect that.  Reference: Schneier & Kelsey, "Secure audit
logs to support computer forensics" (ACM TISSEC, 1999), the idea this simplifies.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """One byte-exact JSON spelling per value: sorted keys, no spaces, UTF-8, no NaN.

    Floats use Python's shortest round-trip ``repr``, which both SQLite REAL and
    PostgreSQL double precision / JSONB give back unchanged.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalize_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Details as they will read back from a JSON column (tuples -> lists, keys -> str).

    Hashing the stored form, not the caller's object, is what keeps verification stable.
    """
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise TypeError(f"audit details must be a mapping, got {type(details).__name__}")
    try:
        # str keys first so sort_keys never compares int with str
        text = json.dumps({str(k): v for k, v in details.items()}, allow_nan=False, default=_json_default)
    except ValueError as exc:
        raise ValueError(f"audit details are not valid JSON: {exc}") from None
    return json.loads(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"audit details: {type(value).__name__} is not JSON serialisable")


def entry_hash(
    prev_hash: str, seq: int, ts: float, actor: str, action: str, subject: str, details: Mapping[str, Any]
) -> str:
    """SHA-256 (hex) of one entry chained to ``prev_hash``."""
    if not math.isfinite(ts):
        raise ValueError("audit ts must be finite")
    body = canonical_json(
        {
            "seq": int(seq),
            "ts": float(ts),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
        }
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainEntry:
    """An audit entry as the chain sees it (the store's rows convert to this)."""

    seq: int
    ts: float
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def make_entry(
    prev: ChainEntry | None,
    ts: float,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None,
) -> ChainEntry:
    """The entry that follows ``prev`` (or starts the chain when ``prev`` is None)."""
    return next_entry(
        0 if prev is None else prev.seq,
        GENESIS if prev is None else prev.hash,
        ts,
        actor,
        action,
        subject,
        details,
    )


def next_entry(
    prev_seq: int,
    prev_hash: str,
    ts: float,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None,
) -> ChainEntry:
    """The entry after entry ``prev_seq`` whose hash is ``prev_hash`` (0 and :data:`GENESIS` to start)."""
    if not actor or not action:
        raise ValueError("audit entries need an actor and an action")
    seq = prev_seq + 1
    det = normalize_details(details)
    return ChainEntry(
        seq=seq,
        ts=float(ts),
        actor=actor,
        action=action,
        subject=subject,
        details=det,
        prev_hash=prev_hash,
        hash=entry_hash(prev_hash, seq, ts, actor, action, subject, det),
    )


def verify_chain(entries: Iterable[Any], anchor: tuple[int, str] | None = None) -> tuple[bool, int | None]:
    """Check a chain given in ``seq`` order; return ``(ok, first_bad_seq)``.

    ``entries`` are :class:`ChainEntry` or any object / mapping with the same fields
    (the store passes its ORM rows).  ``first_bad_seq`` is the ``seq`` of the first
    entry that does not follow from the one before it, or for a missing anchored head
    the anchor's ``seq``.  An empty chain is valid unless an anchor says otherwise.
    """
    expected_seq = 1
    prev_hash = GENESIS
    seen_anchor = anchor is None
    for raw in entries:
        e = _as_entry(raw)
        if e.seq != expected_seq or e.prev_hash != prev_hash:
            return False, e.seq
        if e.hash != entry_hash(e.prev_hash, e.seq, e.ts, e.actor, e.action, e.subject, e.details):
            return False, e.seq
        if anchor is not None and e.seq == anchor[0]:
            if e.hash != anchor[1]:
                return False, e.seq
            seen_anchor = True
        prev_hash = e.hash
        expected_seq += 1
    if not seen_anchor:
        assert anchor is not None
        return False, anchor[0]
    return True, None


def _as_entry(raw: Any) -> ChainEntry:
    if isinstance(raw, ChainEntry):
        return raw
    get = raw.get if isinstance(raw, Mapping) else lambda k: getattr(raw, k)
    return ChainEntry(
        seq=int(get("seq")),
        ts=float(get("ts")),
        actor=get("actor"),
        action=get("action"),
        subject=get("subject"),
        details=get("details") or {},
        prev_hash=get("prev_hash"),
        hash=get("hash"),
    )
