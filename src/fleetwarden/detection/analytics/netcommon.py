"""Shared pieces of the network behaviour analytics (scan, beacon, flood, dns, exfil, novelty).

Address classification (private, multicast/broadcast) cached per distinct address, the
sliding distinct-count window the rate detectors share, and the helper that turns an
address into the entity/ip/mac a :class:`~fleetwarden.core.findings.Finding` carries.
Everything here is bounded: windows expire by event time and cap the items they keep.

What keeps findings independent of batching (the contract of
:mod:`fleetwarden.detection.analytics.base`): :class:`DistinctWindow` slides record by record;
:class:`TickGate` holds an analytic's records until their tick of event time is over;
:class:`KindClock` tells an analytic of several kinds how far every kind is complete; the
fleet :class:`Prevalence` keeps each fact with the time it was learnt and answers as of a time.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import KINDS, EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.enrich import split_name
from fleetwarden.detection.state import stable_hash

MAX_RECORD_IDS = 50

# Zeek conn_state values that mean "no application exchange happened".
FAILED_STATES = frozenset({"S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR", "OTH", "S1"})


@lru_cache(maxsize=65_536)
def parse_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``ip`` spells, or None when it is not one."""
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


@lru_cache(maxsize=65_536)
def is_private(ip: str) -> bool:
    """Private, loopback, link-local or otherwise non-routable (inside the monitored network)."""
    a = parse_address(ip)
    return a is not None and (a.is_private or a.is_link_local or a.is_loopback)


@lru_cache(maxsize=65_536)
def is_group(ip: str) -> bool:
    """Multicast or broadcast: traffic to these is discovery, never a peer to count."""
    a = parse_address(ip)
    if a is None:
        return True
    if a.is_multicast or a.is_unspecified:
        return True
    if a.version == 4:
        last = int(a) & 0xFF
        # x.x.x.255 is the broadcast of any /24 or wider subnet (the common IoT LAN shape).
        return last == 255 or int(a) == 0xFFFFFFFF
    return False


def distinct_map(values: np.ndarray, fn: Callable[[str], Any], dtype: Any = object) -> np.ndarray:
    """``fn`` over an array of strings, called once per distinct value (a batch repeats a few hosts)."""
    if len(values) == 0:
        return np.zeros(0, dtype=dtype)
    try:
        # Hash-based distinct values (an Arrow dictionary), much cheaper than sorting strings.
        enc = pc.dictionary_encode(pa.array(values, pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        enc = None
    if enc is None or enc.null_count:
        uniq, inv = np.unique(values.astype(str), return_inverse=True)
        return np.array([fn(u) for u in uniq], dtype=dtype)[inv]
    names = enc.dictionary.to_pylist()
    return np.array([fn(u) for u in names], dtype=dtype)[enc.indices.to_numpy(zero_copy_only=False)]


def address_mask(ips: np.ndarray, test: Callable[[str], bool]) -> np.ndarray:
    """``test`` over an array of addresses, called once per distinct value."""
    return distinct_map(ips, test, bool)


def group_mask(ips: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_group` over an object array of addresses."""
    return address_mask(ips, is_group)


def sorted_by_time(batch: EventBatch) -> EventBatch:
    ts = batch.np("ts")
    if len(ts) > 1 and np.any(np.diff(ts) < 0):
        return batch.sort_by_time()
    return batch


def entity_ref(ctx: Context, ip: str, mac: str | None = None) -> dict[str, Any]:
    """Entity, ip, mac and device id for a Finding about the host at ``ip``."""
    device_id = ctx.ip_to_device.get(ip)
    info = ctx.devices.get(device_id) if device_id else None
    if mac is None and info is not None:
        mac = info.mac
    return {"entity": device_id or ip, "ip": ip, "mac": mac or None, "device_id": device_id}


def device_class(ctx: Context, ip: str) -> str | None:
    device_id = ctx.ip_to_device.get(ip)
    info = ctx.devices.get(device_id) if device_id else None
    return info.device_class if info else None


def cap_ids(ids: Iterable[str], limit: int = MAX_RECORD_IDS) -> list[str]:
    out: list[str] = []
    for i in ids:
        if i and i not in out:
            out.append(i)
            if len(out) >= limit:
                break
    return out


def ratio_score(value: float, threshold: float, floor: float = 0.5, decades: float = 1.0) -> float:
    """Score in [floor, 1]: ``floor`` at the threshold, 1 at ``10**decades`` times it (log scale)."""
    if value < threshold or threshold <= 0:
        return 0.0
    return float(min(1.0, floor + (1 - floor) * math.log10(value / threshold) / decades))


@dataclass
class DistinctWindow:
    """Distinct items seen for one key within a sliding event-time window, judged record by record.

    ``items`` maps item -> last time seen, oldest first (records come in time order, so an item
    seen again moves to the young end).  :meth:`add` first lets the items older than the window
    go, then adds the record's item: the state after a record depends only on the records, not
    on how they were batched.  When the window empties, the episode ends: ``reported``,
    ``events``, ``uids`` and ``macs`` start afresh.  At ``cap`` items the oldest is forgotten for
    the new one (only matters far above every threshold).
    """

    items: dict[Any, float] = field(default_factory=dict)
    failed: set[Any] = field(default_factory=set)
    events: int = 0  # records since the episode began
    first_ts: float = math.inf  # last time of the oldest item in the window
    last_ts: float = -math.inf
    uids: list[str] = field(default_factory=list)
    reported: int = 0  # distinct count at the last emission (0 = never)
    macs: str | None = None

    def add(self, item: Any, ts: float, uid: str, failed: bool, cap: int, window: float = math.inf) -> None:
        items = self.items
        cutoff = ts - window
        while items:
            old = next(iter(items))
            if items[old] >= cutoff:
                break
            del items[old]
            self.failed.discard(old)
        if not items:
            self.reported = 0
            self.events = 0
            self.uids = []
            self.macs = None
        if item in items:
            del items[item]  # to the young end
        elif len(items) >= cap:
            old = next(iter(items))
            del items[old]
            self.failed.discard(old)
        items[item] = ts
        # The latest outcome wins: a host that answered since (a polled PLC that missed
        # one poll) is no longer a failed target, whereas a scanner's targets stay failed.
        if failed:
            self.failed.add(item)
        else:
            self.failed.discard(item)
        self.events += 1
        self.first_ts = items[next(iter(items))]
        if ts > self.last_ts:
            self.last_ts = ts
        if uid and len(self.uids) < MAX_RECORD_IDS:
            self.uids.append(uid)


def make_finding(
    ctx: Context,
    ip: str,
    category: str,
    detector: str,
    score: float,
    first: float,
    last: float,
    evidence: list[str],
    mitre: list[str],
    record_ids: Iterable[str] = (),
    mac: str | None = None,
    **attributes: Any,
) -> Finding:
    ref = entity_ref(ctx, ip, mac)
    return Finding(
        category=category,
        detector=detector,
        score=score,
        first_seen=float(first),
        last_seen=float(last),
        evidence=evidence,
        mitre=mitre,
        record_ids=cap_ids(record_ids),
        attributes=attributes,
        **ref,
    )


# The engine hands one batch to several analytics in turn, and each reads the same columns
# (addresses, uids, byte counts): converting an Arrow string column to numpy objects is the
# costly part, so the conversions of the latest table are kept until another table comes.
# The arrays are read-only so that no analytic can change what the next one reads.  The cache
# is per thread: engines in different threads never see each other's batches.
_local = threading.local()


def column(batch: EventBatch, name: str, fill: Any = None) -> np.ndarray:
    """``batch.np(name, fill)``, converted once per batch table; the array is read-only."""
    table = batch.table
    local = _local
    if getattr(local, "table", None) is not table:
        local.cache = {}
        local.table = table
    key = (name, type(fill).__name__, repr(fill))
    arr = local.cache.get(key)
    if arr is None:
        arr = batch.np(name, fill=fill)
        arr.flags.writeable = False
        local.cache[key] = arr
    return arr


def str_col(batch: EventBatch, name: str) -> np.ndarray:
    """String column with nulls as ''; read-only and shared by the analytics (see :func:`column`)."""
    return column(batch, name, "")


def num_col(batch: EventBatch, name: str, fill: float = 0) -> np.ndarray:
    """Numeric column with nulls as ``fill``; read-only and shared (see :func:`column`)."""
    return column(batch, name, fill)


def is_local(ctx: Context, ip: str) -> bool:
    """Inside the monitored network: a private address or an inventoried device."""
    return is_private(ip) or ip in ctx.ip_to_device


def cohorts_of(ctx: Context, ip: str) -> tuple[str, ...]:
    """Cohort keys of the device at ``ip``: its vendor and its (class, vendor); empty if unknown."""
    device_id = ctx.ip_to_device.get(ip)
    info = ctx.devices.get(device_id) if device_id else None
    if info is None:
        return ()
    out = []
    if info.vendor:
        out.append(f"vendor:{info.vendor}")
        if info.device_class:
            out.append(f"class:{info.device_class}|{info.vendor}")
    return tuple(out)


class KindClock:
    """How far in event time a consumer of several kinds has received every record.

    The engine is handed windows of event time, each window's kinds in
    :data:`~fleetwarden.core.events.KINDS` order (``time_windows``, the merge of
    ``app/inputs.py`` and the worker).  Within a window a ``flow`` batch therefore comes before
    the ``dns`` batch of the same window: an analytic that reads both cannot judge a flow at
    time ``t`` until it knows every DNS record up to ``t`` has arrived.  :meth:`note` is told the
    kind and the latest time of each batch in the order they come; :attr:`through` is then a
    time such that every record (of the kinds followed) up to it has been received:

    * after a batch of kind K ending at M, the records of K and of the kinds before K in
      ``KINDS`` still to come lie in later windows, after M;
    * a batch whose kind does not come after the previous batch's starts a new window: every
      record received before it lies in earlier windows, so everything up to the latest of them
      has been received.

    Input that does not follow that order (a capture reader yielding all flows, then all DNS
    records) only makes records arrive behind :attr:`through`; consumers take them as they come.
    """

    def __init__(self, kinds: Iterable[str] = ()) -> None:
        wanted = set(kinds)
        self.kinds = [k for k in KINDS if k in wanted]
        self.safe = [-math.inf] * len(self.kinds)  # every record of kind i up to safe[i] received
        self.last = -1  # index of the previous batch's kind
        self.seen = -math.inf  # latest time received, any kind

    def note(self, kind: str, latest: float) -> None:
        if kind not in self.kinds:
            return
        i = self.kinds.index(kind)
        if i <= self.last:  # a new window: everything received so far lies before it
            self.safe = [max(s, self.seen) for s in self.safe]
        for j in range(i + 1):
            self.safe[j] = max(self.safe[j], latest)
        self.last = i
        self.seen = max(self.seen, latest)

    def finish(self) -> None:
        """The input is over: everything has been received."""
        self.safe = [math.inf] * len(self.kinds)

    @property
    def through(self) -> float:
        return min(self.safe, default=math.inf)


def plain_table(table: pa.Table) -> pa.Table:
    """``table`` without schema or field metadata (the field docs of ``core.events``): what an
    analytic keeps between batches is written in checkpoints, whose format carries no metadata."""
    if table.schema.metadata is None and all(f.metadata is None for f in table.schema):
        return table
    return table.cast(pa.schema([f.remove_metadata() for f in table.schema]))


class TickGate:
    """Holds an analytic's records until the event-time tick they fall in is over.

    Ticks are ``[k * tick, (k + 1) * tick)`` seconds of event time.  :meth:`push` takes each batch
    (in time order); :meth:`pop` hands back, one batch per tick, the records of every tick that
    ends at or before the time given (a later record of the kind proves a tick over).  An
    analytic that works on whole ticks sees the same batches whatever the engine was handed:
    its findings depend on event time, not on batch boundaries.
    """

    def __init__(self, tick: float = 60.0) -> None:
        self.tick = float(tick)
        self.kind = ""
        self.held: pa.Table | None = None  # records of ticks not yet over, in time order
        self.seen = -math.inf  # latest record time pushed

    def __len__(self) -> int:
        return 0 if self.held is None else self.held.num_rows

    def push(self, batch: EventBatch) -> None:
        if len(batch) == 0:
            return
        self.kind = batch.kind
        table = plain_table(batch.table)
        ts = batch.np("ts")
        if self.held is None or self.held.num_rows == 0:
            self.held = table
        else:
            late = float(np.nanmin(ts)) < float(self.held.column("ts").to_numpy()[-1])
            self.held = pa.concat_tables([self.held, table])
            if late:  # a record behind the held ones (input out of time order): keep them sorted
                self.held = self.held.sort_by("ts")
        self.seen = max(self.seen, float(np.nanmax(ts)))

    def pop(self, until: float) -> list[EventBatch]:
        """The held records of the ticks that end at or before ``until``, a batch per tick."""
        if self.held is None or self.held.num_rows == 0:
            return []
        ts = self.held.column("ts").to_numpy()
        if math.isnan(until) or until == -math.inf:
            return []
        if until == math.inf:
            n = len(ts)
        else:
            n = int(np.searchsorted(ts, math.floor(until / self.tick) * self.tick, side="left"))
        if n == 0:
            return []
        ready = self.held.slice(0, n).combine_chunks()
        self.held = self.held.slice(n)
        if self.held.num_rows == 0:
            self.held = None
        tick = np.floor(ts[:n] / self.tick)
        edges = np.flatnonzero(np.diff(tick)) + 1
        starts = np.r_[0, edges]
        ends = np.r_[edges, n]
        return [
            EventBatch(self.kind, ready.slice(int(a), int(b - a))) for a, b in zip(starts, ends, strict=True)
        ]

    def drain(self) -> list[EventBatch]:
        return self.pop(math.inf)


def judgeable_until(gate: TickGate, prevalence: Prevalence, min_population: int) -> float:
    """End of the latest tick an analytic gated by ``gate`` that asks ``prevalence`` can judge: a
    later flow proved the tick over, and the fleet context up to its end is complete (every flow
    and DNS record learnt: a DNS answer can still name a destination; or too few devices yet for
    prevalence to count)."""
    if not math.isfinite(gate.seen):
        return gate.seen
    tick = gate.tick
    end = math.floor(gate.seen / tick) * tick
    if prevalence.settled(end) or prevalence.population_at(end) < min_population:
        return end
    through = prevalence.clock.through
    return math.floor(through / tick) * tick if math.isfinite(through) else through


def _time_of(item: list, default: float) -> float:
    """The time of an observation item ``[.., .., time]``; ``default`` when it has none (an older
    peer's) or one that is not a finite number."""
    if len(item) > 2 and isinstance(item[2], (int, float)) and math.isfinite(item[2]):
        return float(item[2])
    return default


def _count_at(members: dict[str, float] | None, at: float | None) -> int:
    """How many of ``members`` (name -> time first seen) were there at time ``at`` (None: now)."""
    if not members:
        return 0
    if at is None:
        return len(members)
    return sum(1 for t in members.values() if t <= at)


class Prevalence:
    """How many distinct devices of the fleet (and of each cohort) talk to an external destination.

    The prevalence of a destination, as RITA and Defender for IoT use it: a service that many
    devices contact is a fleet service (vendor cloud, NTP pool, CDN), not a command-and-control
    server or a drop site of one compromised device.  Destinations are counted by address and,
    when a DNS answer named it, by the registered domain of the name (vendors rotate cloud
    addresses under one domain).  Everything is bounded: at most ``cap`` devices per key (the
    count saturates far above any threshold), ``max_keys`` keys and ``max_names`` DNS answers,
    the oldest dropped first.

    Every fact is kept with the event time it was first seen, and every question is asked *as of*
    a time (``at``; None: everything learnt): an analytic judging a flow at time ``t`` gets the
    answer that the records up to ``t`` give, whether the engine was handed them in one batch or
    in many, and learning may run ahead of judging.  A registered domain covers the addresses
    DNS answers named under it up to ``t``, whichever came first, the answer or the flow.
    :attr:`clock` follows how far the ``flow`` and ``dns`` records fed through
    :meth:`observe_batch` are complete (:meth:`settled`): a judgment that a domain could change
    waits until the DNS records up to its time are in.

    Blind spot: a botnet whose C2 is contacted by many devices of the fleet looks prevalent;
    callers only discount prevalence and keep other evidence (scans, floods) of such devices.
    The caps are a memory safety valve: past them, what is forgotten depends on when it was fed.
    """

    def __init__(self, cap: int = 256, max_keys: int = 200_000, max_names: int = 200_000) -> None:
        self.cap = cap
        self.max_keys = max_keys
        self.max_names = max_names
        self.by_key: dict[str, dict[str, float]] = {}  # "ip:<addr>" -> device -> first time
        self.by_cohort: dict[
            tuple[str, str], dict[str, float]
        ] = {}  # (cohort, "ip:<addr>") -> device -> time
        self.population: dict[str, float] = {}  # device -> first time it was answered from outside
        self.cohort_population: dict[str, dict[str, float]] = {}
        self.names: dict[
            str, list[tuple[float, str]]
        ] = {}  # address -> (time, registered domain), latest last
        self.domains: dict[str, dict[str, float]] = {}  # registered domain -> address -> first time named
        self.clock = KindClock(("flow", "dns"))
        self._population_times: list[float] = []  # sorted first times of ``population``
        self._cohort_times: dict[str, list[float]] = {}  # the same per cohort
        self._last_table: pa.Table | None = None  # the batch learned from last (see observe_batch)

    # learning ---------------------------------------------------------------------------
    # What a batch teaches is first taken out as plain data (:meth:`observation`), then learnt
    # (:meth:`learn`): the scale-out worker sends the observations of its partitions to the other
    # workers of the fleet, which learn them as if they had seen the batch (fleet-wide prevalence
    # over sharded workers, docs/architecture.md).
    def observation(self, batch: EventBatch) -> dict[str, list[list]] | None:
        """What a ``flow`` or ``dns`` batch teaches, as JSON-able data: the distinct answered
        (source, destination, first time) of the connections the sources opened, or the distinct
        (query, answers, first time) of DNS answers; None when it teaches nothing.

        The flows counted are the connections the source opened (not replies the flow builder
        flipped onto it: no packets from the originator, some from the responder) that were
        answered (packets or bytes back): unanswered probes of a scan say nothing about which
        services the fleet uses (and would fill the table with one-device keys)."""
        if len(batch) == 0:
            return None
        if batch.kind == "flow":
            pairs = self._answered_pairs(batch)
            if pairs is None:
                return None
            s, d, t = pairs
            return {"pairs": [[a, b, c] for a, b, c in zip(s.tolist(), d.tolist(), t.tolist(), strict=True)]}
        ts = num_col(batch, "ts")
        if batch.kind == "dns":
            if "answers" not in batch.table.column_names:
                return None
            query = str_col(batch, "query")
            answers = str_col(batch, "answers")
            has = (answers != "") & (query != "")
            if not has.any():
                return None
            first: dict[tuple[str, str], float] = {}
            for q, a, t in zip(query[has].tolist(), answers[has].tolist(), ts[has].tolist(), strict=True):
                if (q, a) not in first:
                    first[(q, a)] = t
            return {"names": [[q, a, t] for (q, a), t in first.items()]}
        return None

    def _answered_pairs(self, batch: EventBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(sources, destinations, first times) of the distinct answered pairs of a ``flow`` batch,
        in the order of each pair's first connection (see :meth:`observation`)."""
        rp = num_col(batch, "resp_pkts")
        answered = ((rp > 0) | (num_col(batch, "resp_bytes") > 0)) & ~(
            (num_col(batch, "orig_pkts") <= 0) & (rp > 0)
        )
        if not answered.any():
            return None
        pairs = (
            pa.table(
                {
                    "s": pa.array(str_col(batch, "id.orig_h")[answered], pa.string()),
                    "d": pa.array(str_col(batch, "id.resp_h")[answered], pa.string()),
                    "t": pa.array(num_col(batch, "ts")[answered], pa.float64()),
                    "i": pa.array(np.arange(int(answered.sum())), pa.int64()),
                }
            )
            .group_by(["s", "d"], use_threads=False)
            .aggregate([("t", "min"), ("i", "min")])
            .sort_by("i_min")  # in the order of each pair's first connection
        )
        return (
            np.asarray(pairs.column("s").to_numpy(zero_copy_only=False), dtype=object),
            np.asarray(pairs.column("d").to_numpy(zero_copy_only=False), dtype=object),
            pairs.column("t_min").to_numpy(),
        )

    def learn(self, obs: dict[str, list[list]] | None, ctx: Context, ts: float | None = None) -> None:
        """Learn an :meth:`observation` (this engine's or another worker's).  Items without a time
        (an older peer's) are learnt as of ``ts``, else as of the latest time received."""
        if not obs:
            return
        default = ts if ts is not None else (self.clock.seen if math.isfinite(self.clock.seen) else -math.inf)
        if "names" in obs:
            self._learn_names(obs["names"], default)
        if "pairs" in obs and obs["pairs"]:
            pairs = obs["pairs"]
            self.observe_flows(
                np.array([p[0] for p in pairs], dtype=object),
                np.array([p[1] for p in pairs], dtype=object),
                ctx,
                np.array([_time_of(p, default) for p in pairs], dtype=np.float64),
            )

    def _learn_names(self, rows: list[list], default: float = -math.inf) -> None:
        """Learn address -> registered domain from (query, comma-separated answers[, time]) rows."""
        for row in rows:
            q, ans = row[0], row[1]
            t = _time_of(row, default)
            if not q:
                continue
            dom = split_name(q)[0]
            for a in ans.split(","):
                a = a.strip()
                if not a or parse_address(a) is None:
                    continue
                told = self.names.pop(a, None) or []
                if not told or told[-1][0] <= t:
                    told.append((t, dom))
                else:  # learnt late: keep the answers in time order
                    told.append((t, dom))
                    told.sort(key=lambda e: e[0])
                self.names[a] = told[-4:]
                named = self.domains.setdefault(dom, {})
                if a in named:
                    named[a] = min(named[a], t)
                elif len(named) < self.cap:
                    named[a] = t
        while len(self.names) > self.max_names:
            self.names.pop(next(iter(self.names)))
        while len(self.domains) > self.max_names:
            self.domains.pop(next(iter(self.domains)))

    def observe_dns(self, batch: EventBatch) -> None:
        """Learn address -> registered domain from the answers of DNS records."""
        if batch.kind == "dns":
            self.learn(self.observation(batch), Context())

    def observe_batch(self, batch: EventBatch, ctx: Context) -> None:
        """Learn from one ``flow`` or ``dns`` batch; a batch already learned from is skipped.

        Several analytics may hand the same batch to one shared instance (see
        :func:`share_prevalence`): learning is idempotent, so only the first call per batch does
        the work (and tells :attr:`clock` how far the batch goes)."""
        table = batch.table
        if table is self._last_table or len(batch) == 0:
            return
        self._last_table = table
        self.clock.note(batch.kind, float(np.nanmax(num_col(batch, "ts"))))
        if batch.kind == "flow":
            pairs = self._answered_pairs(batch)
            if pairs is not None:
                self.observe_flows(*pairs[:2], ctx, pairs[2])
        else:
            self.learn(self.observation(batch), ctx)

    def observe_flows(
        self, src: np.ndarray, dst: np.ndarray, ctx: Context, ts: np.ndarray | None = None
    ) -> None:
        """Count the (source, external destination) pairs of connections the sources opened, each
        as of ``ts`` (the pair's first connection; None: as of the start).

        Callers pass answered connections only: unanswered probes of a scan say nothing about
        which services the fleet uses (and would fill the table with one-device keys).
        """
        if len(src) == 0:
            return
        if ts is None:
            ts = np.full(len(src), -math.inf)
        dst_arr = np.asarray(dst, dtype=object)
        # Only pairs to an external peer count; the test runs once per distinct destination.
        skip = address_mask(dst_arr, lambda d: not d or is_group(d) or is_local(ctx, d)) | (
            np.asarray(src) == ""
        )
        keep = ~skip
        s_list = np.asarray(src, dtype=object)[keep].tolist()
        d_list = dst_arr[keep].tolist()
        t_list = np.asarray(ts, dtype=np.float64)[keep].tolist()
        if not s_list:
            return
        limit = 10 * self.max_keys
        population = self.population
        times = self._population_times
        cohorts_of_src: dict[str, tuple[str, ...]] = {}
        by_key, by_cohort, cap = self.by_key, self.by_cohort, self.cap
        for s, d, t in zip(s_list, d_list, t_list, strict=True):
            known = population.get(s)
            if known is None:
                if len(population) < limit:
                    population[s] = t
                    if not times or times[-1] <= t:
                        times.append(t)
                    else:
                        bisect.insort(times, t)
            elif t < known:  # learnt late (a peer's observation): the earlier time holds
                population[s] = t
                times.remove(known)
                bisect.insort(times, t)
            cohorts = cohorts_of_src.get(s)
            if cohorts is None:
                cohorts = cohorts_of_src[s] = cohorts_of(ctx, s)
                for c in cohorts:
                    members = self.cohort_population.setdefault(c, {})
                    ctimes = self._cohort_times.setdefault(c, [])
                    if s in members:
                        if t < members[s]:
                            ctimes.remove(members[s])
                            bisect.insort(ctimes, t)
                            members[s] = t
                    elif len(members) < 10 * cap:
                        members[s] = t
                        if not ctimes or ctimes[-1] <= t:
                            ctimes.append(t)
                        else:
                            bisect.insort(ctimes, t)
            key = "ip:" + d
            devices = by_key.get(key)
            if devices is None:
                devices = by_key[key] = {}
            if s in devices:
                if t < devices[s]:
                    devices[s] = t
            elif len(devices) < cap:
                devices[s] = t
            for c in cohorts:
                devices = by_cohort.get((c, key))
                if devices is None:
                    devices = by_cohort[(c, key)] = {}
                if s in devices:
                    if t < devices[s]:
                        devices[s] = t
                elif len(devices) < cap:
                    devices[s] = t
        for table in (self.by_key, self.by_cohort):
            if len(table) > self.max_keys:
                # Oldest keys first; rare ones (one device) are the cheapest to forget.
                drop = [k for k, v in list(table.items())[: len(table) // 2] if len(v) <= 1]
                for k in drop or list(table)[: len(table) // 4]:
                    del table[k]

    # asking -----------------------------------------------------------------------------
    def settled(self, at: float) -> bool:
        """Whether every ``flow`` and ``dns`` record up to ``at`` has been learnt (see :attr:`clock`)."""
        return at <= self.clock.through

    def population_at(self, at: float | None = None) -> int:
        """Devices seen answered from outside up to ``at``."""
        if at is None:
            return len(self.population)
        return bisect.bisect_right(self._population_times, at)

    def cohort_size(self, cohort: str, at: float | None = None) -> int:
        """Devices of ``cohort`` seen answered from outside up to ``at``."""
        times = self._cohort_times.get(cohort)
        if not times:
            return 0
        return len(times) if at is None else bisect.bisect_right(times, at)

    def devices(self, dst: str, at: float | None = None) -> int:
        """Distinct devices seen contacting ``dst`` up to ``at`` (by address; saturates at ``cap``)."""
        return _count_at(self.by_key.get(f"ip:{dst}"), at)

    def domain(self, dst: str, at: float | None = None) -> str | None:
        """The registered domain the latest DNS answer up to ``at`` named ``dst`` under."""
        told = self.names.get(dst)
        if not told:
            return None
        if at is None:
            return told[-1][1]
        for t, dom in reversed(told):
            if t <= at:
                return dom
        return None

    def _domain_devices(self, cohort: str, dom: str, at: float | None) -> int:
        """Devices of ``cohort`` that contacted an address named under ``dom``, up to ``at``."""
        seen: set[str] = set()
        for a, named in self.domains.get(dom, {}).items():
            if (at is not None and named > at) or self.domain(a, at) != dom:
                continue
            members = self.by_cohort.get((cohort, "ip:" + a))
            if members:
                seen.update(s for s, t in members.items() if at is None or t <= at)
                if len(seen) >= self.cap:
                    return self.cap
        return len(seen)

    def cohort_share(
        self, src: str, dst: str, ctx: Context, at: float | None = None
    ) -> tuple[int, int, str | None]:
        """Best (devices, cohort size, cohort) over the cohorts of ``src`` contacting ``dst`` or its
        domain, up to ``at``."""
        best: tuple[int, int, str | None] = (0, 0, None)
        dom = self.domain(dst, at)
        for c in cohorts_of(ctx, src):
            size = self.cohort_size(c, at)
            counts = [_count_at(self.by_cohort.get((c, "ip:" + dst)), at)]
            if dom:
                counts.append(self._domain_devices(c, dom, at))
            for n in counts:
                if size and (n / size, n) > ((best[0] / best[1]) if best[1] else 0.0, best[0]):
                    best = (n, size, c)
        return best

    def fleet_service(
        self,
        src: str,
        dst: str,
        ctx: Context,
        min_population: int = 10,
        min_devices: int = 5,
        ratio: float = 0.02,
        cohort_min: int = 2,
        cohort_ratio: float = 0.3,
        at: float | None = None,
    ) -> str | None:
        """Why ``dst`` is a service of the fleet or of ``src``'s cohort up to ``at``, or None when it
        is rare.

        Prevalence only applies once ``min_population`` devices have been seen talking to the
        outside (a single-host capture says nothing about what is common).
        """
        population = self.population_at(at)
        if population < min_population:
            return None
        n = self.devices(dst, at)
        need = min(self.cap, max(min_devices, math.ceil(ratio * population)))
        if n >= need:
            return f"{n} of {population} devices of the fleet contact it"
        k, size, cohort = self.cohort_share(src, dst, ctx, at)
        if cohort and k >= cohort_min and k >= cohort_ratio * size:
            dom = self.domain(dst, at)
            via = f" (domain {dom})" if dom else ""
            return f"{k} of the {size} devices of cohort {cohort} contact it{via}"
        return None


def share_prevalence(analytics: Iterable[Any]) -> Prevalence | None:
    """Make the analytics that each keep a ``prevalence`` share one instance; return it.

    Beacon and exfiltration analytics learn the same prevalence from the same batches (DNS
    answers and the answered connections of ``flow`` batches, :meth:`Prevalence.observe_batch`),
    so one engine keeps one copy, fed by whichever analytic sees a batch first.  Only
    instances still empty and sized alike are shared (an analytic handed a pre-filled or
    differently capped table keeps its own).
    """
    shared: Prevalence | None = None
    for a in analytics:
        prev = getattr(a, "prevalence", None)
        if not isinstance(prev, Prevalence) or prev.population or prev.by_key or prev.names:
            continue
        if shared is None:
            shared = prev
        elif (prev.cap, prev.max_keys, prev.max_names) == (shared.cap, shared.max_keys, shared.max_names):
            a.prevalence = shared
    return shared


class KeyCounter:
    """Counts and first and last times per string key (a pair "src|dst|..."), as arrays sorted by the
    key's 64-bit hash: no Python object per key, one vectorised merge per batch.  Analytics count
    every candidate this way and follow in full only the keys that reach a threshold."""

    def __init__(self) -> None:
        self.key = np.zeros(0, dtype=np.uint64)
        self.n = np.zeros(0, dtype=np.int64)
        self.first = np.zeros(0, dtype=np.float64)
        self.last = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.key)

    def add(
        self, keys: pa.Array | pa.ChunkedArray, n: np.ndarray, first: np.ndarray, last: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add per-key counts and times (distinct ``keys``); return each key's running total and first
        time, in the order of ``keys``."""
        h = stable_hash(keys)
        srt = np.argsort(h, kind="stable")
        h, n, first, last = h[srt], n[srt].astype(np.int64), first[srt], last[srt]
        pos = np.searchsorted(self.key, h)
        hit = (
            self.key[np.minimum(pos, len(self.key) - 1)] == h
            if len(self.key)
            else np.zeros(len(h), dtype=bool)
        )
        total, first_all = n.copy(), first.astype(np.float64)
        if hit.any():
            at = pos[hit]
            self.n[at] += n[hit]
            self.last[at] = np.maximum(self.last[at], last[hit])
            total[hit] = self.n[at]
            first_all[hit] = self.first[at]
        if not hit.all():
            new = ~hit
            self.key = np.insert(self.key, pos[new], h[new])
            self.n = np.insert(self.n, pos[new], n[new])
            self.first = np.insert(self.first, pos[new], first[new])
            self.last = np.insert(self.last, pos[new], last[new])
        out_total, out_first = np.empty_like(total), np.empty_like(first_all)
        out_total[srt], out_first[srt] = total, first_all
        return out_total, out_first

    def lookup(self, keys: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, first time, last time) of each of ``keys`` (0, inf, -inf for a key not counted)."""
        h = stable_hash(keys)
        n = np.zeros(len(h), dtype=np.int64)
        first = np.full(len(h), np.inf)
        last = np.full(len(h), -np.inf)
        if len(self.key) and len(h):
            pos = np.minimum(np.searchsorted(self.key, h), len(self.key) - 1)
            hit = self.key[pos] == h
            n[hit], first[hit], last[hit] = self.n[pos[hit]], self.first[pos[hit]], self.last[pos[hit]]
        return n, first, last

    def forget(self, keys: list[str]) -> None:
        """Drop the counters of ``keys`` (those now followed in full)."""
        if not keys or not len(self.key):
            return
        h = stable_hash(pa.array(keys, pa.string()))
        pos = np.searchsorted(self.key, h)
        pos = pos[pos < len(self.key)]
        drop = pos[np.isin(self.key[pos], h)]
        if len(drop):
            keep = np.ones(len(self.key), dtype=bool)
            keep[drop] = False
            self.keep(keep)

    def keep(self, mask: np.ndarray) -> None:
        """Keep the counters where ``mask`` (over the stored keys) is true."""
        self.key, self.n, self.first, self.last = (
            self.key[mask],
            self.n[mask],
            self.first[mask],
            self.last[mask],
        )
