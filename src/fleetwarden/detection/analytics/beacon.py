"""Beaconing (command-and-control check-ins) of a device to one destination.

Contract
    :class:`BeaconDetector` consumes ``flow`` batches and keeps, per (source, destination,
    protocol, port), the start times and outbound sizes of the last ``max_history``
    connections (a pair is counted from its first connection and followed in full from its
    third: the first two give their times, not their sizes).  At the connection that brings a
    pair to ``min_connections``, and again at each doubling, the pair as it stands then is due;
    it is scored once the fleet context up to that connection is complete (every flow and DNS
    answer up to its time learnt, prevalence asked as of that time: within a window the engine
    hands over flows before the window's DNS records), and at :meth:`flush` with its final
    figures.  Whatever the batches, the same connections are scored alike.  It scores the pair
    in the way RITA does:

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
    capture holds nothing else to tell them from a slow C2.  Fast check-ins keep full weight, once
    observed for ``short_span`` (5 min): a pair periodic for less than that is at most low, since
    a device being set up polls its cloud every second or two for a minute or two.

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

import math
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
# Below "medium" (core.findings.severity_for): what a beacon observed for less than ``short_span``
# (5 min, half the ten minutes at which its span stops weighing against it) can be at most.
SHORT_CAP = 0.39


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


@dataclass
class _Judgment:
    """A pair due for scoring at time ``at``, as it stood then (scored once the fleet context up
    to ``at`` is complete: see :meth:`BeaconDetector._release`)."""

    at: float = 0.0
    key: tuple = ()
    pair: _Pair | None = None
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    size: np.ndarray = field(default_factory=lambda: np.zeros(0))
    total: int = 0
    uids: list = field(default_factory=list)
    mac: str | None = None
    observed: float = 0.0  # how long the input had been watched at ``at``


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
        short_span: float = 300.0,
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
        self.short_span = short_span
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
        self._pending: list[_Judgment] = []  # due pairs waiting for their fleet context, by time

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if len(batch) == 0:
            return []
        if batch.kind == "dns":
            # DNS answers name the destinations: cloud addresses rotate, their domain stays.
            self.prevalence.observe_batch(batch, ctx)
            return self._release(ctx)
        if batch.kind != "flow":
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
        if keep.any():
            self._track(batch.filter(keep))
        return self._release(ctx)

    def _track(self, sub: EventBatch) -> None:
        """Count every pair's connections (vectorised counters) and follow in full, connection by
        connection, the pairs from their ``track_after``-th one; a pair is due for scoring at the
        connection that brings it to ``min_connections`` and at each doubling."""
        # (a flow without a responder port, or an address, is keyed with 0 or "" in its place)
        key_col = pc.binary_join_element_wise(
            pc.fill_null(sub["id.orig_h"], ""),
            pc.fill_null(sub["id.resp_h"], ""),
            pc.fill_null(sub["proto"], ""),
            pc.cast(pc.fill_null(sub["id.resp_p"], 0), pa.string()),
            "|",
        ).combine_chunks()
        enc = pc.dictionary_encode(key_col)
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = enc.dictionary
        ts = sub.np("ts")
        n_keys = len(names)
        n = np.bincount(code, minlength=n_keys)
        t_min = np.full(n_keys, np.inf)
        np.minimum.at(t_min, code, ts)
        t_max = np.full(n_keys, -np.inf)
        np.maximum.at(t_max, code, ts)
        prior_n, prior_first, prior_last = self._counts.lookup(names)
        total, first = self._counts.add(names, n, t_min, t_max)
        if len(self._counts) > 4 * self.max_pairs:  # a safety valve far above any real load
            self._counts.keep(self._counts.n >= self.track_after)
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
        # The running count of each connection: connections before the batch, then its rank.
        order = np.lexsort((np.arange(len(code)), code))
        c = code[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        running = (total - n)[c] + rank + 1
        tracked = running >= self.track_after
        if not tracked.any():
            return
        # rows of this batch counted before their pair was tracked, per pair (times for the history)
        untracked_of: dict[int, list[int]] = {}
        early = ~tracked & np.isin(c, c[tracked])
        for k, r in zip(c[early].tolist(), order[early].tolist(), strict=True):
            untracked_of.setdefault(k, []).append(r)
        rows = order[tracked]
        t0 = float(ts[rows].min())
        self._t0 = min(self._t0, t0)
        self._now = max(self._now, float(ts[rows].max()))
        size = num_col(sub, "orig_bytes").astype(np.int64)
        uid = str_col(sub, "uid")
        mac = str_col(sub, "orig_l2_addr")
        c_tr = c[tracked]
        bounds = np.flatnonzero(np.r_[True, c_tr[1:] != c_tr[:-1]])
        ends = np.r_[bounds[1:], len(c_tr)]
        name_list = names.to_pylist()
        # the tracked connections as lists, pair after pair (slices, no per-pair fancy indexing)
        t_all, sz_all = ts[rows], size[rows]
        t_list, sz_list = t_all.tolist(), sz_all.tolist()
        u_list, m_list = uid[rows].tolist(), mac[rows].tolist()
        due: list[_Judgment] = []
        for a, b, k in zip(bounds.tolist(), ends.tolist(), c_tr[bounds].tolist(), strict=True):
            s, d, proto, port = name_list[k].rsplit("|", 3)
            key = (s, d, proto, int(port))
            p = self._pairs.get(key)
            if p is None:
                p = self._pairs[key] = _Pair(
                    ts=deque(maxlen=self.max_history),
                    size=deque(maxlen=self.max_history),
                    first=float(first[k]),
                )
                # The connections before its ``track_after``-th were only counted: their times (the
                # counter's first and last, then this batch's) start the history; their sizes are
                # not known, so sizes start with the tracked connections.
                early = [float(prior_first[k])] if prior_n[k] >= 1 else []
                if prior_n[k] >= 2:
                    early.append(float(prior_last[k]))
                early += ts[untracked_of.get(k, [])].tolist()
                p.ts.extend(early[-(self.track_after - 1) :] if self.track_after > 1 else [])
            n_new = b - a
            need = self.min_connections if p.reported_at == 0 else 2 * p.reported_at
            if p.total + n_new >= need:  # due at one of these connections (or more)
                t, sz = t_all[a:b], sz_all[a:b]
                u, m = uid[rows[a:b]], mac[rows[a:b]]
                totals = p.total + np.arange(1, n_new + 1)
                j = 0
                while j < n_new:
                    need = self.min_connections if p.reported_at == 0 else 2 * p.reported_at
                    hit = np.flatnonzero(totals[j:] >= need)
                    if not len(hit):
                        break
                    j += int(hit[0])
                    p.reported_at = int(totals[j])
                    due.append(self._snapshot(key, p, t, sz, u, m, j))
                    j += 1
            p.ts.extend(t_list[a:b])
            p.size.extend(sz_list[a:b])
            p.uids.extend(x for x in u_list[a:b] if x)
            for x in reversed(m_list[a:b]):
                if x:
                    p.mac = x
                    break
            p.total += n_new
        if due:
            due.sort(key=lambda jd: jd.at)
            if self._pending and self._pending[-1].at > due[0].at:
                self._pending = sorted(self._pending + due, key=lambda jd: jd.at)
            else:
                self._pending += due
        if len(self._pairs) > self.max_pairs:
            self._evict()

    def _snapshot(self, key: tuple, p: _Pair, t, sz, u, m, j: int) -> _Judgment:  # noqa: ANN001
        """The pair as it stands at its ``j``-th new connection."""
        h = self.max_history
        ts = np.concatenate([np.fromiter(p.ts, dtype=float, count=len(p.ts)), t[: j + 1]])[-h:]
        size = np.concatenate(
            [np.fromiter(p.size, dtype=float, count=len(p.size)), sz[: j + 1].astype(float)]
        )[-h:]
        uids = (list(p.uids) + [x for x in u[: j + 1].tolist() if x])[-50:]
        macs = m[: j + 1][m[: j + 1] != ""]
        return _Judgment(
            at=float(t[j]),
            key=key,
            pair=p,
            ts=ts,
            size=size,
            total=int(p.total + j + 1),
            uids=uids,
            mac=str(macs[-1]) if len(macs) else p.mac,
            observed=float(t[j]) - self._t0,
        )

    def _release(self, ctx: Context) -> list[Finding]:
        """Score the due pairs whose fleet context is complete: every flow and DNS record up to
        their time has been learnt (or the fleet is too small there for prevalence to matter)."""
        findings = []
        prev = self.prevalence
        k = 0
        for jd in self._pending:
            if not (prev.settled(jd.at) or prev.population_at(jd.at) < self.min_population):
                break
            k += 1
            f = self._score(jd, ctx)
            if f is not None:
                findings.append(f)
        if k:
            del self._pending[:k]
        return findings

    def _evict(self) -> None:
        cutoff = self._now - self.idle_timeout
        self._pairs = {k: p for k, p in self._pairs.items() if p.ts[-1] >= cutoff}
        if len(self._pairs) > self.max_pairs:
            # Still too many: keep the busiest pairs, the only ones that can beacon.
            keep = sorted(self._pairs.items(), key=lambda kv: kv[1].total, reverse=True)[
                : self.max_pairs // 2
            ]
            self._pairs = dict(keep)

    def _score(self, jd: _Judgment, ctx: Context) -> Finding | None:
        key, p, at = jd.key, jd.pair, jd.at
        ts = jd.ts
        s = beacon_score(ts, jd.size, jd.observed)
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
            at=at,
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
        population = self.prevalence.population_at(at)
        first_seen = self._first_seen.get(src, p.first)
        baseline = population >= self.min_population and p.first - first_seen <= self.baseline_seconds
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
        short = s["span"] < self.short_span
        if short:
            # A device being set up or paired polls its cloud every second or two for a minute
            # or two (IoT Sentinel's set-up captures: a Hue bridge's 2 s keep-alive over 90 s):
            # periodicity over so short a stretch cannot tell that from a C2 check-in, so it
            # stays low until it lasts.
            confidence = min(confidence, SHORT_CAP)
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
            f"{jd.total} connections to {dst} {proto}/{port} every {s['median_gap']:.1f} s "
            f"(median absolute deviation {s['gap_mad']:.2f} s) over {s['span']:.0f} s: "
            f"beacon score {s['score']:.2f} (threshold {self.threshold})",
            f"timing regularity {s['timing']:.2f}, size regularity {s['size']:.2f} "
            f"(median {s['median_size']:.0f} B sent), coverage {s['coverage']:.2f} of the observed time",
        ]
        if periodic_protocol:
            evidence.append(f"{proto}/{port} is periodic by design (time sync or DNS refresh): low weight")
        if short:
            evidence.append(
                f"periodic for only {s['span']:.0f} s: a device being set up polls like this too, so low until it lasts"
            )
        if slow_alone:
            evidence.append(
                f"one check-in every {s['median_gap'] / 60:.0f} min and no fleet to compare with: a slow "
                "vendor heartbeat looks the same, so medium at most"
            )
        if population >= self.min_population:
            n = max(1, self.prevalence.devices(dst, at))
            evidence.append(
                f"rare destination: {n} of {population} devices of the fleet contact {dst}"
                + (
                    f"; contacted since the device was first seen (baseline destination, weight "
                    f"{self.baseline_weight})"
                    if baseline
                    else f"; first contacted {(p.first - first_seen) / 3600:.1f} h "
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
            jd.uids,
            mac=jd.mac,
            destination=dst,
            port=f"{proto}/{port}",
            beacon_score=round(s["score"], 3),
            median_gap=round(s["median_gap"], 3),
            connections=jd.total,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        self.prevalence.clock.finish()
        findings = self._release(ctx)
        for key, p in self._pairs.items():
            if p.total >= self.min_connections and p.total != p.reported_at:
                p.reported_at = p.total
                jd = _Judgment(
                    at=float(p.ts[-1]),
                    key=key,
                    pair=p,
                    ts=np.fromiter(p.ts, dtype=float, count=len(p.ts)),
                    size=np.fromiter(p.size, dtype=float, count=len(p.size)),
                    total=p.total,
                    uids=list(p.uids),
                    mac=p.mac,
                    observed=self._now - self._t0,
                )
                # as of the end of the input: everything learnt counts
                f = self._score_final(jd, ctx)
                if f is not None:
                    findings.append(f)
        return findings

    def _score_final(self, jd: _Judgment, ctx: Context) -> Finding | None:
        at, jd.at = jd.at, math.inf
        try:
            return self._score(jd, ctx)
        finally:
            jd.at = at


ANALYTICS = [BeaconDetector]
