"""The detection engine: event batches in, findings out; the same code for replay and streams.

:class:`Engine` dispatches each batch to the analytics that consume its kind (in the order
batches arrive, which is time order per source), optionally scores flows with a trained
flow model and turns its alerts into per-device ``anomaly`` findings, and returns the
findings each call completes.  It is pure (docs/architecture.md): no file, database, clock or
process setting; the application layer (:mod:`fleetwarden.app.session`) reads the inputs, owns
the garbage-collector policy and records what the engine finds.

Analytics are found by convention: every module in :mod:`fleetwarden.detection.analytics`
that detects something exposes a module-level ``ANALYTICS`` list of classes constructible
without arguments (see :mod:`fleetwarden.detection.analytics.base`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.base import Analytic
from fleetwarden.detection.analytics.netcommon import make_finding, share_prevalence, sorted_by_time
from fleetwarden.detection.flowstory import EPISODE_GAP, FlowAlerts, Story

__all__ = ["ANALYTIC_MODULES", "MODEL_ONLY_CONFIDENCE", "Engine", "default_analytics"]

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


# Confidence of a flow-model anomaly finding: at most "medium".  The flow score ranks flows; it is
# not a probability, and an outlier that no behaviour analytic names is a lead for an analyst, not
# a high-severity incident (the benign IoT Sentinel setup captures, a phone polling a Hue bridge
# 30 times in 10 s, score up to 0.69).  The behaviour analytics name attacks at their own
# confidence; the correlator joins the two into one device's story.
MODEL_ONLY_CONFIDENCE = 0.6


def stream_of(flow_model: Any) -> Any:
    """The model an engine scores with: a stream of its own when the model keeps per-device context
    (:meth:`~fleetwarden.detection.flowmodel.FlowModel.new_stream`), else the model itself."""
    new_stream = getattr(flow_model, "new_stream", None)
    return new_stream() if new_stream is not None else flow_model


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
        episode_gap: float = EPISODE_GAP,
    ) -> None:
        self.analytics = list(analytics) if analytics is not None else default_analytics()
        # Beacon, exfil and retry learn the same fleet prevalence from the same batches: one copy
        # (the scale-out worker teaches it what other workers' partitions saw, too).
        self.prevalence = share_prevalence(self.analytics)
        self.flow_model = stream_of(flow_model)
        self.ctx = ctx if ctx is not None else Context()
        self.episode_gap = episode_gap  # a device's flow-model alerts an hour apart are two stories
        self._by_kind: dict[str, list[Analytic]] = {}
        for a in self.analytics:
            for kind in a.kinds:
                self._by_kind.setdefault(kind, []).append(a)
        # the flow model's alerted flows per device, told as a story per cooldown (flowstory.py)
        self._alerts = FlowAlerts(episode_gap)
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
        out += [self._finding(ip, story) for ip, story in self._alerts.finish(self.ctx) if story is not None]
        self.findings += len(out)
        return out

    # flow model alerts -> findings that tell what the flows were about ---------------------
    def _model_findings(self, batch: EventBatch) -> list[Finding]:
        scores, alerts, reasons = self.flow_model.score_batch(batch)
        alerts = np.asarray(alerts).astype(bool)
        if not alerts.any():
            return []
        cols = {
            "src": batch.np("id.orig_h", fill=""),
            "dst": batch.np("id.resp_h", fill=""),
            "ts": batch.np("ts"),
            "proto": batch.np("proto", fill=""),
            "port": batch.np("id.resp_p", fill=0),
            "state": batch.np("conn_state", fill=""),
            "out_bytes": np.nan_to_num(batch.np("orig_bytes", fill=0).astype(float)),
            "in_bytes": np.nan_to_num(batch.np("resp_bytes", fill=0).astype(float)),
            "uid": batch.np("uid", fill=""),
            "mac": batch.np("orig_l2_addr", fill=""),
        }
        rows = np.flatnonzero(alerts)
        told = self._alerts.add(cols, rows, np.asarray(scores, dtype=float), list(reasons), self.ctx)
        return [self._finding(ip, story) for ip, story in told if story is not None]

    def _finding(self, ip: str, story: Story) -> Finding:
        return make_finding(
            self.ctx,
            ip,
            story.category,
            "flowmodel",
            min(story.top_score, MODEL_ONLY_CONFIDENCE),
            story.first,
            story.last,
            story.evidence,
            story.mitre,
            story.uids,
            mac=story.mac,
            alerts=story.flows,
            block=story.block,
        )
