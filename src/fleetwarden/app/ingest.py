"""Event ingestion over the API: a JSON batch of events from a gateway or a device, validated by the
event schema (:mod:`fleetwarden.core.events`, the JSON-lines rules of
:func:`fleetwarden.sources.jsonl.decode_events`), run through a
:class:`~fleetwarden.app.session.DetectionSession` and recorded in the store.

Contract: a batch is all or nothing: one bad event refuses the whole batch with a
:class:`IngestRefused` naming up to five bad events (index and problem), so a client can fix and
resend it.  A batch bound to a device (the sender authenticated by its certificate) may only carry
events of that device: an event naming another ``device_id`` refuses the batch; events without one
are attributed to it.

Blind spot: each request is its own detection session (per-device state starts afresh and is
flushed at the end of the batch); stories still join across requests through the store's open
incidents (:meth:`DetectionSession.record`).  Gateways should send batches covering whole minutes
rather than single events for the windowed analytics to see enough.

:func:`device_for_certificate` maps a TLS client certificate to its device id: signed by the
FleetWarden CA, valid now, not revoked or superseded in the store (the CRL's source), known to the
store, and its CN a valid device id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from fleetwarden.app import identity
from fleetwarden.app.inventory import context_from_store
from fleetwarden.app.session import DetectionSession
from fleetwarden.control import ca as x509ca
from fleetwarden.core.errors import InputError
from fleetwarden.sources.jsonl import decode_events
from fleetwarden.store import identity as ids

__all__ = ["MAX_BATCH", "CertificateRefused", "IngestRefused", "device_for_certificate", "ingest_events"]

MAX_BATCH = 5000
MAX_SHOWN = 5


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


def ingest_events(
    store: Any, events: Sequence[Mapping[str, Any]], *, source: str, actor: str,
    device_id: str | None = None, max_events: int = MAX_BATCH,
) -> dict[str, Any]:  # fmt: skip
    """Validate, detect on and record ``events``; returns ``{"accepted", "by_kind", "findings",
    "incidents"}`` (findings as contract dicts).  ``actor`` names the sender in the ingest record."""
    if len(events) > max_events:
        raise IngestRefused(f"{len(events)} events in one batch: at most {max_events}")
    groups = _decode(_bind(events, device_id))
    session = DetectionSession(ctx=context_from_store(store), store=store, source=f"api:{actor}"[:200])
    ordered = sorted(groups.items(), key=lambda kv: _first_ts(kv[1][0]))
    found = [f for _kind, (batch, _lines) in ordered for f in session.process(batch)]
    found += session.flush()
    ranges = [(kind, len(b), *_span(b)) for kind, (b, _lines) in ordered]
    session.record(batches=ranges)
    return {
        "accepted": sum(len(b) for b, _ in groups.values()),
        "by_kind": {kind: len(b) for kind, (b, _) in groups.items()},
        "findings": [f.to_dict() for f in found],
        "incidents": len(session.incidents()),
    }


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
