"""Floods and DDoS: a victim receiving from many sources, and a device taking part in one.

Contract
    :class:`FloodDetector` consumes ``flow`` batches and counts, in tumbling windows of
    ``window`` seconds (event time):

    * inbound, per destination address (the *victim* is the entity): distinct sources,
      flows, packets, and the share of one-way flows (the victim never answered).  A
      ``ddos`` finding (T1498, T1499) is emitted when ``min_sources`` distinct sources send
      at least ``min_flows`` mostly one-way flows, or when the packets alone reach
      ``min_packets``.  When most of the traffic comes *from* one well-known service port
      (udp/53, udp/123, udp/500, tcp/80 SYN-ACKs…) the evidence names it a reflection /
      amplification attack;
    * outbound, per (source, destination) (the *attacking device* is the entity): at least
      ``min_out_flows`` mostly unanswered flows or ``min_out_packets`` packets to one
      destination in one window: DDoS participation (T1498.001 direct network flood).

    Rates use the flows' durations: a flow is credited to the window it starts in with the
    share of its packets that fits in one window at its average rate, and the evidence gives
    packets per second over the time the flows were actually sending.  Packets alone make a
    flood only when the flows are mostly one-way (unanswered): one long answered flow of
    many packets (a camera stream to its recorder, a backup) is a transfer, not a DDoS.
    When the victim is outside the site and every source is a local device, the entities are
    the local participants (``direction="outbound"``), not the outside target.

    A finding is emitted in the update that crosses a threshold; while the flood goes on,
    a window is reported again only when its rate doubles over the last report, and the
    episode resets after a quiet window.

Blind spots
    A long flow that carries a flood is credited (at its average rate) to the window it
    started in only, so a flood carried by a few flows longer than ``window`` is seen once per
    flow; a single-source flood whose victim answers every packet is taken for a
    transfer; low-and-slow application-layer DoS (Slowloris)
    and attacks below ``min_packets`` per window are missed; a flash crowd of real clients
    on a public service looks like a distributed flood unless its flows are answered
    (answered flows lower the one-way share and keep the rule quiet).

Reference
    Slips' DoS detection (flows per window to one destination), Kitsune's per-destination
    damped statistics (Mirsky et al., NDSS 2018), and the StopDDoS capture collection's
    taxonomy (amplification vs direct floods).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    MAX_RECORD_IDS,
    group_mask,
    is_local,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)

__all__ = ["ANALYTICS", "FloodDetector"]

# Source ports that answer small requests with large replies (amplification vectors).
REFLECTION_PORTS = {
    ("udp", 19): "chargen",
    ("udp", 53): "DNS",
    ("udp", 123): "NTP",
    ("udp", 161): "SNMP",
    ("udp", 389): "CLDAP",
    ("udp", 500): "ISAKMP",
    ("udp", 4500): "ISAKMP NAT-T",
    ("udp", 1900): "SSDP",
    ("udp", 3702): "WS-Discovery",
    ("udp", 11211): "memcached",
    ("udp", 5683): "CoAP",
    ("tcp", 80): "TCP SYN-ACK",
    ("tcp", 443): "TCP SYN-ACK",
    ("tcp", 22): "TCP SYN-ACK",
}


@dataclass
class _Window:
    win: int = -1
    sources: set = field(default_factory=set)
    flows: int = 0
    packets: int = 0
    bytes: int = 0
    oneway: int = 0
    sports: Counter = field(default_factory=Counter)
    first: float = np.inf
    last: float = -np.inf
    end: float = -np.inf  # latest flow end (start + duration)
    uids: list = field(default_factory=list)
    mac: str | None = None

    def reset(self, win: int) -> None:
        self.win = win
        self.sources = set()
        self.flows = self.packets = self.bytes = self.oneway = 0
        self.sports = Counter()
        self.first, self.last, self.end = np.inf, -np.inf, -np.inf
        self.uids = []

    def span(self, window: float) -> float:
        """Seconds the window's packets were sent over: flows' durations count, capped at the window."""
        return float(min(window, max(max(self.end, self.last) - self.first, 1e-3)))


@dataclass
class _Episode:
    window: _Window = field(default_factory=_Window)
    reported_rate: float = 0.0
    quiet_since: int = -1
    # >= 0: the window holds only its cheap counts (flows, packets, one-way) and its rows are
    # kept in FloodDetector._cold from this batch on (an exact rebuild replays them).
    lazy_from: int = -1


class FloodDetector:
    """Inbound DDoS (victim) and outbound flood participation (attacker); see module docstring."""

    name = "flood"
    kinds = ("flow",)

    def __init__(
        self,
        window: float = 10.0,
        min_sources: int = 50,
        min_flows: int = 100,
        min_oneway: float = 0.6,
        min_packets: int = 5_000,
        min_out_flows: int = 200,
        min_out_packets: int = 5_000,
        max_sources: int = 20_000,
        max_keys: int = 100_000,
        max_participants: int = 256,
    ) -> None:
        self.window = window
        self.min_sources = min_sources
        self.min_flows = min_flows
        self.min_oneway = min_oneway
        self.min_packets = min_packets
        self.min_out_flows = min_out_flows
        self.min_out_packets = min_out_packets
        self.max_sources = max_sources
        self.max_keys = max_keys
        self.max_participants = max_participants
        self._in: dict[str, _Episode] = {}
        self._out: dict[tuple, _Episode] = {}
        # Rows of lazy inbound windows, per batch sequence number.
        self._seq = 0
        self._cold: dict[int, pa.Table] = {}
        self.max_cold_batches = 256

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        b = batch
        ts = b.np("ts")
        op = num_col(b, "orig_pkts").astype(np.int64)
        rp = num_col(b, "resp_pkts").astype(np.int64)
        # The flow builder (like Zeek) makes the victim the originator of unsolicited
        # replies (SYN-ACKs, DNS answers: history "^..."); the sender is who sent packets.
        flipped = (op <= 0) & (rp > 0)
        src, dst = str_col(b, "id.orig_h"), str_col(b, "id.resp_h")
        sport = num_col(b, "id.orig_p").astype(np.int64)
        dport = num_col(b, "id.resp_p").astype(np.int64)
        oib = num_col(b, "orig_ip_bytes").astype(np.int64)
        rib = num_col(b, "resp_ip_bytes").astype(np.int64)
        duration = np.nan_to_num(num_col(b, "duration", fill=0.0))
        share = np.minimum(1.0, self.window / np.maximum(duration, 1e-9))
        sender = np.where(flipped, dst, src)
        receiver = np.where(flipped, src, dst)
        keep2 = ~group_mask(receiver) & (receiver != "")
        table = pa.table(
            {
                # Typed string arrays: inferring the type of an object array costs a failed
                # optional import (dateutil) per column per call.
                "src": pa.array(sender, pa.string()),
                "dst": pa.array(receiver, pa.string()),
                "proto": pa.array(str_col(b, "proto"), pa.string()),
                "sport": np.where(flipped, dport, sport),
                "win": np.floor(ts / self.window).astype(np.int64),
                "ts": ts,
                "end": ts + duration,
                # A flow record stands for at least one packet even when counts are missing.
                # A long flow is credited to the window it starts in: count only the share
                # of its packets that fits in one window at its average rate.
                "pkts": np.maximum(np.where(flipped, rp, op) * share, 1).astype(np.int64),
                "bytes": (np.where(flipped, rib, oib) * share).astype(np.int64),
                "dport": np.where(flipped, sport, dport),
                "oneway": (flipped | (rp <= 0)).astype(np.int64),
                "uid": pa.array(str_col(b, "uid"), pa.string()),
                "mac": pa.array(
                    np.where(flipped, str_col(b, "resp_l2_addr"), str_col(b, "orig_l2_addr")), pa.string()
                ),
            }
        ).filter(pa.array(keep2))
        findings: list[Finding] = []
        # Outbound first: a device already named as a flooder of a target is not named again
        # as one of the local participants of the same flood.
        findings += self._outbound(table, ctx)
        findings += self._inbound(table, ctx)
        return findings

    # inbound: the victim --------------------------------------------------------------
    def _inbound(self, table: pa.Table, ctx: Context) -> list[Finding]:
        table, resets = self._inbound_rows(table)
        if table.num_rows == 0:
            return []
        seq = self._seq
        self._seq += 1
        # Cheap counts per (destination, window) group, with numpy.
        enc = pc.dictionary_encode(table.column("dst").combine_chunks())
        dcode = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        wcol = table.column("win").to_numpy()
        wmin = int(wcol.min())
        span = int(wcol.max()) - wmin + 1
        keys, inv = np.unique(dcode * span + (wcol - wmin), return_inverse=True)
        flows = np.bincount(inv, minlength=len(keys))
        packets = np.zeros(len(keys), dtype=np.int64)
        np.add.at(packets, inv, table.column("pkts").to_numpy())
        oneway = np.zeros(len(keys), dtype=np.int64)
        np.add.at(oneway, inv, table.column("oneway").to_numpy())
        names = enc.dictionary.to_pylist()
        gd = [names[k] for k in (keys // span).tolist()]
        gw = (keys % span + wmin).tolist()
        flows_l, packets_l, oneway_l = flows.tolist(), packets.tolist(), oneway.tolist()
        order = sorted(range(len(keys)), key=lambda i: (gw[i], gd[i]))
        # A group is cold when its window holds only cheap counts (lazy) or is new, and the
        # counts after it rule out an inbound hit: no finding can come from it and ``_close``
        # decides from the cheap counts alone.  Its rows are kept for an exact rebuild.
        hot = np.zeros(len(keys), dtype=bool)
        seen: set[str] = set()
        for i in order:
            d, w = gd[i], gw[i]
            ep = self._in.get(d)
            f, pk, ow = flows_l[i], packets_l[i], oneway_l[i]
            if d not in seen and ep is not None and ep.window.win == w:
                if ep.lazy_from < 0:
                    hot[i] = True
                    seen.add(d)
                    continue
                f, pk, ow = f + ep.window.flows, pk + ep.window.packets, ow + ep.window.oneway
            seen.add(d)
            hot[i] = ow >= self.min_oneway * f and (f >= self.min_flows or pk >= self.min_packets)
        hot_rows = hot[inv]
        if not hot_rows.all():
            self._cold[seq] = table.filter(pa.array(~hot_rows))
        full = self._aggregate(table.filter(pa.array(hot_rows))) if hot_rows.any() else {}
        out = []
        for i in order:
            d, w = gd[i], gw[i]
            ep = self._in.get(d)
            if ep is None:
                ep = self._in[d] = _Episode()
            if (d, w) in resets:
                # Windows skipped before this one stayed under every threshold: each ended
                # the episode when the next window of the destination opened.
                ep.reported_rate = 0.0
            win = ep.window
            if not hot[i]:
                # (A fresh episode's window -1 is new too: it has no kept rows.)
                if win.win != w or ep.lazy_from < 0:
                    self._close(ep, win)
                    win.reset(w)
                    ep.lazy_from = seq
                win.flows += flows_l[i]
                win.packets += packets_l[i]
                win.oneway += oneway_l[i]
                continue
            if win.win != w:
                self._close(ep, win)
                win.reset(w)
                ep.lazy_from = -1
            elif ep.lazy_from >= 0:
                self._materialize({d: ep})
            self._accumulate(win, *full[(d, w)])
            out += self._check_inbound(d, ep, ctx)
        self._trim_cold()
        if len(self._in) > self.max_keys:
            self._evict(self._in)
        return out

    def _aggregate(self, table: pa.Table) -> dict[tuple, tuple]:
        """Full per-(destination, window) aggregates of ``table``: the arguments of ``_accumulate``."""
        g = table.group_by(["dst", "win"], use_threads=False).aggregate(
            [
                ("src", "distinct"),
                ("pkts", "sum"),
                ("bytes", "sum"),
                ("oneway", "sum"),
                ("ts", "min"),
                ("ts", "max"),
                ("end", "max"),
                ("uid", "list"),
                ("ts", "count"),
            ]
        )
        sp = table.group_by(["dst", "win", "proto", "sport"], use_threads=False).aggregate([("pkts", "sum")])
        # Plain dicts (a Counter per group costs more than the rest of the row): Counter.update
        # takes them alike.
        sport_counts: dict[tuple, dict] = {}
        for d, w, p, s, n in zip(*(sp.column(c).to_pylist() for c in sp.column_names), strict=True):
            counts = sport_counts.get((d, w))
            if counts is None:
                counts = sport_counts[(d, w)] = {}
            counts[(p, s)] = counts.get((p, s), 0) + n
        rows = zip(*(g.column(c).to_pylist() for c in g.column_names), strict=True)
        return {
            (d, w): (srcs, pk, by, ow, t0, t1, t2, uids, n, sport_counts.get((d, w)))
            for d, w, srcs, pk, by, ow, t0, t1, t2, uids, n in rows
        }

    def _accumulate(self, win: _Window, srcs, pk, by, ow, t0, t1, t2, uids, n, counts) -> None:
        if len(win.sources) < self.max_sources:
            win.sources.update(srcs[: self.max_sources - len(win.sources)])
        win.flows += n
        win.packets += pk
        win.bytes += by
        win.oneway += ow
        win.first, win.last, win.end = min(win.first, t0), max(win.last, t1), max(win.end, t2)
        if counts:
            # Counter.update of a mapping, without its per-call overhead.
            sports = win.sports
            if sports:
                for k, c in counts.items():
                    sports[k] = sports.get(k, 0) + c
            else:
                dict.update(sports, counts)
        if len(win.sports) > 256:
            win.sports = Counter(dict(win.sports.most_common(64)))
        room = MAX_RECORD_IDS - len(win.uids)
        if room > 0:
            win.uids.extend(u for u in uids[:room] if u)

    def _materialize(self, eps: dict[str, _Episode]) -> None:
        """Rebuild lazy windows exactly: replay their kept rows batch by batch, as they came."""
        first = min(ep.lazy_from for ep in eps.values())
        for ep in eps.values():
            ep.window.reset(ep.window.win)
        wanted = pa.array(list(eps), pa.string())
        for s in sorted(k for k in self._cold if k >= first):
            t = self._cold[s]
            t = t.filter(pc.is_in(t.column("dst"), value_set=wanted))
            if t.num_rows == 0:
                continue
            for (d, w), agg in self._aggregate(t).items():
                ep = eps[d]
                if ep.window.win == w and s >= ep.lazy_from:
                    self._accumulate(ep.window, *agg)
        for ep in eps.values():
            ep.lazy_from = -1

    def _trim_cold(self) -> None:
        """Drop kept rows no lazy window needs; past a bound, rebuild the oldest lazy windows."""
        if len(self._cold) < self.max_cold_batches:
            return
        lazy = {d: ep for d, ep in self._in.items() if ep.lazy_from >= 0}
        cut = self._seq - self.max_cold_batches // 2
        old = {d: ep for d, ep in lazy.items() if ep.lazy_from < cut}
        if old:
            self._materialize(old)
        keep_from = min((ep.lazy_from for d, ep in lazy.items() if d not in old), default=self._seq)
        for s in [s for s in self._cold if s < keep_from]:
            del self._cold[s]

    def _inbound_rows(self, table: pa.Table) -> tuple[pa.Table, set[tuple[str, int]]]:
        """The rows of the (destination, window) groups whose replay can change anything.

        Per destination, the first group (it may continue a window of the previous batch)
        and the last one (its window stays open for the next batch) are replayed, and so is
        every group that crosses a threshold.  Any other group is a fresh window that stays
        under every threshold; its only effect is to end the episode (``_close``) when the
        next window of its destination opens, so it is skipped and that next replayed group
        is returned in ``resets`` for the loop to reset ``reported_rate`` first.  The counts
        that decide this are cheap (no per-group lists); the full aggregation runs on the
        rows kept.
        """
        n = table.num_rows
        if n == 0:
            return table, set()
        enc = pc.dictionary_encode(table.column("dst").combine_chunks())
        dcode = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        win = table.column("win").to_numpy()
        wmin = int(win.min())
        span = int(win.max()) - wmin + 1
        rowkey = dcode * span + (win - wmin)
        keys, inv = np.unique(rowkey, return_inverse=True)
        if len(keys) <= 2:
            return table, set()
        src_enc = pc.dictionary_encode(table.column("src").combine_chunks())
        scode = src_enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        flows = np.bincount(inv, minlength=len(keys))
        packets = np.zeros(len(keys), dtype=np.int64)
        np.add.at(packets, inv, table.column("pkts").to_numpy())
        oneway = np.zeros(len(keys), dtype=np.int64)
        np.add.at(oneway, inv, table.column("oneway").to_numpy())
        pairs = np.unique(inv * (int(scode.max()) + 1) + scode)
        nsrc = np.minimum(np.bincount(pairs // (int(scode.max()) + 1), minlength=len(keys)), self.max_sources)
        # Vectorised _inbound_hit and _outbound_hit of a fresh window (see _close).
        mostly_oneway = oneway >= self.min_oneway * flows
        hit_in = mostly_oneway & (
            ((nsrc >= self.min_sources) & (flows >= self.min_flows)) | (packets >= self.min_packets)
        )
        hit_out = ((flows >= self.min_out_flows) | (packets >= self.min_out_packets)) & np.where(
            packets < self.min_out_packets, oneway >= 0.8 * flows, mostly_oneway
        )
        gd, gw = keys // span, keys % span + wmin  # keys are sorted by (destination, window)
        first = np.ones(len(keys), dtype=bool)
        first[1:] = gd[1:] != gd[:-1]
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = gd[1:] != gd[:-1]
        keep = first | last | hit_in | hit_out | (gw < 0)
        if keep.all():
            return table, set()
        kept = np.flatnonzero(keep)
        # A kept group after a skipped one of the same destination (the first group of a
        # destination is always kept, so the previous kept group has the same destination).
        gap = np.zeros(len(kept), dtype=bool)
        gap[1:] = (np.diff(kept) > 1) & ~first[kept[1:]]
        names = enc.dictionary.to_pylist()
        resets = {(names[gd[k]], int(gw[k])) for k in kept[gap]}
        return table.filter(pa.array(keep[inv])), resets

    def _close(self, ep: _Episode, win: _Window) -> None:
        # A window that stayed under every threshold ends the episode.
        if win.win >= 0 and not self._inbound_hit(win) and not self._outbound_hit(win):
            ep.reported_rate = 0.0

    def _inbound_hit(self, win: _Window) -> bool:
        oneway = win.oneway >= self.min_oneway * win.flows
        distributed = len(win.sources) >= self.min_sources and win.flows >= self.min_flows and oneway
        # Packets alone make a flood only when the victim does not answer them: a camera
        # stream or a backup is one long, answered flow of many packets, not an attack.
        return distributed or (win.packets >= self.min_packets and oneway)

    def _check_inbound(self, dst: str, ep: _Episode, ctx: Context) -> list[Finding]:
        win = ep.window
        if not self._inbound_hit(win):
            return []
        span = win.span(self.window)
        rate = win.packets / max(span, 1.0)
        if ep.reported_rate and rate < 2 * ep.reported_rate:
            return []
        ep.reported_rate = rate
        if not is_local(ctx, dst) and all(is_local(ctx, s) for s in win.sources):
            # An outside victim of our own devices: the story is each local device's
            # participation (the entity must be the local device, not the outside target).
            return self._participants(dst, win, span, ctx)
        nsrc = len(win.sources)
        share_oneway = win.oneway / max(win.flows, 1)
        (top_proto, top_port), top_n = win.sports.most_common(1)[0] if win.sports else (("", 0), 0)
        top_share = top_n / max(win.packets, 1)
        vector = REFLECTION_PORTS.get((top_proto, top_port))
        evidence = [
            f"{nsrc}{'+' if nsrc >= self.max_sources else ''} distinct sources sent {win.flows} flows / "
            f"{win.packets} packets ({win.bytes / 1e6:.2f} MB) to {dst} within {span:.1f} s "
            f"({win.packets / span:.0f} packets/s over the flows' durations) (thresholds {self.min_sources} sources and {self.min_flows} flows, or {self.min_packets} "
            f"packets, per {self.window:.0f} s); {share_oneway:.0%} of flows one-way"
        ]
        kind = "distributed flood"
        if vector and top_share >= 0.5:
            kind = f"{vector} reflection/amplification"
            evidence.append(
                f"{top_share:.0%} of packets come from source port {top_proto}/{top_port} ({vector}): "
                "replies the victim never asked for"
            )
        elif nsrc < self.min_sources:
            kind = "volumetric flood"
        score = max(
            _scale(nsrc, self.min_sources),
            _scale(win.packets, self.min_packets),
            _scale(win.flows, self.min_flows) if nsrc >= self.min_sources else 0.0,
        )
        return [
            make_finding(
                ctx,
                dst,
                "ddos",
                self.name,
                score,
                win.first,
                win.last,
                evidence,
                ["T1498", "T1498.002"] if vector and top_share >= 0.5 else ["T1498", "T1499"],
                list(win.uids),
                direction="inbound",
                attack=kind,
                sources=nsrc,
                packets=win.packets,
            )
        ]

    def _participants(self, dst: str, win: _Window, span: float, ctx: Context) -> list[Finding]:
        nsrc = len(win.sources)
        score = max(_scale(nsrc, self.min_sources), _scale(win.packets, self.min_packets))
        evidence = [
            f"one of {nsrc} local devices that sent {win.flows} flows / {win.packets} packets "
            f"({win.bytes / 1e6:.2f} MB) to outside host {dst} within {span:.1f} s, "
            f"{win.oneway / max(win.flows, 1):.0%} unanswered: distributed flood participation"
        ]
        return [
            make_finding(
                ctx,
                s,
                "ddos",
                self.name,
                score,
                win.first,
                win.last,
                evidence,
                ["T1498", "T1498.001"],
                list(win.uids),
                direction="outbound",
                target=dst,
                packets=win.packets,
                sources=nsrc,
            )
            for s in sorted(win.sources)[: self.max_participants]
            if not ((ep := self._out.get((s, dst))) and ep.window.win == win.win and ep.reported_rate)
        ]

    # outbound: the participant --------------------------------------------------------
    def _outbound_hit(self, win: _Window) -> bool:
        # Packets alone count only when mostly unanswered (a long upload is answered).
        return (win.flows >= self.min_out_flows or win.packets >= self.min_out_packets) and (
            win.oneway >= 0.8 * win.flows
            if win.packets < self.min_out_packets
            else win.oneway >= self.min_oneway * win.flows
        )

    def _outbound(self, table: pa.Table, ctx: Context) -> list[Finding]:
        table = self._outbound_rows(table)
        if table.num_rows == 0:
            return []
        g = table.group_by(["src", "dst", "win"], use_threads=False).aggregate(
            [
                ("pkts", "sum"),
                ("bytes", "sum"),
                ("oneway", "sum"),
                ("ts", "count"),
                ("ts", "min"),
                ("ts", "max"),
                ("end", "max"),
                ("uid", "list"),
                ("mac", "max"),
                ("dport", "count_distinct"),
            ]
        )
        out = []
        rows = zip(*(g.column(c).to_pylist() for c in g.column_names), strict=True)
        for s, d, w, pk, by, ow, n, t0, t1, t2, uids, mac, nports in sorted(rows, key=lambda r: (r[2], r[0])):
            key = (s, d)
            ep = self._out.get(key)
            if ep is None:
                # Most pairs never come near a flood: do not keep state for small ones.
                if n < self.min_out_flows / 20 and pk < self.min_out_packets / 20:
                    continue
                ep = self._out[key] = _Episode()
            win = ep.window
            if win.win != w:
                self._close(ep, win)
                win.reset(w)
            win.flows += n
            win.packets += pk
            win.bytes += by
            win.oneway += ow
            win.first, win.last, win.end = min(win.first, t0), max(win.last, t1), max(win.end, t2)
            win.mac = mac or win.mac
            win.sources.add(nports)  # per-pair windows reuse ``sources`` for dst-port counts
            room = MAX_RECORD_IDS - len(win.uids)
            if room > 0:
                win.uids.extend(u for u in uids[:room] if u)
            # Unanswered flows spread over many ports are a scan (the scan analytic's job);
            # a flood hammers a few ports, or is big enough in packets alone.
            spread = max(win.sources, default=0) > max(10, 0.1 * win.flows)
            if not self._outbound_hit(win) or (spread and win.packets < self.min_out_packets):
                continue
            span = win.span(self.window)
            rate = win.packets / max(span, 1.0)
            if ep.reported_rate and rate < 2 * ep.reported_rate:
                continue
            ep.reported_rate = rate
            evidence = [
                f"sent {win.flows} flows / {win.packets} packets ({win.bytes / 1e6:.2f} MB) to {d} within "
                f"{span:.1f} s ({win.packets / span:.0f} packets/s), {win.oneway / max(win.flows, 1):.0%} unanswered (thresholds "
                f"{self.min_out_flows} unanswered flows or {self.min_out_packets} packets per "
                f"{self.window:.0f} s): flood participation"
            ]
            score = max(_scale(win.flows, self.min_out_flows), _scale(win.packets, self.min_out_packets))
            out.append(
                make_finding(
                    ctx,
                    s,
                    "ddos",
                    self.name,
                    score,
                    win.first,
                    win.last,
                    evidence,
                    ["T1498", "T1498.001"],
                    list(win.uids),
                    mac=win.mac,
                    direction="outbound",
                    target=d,
                    packets=win.packets,
                )
            )
        if len(self._out) > self.max_keys:
            self._evict(self._out)
        return out

    def _outbound_rows(self, table: pa.Table) -> pa.Table:
        """The rows of the sources that can reach the per-pair loop.

        A (source, destination) pair gets state only from a group of at least a twentieth
        of a threshold; pairs without state whose groups are all smaller are skipped by the
        loop.  Keeping every row of a source that already has state or has such a group in
        this batch is a superset of what the loop uses, found with cheap counts.
        """
        if table.num_rows == 0:
            return table
        g = table.group_by(["src", "dst", "win"], use_threads=False).aggregate([("pkts", "sum"), ("ts", "count")])
        big = (g.column("ts_count").to_numpy() >= self.min_out_flows / 20) | (
            g.column("pkts_sum").to_numpy() >= self.min_out_packets / 20
        )
        wanted = {k[0] for k in self._out}
        if big.any():
            wanted.update(g.column("src").filter(pa.array(big)).to_pylist())
        if not wanted:
            return table.slice(0, 0)
        return table.filter(pc.is_in(table.column("src"), value_set=pa.array(list(wanted), pa.string())))

    def _evict(self, table: dict) -> None:
        latest = max(ep.window.win for ep in table.values())
        for k in [k for k, ep in table.items() if ep.window.win < latest - 1]:
            del table[k]

    def flush(self, ctx: Context) -> list[Finding]:
        return []


def _scale(value: float, threshold: float) -> float:
    if value < threshold:
        return 0.0
    return float(min(1.0, 0.65 + 0.35 * np.log10(value / threshold)))


ANALYTICS = [FloodDetector]
