"""Persistent failed connection attempts to a command-and-control server ("C&C retries").

An infected device whose C2 server is dead, sinkholed or blocked does not beacon: it knocks.
Hours of TCP connection attempts that nobody answers, to one external host and port (or the
same port on two or three fallback addresses), with retry timing too irregular for the beacon
score (bursts of SYNs, then a pause).  Benign devices retry a dead cloud too, but their
clients back off to minutes or hours and give up; a bot has nothing else to do.

Contract
    :class:`C2RetryDetector` consumes ``flow`` batches and follows the TCP connections that
    monitored devices (private or inventoried sources) open to external unicast hosts.  An
    *unanswered attempt* is a connection the device opened whose Zeek ``conn_state`` is S0,
    REJ, RSTO, RSTOS0 or SH and to which the responder sent no payload (no conn_state: no
    packet back); an *answered* connection is one where the responder sent bytes.

    Unanswered attempts are counted per (device, host, port) in vectorised sorted-hash
    counters (addresses are classified only for the pairs that reach ``track_after``, not per
    flow); from ``track_after`` attempts an in-scope pair is tracked in full (attempts,
    answered connections, distinct hours with attempts counted from its first one, its last
    ``max_history`` attempt times, the uids).  Pairs of one (device, port) form a group.  A
    destination *retries* when it has ``min_pair_attempts`` attempts spread over at least
    ``min_span`` seconds (a burst is a flood's or a scan's) and at least
    ``min_unanswered_share`` of its connections unanswered.  A group qualifies when it has at
    most ``max_destinations`` retrying destinations, ``min_attempts`` attempts among them, and
    one of them retried with a recent median gap of at most ``max_gap`` seconds.  Its
    confidence is::

        floor + (cap - floor) * rate * (0.25 + 0.4 * persistence + 0.1 * volume + 0.25 * silence)

    * rate: 1 when the device retries a destination every ``fast_gap`` s (median of its last
      attempts) or faster, 0 at ``slow_gap`` (log scale).  Client libraries that back off
      (Paho's C client doubles its reconnect delay up to 60 s by default) stay "medium" even
      after a day of retries;
    * persistence: distinct hours with attempts, 0 at 2 h, 1 from ``full_hours`` (log scale);
    * volume: attempts, 0 at ``min_attempts``, 1 from ``full_attempts`` (log scale);
    * silence: 1 when no destination of the group ever answered while it was followed, else
      half the unanswered share above ``min_unanswered_share``: a server that sometimes
      answers may be an overloaded C2 or a flaky service.

    ``floor`` is 0.3 (low) and ``cap`` 0.85: fast, never-answered retries for six hours or
    more are "high" (0.76 at 6 h, 0.85 from 12 h); fewer hours of them, or retries every
    minute or two, "medium"; retries slower than ``slow_gap`` "low".  A ``c2-beacon`` finding (T1071, plus T1008 Fallback Channels when
    the same port is retried on several hosts) is emitted when a group first qualifies, again
    each time its attempts double, and at :meth:`flush` with the final figures.  Groups are
    judged once per tick of ``sweep_every`` seconds of event time (ticks aligned to the epoch),
    as of the tick's last flow: the flows of a tick wait until a later flow proves it over and
    the fleet context up to its end is complete (the DNS answers of its time learnt), so the
    findings do not depend on how the flows were batched (a finding comes at most a tick after
    the flow that completes it).

    Fleet context: the detector keeps (and in an engine shares with beacon and exfil) the
    :class:`~fleetwarden.detection.analytics.netcommon.Prevalence` of answered destinations.
    A destination that the fleet (or the device's cohort) reaches is a fleet service this one
    device cannot reach (an outage or a block): not counted (kept in ``suppressed``).

    State is bounded: at most ``max_pairs`` tracked pairs and ``max_pairs_per_device`` per
    device (a device failing to reach more hosts at once is scanning, the scan analytic's
    case; a pair idle for ``max_gap`` makes room for a new one),
    pairs idle (no unanswered attempt) for ``idle_timeout`` s (``reported_idle_timeout`` once
    reported: a bot connected to its C2 for a while resumes the same story) or answered most of
    the time are dropped, and the counters of untracked pairs are pruned beyond ``4 * max_pairs``.
    Idle pairs go at each tick's sweep (a decision of event time); the pair and counter caps are
    safety valves far above a fleet's load: when they bind, what is forgotten depends on when.

Blind spots
    A benign client with a short, fixed reconnect delay (ESP-IDF's MQTT client retries every
    10 s) whose server is dead for hours looks the same and scores as high; so does a device
    firewalled off its vendor cloud from the start of a single-host capture (in a fleet, the
    other devices' answered connections name the cloud a fleet service).  A C2 that answers
    most connections is the beacon analytic's; UDP C2 is not looked at (no handshake, so an
    unanswered datagram is indistinguishable from a one-way protocol; NTP and DNS retries
    would dominate); sparse retries (Torii's 14 attempts in 12 h) stay below ``min_attempts``;
    a bot rotating through more than ``max_destinations`` addresses on one port, or retrying
    C2 on the LAN (peer-to-peer botnets), is missed; many devices of a fleet retrying the same
    dead address are each reported, whether a botnet or a vendor outage.

Reference
    Stratosphere Lab's IoT-23 captures (Garcia et al., 2020): Hakai (CTU-Malware-Capture-8-1)
    retries 128.185.250.50 and 178.128.185.250 on tcp/50 for 23 h; Slips' "connection to
    unknown/unanswered port" and "multiple reconnection attempts" evidence; MITRE ATT&CK
    T1071 Application Layer Protocol and T1008 Fallback Channels; the reconnect defaults of
    the Eclipse Paho C client (automatic reconnect, 1 s doubling to 60 s) and of ESP-IDF's
    MQTT client (``reconnect_timeout_ms``, 10 s).

Example (the IoT-23 Hakai capture, replayed in batches of 2,000 flows; any batch size gives
the same)::

    from fleetwarden.sources import read_events
    det, ctx = C2RetryDetector(), Context()
    path = "../shared/data/iot23/CTU-Malware-Capture-8-1-labeled.csv"
    found = [f for b in read_events(path, batch_size=2000) for f in det.update(b, ctx)] + det.flush(ctx)
    print([(f.severity, round(f.score, 2), f.attributes["attempts"]) for f in found])
    # [('medium', 0.61, 396), ('medium', 0.68, 816), ('high', 0.74, 1655), ('high', 0.83, 3335),
    #  ('high', 0.85, 6691), ('high', 0.85, 8222)]
    print(found[-1].evidence[0])
    # 4112 unanswered connection attempts to 178.128.185.250 tcp/50 over 22.8 h, one every 20.0 s
    # on average (latest gaps: median 8.6 s, 90th percentile 48 s); never answered
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
    MAX_RECORD_IDS,
    KeyCounter,
    Prevalence,
    TickGate,
    is_group,
    is_local,
    judgeable_until,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)

# What hours of unanswered attempts to one external service usually are (the story's first line).
MEANING = (
    "the device keeps calling one external service that does not answer, as a bot does when its "
    "command-and-control server is down or blocked (C2 retry)"
)

__all__ = ["ANALYTICS", "ATTEMPT_STATES", "C2RetryDetector", "retry_score"]

# Zeek conn_states of a connection attempt that got no application exchange: no answer to the
# SYN (S0), refused (REJ), aborted by the originator (RSTO, RSTOS0), or a SYN then FIN with no
# SYN-ACK (SH).  With no payload from the responder, each is one failed attempt to reach it.
ATTEMPT_STATES = ("S0", "REJ", "RSTO", "RSTOS0", "SH")


def _in_scope(src: str, dst: str, ctx: Context) -> bool:
    """A device inside the site retrying a unicast peer outside it.  Hubs, brokers and gateways on
    the LAN, and multicast discovery, are polled and retried by design; an outside host knocking
    on a device is an inbound probe, not this device's C2."""
    return bool(src and dst) and is_local(ctx, src) and not is_group(dst) and not is_local(ctx, dst)


def _log_scale(value: float, zero: float, one: float) -> float:
    """0 at ``zero``, 1 at ``one`` (either order), log-linear between, clipped to [0, 1]."""
    if value <= 0 or zero <= 0 or one <= 0 or zero == one:
        return 0.0
    x = math.log(value / zero) / math.log(one / zero)
    return float(min(1.0, max(0.0, x)))


def retry_score(
    attempts: int,
    hours: int,
    median_gap: float,
    unanswered_share: float,
    *,
    min_attempts: int = 60,
    full_attempts: int = 1000,
    full_hours: int = 12,
    fast_gap: float = 30.0,
    slow_gap: float = 300.0,
    min_unanswered_share: float = 0.5,
    floor: float = 0.3,
    cap: float = 0.85,
) -> dict[str, float]:
    """Confidence of a persistent-retry group and its parts (see the module docstring)."""
    rate = _log_scale(median_gap, slow_gap, fast_gap) if median_gap > 0 else 1.0
    persistence = _log_scale(hours, 2, full_hours)
    volume = _log_scale(attempts, min_attempts, full_attempts)
    if unanswered_share >= 1.0:
        silence = 1.0
    else:
        silence = 0.5 * max(0.0, (unanswered_share - min_unanswered_share) / (1 - min_unanswered_share))
    inner = 0.25 + 0.4 * persistence + 0.1 * volume + 0.25 * silence
    return {
        "score": floor + (cap - floor) * rate * inner,
        "rate": rate,
        "persistence": persistence,
        "volume": volume,
        "silence": silence,
    }


@dataclass
class _Pair:
    """One (device, host, port) followed in full."""

    src: str
    dst: str
    port: int
    attempts: int = 0  # unanswered attempts, including the ones counted before tracking
    answered: int = 0  # answered connections since tracking
    first: float = math.inf  # first unanswered attempt (hours are counted from it)
    last: float = -math.inf  # latest unanswered attempt
    hours: int = 0  # distinct hours (counted from the first attempt) with an unanswered attempt
    last_hour: int = -1
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # last attempt times
    early_rate: float | None = None  # attempts per hour over the first tracked attempts
    states: dict[str, int] = field(default_factory=dict)
    uids: deque = field(default_factory=lambda: deque(maxlen=MAX_RECORD_IDS))
    mac: str | None = None

    @property
    def share(self) -> float:
        """Unanswered attempts over all connections followed."""
        return self.attempts / max(1, self.attempts + self.answered)

    def gaps(self) -> np.ndarray:
        return np.diff(self.ts)

    def rate(self) -> float:
        """Attempts per hour over the attempt times kept."""
        span = float(self.ts[-1] - self.ts[0]) if len(self.ts) > 1 else 0.0
        return 3600.0 * (len(self.ts) - 1) / span if span > 0 else 0.0


@dataclass
class _Group:
    """Report state of one (device, port)."""

    dsts: set[str] = field(default_factory=set)
    reported_attempts: int = 0


class C2RetryDetector:
    """Hours of unanswered connection attempts to one external service (see module docstring)."""

    name = "retry"
    kinds = ("flow",)

    def __init__(
        self,
        min_attempts: int = 60,
        min_span: float = 3600.0,
        max_gap: float = 600.0,
        fast_gap: float = 30.0,
        slow_gap: float = 300.0,
        full_hours: int = 12,
        full_attempts: int = 1000,
        min_pair_attempts: int = 10,
        min_unanswered_share: float = 0.5,
        max_destinations: int = 4,
        track_after: int = 3,
        max_history: int = 256,
        max_pairs: int = 50_000,
        max_pairs_per_device: int = 32,
        idle_timeout: float = 6 * 3600.0,
        reported_idle_timeout: float = 24 * 3600.0,
        sweep_every: float = 600.0,
        min_population: int = 10,
    ) -> None:
        self.min_attempts = min_attempts
        self.min_span = min_span
        self.max_gap = max_gap
        self.fast_gap = fast_gap
        self.slow_gap = slow_gap
        self.full_hours = full_hours
        self.full_attempts = full_attempts
        self.min_pair_attempts = min_pair_attempts
        self.min_unanswered_share = min_unanswered_share
        self.max_destinations = max_destinations
        self.track_after = track_after
        self.max_history = max_history
        self.max_pairs = max_pairs
        self.max_pairs_per_device = max_pairs_per_device
        self.idle_timeout = idle_timeout
        self.reported_idle_timeout = reported_idle_timeout
        self.sweep_every = sweep_every
        self.min_population = min_population
        self.prevalence = Prevalence()
        # (device, port) or (device, host, port) left out, with the reason (bounded).
        self.suppressed: dict[tuple, str] = {}
        self._counter = KeyCounter()
        self._counter_cap = 4 * max_pairs
        self._pairs: dict[str, _Pair] = {}  # "src|dst|port" -> pair
        self._groups: dict[tuple[str, int], _Group] = {}
        self._per_device: dict[str, set[str]] = {}  # device -> keys of its tracked pairs
        self._now = -math.inf
        self._last_sweep = -math.inf
        # Flows wait here until their tick of ``sweep_every`` seconds is over (and its DNS is in):
        # groups are judged once per tick of event time, whatever the batches were.
        self._gate = TickGate(sweep_every)
        self._at: float | None = -math.inf  # the time the tick being judged is judged as of

    # update -------------------------------------------------------------------------------
    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        # Answered destinations of the fleet (shared with beacon and exfil in an engine): learnt
        # as they come, asked as of the tick judged.
        self.prevalence.observe_batch(batch, ctx)
        self._gate.push(batch)
        return self._judge_ready(ctx, judgeable_until(self._gate, self.prevalence, self.min_population))

    def _judge_ready(self, ctx: Context, until: float) -> list[Finding]:
        findings: list[Finding] = []
        for part in self._gate.pop(until):
            findings += self._tick(part, ctx)
        return findings

    def _tick(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """One whole tick of flows (``sweep_every`` seconds of event time), judged as of its end."""
        self._now = max(self._now, float(num_col(batch, "ts")[-1]))
        self._at = self._now
        if self._now - self._last_sweep >= self.sweep_every or len(self._pairs) > self.max_pairs:
            self._sweep()
        tcp = str_col(batch, "proto") == "tcp"
        if not tcp.any():
            return []
        state = str_col(batch, "conn_state")
        rb = num_col(batch, "resp_bytes")
        rp = num_col(batch, "resp_pkts")
        # Connections the device opened: not replies the flow builder flipped onto it.
        opened = tcp & ~((num_col(batch, "orig_pkts") <= 0) & (rp > 0))
        unanswered = opened & (rb <= 0) & (np.isin(state, ATTEMPT_STATES) | ((state == "") & (rp <= 0)))
        answered = opened & (rb > 0)
        if self._per_device:
            # Answered connections matter only for the devices already followed.
            followed = pc.is_in(
                batch["id.orig_h"], value_set=pa.array(list(self._per_device), pa.string())
            ).to_numpy(zero_copy_only=False)
            answered &= np.asarray(followed, dtype=bool)
        cand = unanswered | answered
        # a pair is keyed by its port: flows without one (the input had no id.resp_p) cannot be retries
        cand &= ~np.asarray(pc.is_null(batch["id.resp_p"]).to_numpy(zero_copy_only=False), dtype=bool)
        if not cand.any():
            return []
        # Addresses are classified (inside / outside / multicast) only for the pairs that reach
        # ``track_after`` attempts, not per flow: a sweep brings thousands of distinct addresses.
        idx = np.flatnonzero(cand)
        fail = unanswered[idx]
        take = pa.array(idx)
        key = pc.binary_join_element_wise(
            batch["id.orig_h"].take(take),
            batch["id.resp_h"].take(take),
            pc.cast(batch["id.resp_p"].take(take), pa.string()),
            "|",
        ).combine_chunks()
        ts = num_col(batch, "ts")[idx]
        self._promote(key, ts, fail, ctx)
        return self._follow(batch, idx, key, ts, fail, ctx)

    def _promote(self, key: pa.Array, ts: np.ndarray, fail: np.ndarray, ctx: Context) -> None:
        """Count the unanswered attempts of untracked pairs; track those at ``track_after``."""
        if not fail.any():
            return
        fk = key.filter(pa.array(fail))
        if self._pairs:
            fresh = pc.invert(pc.is_in(fk, value_set=pa.array(list(self._pairs), pa.string())))
            fk_ts = pa.array(ts[fail]).filter(fresh)
            fk = fk.filter(fresh)
        else:
            fk_ts = pa.array(ts[fail])
        if len(fk) == 0:
            return
        per = (
            pa.table({"k": fk, "ts": fk_ts})
            .group_by("k", use_threads=False)
            .aggregate([("ts", "count"), ("ts", "min"), ("ts", "max")])
        )
        keys = per.column("k").combine_chunks()
        n = per.column("ts_count").to_numpy()
        total, first = self._counter.add(
            keys, n, per.column("ts_min").to_numpy(), per.column("ts_max").to_numpy()
        )
        hot = np.flatnonzero(total >= self.track_after)
        if not len(hot):
            return
        names = keys.take(pa.array(hot)).to_pylist()
        promoted = []
        for name, tot, n_now, t0 in zip(names, total[hot], n[hot], first[hot], strict=True):
            s, d, port = name.rsplit("|", 2)
            if not _in_scope(s, d, ctx):
                promoted.append(name)  # forget its count; judged again after track_after more
                continue
            mine = self._per_device.get(s, set())
            if len(mine) >= self.max_pairs_per_device and not self._make_room(mine):
                # A device failing to reach that many hosts at once is scanning (the scan analytic's).
                continue
            self._per_device[s] = mine
            mine.add(name)
            # The batch's own attempts are added by _follow: start from the earlier ones.
            self._pairs[name] = _Pair(s, d, int(port), attempts=int(tot - n_now), first=float(t0))
            self._groups.setdefault((s, int(port)), _Group()).dsts.add(d)
            promoted.append(name)
        self._counter.forget(promoted)

    def _follow(
        self,
        batch: EventBatch,
        idx: np.ndarray,
        key: pa.Array,
        ts: np.ndarray,
        fail: np.ndarray,
        ctx: Context,
    ) -> list[Finding]:
        """Add the batch's connections of tracked pairs; check the groups they belong to."""
        if not self._pairs:
            return []
        mine = pc.is_in(key, value_set=pa.array(list(self._pairs), pa.string())).to_numpy(
            zero_copy_only=False
        )
        mine = np.asarray(mine, dtype=bool)
        if not mine.any():
            return []
        keys = np.asarray(key.filter(pa.array(mine)).to_numpy(zero_copy_only=False), dtype=object)
        t = ts[mine]
        f = fail[mine]
        # Columns of the whole batch, converted once and shared with the other analytics.
        rows = idx[mine]
        uid = str_col(batch, "uid")[rows]
        state = str_col(batch, "conn_state")[rows]
        mac = str_col(batch, "orig_l2_addr")[rows]
        # One sort by (key, time) and group boundaries: a slice per pair, no Python per flow.
        order = np.lexsort((t, keys))
        keys, t, f, uid, state, mac = keys[order], t[order], f[order], uid[order], state[order], mac[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        touched: set[tuple[str, int]] = set()
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            p = self._pairs[keys[a]]
            fa = f[a:b]
            p.answered += int((~fa).sum())
            if fa.any():
                self._add_attempts(p, t[a:b][fa], uid[a:b][fa], state[a:b][fa], mac[a:b][fa])
            touched.add((p.src, p.port))
        findings = []
        for g in touched:
            finding = self._check(g, ctx, final=False)
            if finding is not None:
                findings.append(finding)
        return findings

    def _add_attempts(
        self, p: _Pair, t: np.ndarray, uid: np.ndarray, state: np.ndarray, mac: np.ndarray
    ) -> None:
        p.attempts += len(t)
        p.last = max(p.last, float(t[-1]))
        if not math.isfinite(p.first):
            p.first = float(t[0])
        # Hours since the pair's first attempt, so that 3 h of retries cover 3 hours, not 4 clock hours.
        hours = np.unique(((t - p.first) // 3600).astype(np.int64))
        new = hours[hours > p.last_hour]
        if len(new):
            p.hours += len(new)
            p.last_hour = int(new[-1])
        p.ts = np.concatenate((p.ts, t))[-self.max_history :]
        if p.early_rate is None and len(p.ts) >= min(self.max_history, 32):
            p.early_rate = p.rate()
        names, counts = np.unique(state, return_counts=True)
        for s, c in zip(names.tolist(), counts.tolist(), strict=True):
            s = s or "-"
            if s in p.states or len(p.states) < 8:
                p.states[s] = p.states.get(s, 0) + c
        p.uids.extend(u for u in uid[-MAX_RECORD_IDS:].tolist() if u)
        m = mac[mac != ""]
        if len(m):
            p.mac = str(m[-1])

    def _make_room(self, keys: set[str]) -> bool:
        """Forget a device's pair that stopped retrying (none for ``max_gap`` s), if it has one: the
        targets of a sweep that each got a few retries must not keep its C2 from being followed."""
        victim = min(keys, key=lambda k: self._pairs[k].last)
        if self._pairs[victim].last >= self._now - self.max_gap:
            return False
        self._drop(victim)
        return True

    # scoring ------------------------------------------------------------------------------
    def _retrying(self, key: tuple[str, int], ctx: Context) -> list[_Pair]:
        """The group's destinations that retry: enough attempts, mostly unanswered, not a fleet service."""
        src, port = key
        out = []
        for d in self._groups[key].dsts:
            p = self._pairs.get(f"{src}|{d}|{port}")
            if (
                p is None
                or p.attempts < self.min_pair_attempts
                or p.share < self.min_unanswered_share
                or p.last - p.first < self.min_span
            ):
                # Too few, mostly answered, or a burst (a flood or a scan's retransmissions).
                continue
            why = self.prevalence.fleet_service(src, d, ctx, self.min_population, at=self._at)
            if why is not None:
                # A service the fleet reaches, unreachable from this one device: an outage or
                # a block on its path, not a dead C2.
                if len(self.suppressed) < self.max_pairs:
                    self.suppressed[(src, d, port)] = why
                continue
            out.append(p)
        return out

    def _check(self, key: tuple[str, int], ctx: Context, final: bool) -> Finding | None:
        g = self._groups.get(key)
        if g is None:
            return None
        pairs = self._retrying(key, ctx)
        if not pairs:
            return None
        attempts = sum(p.attempts for p in pairs)
        due = g.reported_attempts == 0 or attempts >= 2 * g.reported_attempts
        if final:
            due = attempts != g.reported_attempts
        if not due or attempts < self.min_attempts:
            return None
        src, port = key
        if len(pairs) > self.max_destinations:
            # Many dead hosts on one port is a sweep or a rotating pool, not a C2 and its fallbacks.
            if len(self.suppressed) < self.max_pairs:
                self.suppressed[key] = (
                    f"{len(pairs)} hosts retried on tcp/{port} (more than {self.max_destinations})"
                )
            return None
        first = min(p.first for p in pairs)
        last = max(p.last for p in pairs)
        if last - first < self.min_span:
            return None
        gap_of = {id(p): float(np.median(p.gaps())) if len(p.ts) >= 4 else math.inf for p in pairs}
        gap = min(gap_of.values())
        if gap > self.max_gap:
            return None  # backed off to one try every ten minutes or more: a patient client
        answered = sum(p.answered for p in pairs)
        hours = max(p.hours for p in pairs)
        s = retry_score(
            attempts,
            hours,
            gap,
            attempts / max(1, attempts + answered),
            min_attempts=self.min_attempts,
            full_attempts=self.full_attempts,
            full_hours=self.full_hours,
            fast_gap=self.fast_gap,
            slow_gap=self.slow_gap,
            min_unanswered_share=self.min_unanswered_share,
        )
        g.reported_attempts = attempts
        pairs.sort(key=lambda p: -p.attempts)
        evidence = [self._pair_sentence(p, gap_of[id(p)]) for p in pairs]
        # the first line also says what this usually means, in words an analyst acts on
        evidence[0] += f": {MEANING}"
        lead = pairs[0]
        early, lately = lead.early_rate, lead.rate()
        # Rates rather than median gaps: a bot's bursts (4 tries a few seconds apart, then a
        # pause) make the median jump between modes, while the rate is stable.
        trend = (
            f"{early:.0f} tries per hour to {lead.dst} at first, {lately:.0f} lately"
            # Client back-off is exponential: a rate down by less than 4x is no back-off.
            + (" (no back-off)" if lately >= early / 4 else " (slowing down)")
            if early is not None
            else f"{lately:.0f} tries per hour to {lead.dst}"
        )
        states = {}
        for p in pairs:
            for k, v in p.states.items():
                states[k] = states.get(k, 0) + v
        evidence.append(
            f"persistence: {attempts} unanswered attempts in {hours} distinct hours over "
            f"{(last - first) / 3600:.1f} h; {trend}; states "
            + ", ".join(f"{k} {v}" for k, v in sorted(states.items(), key=lambda kv: -kv[1]))
        )
        evidence.append(
            f"retry score {s['score']:.2f}: rate {s['rate']:.2f} (1 at one try per {self.fast_gap:.0f} s, "
            f"0 at {self.slow_gap:.0f} s), persistence {s['persistence']:.2f}, volume {s['volume']:.2f}, "
            f"silence {s['silence']:.2f}"
        )
        mitre = ["T1071"]
        if len(pairs) > 1:
            mitre.append("T1008")
            evidence.append(
                f"the same port retried on {len(pairs)} hosts ({', '.join(p.dst for p in pairs)}): "
                "fallback C2 addresses (T1008)"
            )
        uids: list[str] = []
        for p in pairs:
            uids.extend(list(p.uids)[-MAX_RECORD_IDS // len(pairs) :])
        return make_finding(
            ctx,
            src,
            "c2-beacon",
            self.name,
            s["score"],
            first,
            last,
            evidence,
            mitre,
            uids,
            mac=next((p.mac for p in pairs if p.mac), None),
            destinations=[p.dst for p in pairs],
            port=f"tcp/{port}",
            attempts=attempts,
            answered=answered,
            hours=hours,
            median_gap=round(gap, 3),
            retry_score=round(s["score"], 3),
        )

    def _pair_sentence(self, p: _Pair, gap: float) -> str:
        gaps = p.gaps()
        q90 = f", 90th percentile {np.percentile(gaps, 90):.0f} s" if len(gaps) >= 10 else ""
        span = p.last - p.first
        answered = (
            "never answered"
            if p.answered == 0
            else f"answered {p.answered} times ({p.answered / (p.answered + p.attempts):.0%} of connections)"
        )
        return (
            f"{p.attempts} unanswered connection attempts to {p.dst} tcp/{p.port} over {span / 3600:.1f} h, "
            f"one every {span / max(1, p.attempts - 1):.1f} s on average (latest gaps: median {gap:.1f} s{q90}); "
            f"{answered}"
        )

    # state --------------------------------------------------------------------------------
    def _sweep(self) -> None:
        """Drop pairs that stopped retrying or that their server answers most of the time."""
        self._last_sweep = self._now
        cutoff = self._now - self.idle_timeout
        # A reported device that pauses (connected to its C2 for a while, or asleep) and resumes is
        # the same story: its pairs are kept for ``reported_idle_timeout``, the others for ``idle_timeout``.
        reported_cutoff = self._now - self.reported_idle_timeout
        drop = {
            k
            for k, p in self._pairs.items()
            if p.last < (reported_cutoff if self._reported(p) else cutoff)
            or (p.answered >= 4 * p.attempts and p.answered >= 4 * self.min_pair_attempts)
        }
        if len(self._pairs) - len(drop) > self.max_pairs:
            # Still too many: keep the most persistent pairs, the only ones that can qualify.
            kept = sorted((k for k in self._pairs if k not in drop), key=lambda k: -self._pairs[k].attempts)
            drop.update(kept[self.max_pairs // 2 :])
        for k in drop:
            self._drop(k)
        c = self._counter
        if len(c) > self._counter_cap:
            # Beyond the cap, drop the idle counters (then the older half if still too many).
            keep = c.last >= cutoff
            if keep.sum() > self._counter_cap // 2:
                keep &= c.last >= np.median(c.last[keep])
            c.keep(keep)
        while len(self.suppressed) > self.max_pairs:
            self.suppressed.pop(next(iter(self.suppressed)))

    def _reported(self, p: _Pair) -> bool:
        g = self._groups.get((p.src, p.port))
        return g is not None and g.reported_attempts > 0

    def _drop(self, key: str) -> None:
        p = self._pairs.pop(key)
        mine = self._per_device.get(p.src)
        if mine is not None:
            mine.discard(key)
            if not mine:
                del self._per_device[p.src]
        g = self._groups.get((p.src, p.port))
        if g is not None:
            g.dsts.discard(p.dst)
            if not g.dsts:
                del self._groups[(p.src, p.port)]

    def flush(self, ctx: Context) -> list[Finding]:
        self.prevalence.clock.finish()
        findings = self._judge_ready(ctx, math.inf)
        self._at = None  # the final figures, as of everything learnt
        for key in list(self._groups):
            f = self._check(key, ctx, final=True)
            if f is not None:
                findings.append(f)
        return findings


ANALYTICS = [C2RetryDetector]
