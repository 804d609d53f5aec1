"""The ``analyze`` service: captures and logs in, incidents out (and into the store when given one).

The files are one stream (:class:`~fleetwarden.app.inputs.InputSet`, merged in event time), run
through one :class:`~fleetwarden.app.session.DetectionSession`; its findings are correlated into
incidents.  With a store, the inventory there names and classes the devices, and the findings
join the open stories of their devices.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetwarden.app.inputs import InputSet
from fleetwarden.app.session import DetectionSession
from fleetwarden.core.context import Context
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.detection.analytics.base import Analytic

__all__ = ["AnalyzeResult", "analyze"]


@dataclass
class AnalyzeResult:
    """What ``analyze`` found: incidents, the findings behind them, and per-file figures."""

    incidents: list[Incident]
    findings: list[Finding]
    stats: dict[str, Any] = field(default_factory=dict)
    recorded: Any = None  # the store's RecordSummary when recorded


def analyze(
    paths: Sequence[str | Path],
    *,
    model: Any = None,
    skip_bad: bool = False,
    ctx: Context | None = None,
    store: Any = None,
    analytics: Sequence[Analytic] | None = None,
) -> AnalyzeResult:
    """Read ``paths`` as one stream, detect, correlate; record to ``store`` when given.

    Raises :class:`fleetwarden.sources.SourceError` on bad input unless ``skip_bad``; nothing is
    recorded then.  ``ctx`` defaults to the store's inventory (or an empty one)."""
    from fleetwarden.app.inventory import context_from_store

    t0 = time.perf_counter()
    inputs = InputSet(paths, skip_bad=skip_bad)
    if ctx is None:
        ctx = context_from_store(store) if store is not None else Context()
        if store is not None:  # the signed firmware registry is the integrity analytic's catalogue
            from fleetwarden.app.firmware import with_registry

            with_registry(ctx, store)
    source = ", ".join(str(f.path) for f in inputs.files)
    session = DetectionSession(ctx=ctx, model=model, analytics=analytics, store=store, source=source)
    session.run(inputs.batches(), flush=False)
    for table in inputs.arp_tables():
        session.process_arp(table)
    session.flush()
    recorded = session.record(final=True) if store is not None else None  # first: it marks expected findings
    incidents = session.incidents()
    stats = {
        "files": {str(f.path): f.figures() for f in inputs.files},
        "records": inputs.records,
        "findings": len(session.findings),
        "incidents": len(incidents),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return AnalyzeResult(incidents=incidents, findings=session.findings, stats=stats, recorded=recorded)
