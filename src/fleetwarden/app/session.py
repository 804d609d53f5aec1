"""The detection session: one run of the pure engine, with everything around it that is not pure.

Every face that detects goes through a :class:`DetectionSession`: ``analyze`` (files), ``watch``
(a live MQTT stream), the scale-out ``worker`` (one engine per partition), the ``demo``, and the
coming API.  It owns

* the **flow model** (loaded from its directory once) and the inventory **context**;
* **warm-up** of first-use costs before a live stream's first event (:func:`~.runtime.warm_up`);
* the **garbage-collector policy** (:class:`~.runtime.GcPolicy`), applied after every batch;
* the **process/flush loop** and every finding made, handed to ``on_finding`` the moment it is
  complete;
* **correlation** into incidents, and **recording** to the store, where open incidents live: a
  later finding joins the stored story of its device (:meth:`DetectionSession.record`), so a
  scan, a C2 beacon and a flood raise each other's risk however many runs or checkpoints lie
  between them.

The engine itself (:class:`~fleetwarden.detection.engine.Engine`) stays pure: batches in,
findings out (docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fleetwarden.app.models import resolve_model
from fleetwarden.app.runtime import GcPolicy, warm_up
from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.detection.analytics.base import Analytic
from fleetwarden.detection.correlation import correlate
from fleetwarden.detection.engine import Engine

__all__ = ["DetectionSession", "SessionStats", "join_stories"]


@dataclass
class SessionStats:
    """What a session has done so far."""

    events: int = 0
    batches: int = 0
    findings: int = 0
    seconds: float = 0.0  # wall time spent in the engine
    # wall seconds from a batch's hand-over to the engine until its findings were out, per batch
    engine_latency: list[float] = field(default_factory=list)
    events_by_kind: dict[str, int] = field(default_factory=dict)


class DetectionSession:
    """One detection run: context, flow model, engine(s), findings, and where they are recorded.

    ``model`` is a model directory or a loaded model; ``store`` (optional) is where
    :meth:`record` writes, under the name ``source``.  ``keep_findings`` (default True) keeps
    every finding in :attr:`findings` for :meth:`incidents`; a long-running worker turns it off
    and relies on the store.
    """

    def __init__(
        self,
        *,
        ctx: Context | None = None,
        model: Any = None,
        analytics: Sequence[Analytic] | None = None,
        store: Any = None,
        source: str = "",
        on_finding: Callable[[Finding], None] | None = None,
        gc_policy: GcPolicy | None = None,
        warm: bool = False,
        keep_findings: bool = True,
        keep_latency: bool = False,
    ) -> None:
        self.ctx = ctx if ctx is not None else Context()
        self.model = resolve_model(model)
        self.store = store
        self.source = source
        self.on_finding = on_finding
        self.gc = gc_policy if gc_policy is not None else GcPolicy()
        self.keep_findings = keep_findings
        self.keep_latency = keep_latency
        self.stats = SessionStats()
        self.findings: list[Finding] = []
        self._unrecorded: list[Finding] = []
        self.engine = self.new_engine(analytics)
        if warm:
            warm_up()  # before the first event: its findings should not wait for data files to load

    def new_engine(self, analytics: Sequence[Analytic] | None = None) -> Engine:
        """A fresh engine with this session's context and model (a worker makes one per partition)."""
        return Engine(analytics=analytics, flow_model=self.model, ctx=self.ctx)

    # ---- the loop -------------------------------------------------------------------------------
    def process(self, batch: EventBatch, engine: Engine | None = None) -> list[Finding]:
        """Run one batch through ``engine`` (default: the session's); returns and emits its findings."""
        if not len(batch):
            return []
        t = time.perf_counter()
        found = (engine or self.engine).process(batch)
        self.gc.settle()
        elapsed = time.perf_counter() - t
        self.stats.seconds += elapsed
        if self.keep_latency:
            self.stats.engine_latency.append(elapsed)
        self.stats.events += len(batch)
        self.stats.batches += 1
        self.stats.events_by_kind[batch.kind] = self.stats.events_by_kind.get(batch.kind, 0) + len(batch)
        self._emit(found)
        return found

    def process_arp(self, table: pa.Table, engine: Engine | None = None) -> list[Finding]:
        found = (engine or self.engine).process_arp(table)
        self._emit(found)
        return found

    def flush(self, engine: Engine | None = None) -> list[Finding]:
        """The findings still pending at the end of the input."""
        found = (engine or self.engine).flush()
        self._emit(found)
        return found

    def run(self, batches: Iterable[EventBatch], *, flush: bool = True) -> list[Finding]:
        """Process every batch, then (by default) flush; returns the findings of this call."""
        out: list[Finding] = []
        for batch in batches:
            out += self.process(batch)
        if flush:
            out += self.flush()
        return out

    def _emit(self, found: list[Finding]) -> None:
        if not found:
            return
        self.stats.findings += len(found)
        if self.keep_findings:
            self.findings += found
        if self.store is not None:
            self._unrecorded += found
        if self.on_finding is not None:
            for f in found:
                self.on_finding(f)

    # ---- correlation and recording --------------------------------------------------------------
    def incidents(self) -> list[Incident]:
        """This session's findings correlated into incidents (highest risk first)."""
        return correlate(self.findings, self.ctx)

    @property
    def unrecorded(self) -> int:
        return len(self._unrecorded)

    def record(
        self, *, batches: Sequence[tuple[str, int, float | None, float | None]] | None = None
    ) -> Any:
        """Write the findings made since the last call to the store, each joined to the open story of
        its device there (:func:`join_stories`).  Returns the store's summary (None without a store)."""
        if self.store is None:
            return None
        found, self._unrecorded = self._unrecorded, []
        if not found and not batches:
            return None
        incidents = join_stories(self.store, found, self.ctx)
        return self.store.record_results(self.source, found, incidents, batches=batches, replace_stories=True)


def join_stories(store: Any, found: Sequence[Finding], ctx: Context) -> list[Incident]:
    """Incidents for the entities of ``found``, correlated over those findings AND the findings of
    the entities' open incidents in ``store``: the story an uninterrupted run over all the events
    would tell (the correlator is a function of the whole set of an entity's findings)."""
    if not found:
        return []
    entities = sorted({f.entity for f in found})
    prior = store.story_findings(entities)
    return correlate(_unique(prior, found, store), ctx)


def _unique(prior: Sequence[Finding], found: Sequence[Finding], store: Any) -> list[Finding]:
    """``prior`` then ``found``, each finding once (a redelivered stream message or a re-analysed file
    brings findings the store already holds)."""
    seen: set[str] = set()
    out: list[Finding] = []
    for f in [*prior, *found]:
        fp = store.fingerprint(f)
        if fp not in seen:
            seen.add(fp)
            out.append(f)
    return out
