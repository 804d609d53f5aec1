"""Shared pieces of the network behaviour analytics (scan, beacon, flood, dns, exfil, novelty).

Address classification (private, multicast/broadcast) cached per distinct address, the
sliding distinct-count window the rate detectors share, and the helper that turns an
address into the entity/ip/mac a :class:`~fleetwarden.core.findings.Finding` carries.
Everything here is bounded: windows expire by event time and cap the items they keep.
"""

from __future__ import annotations

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
from fleetwarden.core.events import EventBatch
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
    """Distinct items seen for one key within a sliding event-time window.

    ``items`` maps item -> last time seen (capped at ``cap`` items: past the cap the count
    stops growing, which only matters far above every threshold).
    """

    items: dict[Any, float] = field(default_factory=dict)
    failed: set[Any] = field(default_factory=set)
    events: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    uids: list[str] = field(default_factory=list)
    reported: int = 0  # distinct count at the last emission (0 = never)
    macs: str | None = None

    def add(self, item: Any, ts: float, uid: str, failed: bool, cap: int) -> None:
        if item in self.items or len(self.items) < cap:
            self.items[item] = ts
            # The latest outcome wins: a host that answered since (a polled PLC that missed
            # one poll) is no longer a failed target, whereas a scanner's targets stay failed.
            if failed:
                self.failed.add(item)
            else:
                self.failed.discard(item)
        self.events += 1
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)
        if uid and len(self.uids) < MAX_RECORD_IDS:
            self.uids.append(uid)

    def expire(self, now: float, window: float) -> None:
        cutoff = now - window
        if self.items and min(self.items.values()) < cutoff:
            self.items = {k: t for k, t in self.items.items() if t >= cutoff}
            self.failed &= self.items.keys()
            self.first_ts = min(self.items.values(), default=now)
            if not self.items:
                self.reported = 0
                self.events = 0
                self.uids = []


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


class Prevalence:
    """How many distinct devices of the fleet (and of each cohort) talk to an external destination.

    The prevalence of a destination, as RITA and Defender for IoT use it: a service that many
    devices contact is a fleet service (vendor cloud, NTP pool, CDN), not a command-and-control
    server or a drop site of one compromised device.  Destinations are counted by address and,
    when a DNS answer named it, by the registered domain of the name (vendors rotate cloud
    addresses under one domain).  Everything is bounded: at most ``cap`` devices per key (the
    count saturates far above any threshold), ``max_keys`` keys and ``max_names`` DNS answers,
    the oldest dropped first.

    Blind spot: a botnet whose C2 is contacted by many devices of the fleet looks prevalent;
    callers only discount prevalence and keep other evidence (scans, floods) of such devices.
    """

    def __init__(self, cap: int = 256, max_keys: int = 200_000, max_names: int = 200_000) -> None:
        self.cap = cap
        self.max_keys = max_keys
        self.max_names = max_names
        self.by_key: dict[str, set[str]] = {}  # "ip:<addr>" / "dom:<registered domain>" -> devices
        self.by_cohort: dict[tuple[str, str], set[str]] = {}  # (cohort, key) -> devices
        self.population: set[str] = set()
        self.cohort_population: dict[str, set[str]] = {}
        self.names: dict[str, str] = {}  # answer address -> registered domain
        self._last_table: pa.Table | None = None  # the batch learned from last (see observe_batch)

    # learning ---------------------------------------------------------------------------
    # What a batch teaches is first taken out as plain data (:meth:`observation`), then learnt
    # (:meth:`learn`): the scale-out worker sends the observations of its partitions to the other
    # workers of the fleet, which learn them as if they had seen the batch (fleet-wide prevalence
    # over sharded workers, docs/architecture.md).
    def observation(self, batch: EventBatch) -> dict[str, list[list[str]]] | None:
        """What a ``flow`` or ``dns`` batch teaches, as JSON-able data: the distinct answered
        (source, destination) pairs of the connections the sources opened, or the distinct
        (query, answers) pairs of DNS answers; None when it teaches nothing.

        The flows counted are the connections the source opened (not replies the flow builder
        flipped onto it: no packets from the originator, some from the responder) that were
        answered (packets or bytes back): unanswered probes of a scan say nothing about which
        services the fleet uses (and would fill the table with one-device keys)."""
        if len(batch) == 0:
            return None
        if batch.kind == "dns":
            if "answers" not in batch.table.column_names:
                return None
            query = str_col(batch, "query")
            answers = str_col(batch, "answers")
            has = (answers != "") & (query != "")
            if not has.any():
                return None
            return {"names": [list(p) for p in dict.fromkeys(zip(query[has].tolist(), answers[has].tolist(), strict=True))]}
        if batch.kind != "flow":
            return None
        rp = num_col(batch, "resp_pkts")
        answered = ((rp > 0) | (num_col(batch, "resp_bytes") > 0)) & ~(
            (num_col(batch, "orig_pkts") <= 0) & (rp > 0)
        )
        if not answered.any():
            return None
        src = str_col(batch, "id.orig_h")[answered]
        dst = str_col(batch, "id.resp_h")[answered]
        return {"pairs": [list(p) for p in dict.fromkeys(zip(src.tolist(), dst.tolist(), strict=True))]}

    def learn(self, obs: dict[str, list[list[str]]] | None, ctx: Context) -> None:
        """Learn an :meth:`observation` (this engine's or another worker's)."""
        if not obs:
            return
        if "names" in obs:
            self._learn_names(obs["names"])
        if "pairs" in obs and obs["pairs"]:
            pairs = obs["pairs"]
            self.observe_flows(
                np.array([p[0] for p in pairs], dtype=object), np.array([p[1] for p in pairs], dtype=object), ctx
            )

    def _learn_names(self, pairs: list[list[str]]) -> None:
        """Learn address -> registered domain from (query, comma-separated answers) pairs."""
        for q, ans in pairs:
            if not q:
                continue
            dom = split_name(q)[0]
            for a in ans.split(","):
                a = a.strip()
                if a and parse_address(a) is not None:
                    self.names.pop(a, None)
                    self.names[a] = dom
        while len(self.names) > self.max_names:
            self.names.pop(next(iter(self.names)))

    def observe_dns(self, batch: EventBatch) -> None:
        """Learn address -> registered domain from the answers of DNS records."""
        if batch.kind == "dns":
            self.learn(self.observation(batch), Context())

    def observe_batch(self, batch: EventBatch, ctx: Context) -> None:
        """Learn from one ``flow`` or ``dns`` batch; a batch already learned from is skipped.

        Several analytics may hand the same batch to one shared instance (see
        :func:`share_prevalence`): learning is idempotent, so only the first call per batch does
        the work."""
        table = batch.table
        if table is self._last_table or len(batch) == 0:
            return
        self._last_table = table
        self.learn(self.observation(batch), ctx)

    def observe_flows(self, src: np.ndarray, dst: np.ndarray, ctx: Context) -> None:
        """Count the (source, external destination) pairs of connections the sources opened.

        Callers pass answered connections only: unanswered probes of a scan say nothing about
        which services the fleet uses (and would fill the table with one-device keys).
        """
        if len(src) == 0:
            return
        pairs = pa.table({"s": pa.array(src, pa.string()), "d": pa.array(dst, pa.string())})
        pairs = pairs.group_by(["s", "d"], use_threads=False).aggregate([])
        s_all = pairs.column("s").to_numpy(zero_copy_only=False)
        d_all = pairs.column("d").to_numpy(zero_copy_only=False)
        # Only pairs to an external peer count; the test runs once per distinct destination.
        skip = address_mask(d_all, lambda d: not d or is_group(d) or is_local(ctx, d)) | (s_all == "")
        keep = ~skip
        s_list = s_all[keep].tolist()
        d_list = d_all[keep].tolist()
        if not s_list:
            return
        # Every structure is a set whose size is all that is ever asked, capped: adding the
        # sources grouped per key (rather than pair by pair) gives the same sizes, and keys are
        # still created in the order of their first pair (the order eviction follows).
        sources = list(dict.fromkeys(s_list))
        limit = 10 * self.max_keys
        if len(self.population) + len(sources) <= limit:
            self.population.update(sources)
        else:
            for s in sources:
                if len(self.population) < limit:
                    self.population.add(s)
        cohorts_of_src = {s: cohorts_of(ctx, s) for s in sources}
        for s in sources:
            for c in cohorts_of_src[s]:
                members = self.cohort_population.setdefault(c, set())
                if len(members) < 10 * self.cap:
                    members.add(s)
        per_dst: dict[str, list[str]] = {}
        for s, d in zip(s_list, d_list, strict=True):
            per_dst.setdefault(d, []).append(s)
        cap = self.cap
        by_key = self.by_key
        for d, srcs in per_dst.items():
            for key in self._keys(d):
                devices = by_key.get(key)
                if devices is None:
                    devices = by_key[key] = set()
                if len(devices) + len(srcs) <= cap:
                    devices.update(srcs)
                else:
                    for s in srcs:
                        if len(devices) >= cap:
                            break
                        devices.add(s)
        if any(cohorts_of_src.values()):
            # Pair by pair, so that cohort keys are created in the order of their first pair.
            by_cohort = self.by_cohort
            for s, d in zip(s_list, d_list, strict=True):
                cohorts = cohorts_of_src[s]
                if not cohorts:
                    continue
                for key in self._keys(d):
                    for c in cohorts:
                        devices = by_cohort.setdefault((c, key), set())
                        if len(devices) < cap:
                            devices.add(s)
        for table in (self.by_key, self.by_cohort):
            if len(table) > self.max_keys:
                # Oldest keys first; rare ones (one device) are the cheapest to forget.
                drop = [k for k, v in list(table.items())[: len(table) // 2] if len(v) <= 1]
                for k in drop or list(table)[: len(table) // 4]:
                    del table[k]

    def _keys(self, dst: str) -> tuple[str, ...]:
        dom = self.names.get(dst)
        return (f"ip:{dst}", f"dom:{dom}") if dom else (f"ip:{dst}",)

    # asking -----------------------------------------------------------------------------
    def devices(self, dst: str) -> int:
        """Distinct devices seen contacting ``dst`` (by address; saturates at ``cap``)."""
        return len(self.by_key.get(f"ip:{dst}", ()))

    def domain(self, dst: str) -> str | None:
        return self.names.get(dst)

    def cohort_share(self, src: str, dst: str, ctx: Context) -> tuple[int, int, str | None]:
        """Best (devices, cohort size, cohort) over the cohorts of ``src`` contacting ``dst`` or its domain."""
        best: tuple[int, int, str | None] = (0, 0, None)
        for c in cohorts_of(ctx, src):
            size = len(self.cohort_population.get(c, ()))
            for key in self._keys(dst):
                n = len(self.by_cohort.get((c, key), ()))
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
    ) -> str | None:
        """Why ``dst`` is a service of the fleet or of ``src``'s cohort, or None when it is rare.

        Prevalence only applies once ``min_population`` devices have been seen talking to the
        outside (a single-host capture says nothing about what is common).
        """
        population = len(self.population)
        if population < min_population:
            return None
        n = self.devices(dst)
        need = min(self.cap, max(min_devices, math.ceil(ratio * population)))
        if n >= need:
            return f"{n} of {population} devices of the fleet contact it"
        k, size, cohort = self.cohort_share(src, dst, ctx)
        if cohort and k >= cohort_min and k >= cohort_ratio * size:
            via = f" (domain {self.names[dst]})" if dst in self.names else ""
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
