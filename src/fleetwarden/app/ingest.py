"""Event ingestion over the API: a JSON batch of events from a gateway or a device, validated by the
event schema (:mod:`fleetwarden.core.events`, the JSON-lines rules of
:func:`fleetwarden.sources.jsonl.decode_events`), run through the app's long-lived
:class:`IngestSession` and recorded in the store.

Contract: a batch is all or nothing: one bad event refuses the whole batch with a
:class:`IngestRefused` naming up to five bad events (index and problem), so a client can fix and
resend it.  A batch bound to a device (the sender authenticated by its certificate) may only carry
events of that device: an event naming another ``device_id`` refuses the batch; events without one
are attributed to it.

**One detection session per served app.**  :class:`IngestSession` holds one
:class:`~fleetwarden.app.session.DetectionSession` for the app's store, made at the first batch
and used under a lock (FastAPI runs the route in a thread pool: two batches never run the engine
at once).  So per-device state (beacon timing, failed-login bursts, scan counts; with a flow
model, its per-device context) carries from one request to the next, as it does for ``watch`` on
a stream: a gateway may send a device's events every few seconds in small batches.  Each batch's
kinds go to the engine in event-time order (by their first event), the engine is not flushed,
and the findings made so far are recorded at the end of the request (joined to the open stories
of their devices, :meth:`DetectionSession.record`), so incidents show at once.  The response's
``findings`` are those this batch completed: a windowed finding (a burst, a beacon, a scan)
completes on a later batch that moves its device's event time past the window, or at shutdown.

**Durability.**  The engine state is saved to the store (table ``engine_checkpoints``, key
:data:`CHECKPOINT_KEY`, the worker's explicit state format: :func:`~fleetwarden.app.worker.dump_engine`
inside :func:`~fleetwarden.app.partitions.write_checkpoint`, never a pickle) at the end of the
first request after ``checkpoint_every`` seconds of wall time, and at shutdown
(:meth:`IngestSession.close`: the app's lifespan hook, or :func:`~fleetwarden.api.app.close_app`).
At shutdown the state is saved first, then the engine is flushed and the findings still pending
are recorded.  A new app on the same store resumes from the saved state.  The context (the
store's inventory and signed firmware registry, as ``watch`` and ``worker`` read it) is read
when the session is made and again at most every ``context_every`` seconds, so devices
registered later are named.

Blind spots:

* batches are judged in the order they arrive, not merged in event time as the worker's
  watermark does: a batch older than what the engine already saw (a gateway catching up after an
  outage) meets windows that may have moved on;
* a crash (not a shutdown) loses what the state learnt since the last save (at most
  ``checkpoint_every`` seconds of events; the findings they completed were recorded by their
  requests); a request that fails after its events reached the engine (the store down while
  recording) leaves them in the state and its findings pending (the next request records them), so
  a client resending that batch has its events counted twice;
* a window open at shutdown is reported then, with what it held, and (the saved state still
  holding it) again when it closes after the restart: the same finding stored once when nothing
  came since, else an extended one stored beside it, on the same incident;
* a device registered between two reads of the inventory is named by its address until the next;
* several server processes (``uvicorn --workers N``) each hold their own session over whichever
  devices their requests bring, and share one checkpoint row: the store refuses a save behind
  the one it holds, so only the process furthest along is saved (the others log it), and a
  restart resumes every process from that one state.  Run one process for ingestion.

:func:`device_for_certificate` maps a TLS client certificate to its device id: signed by the
FleetWarden CA, valid now, not revoked or superseded in the store (the CRL's source), known to the
store, and its CN a valid device id.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from cryptography import x509

from fleetwarden.app import identity
from fleetwarden.app.session import DetectionSession
from fleetwarden.control import ca as x509ca
from fleetwarden.core.errors import InputError
from fleetwarden.core.events import MAX_AHEAD_S
from fleetwarden.detection.correlation import correlate
from fleetwarden.sources.jsonl import decode_events
from fleetwarden.store import identity as ids

__all__ = [
    "CHECKPOINT_KEY",
    "MAX_BATCH",
    "CertificateRefused",
    "IngestRefused",
    "IngestSession",
    "device_for_certificate",
]

MAX_BATCH = 5000
MAX_SHOWN = 5
CHECKPOINT_KEY = "api-ingest"  # the engine_checkpoints row of the API's session (workers use STREAM/...)
CHECKPOINT_EVERY = 30.0  # wall seconds between saves of the engine state (and at shutdown)
CONTEXT_EVERY = 60.0  # wall seconds between reads of the inventory

log = logging.getLogger(__name__)


class IngestRefused(InputError):
    """A batch that cannot be ingested: too large, a bad event, an event of another device."""


class CertificateRefused(InputError):
    """A client certificate that does not identify a device of this fleet."""


def _bind(events: Sequence[Mapping[str, Any]], device_id: str | None) -> list[dict[str, Any]]:
    out, wrong = [], []
    for i, e in enumerate(events):
        e = dict(e)
        if device_id is not None:
            claimed = e.get("device_id")
            if claimed is not None and claimed != device_id:
                wrong.append(i)
            e["device_id"] = device_id
        out.append(e)
    if wrong:
        raise IngestRefused(
            f"events {wrong[:MAX_SHOWN]} name another device than the certificate's {device_id!r}: batch refused"
        )
    return out


def _decode(events: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        data = "\n".join(json.dumps(e, allow_nan=False) for e in events).encode()
    except (TypeError, ValueError) as exc:
        raise IngestRefused(f"events are not plain JSON: {exc}") from None
    groups, errors = decode_events(data, first_line=0)
    if errors:
        shown = "; ".join(f"event {line}: {problem[:200]}" for line, problem in errors[:MAX_SHOWN])
        raise IngestRefused(f"{len(errors)} bad event(s), batch refused: {shown}")
    return groups


def _context(store: Any) -> Any:
    """The store's inventory and signed firmware registry: the context ``watch`` and ``worker`` read."""
    from fleetwarden.app.firmware import with_registry
    from fleetwarden.app.inventory import context_from_store

    return with_registry(context_from_store(store), store)


class IngestSession:
    """The API's detection session over ``store`` (see the module docstring): :meth:`ingest` per
    request, :meth:`checkpoint` to save the engine state now, :meth:`close` at shutdown.

    ``checkpoint_every``: wall seconds between saves of the engine state (checked at the end of
    each request; 0 saves after every request).  ``context_every``: wall seconds between reads of
    the inventory.  ``key``: the checkpoint row.  ``model``: a flow-model directory or model
    (optional).  Counters: :attr:`events`, :attr:`requests`, :attr:`checkpoints`; :attr:`resumed`
    says whether the state came from a saved checkpoint.
    """

    def __init__(
        self, store: Any, *, checkpoint_every: float = CHECKPOINT_EVERY, context_every: float = CONTEXT_EVERY,
        key: str = CHECKPOINT_KEY, model: Any = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.checkpoint_every = checkpoint_every
        self.context_every = context_every
        self.key = key
        self.model = model
        self.events = self.requests = self.checkpoints = 0
        self.resumed = False
        self._lock = threading.Lock()
        self._session: DetectionSession | None = None
        self._context_at = self._saved_at = 0.0
        # the checkpoint's sequence: the stored one at start plus the events taken since, so a save
        # never goes back (the store refuses that) even when the stored state could not be read
        self._seq_base = 0
        self._events_at_start = 0

    @property
    def session(self) -> DetectionSession | None:
        """The detection session (None before the first batch and after :meth:`close`)."""
        return self._session

    # ---- one request ----------------------------------------------------------------------------
    def ingest(
        self, events: Sequence[Mapping[str, Any]], *, actor: str, device_id: str | None = None,
        max_events: int = MAX_BATCH,
    ) -> dict[str, Any]:  # fmt: skip
        """Validate, detect on and record ``events``; returns ``{"accepted", "by_kind", "findings",
        "incidents"}``: ``findings`` (contract dicts) are those this batch completed, ``incidents``
        how many incidents they make (correlated among themselves, rollout-expected ones aside).
        ``actor`` names the sender in the ingest record."""
        if len(events) > max_events:
            raise IngestRefused(f"{len(events)} events in one batch: at most {max_events}")
        groups = _decode(_bind(events, device_id))  # outside the lock: pure and the slow part of a refusal
        _check_clock(groups, time.time())
        ordered = sorted(groups.items(), key=lambda kv: _first_ts(kv[1][0]))
        by_kind = {kind: len(b) for kind, (b, _) in groups.items()}
        with self._lock:
            session = self._current()
            found = [f for _kind, (batch, _lines) in ordered for f in session.process(batch)]
            session.source = f"api:{actor}"[:200]
            session.record(batches=[(kind, len(b), *_span(b)) for kind, (b, _lines) in ordered])
            self.requests += 1
            self.events += sum(by_kind.values())
            if time.monotonic() - self._saved_at >= self.checkpoint_every:
                self._save_quietly()
            ctx = session.ctx
        return {
            "accepted": sum(by_kind.values()),
            "by_kind": by_kind,
            "findings": [f.to_dict() for f in found],
            "incidents": len(correlate([f for f in found if not f.attributes.get("expected")], ctx)),
        }

    def _current(self) -> DetectionSession:
        """The session (made, resumed from the store, at the first call); its context re-read when
        ``context_every`` seconds have passed."""
        now = time.monotonic()
        if self._session is None:
            self._session = self._open()
            self._context_at = self._saved_at = now
        elif now - self._context_at >= self.context_every:
            ctx = _context(self.store)
            self._session.ctx = self._session.engine.ctx = ctx
            self._context_at = now
        return self._session

    def _open(self) -> DetectionSession:
        from fleetwarden.app.partitions import read_checkpoint
        from fleetwarden.app.worker import load_engine

        session = DetectionSession(ctx=_context(self.store), model=self.model, store=self.store, source="api",
                                   keep_findings=False)  # fmt: skip
        cp = self.store.load_checkpoint(self.key)
        if cp is not None:
            self._seq_base = int(cp.stream_seq)
            try:
                _header, state = read_checkpoint(cp.state)
                session.engine = load_engine(state, session.ctx, session.model)
                self.resumed = True
            except InputError as exc:  # another version's state, a damaged row: start afresh, say so
                log.warning("API ingestion: checkpoint %r not resumed, starting afresh: %s", self.key, exc)
        self._events_at_start = int(session.engine.events)
        return session

    # ---- durability -----------------------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Save the engine state now (nothing before the first request); returns whether it saved."""
        with self._lock:
            return self._save()

    def _save(self) -> bool:
        from fleetwarden.app.partitions import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, write_checkpoint
        from fleetwarden.app.worker import dump_engine

        if self._session is None:
            return False
        engine = self._session.engine
        events = int(engine.events)
        header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "source": self.key,
                  "partitions": 0, "owned": [], "events": events, "positions": {}}  # fmt: skip
        seq = self._seq_base + events - self._events_at_start
        self.store.save_checkpoint(self.key, seq, write_checkpoint(header, dump_engine(engine)), events=events)
        self._saved_at = time.monotonic()
        self.checkpoints += 1
        return True

    def _save_quietly(self) -> None:
        """A save at the end of a request: its failure (the store busy, another process ahead) is
        logged and tried again at the next request; the batch itself was taken and recorded."""
        try:
            self._save()
        except Exception as exc:  # noqa: BLE001 - the request succeeded; the state is saved later
            log.warning("API ingestion: checkpoint %r not saved, trying again later: %s", self.key, exc)

    def close(self) -> list[Any]:
        """At shutdown: record what an earlier failed write left pending, save the engine state,
        then flush it and record the findings still open (and the drift counts); returns those
        findings.  A later request starts again from the saved state."""
        with self._lock:
            session, found = self._session, []
            if session is None:
                return []
            try:
                session.source = "api"
                session.record()  # before the state moves past them in the saved checkpoint
                self._save_quietly()
                found = session.flush()
                session.record(final=True)
            finally:
                self._session = None
            return found


def _check_clock(groups: dict[str, Any], now: float) -> None:
    """Refuse the batch when an event is dated more than :data:`MAX_AHEAD_S` ahead of ``now``."""
    ahead: list[int] = []
    for batch, lines in groups.values():
        late = np.flatnonzero(batch.np("ts") > now + MAX_AHEAD_S)
        ahead += [int(lines[i]) for i in late]
    if ahead:
        ahead.sort()
        raise IngestRefused(
            f"{len(ahead)} event(s) dated more than {MAX_AHEAD_S:.0f} s ahead of the server's clock, batch "
            f"refused: events {ahead[:MAX_SHOWN]} (check the sender's clock)"
        )


def _first_ts(batch: Any) -> float:
    return _span(batch)[0] or 0.0


def _span(batch: Any) -> tuple[float | None, float | None]:
    ts = batch.table.column("ts")
    lo, hi = ts.to_numpy().min(initial=float("inf")), ts.to_numpy().max(initial=float("-inf"))
    return (float(lo), float(hi)) if len(batch) else (None, None)


# ------------------------------------------------------------------------------------ devices


def device_for_certificate(store: Any, der: bytes, *, now: float | None = None) -> str:
    """The device id a DER client certificate proves (see the module docstring), else
    :class:`CertificateRefused` with the reason."""
    now = time.time() if now is None else now
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise CertificateRefused("the client certificate cannot be parsed") from None
    ca_cert = x509.load_pem_x509_certificate(identity._ca_cert_pem())
    revoked = {int(r.serial, 16) for r in ids.revocation_list(store, now=now)}
    reason = x509ca.verify_device_certificate(ca_cert, cert, now=datetime.fromtimestamp(now, UTC), revoked=revoked)
    if reason:
        raise CertificateRefused(f"client certificate refused: {reason}")
    row = ids.certificate_by_fingerprint(store, x509ca.fingerprint(cert))
    if row is None or row.status != "active":
        raise CertificateRefused("client certificate refused: not an active certificate of this fleet")
    return row.device_id
