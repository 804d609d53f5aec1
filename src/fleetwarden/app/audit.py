"""The audit-log service: verify the hash chain against every head we keep, show the head, list.

The chain (:mod:`fleetwarden.store.audit`) shows an edited, inserted, reordered or deleted entry by
itself.  Deleting the *newest* entries (truncation) leaves a shorter chain that is still valid, so
:func:`verify_audit` also compares the chain's end with three heads kept elsewhere:

* the **head record** (table ``audit_head``), moved by a database trigger in the same transaction
  as every append; the trigger refuses to move it backwards or delete it (migration 0006);
* the **anchor file** ``FLEETWARDEN_HOME/audit-anchors/<database>.json``, outside the database:
  moved forward by a successful ``audit verify`` and by the onboarding commands, and only when
  the chain still holds the entry it named before (a tampered log never advances it);
* an **anchor given by hand** (``--anchor SEQ:HASH``), e.g. the output of ``audit head`` kept in a
  ticket or a SIEM.

*Blind spots* (honest ones): someone who can write the database *and* drop its triggers can cut
the log and rewrite the head record to match; the anchor file then still catches the cut when it
goes below the entry it names, but entries appended after the file was last advanced can be cut
without trace unless an outside anchor covers them.  Someone who also controls
``FLEETWARDEN_HOME`` can rewrite the file.  Only an anchor held by another party (``audit head``
exported elsewhere, passed back with ``--anchor``) closes both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetwarden.config import home
from fleetwarden.core.errors import InputError
from fleetwarden.store import Store
from fleetwarden.store import audit as chain
from fleetwarden.store import onboarding as heads

__all__ = [
    "AuditReport",
    "Problem",
    "advance_anchor",
    "anchor_path",
    "audit_head",
    "list_entries",
    "parse_anchor",
    "verify_audit",
]

_ANCHOR_RE = re.compile(r"^(\d{1,12}):([0-9a-f]{64})$")
MAX_ANCHOR_FILE = 4096


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log: where (the entry's ``seq``) and what."""

    seq: int | None
    what: str


@dataclass
class AuditReport:
    ok: bool
    entries: int
    head: tuple[int, str] | None  # the chain's last entry as found
    checked: list[str]
    problems: list[Problem] = field(default_factory=list)
    anchor_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": format_head(self.head),
            "checked": self.checked,
            "problems": [{"seq": p.seq, "what": p.what} for p in self.problems],
            "anchor_file": self.anchor_file,
        }


def format_head(head: tuple[int, str] | None) -> str:
    return f"{head[0]}:{head[1]}" if head else f"0:{chain.GENESIS}"


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as ``audit head`` prints it) -> ``(seq, hash)``; :class:`InputError` otherwise."""
    m = _ANCHOR_RE.match((text or "").strip().lower())
    if not m:
        raise InputError(f"anchor {text[:80]!r} is not SEQ:HASH (a number, a colon, 64 hex digits)")
    return int(m.group(1)), m.group(2)


def audit_head(store: Store) -> str:
    """The chain's head as ``SEQ:HASH`` (``0:000…`` for an empty log)."""
    return format_head(store.audit_head())


def list_entries(store: Store, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, oldest of them first."""
    head = store.audit_head()
    since = max(0, (head[0] if head else 0) - limit)
    return [e.to_dict() for e in store.audit_entries(since_seq=since)]


# ---------------------------------------------------------------------------- verification


def verify_audit(store: Store, *, anchor: tuple[int, str] | None = None, save: bool = True) -> AuditReport:
    """Walk the chain and hold its end against the head record, the anchor file and ``anchor``.
    When all agree and ``save`` is set, the anchor file moves forward to the verified head."""
    hashes, problems = _walk(store.audit_entries())
    last = max(hashes) if hashes else 0
    head = (last, hashes[last]) if last else None
    checked = ["chain"]
    path = anchor_path(store)
    if not problems:  # past a break, every head would only repeat it
        checked, problems = _heads(store, hashes, last, path, anchor)
    report = AuditReport(not problems, len(hashes), head, checked, problems, str(path))
    if report.ok and save and head is not None:
        _write_anchor(path, store, head)
    return report


def _heads(
    store: Store, hashes: dict[int, str], last: int, path: Path, anchor: tuple[int, str] | None
) -> tuple[list[str], list[Problem]]:
    checked = ["chain", "head record"]
    problems = _against(hashes, last, heads.recorded_head(store), "the head record", required=bool(last))
    file_head, file_problem = _read_anchor(path)
    if file_problem:
        problems.append(file_problem)
    if file_head is not None:
        checked.append("anchor file")
        problems += _against(hashes, last, file_head, f"the anchor file {path.name}")
    if anchor is not None:
        checked.append("--anchor")
        problems += _against(hashes, last, anchor, "the given anchor")
    return checked, problems


def _walk(entries: Iterable[Any]) -> tuple[dict[int, str], list[Problem]]:
    """``seq -> hash`` of the entries up to the first break, and that break explained."""
    hashes: dict[int, str] = {}
    expected, prev = 1, chain.GENESIS
    for e in entries:
        problem = _link_problem(e, expected, prev)
        if problem is not None:
            return hashes, [problem]
        hashes[e.seq] = e.hash
        expected, prev = e.seq + 1, e.hash
    return hashes, []


def _link_problem(e: Any, expected: int, prev: str) -> Problem | None:
    if e.seq > expected:
        gone = f"entry {expected}" if e.seq == expected + 1 else f"entries {expected}-{e.seq - 1}"
        return Problem(expected, f"{gone} missing: deleted from the middle of the log")
    if e.seq < expected:
        return Problem(e.seq, f"entry {e.seq} appears twice or out of order")
    own = chain.entry_hash(e.prev_hash, e.seq, e.ts, e.actor, e.action, e.subject, e.details or {})
    if own != e.hash:
        return Problem(e.seq, f"entry {e.seq} was edited: its content no longer matches its hash")
    if e.prev_hash != prev:
        return Problem(
            e.seq, f"entry {e.seq} does not link to entry {e.seq - 1}: one of them was rewritten or replaced"
        )
    return None


def _against(
    hashes: dict[int, str], last: int, head: tuple[int, str] | None, name: str, *, required: bool = False
) -> list[Problem]:
    if head is None:
        return [Problem(None, f"{name} is missing although the log has entries")] if required else []
    seq, digest = head
    if seq == 0:
        return []
    if seq > last:
        return [
            Problem(
                last + 1,
                f"the log ends at entry {last} but {name} records entry {seq}: "
                f"entries {last + 1}-{seq} were deleted (truncation)",
            )
        ]
    if hashes.get(seq) != digest:
        return [Problem(seq, f"entry {seq} differs from the hash {name} holds for it")]
    if name == "the head record" and seq < last:
        return [
            Problem(
                seq + 1, f"{name} stops at entry {seq}: entries after it were appended around the trigger"
            )
        ]
    return []


# ---------------------------------------------------------------------------- the anchor file


def anchor_path(store: Store) -> Path:
    """``FLEETWARDEN_HOME/audit-anchors/<hash of the database URL>.json`` (password masked first)."""
    url = store.engine.url.render_as_string(hide_password=True)
    return home() / "audit-anchors" / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.json"


def _read_anchor(path: Path) -> tuple[tuple[int, str] | None, Problem | None]:
    if not path.exists():
        return None, None
    try:
        if path.stat().st_size > MAX_ANCHOR_FILE:
            raise ValueError("too large")
        doc = json.loads(path.read_text(encoding="utf-8"))
        return parse_anchor(f"{int(doc['seq'])}:{doc['hash']}"), None
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None, Problem(None, f"the anchor file {path} is unreadable or altered")


def _write_anchor(path: Path, store: Store, head: tuple[int, str]) -> None:
    old, _ = _read_anchor(path)
    if old is not None and old[0] > head[0]:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "database": store.engine.url.render_as_string(hide_password=True),
        "seq": head[0],
        "hash": head[1],
        "saved_at": time.time(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def advance_anchor(store: Store) -> bool:
    """Move the anchor file to the current head, but only if the entry it names now is still in
    the chain with the same hash (cheap: no full walk).  Returns whether it moved."""
    path = anchor_path(store)
    old, problem = _read_anchor(path)
    head = store.audit_head()
    if problem is not None or head is None:
        return False
    if old is not None and old[0] > 0:
        found = store.audit_entries(since_seq=old[0] - 1, limit=1)
        if not found or found[0].seq != old[0] or found[0].hash != old[1]:
            return False
    _write_anchor(path, store, head)
    return True
