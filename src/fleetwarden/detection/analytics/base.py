"""The contract every behaviour analytic keeps.

An analytic consumes event batches of the kinds it names, in time order, and returns
findings as soon as its evidence is complete.  It keeps its own bounded state between
batches, so the same object serves file replay (one call per file chunk) and live
streams (one call per bus message batch).  ``flush`` is called at the end of a replay
(or when a stream window closes) to emit what is still pending.

Findings do not depend on how the events were batched.  The engine is handed the events of
a run cut at event times into windows, window after window, each window's kinds in
:data:`~fleetwarden.core.events.KINDS` order (what ``time_windows``, the merge of
``app/inputs.py`` and the worker produce; a window may hold one event, an hour or
everything).  Whatever the cuts, an analytic returns the same findings over the run, flush
included (entity, category, detector, score, first and last time, evidence); only the call
they come out of may differ.  ``tests/test_batch_invariance.py`` holds every analytic to it.
The means, which every analytic's docstring names:

* records are judged in time order, each against the state the records before it left
  (judge, then learn), vectorised over a batch; emission, eviction, expiry and window
  closing are decided by event time, never at the end of a batch (caps that only a
  hostile load reaches are safety valves and say so);
* an analytic that judges whole periods of event time (a window of sums, a tick of
  readings) holds the records of the period still open
  (:class:`~fleetwarden.detection.analytics.netcommon.TickGate`) and judges it once a later
  record proves it over, or at ``flush``;
* an analytic that reads several kinds (flows and the DNS answers that name them,
  enrolments and a device's activity) judges a record only once every kind it reads is in up
  to that record's time (:class:`~fleetwarden.detection.analytics.netcommon.KindClock`:
  within a window, flows come before the DNS records of the same window), then goes through
  the kinds in event time (ties in ``KINDS`` order); such findings come out one batch later.
  Fleet prevalence is asked *as of* the time judged.

Input that does not follow that order (one capture reader yielding all its flows, then all
its DNS records) is still analysed; records that arrive behind what was judged are taken as
they come.

Discovery convention: each analytics module exposes a module-level ``ANALYTICS`` list of
its analytic classes, each constructible without arguments (defaults are the production
thresholds).  :func:`fleetwarden.detection.engine.default_analytics` imports the modules
it knows by name and instantiates every class listed; a module that is absent is skipped.
An analytic that also takes ARP records (``ts, src_mac, src_ip, dst_ip, op``) offers
``update_arp(table, ctx) -> list[Finding]``.
"""

from __future__ import annotations

from typing import Protocol

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding


class Analytic(Protocol):
    """A behaviour analytic: scan, beacon, flood, DNS abuse, exfiltration, auth…"""

    name: str
    kinds: tuple[str, ...]

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Consume one batch (records in time order); return findings now complete."""
        ...

    def flush(self, ctx: Context) -> list[Finding]:
        """Emit what is still pending at the end of the input."""
        ...
