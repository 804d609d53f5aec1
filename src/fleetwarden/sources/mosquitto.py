"""Mosquitto broker logs as ``auth`` events: who connected, as which client id, from where, who was
refused, and who published where the broker's ACL said no.

Reads the log Mosquitto writes with ``log_dest file`` (any ``log_type``; ``log_type all`` carries
the denials), each line ``<epoch seconds>: <message>`` (the default ``log_timestamp``) or
``<YYYY-MM-DDTHH:MM:SS>: <message>`` (``log_timestamp_format %Y-%m-%dT%H:%M:%S``, read as UTC).
The messages read (Mosquitto 2.0 wording) and the record each becomes (``service`` ``mqtt``):

=========================================================================  =============================
``New client connected from IP:PORT as CID (p2, c1, k60, u'USER').``        ``action`` login, success
``OpenSSL Error[0]: …`` after ``New connection from IP:PORT on port P.``     login, failed, ``reason``
``Client connection from IP failed: …``                                      login, failed, ``reason``
``Client CID already connected, closing old connection.``                    conflict (``src_ip``: the new
                                                                             connection; ``user``: the old
                                                                             session's)
``Denied PUBLISH from CID (d0, q1, r0, m1, 'TOPIC', … (N bytes))``           publish, failed, ``topic``
``Client CID disconnected.`` (and the timeout / socket-error variants)       disconnect
=========================================================================  =============================

A session's user and address come from its connection line (client id → session), so a denial or
a disconnect carries the identity that held the client id then.  With ``use_identity_as_username``
the user is the certificate's common name: the device id.  ``device_id`` is left null (the broker
cannot tell a device from an operator's tool); the analytics resolve the user against the inventory.

Hostile input: a line longer than ``MAX_LINE`` bytes, or one without a timestamp, is a bad record
(SourceError, or skipped and counted); bytes that are not UTF-8 are replaced; a value longer than
its field allows is refused like any other bad record (:func:`~fleetwarden.sources.drop_overlong`).
Lines of other messages (CONNACK, SUBSCRIBE, PINGREQ…) are read and ignored.

Blind spots: a TLS refusal names no certificate (Mosquitto logs only OpenSSL's reason: a revoked
and an unknown-CA certificate both read "certificate verify failed"); the user of a session whose
connection line is before the start of the file is unknown (``<unknown>``).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from fleetwarden.core.events import EventBatch, schema_for
from fleetwarden.sources import DEFAULT_BATCH, ReadStats, SourceError, drop_overlong

__all__ = ["MAX_LINE", "looks_like_mosquitto", "read"]

MAX_LINE = 16_384  # bytes: a Mosquitto line quotes a topic (65,535 at most) cut short by its logger
UNKNOWN = "<unknown>"

_TS = re.compile(r"^(\d{9,11})(?:\.\d+)?: (.*)$|^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:Z|[+-]00:?00)?: (.*)$")
_NEW_SOCKET = re.compile(r"^New connection from (.+):(\d+) on port (\d+)\.$")
_CONNECTED = re.compile(r"^New client connected from (.+):(\d+) as (.*) \(p\d+, c\d, k\d+(?:, u'(.*)')?\)\.$")
_TLS_ERROR = re.compile(r"^OpenSSL Error(?:\[\d+\])?: (.*)$")
_CONN_FAILED = re.compile(r"^Client connection from (.+) failed: (.*?)\.?$")
_TAKEOVER = re.compile(r"^Client (.*) already connected, closing old connection\.$")
_DENIED = re.compile(r"^Denied PUBLISH from (.*) \(d\d, q\d, r\d, m\d+, '(.*)', \.\.\. \(\d+ bytes\)\)$")
_GONE = re.compile(
    r"^(?:Client (.*) (?:disconnected(?:: (.*?))?|closed its connection|has exceeded timeout, disconnecting)"
    r"|Socket error on client (.*), disconnecting)\.?$"
)
# Messages that say the file is a Mosquitto log, for content detection.
_SIGNS = ("mosquitto version", "New connection from", "New client connected from", "Opening ipv4 listen")

_COLUMNS = ("ts", "user", "src_ip", "src_port", "service", "success", "reason", "action", "client_id", "topic")


def looks_like_mosquitto(head: str) -> bool:
    """The first lines of a file (text) are a Mosquitto log: timestamped lines, one a broker message."""
    lines = [ln for ln in head.splitlines()[:50] if ln.strip()]
    if not lines or not _TS.match(lines[0]):
        return False
    return any(_TS.match(ln) and any(s in ln for s in _SIGNS) for ln in lines)


class _LogState:
    """What the lines before tell about the next ones: open sessions by client id, the last socket."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[str, str, int]] = {}  # client id -> (user, ip, port)
        self.socket: tuple[str, int] | None = None  # the last "New connection from" not yet resolved
        self.rows: dict[str, list] = {c: [] for c in _COLUMNS}
        self.places: list[int] = []

    def emit(self, place: int, ts: float, action: str, success: bool, user: str, ip: str | None,
             port: int | None, *, client_id: str | None = None, reason: str | None = None,
             topic: str | None = None) -> None:  # fmt: skip
        values = (ts, user, ip, port, "mqtt", success, reason, action, client_id, topic)
        for name, value in zip(_COLUMNS, values, strict=True):
            self.rows[name].append(value)
        self.places.append(place)

    def message(self, place: int, ts: float, msg: str) -> None:
        """Turn one message into zero or one record."""
        if m := _NEW_SOCKET.match(msg):
            self.socket = (m.group(1), int(m.group(2)))
        elif m := _CONNECTED.match(msg):
            ip, port, cid, user = m.group(1), int(m.group(2)), m.group(3), m.group(4) or UNKNOWN
            self.sessions[cid] = (user, ip, port)
            if len(self.sessions) > 1_000_000:  # bounded: the oldest session goes first
                self.sessions.pop(next(iter(self.sessions)))
            self.socket = None
            self.emit(place, ts, "login", True, user, ip, port, client_id=cid)
        elif (m := _TLS_ERROR.match(msg)) and self.socket is not None:
            ip, port = self.socket
            self.socket = None
            self.emit(place, ts, "login", False, UNKNOWN, ip, port, reason=f"TLS: {m.group(1)}")
        elif m := _CONN_FAILED.match(msg):
            self.emit(place, ts, "login", False, UNKNOWN, m.group(1), None, reason=f"TLS: {m.group(2)}")
        elif m := _TAKEOVER.match(msg):
            cid = m.group(1)
            user, old_ip, old_port = self.sessions.pop(cid, (UNKNOWN, None, None))
            ip, port = self.socket if self.socket is not None else (None, None)
            reason = f"client id taken over; the old session was from {old_ip or 'unknown'}:{old_port or '?'}"
            self.emit(place, ts, "conflict", True, user, ip, port, client_id=cid, reason=reason)
        elif m := _DENIED.match(msg):
            cid = m.group(1)
            user, ip, port = self.sessions.get(cid, (UNKNOWN, None, None))
            self.emit(place, ts, "publish", False, user, ip, port, client_id=cid,
                      reason="publish denied by the broker's ACL", topic=m.group(2))  # fmt: skip
        elif m := _GONE.match(msg):
            cid = m.group(1) or m.group(3)
            if cid is None or cid == UNKNOWN or cid not in self.sessions:
                return
            user, ip, port = self.sessions.pop(cid)
            self.emit(place, ts, "disconnect", True, user, ip, port, client_id=cid, reason=m.group(2))


def _timestamp(m: re.Match[str]) -> tuple[float, str]:
    if m.group(1) is not None:
        return float(m.group(1)), m.group(2)
    return float(calendar.timegm(time.strptime(m.group(3), "%Y-%m-%dT%H:%M:%S"))), m.group(4)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines, each read with a bound: the rest of an over-long line is skipped unread into
    memory, and the line comes back one byte over ``MAX_LINE`` (so it is refused, not cut)."""
    with open(path, "rb") as fh:
        number = 0
        while raw := fh.readline(MAX_LINE + 1):
            number += 1
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
            yield number, raw


def read(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Iterator[EventBatch]:
    """Yield ``auth`` batches from a Mosquitto log, in file order (see the module doc)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    state = _LogState()
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        problem = _line_problem(raw)
        m = None if problem else _TS.match(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        if problem is None and m is None:
            problem = "not a Mosquitto log line (expected '<timestamp>: <message>')"
        if problem is not None:
            error = SourceError(path, f"line {number}", problem)
            if not skip_bad:
                raise error
            stats.skip(error)
            continue
        ts, msg = _timestamp(m)
        state.message(number, ts, msg)
        if len(state.places) >= batch_size:
            yield from _flush(path, state, skip_bad, stats)
    yield from _flush(path, state, skip_bad, stats)


def _line_problem(raw: bytes) -> str | None:
    if len(raw) > MAX_LINE:
        return f"line is {len(raw):,} bytes, at most {MAX_LINE:,}"
    return None


def _flush(path: Path, state: _LogState, skip_bad: bool, stats: ReadStats) -> Iterator[EventBatch]:
    if not state.places:
        return
    schema = schema_for("auth")
    columns = {name: pa.array(values, type=schema.field(name).type) for name, values in state.rows.items()}
    length = len(state.places)
    columns, length, _places, bad = drop_overlong("auth", columns, length, np.asarray(state.places))
    state.rows = {c: [] for c in _COLUMNS}
    state.places = []
    for place, what in bad:
        error = SourceError(path, f"line {place}", what)
        if not skip_bad:
            raise error
        stats.skip(error)
    if length:
        stats.records += length
        yield EventBatch.from_columns("auth", columns, length)
