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

    Flows are judged one by one in time order, each window's counts running as its flows come
    (the rows of the window still open at the end of a batch are kept for the next one): a
    finding is emitted at the flow that crosses a threshold; while the flood goes on, it is
    reported again only when its rate doubles over the last report (in this window or the
    previous one), and the episode resets after a window that stayed quiet.

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

from dataclasses import dataclass

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


class FloodDetector:
    """Inbound DDoS (victim) and outbound flood participation (attacker); see module docstring.

    Judged flow by flow in time order: each window's running counts are rebuilt from its rows
    (the rows of the window still open at the end of a batch are kept for the next one), so a
    threshold is crossed at the same flow, with the same counts, however the flows were batched.
    """

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
        # Episodes with a report still standing (see _Episode): victim -> episode, and
        # "source\x1fdestination" -> episode.  A key absent has none.
        self._in: dict[str, _Episode] = {}
        self._out: dict[str, _Episode] = {}
        self._carry: pa.Table | None = None  # rows of the window still open (already judged)

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
                "old": np.zeros(len(ts), dtype=bool),
            }
        ).filter(pa.array(keep2))
        if self._carry is not None and self._carry.num_rows:
            table = pa.concat_tables([self._carry, table])
        table = table.combine_chunks()
        open_win = int(np.floor(float(ts[-1]) / self.window))
        if table.num_rows == 0:
            self._carry = None
            return []
        rows = _Rows(table)
        findings: list[Finding] = []
        # Outbound first: a device already named as a flooder of a target is not named again
        # as one of the local participants of the same flood.
        out_findings, active = self._outbound(rows, open_win, ctx)
        findings += out_findings
        findings += self._inbound(rows, open_win, active, ctx)
        still = rows.win == open_win
        self._carry = table.filter(pa.array(still)).set_column(
            table.schema.get_field_index("old"), "old", pa.array(np.ones(int(still.sum()), dtype=bool))
        )
        for book in (self._in, self._out):
            if len(book) > self.max_keys:  # a safety valve far above any real load
                latest = max(ep.window for ep in book.values())
                for k in [k for k, ep in book.items() if ep.window < latest - 1]:
                    del book[k]
        return findings

    # the windows of each key, flow by flow --------------------------------------------------
    def _groups(self, rows: _Rows, key: np.ndarray, book: dict, flows_needed: int, packets_needed: int):
        """(key name, window, row indices in time order) of every (key, window) that can change
        anything: a window whose final counts could cross a threshold, or one of a key whose
        episode has a report standing.  Sorted by key, then window."""
        enc = pc.dictionary_encode(pa.array(key, pa.string()))
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = enc.dictionary.to_pylist()
        wmin = int(rows.win.min())
        span = int(rows.win.max()) - wmin + 1
        gkey = code * span + (rows.win - wmin)
        uniq, inv = np.unique(gkey, return_inverse=True)
        flows = np.bincount(inv, minlength=len(uniq))
        packets = np.bincount(inv, weights=rows.pkts, minlength=len(uniq))
        want = (flows >= flows_needed) | (packets >= packets_needed)
        if book:
            booked = np.array([names[c] in book for c in (uniq // span).tolist()], dtype=bool)
            want |= booked
        if not want.any():
            return []
        sel = np.flatnonzero(want[inv])
        # by group, then time (then position: a row behind the kept ones, out of time order, still
        # counts in time order)
        order = sel[np.lexsort((sel, rows.ts[sel], inv[sel]))]
        g = inv[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], len(g)]
        out = []
        for a, e in zip(starts.tolist(), ends.tolist(), strict=True):
            u = int(uniq[g[a]])
            out.append((names[u // span], u % span + wmin, order[a:e]))
        return out

    def _chain(self, rate: np.ndarray, hit: np.ndarray, entering: float) -> tuple[list[int], float]:
        """Rows where a report goes out: a hit when nothing is reported yet in the episode, or
        one whose rate doubles the last report.  Returns (report rows, rate after the last row)."""
        r = entering
        emit: list[int] = []
        j = 0
        n = len(rate)
        while j < n:
            cand = hit[j:] & (rate[j:] >= 2 * r) if r else hit[j:]
            nz = np.flatnonzero(cand)
            if not len(nz):
                break
            j += int(nz[0])
            r = float(rate[j])
            emit.append(j)
            j += 1
        return emit, r

    def _settle(
        self, book: dict, name: str, win: int, entering: float, after: float, quiet: bool, open_win: int
    ) -> None:
        """Remember what the key's next window enters with (see ``_in``)."""
        if win == open_win:
            if entering:
                book[name] = _Episode(win, entering, True)
            else:
                book.pop(name, None)
        elif after and not quiet:
            book[name] = _Episode(win, after, False)
        else:
            book.pop(name, None)

    # inbound: the victim --------------------------------------------------------------
    def _inbound(self, rows: _Rows, open_win: int, active: dict, ctx: Context) -> list[Finding]:
        out: list[Finding] = []
        for name, w, idx in self._groups(rows, rows.dst, self._in, self.min_flows, self.min_packets):
            st = self._in.get(name)
            entering = st.entering(w) if st is not None else 0.0
            c = rows.running(idx, self.window, self.max_sources)
            hit = (c.oneway >= self.min_oneway * c.flows) & (
                ((c.nsrc >= self.min_sources) & (c.flows >= self.min_flows)) | (c.packets >= self.min_packets)
            )
            reports, after = self._chain(c.rate, hit, entering)
            for j in reports:
                if not rows.old[idx[j]]:  # rows kept from an earlier batch were judged then
                    out += self._inbound_finding(name, rows, idx, j, c, active, ctx)
            quiet = not hit[-1] and not self._outbound_hit(
                int(c.flows[-1]), int(c.packets[-1]), int(c.oneway[-1])
            )
            # The window's rows are all in this batch's table when it is open; the next window of
            # the key enters with the standing report unless this one ended quiet.
            self._settle(self._in, name, w, entering, after, quiet, open_win)
        return out

    def _inbound_finding(
        self, dst: str, rows: _Rows, idx: np.ndarray, j: int, c: _Running, active: dict, ctx: Context
    ) -> list[Finding]:
        upto = idx[: j + 1]
        flows, packets, oneway = int(c.flows[j]), int(c.packets[j]), int(c.oneway[j])
        nbytes, span, first, last = int(c.bytes[j]), float(c.span[j]), float(c.first), float(rows.ts[idx[j]])
        uids = [u for u in rows.uid[upto].tolist() if u][:MAX_RECORD_IDS]
        sources = rows.src[upto]
        nsrc = int(c.nsrc[j])
        if not is_local(ctx, dst) and all(is_local(ctx, s) for s in set(sources.tolist())):
            # An outside victim of our own devices: the story is each local device's
            # participation (the entity must be the local device, not the outside target).
            w = int(rows.win[idx[j]])
            score = max(_scale(nsrc, self.min_sources), _scale(packets, self.min_packets))
            evidence = [
                f"one of {nsrc} local devices that sent {flows} flows / {packets} packets "
                f"({nbytes / 1e6:.2f} MB) to outside host {dst} within {span:.1f} s, "
                f"{oneway / max(flows, 1):.0%} unanswered: distributed flood participation"
            ]
            row = int(idx[j])
            return [
                make_finding(
                    ctx,
                    s,
                    "ddos",
                    self.name,
                    score,
                    first,
                    last,
                    evidence,
                    ["T1498", "T1498.001"],
                    uids,
                    direction="outbound",
                    target=dst,
                    packets=packets,
                    sources=nsrc,
                )  # fmt: skip
                for s in sorted(set(sources.tolist()))[: self.max_participants]
                if not _reported_by(active.get((s, dst, w)), row)
            ]
        share_oneway = oneway / max(flows, 1)
        sports: dict[tuple, int] = {}
        for p, sp, pk in zip(
            rows.proto[upto].tolist(), rows.sport[upto].tolist(), rows.pkts[upto].tolist(), strict=True
        ):
            sports[(p, sp)] = sports.get((p, sp), 0) + pk
        (top_proto, top_port), top_n = max(sports.items(), key=lambda kv: kv[1]) if sports else (("", 0), 0)
        top_share = top_n / max(packets, 1)
        vector = REFLECTION_PORTS.get((top_proto, top_port))
        evidence = [
            f"{nsrc}{'+' if nsrc >= self.max_sources else ''} distinct sources sent {flows} flows / "
            f"{packets} packets ({nbytes / 1e6:.2f} MB) to {dst} within {span:.1f} s "
            f"({packets / span:.0f} packets/s over the flows' durations) (thresholds {self.min_sources} sources and {self.min_flows} flows, or {self.min_packets} "
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
            _scale(packets, self.min_packets),
            _scale(flows, self.min_flows) if nsrc >= self.min_sources else 0.0,
        )
        return [
            make_finding(
                ctx,
                dst,
                "ddos",
                self.name,
                score,
                first,
                last,
                evidence,
                ["T1498", "T1498.002"] if vector and top_share >= 0.5 else ["T1498", "T1499"],
                uids,
                direction="inbound",
                attack=kind,
                sources=nsrc,
                packets=packets,
            )
        ]

    # outbound: the participant --------------------------------------------------------
    def _outbound_hit(self, flows: int, packets: int, oneway: int) -> bool:
        # Packets alone count only when mostly unanswered (a long upload is answered).
        return (flows >= self.min_out_flows or packets >= self.min_out_packets) and (
            oneway >= 0.8 * flows if packets < self.min_out_packets else oneway >= self.min_oneway * flows
        )

    def _outbound(self, rows: _Rows, open_win: int, ctx: Context) -> tuple[list[Finding], dict]:
        """Outbound findings, and per (source, destination, window) when its episode had a report
        standing: (first row of the window, standing on entry, first report row)."""
        out: list[Finding] = []
        active: dict[tuple, tuple] = {}
        pair = np.char.add(np.char.add(rows.src.astype(str), "\x1f"), rows.dst.astype(str))
        for name, w, idx in self._groups(rows, pair, self._out, self.min_out_flows, self.min_out_packets):
            s, d = name.split("\x1f", 1)
            st = self._out.get(name)
            entering = st.entering(w) if st is not None else 0.0
            c = rows.running(idx, self.window, 0, ports=True)
            reach = (c.flows >= self.min_out_flows) | (c.packets >= self.min_out_packets)
            hit = reach & np.where(
                c.packets < self.min_out_packets,
                c.oneway >= 0.8 * c.flows,
                c.oneway >= self.min_oneway * c.flows,
            )
            # Unanswered flows spread over many ports are a scan (the scan analytic's job);
            # a flood hammers a few ports, or is big enough in packets alone.
            spread = c.nports > np.maximum(10, 0.1 * c.flows)
            hit &= ~(spread & (c.packets < self.min_out_packets))
            reports, after = self._chain(c.rate, hit, entering)
            active[(s, d, w)] = (int(idx[0]), bool(entering), int(idx[reports[0]]) if reports else None)
            for j in reports:
                if rows.old[idx[j]]:  # rows kept from an earlier batch were judged then
                    continue
                flows, packets, oneway = int(c.flows[j]), int(c.packets[j]), int(c.oneway[j])
                span = float(c.span[j])
                upto = idx[: j + 1]
                macs = [m for m in rows.mac[upto].tolist() if m]
                evidence = [
                    f"sent {flows} flows / {packets} packets ({int(c.bytes[j]) / 1e6:.2f} MB) to {d} within "
                    f"{span:.1f} s ({packets / span:.0f} packets/s), {oneway / max(flows, 1):.0%} unanswered (thresholds "
                    f"{self.min_out_flows} unanswered flows or {self.min_out_packets} packets per "
                    f"{self.window:.0f} s): flood participation"
                ]
                score = max(_scale(flows, self.min_out_flows), _scale(packets, self.min_out_packets))
                out.append(
                    make_finding(
                        ctx,
                        s,
                        "ddos",
                        self.name,
                        score,
                        float(c.first),
                        float(rows.ts[idx[j]]),
                        evidence,
                        ["T1498", "T1498.001"],
                        [u for u in rows.uid[upto].tolist() if u][:MAX_RECORD_IDS],
                        mac=macs[-1] if macs else None,
                        direction="outbound",
                        target=d,
                        packets=packets,
                    )
                )
            final = (int(c.flows[-1]), int(c.packets[-1]), int(c.oneway[-1]))
            quiet = not self._outbound_hit(*final) and not self._inbound_hit_pair(c)
            self._settle(self._out, name, w, entering, after, quiet, open_win)
        return out, active

    def _inbound_hit_pair(self, c: _Running) -> bool:
        # A pair's window is quiet when it stays under the outbound thresholds and, read as an
        # inbound window (one source), under those too.
        flows, packets, oneway = int(c.flows[-1]), int(c.packets[-1]), int(c.oneway[-1])
        return oneway >= self.min_oneway * flows and packets >= self.min_packets

    def flush(self, ctx: Context) -> list[Finding]:
        return []


@dataclass
class _Episode:
    """A key's report standing between batches (a key absent has none): with ``open``, the rate
    the key entered the still-open ``window`` with (its rows are kept); else the rate a later
    window of the key enters with."""

    window: int = -1
    rate: float = 0.0
    open: bool = False

    def entering(self, win: int) -> float:
        """The standing rate window ``win`` of the key starts with."""
        return self.rate if self.window < win or (self.open and self.window == win) else 0.0


def _reported_by(active: tuple | None, row: int) -> bool:
    """Whether a (source, destination) pair had an outbound report standing at ``row`` of its window."""
    if active is None:
        return False
    first, entering, report = active
    return (entering and row >= first) or (report is not None and report <= row)


@dataclass
class _Running:
    """Running counts of one (key, window) after each of its rows."""

    flows: np.ndarray
    packets: np.ndarray
    oneway: np.ndarray
    bytes: np.ndarray
    nsrc: np.ndarray
    nports: np.ndarray
    span: np.ndarray
    rate: np.ndarray
    first: float


class _Rows:
    """The judged rows of a batch (kept rows of the open window first) as numpy columns."""

    def __init__(self, table: pa.Table) -> None:
        col = table.column
        self.src = np.asarray(col("src").to_numpy(zero_copy_only=False), dtype=object)
        self.dst = np.asarray(col("dst").to_numpy(zero_copy_only=False), dtype=object)
        self.proto = np.asarray(col("proto").to_numpy(zero_copy_only=False), dtype=object)
        self.sport = col("sport").to_numpy()
        self.dport = col("dport").to_numpy()
        self.win = col("win").to_numpy()
        self.ts = col("ts").to_numpy()
        self.end = col("end").to_numpy()
        self.pkts = col("pkts").to_numpy()
        self.bytes = col("bytes").to_numpy()
        self.oneway = col("oneway").to_numpy()
        self.uid = np.asarray(col("uid").to_numpy(zero_copy_only=False), dtype=object)
        self.mac = np.asarray(col("mac").to_numpy(zero_copy_only=False), dtype=object)
        self.old = col("old").to_numpy(zero_copy_only=False).astype(bool)

    def running(self, idx: np.ndarray, window: float, max_sources: int, ports: bool = False) -> _Running:
        n = len(idx)
        flows = np.arange(1, n + 1)
        packets = np.cumsum(self.pkts[idx])
        oneway = np.cumsum(self.oneway[idx])
        nbytes = np.cumsum(self.bytes[idx])
        src = self.src[idx]
        _, first_at = np.unique(src.astype(str), return_index=True)
        new_src = np.zeros(n, dtype=np.int64)
        new_src[first_at] = 1
        nsrc = np.cumsum(new_src)
        if max_sources:
            nsrc = np.minimum(nsrc, max_sources)
        if ports:
            _, first_port = np.unique(self.dport[idx], return_index=True)
            new_port = np.zeros(n, dtype=np.int64)
            new_port[first_port] = 1
            nports = np.cumsum(new_port)
        else:
            nports = nsrc
        t = self.ts[idx]
        first = float(t[0])
        latest = np.maximum(np.maximum.accumulate(self.end[idx]), t)
        span = np.minimum(window, np.maximum(latest - first, 1e-3))
        rate = packets / np.maximum(span, 1.0)
        return _Running(flows, packets, oneway, nbytes, nsrc, nports, span, rate, first)


def _scale(value: float, threshold: float) -> float:
    if value < threshold:
        return 0.0
    return float(min(1.0, 0.65 + 0.35 * np.log10(value / threshold)))


ANALYTICS = [FloodDetector]
