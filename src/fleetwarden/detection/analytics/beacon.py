"""Beaconing (command-and-control check-ins) of a device to one destination.

Contract
    :class:`BeaconDetector` consumes ``flow`` batches and keeps, per (source, destination,
    protocol, port), the start times and outbound sizes of the last ``max_history``
    connections.  When a pair reaches ``min_connections`` and again each time its count
    doubles (and at :meth:`flush`), it scores the pair in the way RITA does:

    * interval skew: Bowley's quartile skew of the gaps (a beacon's gaps are symmetric),
      scored ``1 - |skew|``;
    * interval dispersion: median absolute deviation of the gaps over their median,
      scored ``1 - MAD/median`` (jitter of tens of percent still scores well);
    * size skew and size dispersion of the bytes sent, scored the same way;
    * connection count: how many check-ins there are for the span they cover, relative
      to a beacon with the observed median gap (``n * median_gap / span``);
    * duration coverage: the span of the pair over the span of the whole input seen.

    The timing score is the mean of skew, dispersion and count; the size score the mean of
    size skew and dispersion; the beacon score ``0.6 * timing + 0.25 * size + 0.15 *
    coverage``.  A finding (``c2-beacon``, T1071) is emitted when the score reaches
    ``threshold``.  Its confidence is the beacon score, lowered for long gaps seen only a few
    times.

    Fleet context (prevalence, as RITA and Defender for IoT use it): the detector also takes
    ``dns`` batches (answers name the destinations) and keeps a bounded
    :class:`~fleetwarden.detection.analytics.netcommon.Prevalence` of distinct devices per
    external destination address and per registered domain, fleet-wide and per cohort
    (vendor, class + vendor from ``ctx.devices``).  Once ``min_population`` devices have been
    seen talking to the outside (a single-host capture is never discounted):

    * a destination contacted by at least ``max(min_prevalent_devices, prevalence_ratio x
      population)`` devices, or by ``cohort_min`` devices and ``cohort_ratio`` of the
      device's own cohort (by address or by its domain), is a fleet service: no finding
      (the pair and the reason are kept in ``suppressed``);
    * a rare destination the device has used since it was first seen (within
      ``baseline_seconds``) is part of its baseline: confidence x ``baseline_weight`` (low);
    * a rare destination first contacted later keeps its full weight; the correlator raises it
      further when the same device also scans or floods.

    Everywhere: NTP and DNS pairs (udp/123, udp/53), periodic by their standards, get the
    baseline weight (low).  Without fleet context (fewer than ``min_population`` devices: a
    single-host capture), a beacon slower than one check-in per ``slow_gap`` (10 min) is capped
    at ``slow_cap`` (medium): vendor heartbeats and firmware checks poll that slowly, and one
    capture holds nothing else to tell them from a slow C2.  Fast check-ins keep full weight.

    Destinations inside the site (RFC 1918 and inventoried addresses: brokers, hubs,
    gateways) are not C2 candidates unless ``internal=True`` (then discounted x0.7).

Blind spots
    Benign IoT heartbeats (cloud keep-alives, NTP, MQTT pings) are as periodic as malware
    check-ins: periodicity alone cannot tell them apart, which is why a lone beacon finding
    stays below "high" unless it is very regular, frequent and long.  Sub-second repeats are
    left to the flood and brute-force analytics; beacons with random sleep distributions
    or with domain fronting over many destinations are missed; a keep-alive inside one
    long connection is one flow, hence invisible here.  Prevalence is the price of quiet:
    a C2 server that many devices of the fleet (or a third of one cohort) contact is taken
    for a fleet service, a C2 hosted under a domain the cohort uses is discounted, a device
    beaconing since monitoring began is only "low", and C2 on the LAN (peer-to-peer botnets)
    is not looked for by default; C2 tunnelled in NTP or DNS-over-UDP timing is only "low" here
    (the dns analytic looks at DNS payloads); a slow C2 in a single-host capture is "medium".

Reference
    RITA (Active Countermeasures), beacon analysis: ``pkg/beacon`` scoring of timestamp
    skew/MAD/connection count and data-size skew/MAD/smallness, the duration score and the
    prevalence filter of RITA v5; Microsoft Defender for IoT / Defender for Endpoint
    prevalence of destinations across the organisation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    KeyCounter,
    Prevalence,
    address_mask,
    group_mask,
    is_local,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)

__all__ = ["ANALYTICS", "PERIODIC_BY_DESIGN", "BeaconDetector", "beacon_score"]

# UDP services whose clients poll periodically by their standard: NTP (RFC 5905 poll intervals of
# 2^minpoll..2^maxpoll s) and DNS (re-resolution at each record's TTL).
PERIODIC_BY_DESIGN = frozenset({53, 123})


@dataclass
class _Pair:
    ts: deque = field(default_factory=deque)
    size: deque = field(default_factory=deque)
    uids: deque = field(default_factory=lambda: deque(maxlen=50))
    total: int = 0
    reported_at: int = 0
    reported_score: float = 0.0
    mac: str | None = None
    first: float = 0.0  # first connection of the pair (before it was tracked in full)


def _bowley(x: np.ndarray) -> float:
    q1, q2, q3 = np.percentile(x, [25, 50, 75])
    if q3 - q1 <= 1e-9:
        return 0.0
    return float((q1 + q3 - 2 * q2) / (q3 - q1))


def _mad_score(x: np.ndarray) -> float:
    med = float(np.median(x))
    if med <= 0:
        return 0.0
    mad = float(np.median(np.abs(x - med)))
    return float(max(0.0, 1.0 - mad / med))


def beacon_score(ts: np.ndarray, sizes: np.ndarray, observed_span: float) -> dict[str, float]:
    """RITA-style beacon sub-scores and total for connection start times and sizes.

    ``observed_span`` is how long the input has been watched (for duration coverage).
    """
    ts = np.sort(np.asarray(ts, dtype=float))
    gaps = np.diff(ts)
    gaps = gaps[gaps > 0]
    if len(gaps) < 3:
        return {"score": 0.0}
    span = float(ts[-1] - ts[0])
    median_gap = float(np.median(gaps))
    ts_skew = 1.0 - min(1.0, abs(_bowley(gaps)))
    ts_mad = _mad_score(gaps)
    ts_count = float(min(1.0, len(ts) * median_gap / span)) if span > 0 else 0.0
    sizes = np.asarray(sizes, dtype=float)
    ds_skew = 1.0 - min(1.0, abs(_bowley(sizes))) if len(sizes) >= 3 else 0.0
    ds_mad = _mad_score(sizes) if np.median(sizes) > 0 else (1.0 if np.all(sizes == 0) else 0.0)
    coverage = float(min(1.0, span / observed_span)) if observed_span > 0 else 0.0
    timing = (ts_skew + ts_mad + ts_count) / 3
    size = (ds_skew + ds_mad) / 2
    return {
        "score": 0.6 * timing + 0.25 * size + 0.15 * coverage,
        "timing": timing,
        "size": size,
        "coverage": coverage,
        "ts_skew": ts_skew,
        "ts_mad": ts_mad,
        "ts_count": ts_count,
        "median_gap": median_gap,
        "gap_mad": float(np.median(np.abs(gaps - median_gap))),
        "span": span,
        "median_size": float(np.median(sizes)) if len(sizes) else 0.0,
    }


class BeaconDetector:
    """Periodic connections of one device to one destination service (see module docstring)."""

    name = "beacon"
    kinds = ("flow", "dns")

    def __init__(
        self,
        min_connections: int = 20,
        threshold: float = 0.8,
        min_gap: float = 1.0,
        min_span: float = 60.0,
        max_history: int = 256,
        max_pairs: int = 200_000,
        idle_timeout: float = 6 * 3600.0,
        internal: bool = False,
        min_population: int = 10,
        min_prevalent_devices: int = 5,
        prevalence_ratio: float = 0.02,
        cohort_min: int = 2,
        cohort_ratio: float = 0.3,
        baseline_seconds: float = 3600.0,
        baseline_weight: float = 0.3,
        slow_gap: float = 600.0,
        slow_cap: float = 0.6,
    ) -> None:
        self.min_connections = min_connections
        self.threshold = threshold
        self.min_gap = min_gap
        self.min_span = min_span
        self.max_history = max_history
        self.max_pairs = max_pairs
        self.idle_timeout = idle_timeout
        self.internal = internal
        self.min_population = min_population
        self.min_prevalent_devices = min_prevalent_devices
        self.prevalence_ratio = prevalence_ratio
        self.cohort_min = cohort_min
        self.cohort_ratio = cohort_ratio
        self.baseline_seconds = baseline_seconds
        self.baseline_weight = baseline_weight
        self.slow_gap = slow_gap
        self.slow_cap = slow_cap
        self.prevalence = Prevalence()
        # Pairs left out as fleet services, with the reason (bounded like the pairs).
        self.suppressed: dict[tuple, str] = {}
        self._pairs: dict[tuple, _Pair] = {}
        # Connections and first connection time of every pair seen (no Python object per pair).
        self._counts = KeyCounter()
        self._first_seen: dict[str, float] = {}
        # Pairs are tracked in full from their third connection (two gaps say nothing yet).
        self.track_after = 3
        self._t0 = np.inf
        self._now = -np.inf

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind == "dns":
            # DNS answers name the destinations: cloud addresses rotate, their domain stays.
            self.prevalence.observe_batch(batch, ctx)
            return []
        if batch.kind != "flow" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        dst = str_col(batch, "id.resp_h")
        # Connections the source opened: not replies the flow builder flipped onto it.
        rp = num_col(batch, "resp_pkts")
        flipped = (num_col(batch, "orig_pkts") <= 0) & (rp > 0)
        keep = ~group_mask(dst) & ~flipped
        # The answered connections the sources opened (shared with exfil when an engine runs both).
        self.prevalence.observe_batch(batch, ctx)
        if not self.internal:
            # Hubs, brokers and gateways on the LAN are polled by design: not C2 candidates.
            keep &= ~address_mask(dst, lambda ip: is_local(ctx, ip))
        if not keep.any():
            return []
        sub = batch.filter(keep)
        # Cheap per-pair counters first: only pairs with a few connections get timestamps
        # kept, so one-off connections (most of them) cost a vectorised counter update.
        key_col = pc.binary_join_element_wise(
            sub["id.orig_h"], sub["id.resp_h"], sub["proto"], pc.cast(sub["id.resp_p"], pa.string()), "|"
        )
        counts = (
            pa.table({"k": key_col, "ts": sub["ts"]})
            .group_by("k", use_threads=False)
            .aggregate([("ts", "count"), ("ts", "min"), ("ts", "max")])
        )
        hot = self._count_pairs(
            counts.column("k"),
            counts.column("ts_count").to_numpy(),
            counts.column("ts_min").to_numpy(),
            counts.column("ts_max").to_numpy(),
        )
        # When each source was first seen: destinations of its first hour are its baseline.
        firsts = (
            pa.table({"s": sub["id.orig_h"], "ts": sub["ts"]})
            .group_by("s", use_threads=False)
            .aggregate([("ts", "min")])
        )
        for src_ip, t in zip(
            firsts.column("s").to_pylist(), firsts.column("ts_min").to_pylist(), strict=True
        ):
            if src_ip not in self._first_seen and len(self._first_seen) < 4 * self.max_pairs:
                self._first_seen[src_ip] = t
        if not hot:
            return []
        # typed: when every hot key is null (no responder ports in the input) the set is not a null array
        sub = sub.filter(pc.is_in(key_col, value_set=pa.array(list(hot), type=pa.string())))
        ts = sub.np("ts")
        src = str_col(sub, "id.orig_h")
        dst = str_col(sub, "id.resp_h")
        proto = str_col(sub, "proto")
        dport = num_col(sub, "id.resp_p").astype(np.int64)
        size = num_col(sub, "orig_bytes").astype(np.int64)
        uid = str_col(sub, "uid")
        mac = str_col(sub, "orig_l2_addr")
        self._t0 = min(self._t0, float(ts[0]))
        self._now = max(self._now, float(ts[-1]))
        due: list[tuple] = []
        for i in range(len(sub)):
            key = (src[i], dst[i], proto[i], int(dport[i]))
            p = self._pairs.get(key)
            if p is None:
                first = hot.get(f"{key[0]}|{key[1]}|{key[2]}|{key[3]}")
                p = self._pairs[key] = _Pair(
                    ts=deque(maxlen=self.max_history),
                    size=deque(maxlen=self.max_history),
                    first=float(ts[i]) if first is None else first,
                )
            p.ts.append(float(ts[i]))
            p.size.append(int(size[i]))
            if uid[i]:
                p.uids.append(uid[i])
            p.mac = mac[i] or p.mac
            p.total += 1
            if p.total >= self.min_connections and (p.reported_at == 0 or p.total >= 2 * p.reported_at):
                due.append(key)
        findings = []
        for key in dict.fromkeys(due):
            p = self._pairs[key]
            p.reported_at = p.total
            f = self._score(key, p, ctx)
            if f is not None:
                findings.append(f)
        if len(self._pairs) > self.max_pairs:
            self._evict()
        return findings

    def _count_pairs(
        self, keys: pa.ChunkedArray, n: np.ndarray, first: np.ndarray, last: np.ndarray
    ) -> dict[str, float]:
        """Add a batch's connections per pair key (distinct ``keys``, their counts, first and last times)
        to the counters; return the pairs now at ``track_after`` connections or more, with their first
        connection time.  Beyond ``4 * max_pairs`` counters, those below ``track_after`` are dropped."""
        total, first = self._counts.add(keys, n, first.astype(np.float64), last.astype(np.float64))
        if len(self._counts) > 4 * self.max_pairs:
            self._counts.keep(self._counts.n >= self.track_after)
        is_hot = np.flatnonzero(total >= self.track_after)
        if not len(is_hot):
            return {}
        names = keys.take(pa.array(is_hot)).to_pylist()
        return dict(zip(names, first[is_hot].tolist(), strict=True))

    def _evict(self) -> None:
        cutoff = self._now - self.idle_timeout
        self._pairs = {k: p for k, p in self._pairs.items() if p.ts[-1] >= cutoff}
        if len(self._pairs) > self.max_pairs:
            # Still too many: keep the busiest pairs, the only ones that can beacon.
            keep = sorted(self._pairs.items(), key=lambda kv: kv[1].total, reverse=True)[
                : self.max_pairs // 2
            ]
            self._pairs = dict(keep)

    def _score(self, key: tuple, p: _Pair, ctx: Context) -> Finding | None:
        ts = np.asarray(p.ts)
        s = beacon_score(ts, np.asarray(p.size), self._now - self._t0)
        if s["score"] < self.threshold or s.get("span", 0) < self.min_span:
            return None
        if s["median_gap"] < self.min_gap:
            return None
        src, dst, proto, port = key
        why = self.prevalence.fleet_service(
            src,
            dst,
            ctx,
            self.min_population,
            self.min_prevalent_devices,
            self.prevalence_ratio,
            self.cohort_min,
            self.cohort_ratio,
        )
        if why is not None:
            # A destination many devices (or the device's own cohort) use at all is a fleet
            # service: its periodicity is the vendor's keep-alive, not a C2 check-in.
            if len(self.suppressed) < self.max_pairs:
                self.suppressed[key] = why
            return None
        confidence = s["score"]
        if is_local(ctx, dst):
            # Polling a hub or gateway on the LAN is how IoT devices work (internal=True only).
            confidence *= 0.7
        population = len(self.prevalence.population)
        baseline = (
            population >= self.min_population
            and p.first - self._first_seen.get(src, p.first) <= self.baseline_seconds
        )
        if baseline:
            # In a fleet, a rare destination the device has used since it was first seen is
            # part of its baseline (a vendor cloud only this device's model uses): keep it as
            # context, low.  Beacons that start later (after a compromise) keep full weight.
            confidence *= self.baseline_weight
        periodic_protocol = proto == "udp" and port in PERIODIC_BY_DESIGN
        if periodic_protocol:
            # NTP polls at 2^n-second intervals and DNS re-resolves at each TTL: periodic by
            # their standards, from every device.  Kept as low context.
            confidence *= self.baseline_weight
        slow_alone = population < self.min_population and s["median_gap"] > self.slow_gap
        if slow_alone:
            # Without a fleet to compare with, a slow periodic poll (vendor heartbeats, firmware
            # checks: every 10 min to every few hours) and a slow C2 look alike: medium at most.
            confidence = min(confidence, self.slow_cap)
        # Periodicity is cheap to fake by coincidence over a short stretch: confidence grows
        # with the number of check-ins (full from 10x the minimum) and with the span they
        # cover (full from ten minutes), as RITA needs long observation for its scores.
        n = len(ts)
        confidence *= 0.7 + 0.3 * min(1.0, np.log10(max(n, 1) / self.min_connections))
        confidence *= 0.6 + 0.4 * min(1.0, max(0.0, np.log10(max(s["span"], 1.0) / self.min_span)))
        if confidence <= p.reported_score:
            return None  # nothing new to say about this pair
        p.reported_score = confidence
        evidence = [
            f"{p.total} connections to {dst} {proto}/{port} every {s['median_gap']:.1f} s "
            f"(median absolute deviation {s['gap_mad']:.2f} s) over {s['span']:.0f} s: "
            f"beacon score {s['score']:.2f} (threshold {self.threshold})",
            f"timing regularity {s['timing']:.2f}, size regularity {s['size']:.2f} "
            f"(median {s['median_size']:.0f} B sent), coverage {s['coverage']:.2f} of the observed time",
        ]
        if periodic_protocol:
            evidence.append(f"{proto}/{port} is periodic by design (time sync or DNS refresh): low weight")
        if slow_alone:
            evidence.append(
                f"one check-in every {s['median_gap'] / 60:.0f} min and no fleet to compare with: a slow "
                "vendor heartbeat looks the same, so medium at most"
            )
        if population >= self.min_population:
            n = max(1, self.prevalence.devices(dst))
            evidence.append(
                f"rare destination: {n} of {population} devices of the fleet contact {dst}"
                + (
                    f"; contacted since the device was first seen (baseline destination, weight "
                    f"{self.baseline_weight})"
                    if baseline
                    else f"; first contacted {(p.first - self._first_seen.get(src, p.first)) / 3600:.1f} h "
                    "after the device was first seen"
                )
            )
        return make_finding(
            ctx,
            src,
            "c2-beacon",
            self.name,
            confidence,
            float(ts[0]),
            float(ts[-1]),
            evidence,
            ["T1071", "T1573"] if port in (443, 8443) else ["T1071"],
            list(p.uids),
            mac=p.mac,
            destination=dst,
            port=f"{proto}/{port}",
            beacon_score=round(s["score"], 3),
            median_gap=round(s["median_gap"], 3),
            connections=p.total,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        findings = []
        for key, p in self._pairs.items():
            if p.total >= self.min_connections and p.total != p.reported_at:
                p.reported_at = p.total
                f = self._score(key, p, ctx)
                if f is not None:
                    findings.append(f)
        return findings


ANALYTICS = [BeaconDetector]
