"""The detection engine: event batches in, findings out; the same code for replay and streams.

:class:`Engine` dispatches each batch to the analytics that consume its kind (in the order
batches arrive, which is time order per source), optionally scores flows with a trained
flow model and turns its alerts into per-device ``anomaly`` findings, and returns the
findings each call completes.  :func:`analyze_paths` is the ``fleetwarden analyze``
service: read captures and logs, run one engine per file, correlate everything into
incidents.

Garbage collection: the analytics' state is millions of long-lived dict and list entries, and
CPython's full (generation 2) collections traverse all of them, a pause that grows with the
fleet (measured by bench/bench_streaming.py: 0.4 s to 1.2 s every few seconds at 10,000
events/s, the p99 of a 100 ms batch 355 ms).  After each batch the engine collects the young
generations and freezes the survivors (:func:`gc.freeze`), so state is never traversed again:
batch p99 45 ms, a third less CPU in all.  State is freed by reference counting when analytics
drop it (they build no reference cycles); once an hour a full collection still runs, for cycles
left by other code in the process.

Analytics are found by convention: every module in :mod:`fleetwarden.detection.analytics`
that detects something exposes a module-level ``ANALYTICS`` list of classes constructible
without arguments (see :mod:`fleetwarden.detection.analytics.base`).
"""

from __future__ import annotations

import gc
import importlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fleetwarden.detection.analytics.base import Analytic, Context
from fleetwarden.detection.analytics.netcommon import cap_ids, make_finding, share_prevalence, sorted_by_time
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding, Incident

__all__ = ["ANALYTIC_MODULES", "AnalyzeResult", "Engine", "analyze_paths", "default_analytics", "warm_up"]

log = logging.getLogger(__name__)

# Network analytics first, then the control-plane ones (present when their modules are).
ANALYTIC_MODULES = (
    "scan",
    "beacon",
    "retry",
    "tunnel",
    "flood",
    "dns",
    "exfil",
    "novelty",
    "auth",
    "firmware",
    "identity",
    "commands",
    "telemetry",
)


_warm = False
# Confidence of a flow-model anomaly finding: at most "medium".  The flow score ranks flows; it is
# not a probability, and an outlier that no behaviour analytic names is a lead for an analyst, not
# a high-severity incident (the benign IoT Sentinel setup captures, a phone polling a Hue bridge
# 30 times in 10 s, score up to 0.69).  The behaviour analytics name attacks at their own
# confidence; the correlator joins the two into one device's story.
MODEL_ONLY_CONFIDENCE = 0.6


def warm_up() -> None:
    """Pay the analytics' first-use costs now, once per process: the bundled GeoIP and public-suffix
    data, lazily imported modules, first calls of the Arrow kernels (about 0.3 s in all, measured by
    bench/bench_mqtt_stream.py as the latency of the first findings of a live stream).  Runs half an
    hour of a small simulated fleet through a throwaway engine; a live watcher calls it before its
    first event."""
    global _warm
    if _warm:
        return
    from fleetwarden.simulate import simulate_fleet

    fleet = simulate_fleet(devices=24, hours=0.5, seed=0, scenarios=[])
    engine = Engine()
    for batch in fleet.iter_batches(seconds=600):
        engine.process(batch)
    engine.flush()
    _warm = True


_FULL_GC_EVERY = 3600.0  # wall seconds between full collections of everything, frozen state included
_last_full_gc = time.monotonic()
_SETTLE_EVERY = 0.05  # wall seconds: at most 20 settles a second
_last_settle = -1.0


def _settle_gc() -> None:
    """Collect the young generations, then move the survivors out of the collector's reach (see the
    module docstring): long-lived state is not traversed by every later full collection.  Once an
    hour everything is unfrozen and fully collected, so reference cycles that other code in the
    process left behind are still reclaimed: one pause an hour instead of one every few seconds."""
    global _last_full_gc, _last_settle
    now = time.monotonic()
    if now - _last_settle < _SETTLE_EVERY:
        return  # many small batches in a row (a worker's partitions, a replay): once is enough
    if now - _last_full_gc > _FULL_GC_EVERY:
        gc.unfreeze()
        gc.collect()
        _last_full_gc = now
    else:
        gc.collect(1)
    gc.freeze()
    _last_settle = time.monotonic()


def default_analytics() -> list[Analytic]:
    """One fresh instance of every analytic class the analytics modules list in ``ANALYTICS``."""
    out: list[Analytic] = []
    for name in ANALYTIC_MODULES:
        try:
            module = importlib.import_module(f"fleetwarden.detection.analytics.{name}")
        except ImportError as exc:
            # A module that is absent is simply not part of this build.
            if exc.name == f"fleetwarden.detection.analytics.{name}":
                continue
            raise
        for cls in getattr(module, "ANALYTICS", ()):
            out.append(cls())
    return out


class Engine:
    """Runs analytics (and optionally a flow model) over event batches.

    ``process(batch)`` returns the findings completed by that batch; ``flush()`` the ones
    still pending at the end of the input.  ``process_arp(table)`` feeds ARP records (from
    :func:`fleetwarden.sources.pcap.read_arp`) to the analytics that take them.
    """

    def __init__(
        self,
        analytics: Sequence[Analytic] | None = None,
        flow_model: Any = None,
        ctx: Context | None = None,
        anomaly_cooldown: float = 60.0,
    ) -> None:
        self.analytics = list(analytics) if analytics is not None else default_analytics()
        # Beacon and exfil learn the same fleet prevalence from the same batches: one copy.
        share_prevalence(self.analytics)
        self.flow_model = flow_model
        self.ctx = ctx if ctx is not None else Context()
        self.anomaly_cooldown = anomaly_cooldown
        self._by_kind: dict[str, list[Analytic]] = {}
        for a in self.analytics:
            for kind in a.kinds:
                self._by_kind.setdefault(kind, []).append(a)
        # device ip -> pending model-alert aggregate (see _model_findings)
        self._alerts: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.findings = 0

    def process(self, batch: EventBatch) -> list[Finding]:
        if len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        self.events += len(batch)
        out: list[Finding] = []
        if batch.kind == "flow" and self.flow_model is not None:
            out += self._model_findings(batch)
        for a in self._by_kind.get(batch.kind, ()):
            out += a.update(batch, self.ctx)
        out.sort(key=lambda f: f.last_seen)
        self.findings += len(out)
        _settle_gc()
        return out

    def process_arp(self, table: pa.Table) -> list[Finding]:
        out: list[Finding] = []
        for a in self.analytics:
            update_arp = getattr(a, "update_arp", None)
            if update_arp is not None:
                out += update_arp(table, self.ctx)
        self.findings += len(out)
        return out

    def flush(self) -> list[Finding]:
        out: list[Finding] = []
        for a in self.analytics:
            out += a.flush(self.ctx)
        out += [f for ip in list(self._alerts) if (f := self._emit_alerts(ip)) is not None]
        self.findings += len(out)
        return out

    # flow model alerts -> anomaly findings ----------------------------------------------
    def _model_findings(self, batch: EventBatch) -> list[Finding]:
        scores, alerts, reasons = self.flow_model.score_batch(batch)
        alerts = np.asarray(alerts).astype(bool)
        if not alerts.any():
            return []
        scores = np.asarray(scores, dtype=float)
        idx = np.flatnonzero(alerts)
        src = batch.np("id.orig_h", fill="")
        ts = batch.np("ts")
        uid = batch.np("uid", fill="")
        mac = batch.np("orig_l2_addr", fill="")
        out = []
        for i in idx:
            agg = self._alerts.get(src[i])
            if agg is None:
                agg = self._alerts[src[i]] = {
                    "n": 0,
                    "max": 0.0,
                    "first": float(ts[i]),
                    "last": float(ts[i]),
                    "reasons": Counter(),
                    "uids": [],
                    "emitted": -np.inf,
                    "mac": None,
                }
            agg["n"] += 1
            agg["max"] = max(agg["max"], float(scores[i]))
            agg["last"] = max(agg["last"], float(ts[i]))
            r = reasons[i]
            for part in r if isinstance(r, (list, tuple)) else str(r or "").split(";"):
                if part and part.strip():
                    agg["reasons"][part.strip()] += 1
            if uid[i] and len(agg["uids"]) < 50:
                agg["uids"].append(uid[i])
            agg["mac"] = mac[i] or agg["mac"]
        for ip in {src[i] for i in idx}:
            agg = self._alerts[ip]
            # First alert of a device goes out at once; later ones are batched per cooldown.
            if agg["last"] - agg["emitted"] >= self.anomaly_cooldown:
                f = self._emit_alerts(ip)
                if f is not None:
                    out.append(f)
        return out

    def _emit_alerts(self, ip: str) -> Finding | None:
        agg = self._alerts.get(ip)
        if agg is None or agg["n"] == 0:
            return None
        top = ", ".join(f"{r} ({n})" for r, n in agg["reasons"].most_common(3)) or "no reasons given"
        f = make_finding(
            self.ctx,
            ip,
            "anomaly",
            "flowmodel",
            min(agg["max"], MODEL_ONLY_CONFIDENCE),
            agg["first"],
            agg["last"],
            [
                f"{agg['n']} flows above the flow model's calibrated alert threshold, highest score "
                f"{agg['max']:.2f}; top reasons: {top}"
            ],
            [],
            cap_ids(agg["uids"]),
            mac=agg["mac"],
            alerts=agg["n"],
        )
        agg.update(n=0, max=0.0, reasons=Counter(), uids=[], emitted=agg["last"], first=agg["last"])
        return f


@dataclass
class AnalyzeResult:
    """What ``analyze`` found: incidents, the findings behind them, and per-file figures."""

    incidents: list[Incident]
    findings: list[Finding]
    stats: dict[str, Any] = field(default_factory=dict)


def _load_model(model_dir: str | Path | None) -> Any:
    if model_dir is None:
        return None
    from fleetwarden.detection import flowmodel

    return flowmodel.load_model(model_dir)


def analyze_file(
    path: str | Path,
    *,
    flow_model: Any = None,
    skip_bad: bool = False,
    ctx: Context | None = None,
    analytics: Sequence[Analytic] | None = None,
) -> tuple[list[Finding], dict[str, Any]]:
    """Run a fresh engine over one file; return its findings and figures."""
    from fleetwarden.sources import ReadStats, detect_format, read_events

    path = Path(path)
    stats = ReadStats()
    engine = Engine(analytics=analytics, flow_model=flow_model, ctx=ctx)
    t0 = time.perf_counter()
    fmt = detect_format(path)
    findings: list[Finding] = []
    for batch in read_events(path, skip_bad=skip_bad, stats=stats, fmt=fmt):
        findings += engine.process(batch)
    if fmt in ("pcap", "pcapng"):
        from fleetwarden.sources import pcap

        read_arp = getattr(pcap, "read_arp", None)
        if read_arp is not None:
            findings += engine.process_arp(read_arp(path, skip_bad=skip_bad, stats=ReadStats()))
    findings += engine.flush()
    figures = {
        "format": fmt,
        "records": stats.records,
        "skipped": stats.skipped,
        "problems": list(stats.problems),
        "findings": len(findings),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return findings, figures


def analyze_paths(
    paths: Iterable[str | Path],
    model_dir: str | Path | None = None,
    skip_bad: bool = False,
    ctx: Context | None = None,
) -> AnalyzeResult:
    """The ``analyze`` service: read each file, detect, correlate all findings into incidents.

    Each file gets its own engine (captures of different times and networks do not share
    windows); the correlator then joins findings about the same entity across files.
    Raises :class:`fleetwarden.sources.SourceError` on bad input unless ``skip_bad``.
    """
    from fleetwarden.correlation import correlate

    ctx = ctx if ctx is not None else Context()
    model = _load_model(model_dir)
    findings: list[Finding] = []
    per_file: dict[str, Any] = {}
    t0 = time.perf_counter()
    for path in paths:
        found, figures = analyze_file(path, flow_model=model, skip_bad=skip_bad, ctx=ctx)
        findings += found
        per_file[str(path)] = figures
    incidents = correlate(findings, ctx)
    stats = {
        "files": per_file,
        "records": sum(f["records"] for f in per_file.values()),
        "findings": len(findings),
        "incidents": len(incidents),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return AnalyzeResult(incidents=incidents, findings=findings, stats=stats)
