"""ICMP tunnels: data carried in echo request/reply payloads (ptunnel, icmpsh, hans, icmptunnel).

Contract
    :class:`IcmpTunnelDetector` consumes ``flow`` batches and keeps only the ICMP echo flows
    (IPv4 types 8/0, IPv6 128/129).  It sums them per (requester, replier) pair over an
    *episode*: flows of the pair no more than ``idle_timeout`` seconds apart.  An
    ``exfiltration`` finding (T1095 non-application-layer protocol, T1048.003 exfiltration
    over an unencrypted non-C2 protocol) is emitted in the update where the episode has

    * at least ``min_packets`` echo packets and ``min_bytes`` of ICMP payload (both ways);
    * a mean payload of at least ``min_mean_payload`` bytes a packet: above every ping
      default (Windows 32, Linux/BSD/busybox 56, Windows tracert 64, Cisco IOS 72 data bytes;
      nmap and hping send 0);
    * payload sizes that vary in at least ``min_varied_share`` of its packets: ping sends one
      fixed size and the reply mirrors the request's data (RFC 792), whereas a tunnel's
      requests and replies carry different, variable-size data;
    * lasted at least ``min_duration`` seconds, unless it moved ``burst_bytes`` or more
      (a bulk transfer through a tunnel can be over in seconds).

    Flow records hold sums, not per-packet sizes, so "sizes vary" is what the sums prove:
    a direction whose bytes are not a multiple of its packets (its packets are not all one
    size), or requests and replies whose mean payloads differ (the reply did not mirror the
    request).  The entity is the local end: the requester when both ends are local (the
    tunnel client, as for a LAN-to-LAN tunnel) or neither is known, else the one local end.
    The score (medium, rising to high) grows with the volume and the duration.  Flows are
    added one by one in time order (running sums, vectorised): an episode is reported at the
    flow where it first qualifies, and again at the flow where its payload has grown
    ``regrowth`` times since the last report, whatever the batches.

Blind spots
    A tunnel that pads every packet to one fixed size and answers with the request's own
    data (kernel-mirrored replies only) looks like a large constant ping; one that keeps its
    mean payload under ``min_mean_payload`` (tiny keystrokes, shell polling) or moves less
    than ``min_bytes`` per episode is missed, as are tunnels over other ICMP types (timestamp,
    destination unreachable) and one-way streams of requests nobody answers (they show as a
    flood or a scan).  A monitoring tool that varies the size of its pings for minutes
    (PingPlotter-style size sweeps, long MTU sweeps) is taken for a tunnel.  Payload entropy
    and per-packet size dispersion are not visible in flow records.

Reference
    RFC 792 (echo reply data "must be returned" unchanged); nDPI's ICMP risks (suspicious
    payload entropy, size); Corelight's ``icmp-tunnels`` Zeek package (ping payload watch)
    and the average-ICMP-packet-size rule of the LogRhythm DPA community rules; MITRE ATT&CK
    T1095, T1048.003.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    MAX_RECORD_IDS,
    address_mask,
    is_group,
    is_local,
    make_finding,
    num_col,
    str_col,
)

__all__ = ["ANALYTICS", "IcmpTunnelDetector"]

ECHO_REQUEST = (8, 128)  # ICMPv4, ICMPv6
ECHO_REPLY = (0, 129)
PING_SIZES = "ping: 0-72 B"
_SUMS = ("req_pkts", "rep_pkts", "req_bytes", "rep_bytes", "varied_pkts")


class _Episode:
    """Sums of one (requester, replier) pair's echo flows over an episode."""

    __slots__ = (
        "flows", "req_pkts", "rep_pkts", "req_bytes", "rep_bytes", "varied_pkts",
        "lo_mean", "hi_mean", "first", "last", "uids", "req_mac", "rep_mac", "reported",
    )  # fmt: skip

    def __init__(self) -> None:
        self.flows = self.req_pkts = self.rep_pkts = self.req_bytes = self.rep_bytes = 0
        self.varied_pkts = 0
        self.lo_mean, self.hi_mean = math.inf, 0.0  # range of the per-flow mean payloads
        self.first, self.last = math.inf, -math.inf
        self.uids: list[str] = []
        self.req_mac: str | None = None
        self.rep_mac: str | None = None
        self.reported = 0  # payload bytes at the last report (0 = never)

    @property
    def packets(self) -> int:
        return self.req_pkts + self.rep_pkts

    @property
    def payload(self) -> int:
        return self.req_bytes + self.rep_bytes


class IcmpTunnelDetector:
    """Data tunnelled through ICMP echo between two hosts (see the module docstring)."""

    name = "icmp-tunnel"
    kinds = ("flow",)

    def __init__(
        self,
        min_packets: int = 100,
        min_bytes: int = 50_000,
        min_mean_payload: float = 96.0,
        min_varied_share: float = 0.5,
        min_duration: float = 120.0,
        burst_bytes: int = 1_000_000,
        idle_timeout: float = 1800.0,
        regrowth: float = 4.0,
        max_pairs: int = 50_000,
    ) -> None:
        self.min_packets = min_packets
        self.min_bytes = min_bytes
        self.min_mean_payload = min_mean_payload
        self.min_varied_share = min_varied_share
        self.min_duration = min_duration
        self.burst_bytes = burst_bytes
        self.idle_timeout = idle_timeout
        self.regrowth = regrowth
        self.max_pairs = max_pairs
        self._pairs: dict[tuple[str, str], _Episode] = {}

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
        # Rows need not be in time order: each pair's rows are sorted by time in _segments.
        proto = str_col(batch, "proto")
        if not (proto == "icmp").any():
            return []
        otype = num_col(batch, "id.orig_p", fill=-1).astype(np.int64)
        is_req = np.isin(otype, ECHO_REQUEST)
        is_rep = np.isin(otype, ECHO_REPLY)
        rows = np.flatnonzero((proto == "icmp") & (is_req | is_rep))
        if len(rows) == 0:
            return []
        # The originator sent the requests, unless the flow holds replies only (the source
        # saw no request, or did not flip the roles): then the responder is the requester.
        flip = is_rep[rows]
        oh, rh = str_col(batch, "id.orig_h")[rows], str_col(batch, "id.resp_h")[rows]
        om, rm = str_col(batch, "orig_l2_addr")[rows], str_col(batch, "resp_l2_addr")[rows]
        ob = np.maximum(num_col(batch, "orig_bytes")[rows].astype(np.int64), 0)
        rb = np.maximum(num_col(batch, "resp_bytes")[rows].astype(np.int64), 0)
        op = np.maximum(num_col(batch, "orig_pkts")[rows].astype(np.int64), 0)
        rp = np.maximum(num_col(batch, "resp_pkts")[rows].astype(np.int64), 0)
        # A record without packet counts stands for at least one packet per direction with data.
        op = np.maximum(op, (ob > 0).astype(np.int64))
        rp = np.maximum(rp, (rb > 0).astype(np.int64))
        req, rep = np.where(flip, rh, oh), np.where(flip, oh, rh)
        cols = {
            "req_pkts": np.where(flip, rp, op),
            "rep_pkts": np.where(flip, op, rp),
            "req_bytes": np.where(flip, rb, ob),
            "rep_bytes": np.where(flip, ob, rb),
        }
        # Sizes provably vary within the flow: a direction whose bytes are not a multiple of
        # its packets, or replies whose mean differs from the requests' (no mirror).
        uneven = ((op >= 2) & (ob % np.maximum(op, 1) != 0)) | ((rp >= 2) & (rb % np.maximum(rp, 1) != 0))
        unmirrored = (op > 0) & (rp > 0) & (ob * rp != rb * op)
        pkts = op + rp
        cols["varied_pkts"] = np.where(uneven | unmirrored, pkts, 0)
        mean = (ob + rb) / np.maximum(pkts, 1)
        ts = batch.np("ts")[rows]
        end = ts + np.nan_to_num(num_col(batch, "duration", fill=0.0)[rows].astype(float))
        keep = (req != "") & (rep != "") & (req != rep) & ~address_mask(rep, is_group)
        if not keep.all():
            idx = np.flatnonzero(keep)
            req, rep, om, rm, flip, ts, end, mean = (a[idx] for a in (req, rep, om, rm, flip, ts, end, mean))
            rows = rows[idx]
            cols = {k: v[idx] for k, v in cols.items()}
        if len(rows) == 0:
            return []
        uid = str_col(batch, "uid")[rows]
        req_mac, rep_mac = np.where(flip, rm, om), np.where(flip, om, rm)
        findings: list[Finding] = []
        for order in self._segments(req, rep, ts, end):  # rows of one pair's episode, by time
            key = (str(req[order[0]]), str(rep[order[0]]))
            ep = self._pairs.get(key)
            if ep is None or float(ts[order[0]]) - ep.last > self.idle_timeout:
                ep = self._pairs[key] = _Episode()
            findings += self._advance(key, ep, order, cols, mean, ts, end, uid, req_mac, rep_mac, ctx)
        self._bound(float(end.max()))
        return findings

    def _advance(
        self, key, ep: _Episode, order, cols, mean, ts, end, uid, req_mac, rep_mac, ctx
    ) -> list[Finding]:  # noqa: ANN001
        """Add an episode's rows one by one (running sums, vectorised) and report at each row
        where the episode first qualifies, then where its payload has grown ``regrowth`` times."""
        sums = {name: getattr(ep, name) + np.cumsum(cols[name][order]) for name in _SUMS}
        flows = ep.flows + np.arange(1, len(order) + 1)
        lo = np.minimum(ep.lo_mean, np.minimum.accumulate(mean[order]))
        hi = np.maximum(ep.hi_mean, np.maximum.accumulate(mean[order]))
        first = min(ep.first, float(ts[order].min()))
        last = np.maximum(ep.last, np.maximum.accumulate(end[order]))
        packets = sums["req_pkts"] + sums["rep_pkts"]
        payload = sums["req_bytes"] + sums["rep_bytes"]
        span = np.maximum(last - first, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (
                (packets >= self.min_packets)
                & (payload >= self.min_bytes)
                & (payload / np.maximum(packets, 1) >= self.min_mean_payload)
                & (sums["varied_pkts"] / np.maximum(packets, 1) >= self.min_varied_share)
                & (sums["rep_pkts"] > 0)
                & ((span >= self.min_duration) | (payload >= self.burst_bytes))
            )
        u, rq, rp = uid[order], req_mac[order], rep_mac[order]
        base = list(ep.uids)
        findings = []
        j = 0
        while True:
            cand = ok[j:] & (payload[j:] >= self.regrowth * ep.reported) if ep.reported else ok[j:]
            nz = np.flatnonzero(cand)
            if not len(nz):
                break
            j += int(nz[0])
            self._set(ep, j, sums, flows, lo, hi, first, last, u, rq, rp, base)
            findings.append(self._report(key, ep, ctx))
            j += 1
        self._set(ep, len(order) - 1, sums, flows, lo, hi, first, last, u, rq, rp, base)
        return findings

    def _set(self, ep: _Episode, j: int, sums, flows, lo, hi, first, last, u, rq, rp, base) -> None:  # noqa: ANN001
        """The episode as it stands after its ``j``-th new row."""
        for name in _SUMS:
            setattr(ep, name, int(sums[name][j]))
        ep.flows = int(flows[j])
        ep.lo_mean, ep.hi_mean = float(lo[j]), float(hi[j])
        ep.first, ep.last = first, float(last[j])
        ep.uids = (base + [x for x in u[: j + 1][:MAX_RECORD_IDS].tolist() if x])[:MAX_RECORD_IDS]
        if not ep.req_mac:
            ep.req_mac = next((x for x in rq[: j + 1].tolist() if x), None)
        if not ep.rep_mac:
            ep.rep_mac = next((x for x in rp[: j + 1].tolist() if x), None)

    def _segments(
        self, req: np.ndarray, rep: np.ndarray, ts: np.ndarray, end: np.ndarray
    ) -> list[np.ndarray]:
        """Row indices per (pair, episode) run, in time order: a gap over ``idle_timeout`` cuts."""
        enc_q = pc.dictionary_encode(pa.array(req, pa.string()))
        enc_r = pc.dictionary_encode(pa.array(rep, pa.string()))
        q = enc_q.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        r = enc_r.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        pair = q * (int(r.max()) + 1) + r
        order = np.lexsort((ts, pair))
        p, t, e = pair[order], ts[order], end[order]
        new_pair = np.ones(len(p), dtype=bool)
        new_pair[1:] = p[1:] != p[:-1]
        # Latest end so far within each pair: offset each pair's (relative) ends above every
        # earlier pair's, so one running maximum over the sorted rows never crosses pairs.
        t0 = float(t.min())
        spread = float(max(e.max(), t.max()) - t0) + 1.0
        rank = np.cumsum(new_pair) - 1
        running = np.maximum.accumulate((e - t0) + rank * spread) - rank * spread
        cut = new_pair.copy()
        cut[1:] |= (t[1:] - t0) - running[:-1] > self.idle_timeout
        starts = np.flatnonzero(cut)
        return np.split(order, starts[1:])

    def _report(self, key: tuple[str, str], ep: _Episode, ctx: Context) -> Finding:
        payload, packets = ep.payload, ep.packets
        mean = payload / max(packets, 1)
        span = max(ep.last - ep.first, 0.0)
        varied = ep.varied_pkts / max(packets, 1)
        ep.reported = payload
        requester, replier = key
        if is_local(ctx, requester) or not is_local(ctx, replier):
            entity, peer, mac = requester, replier, ep.req_mac
        else:
            entity, peer, mac = replier, requester, ep.rep_mac
        req_mean = ep.req_bytes / max(ep.req_pkts, 1)
        rep_mean = ep.rep_bytes / max(ep.rep_pkts, 1)
        evidence = [
            f"{packets} ICMP echo packets, {_kb(payload)} of payload over {_duration(span)} between "
            f"{requester} (requests) and {replier} (replies), mean payload {mean:.0f} B "
            f"({PING_SIZES}; threshold {self.min_mean_payload:.0f} B)",
            f"payload sizes vary: {varied:.0%} of the packets are in flows whose payloads are not all one "
            f"size or whose replies do not mirror the requests (requests average {req_mean:.0f} B, replies "
            f"{rep_mean:.0f} B, flow means {ep.lo_mean:.0f}-{ep.hi_mean:.0f} B); ping sends one size and "
            "its reply mirrors the request: a tunnel, not ping",
            f"{_kb(ep.req_bytes)} sent by the requester, {_kb(ep.rep_bytes)} by the replier",
        ]
        if entity == replier:
            evidence.append(f"{replier} is the local end: it answers echo requests from {requester}")
        return make_finding(
            ctx,
            entity,
            "exfiltration",
            self.name,
            self._score(payload, span),
            ep.first,
            ep.last,
            evidence,
            ["T1095", "T1048.003"],
            ep.uids,
            mac=mac,
            peer=peer,
            role="requester" if entity == requester else "replier",
            packets=packets,
            payload_bytes=payload,
            mean_payload=round(mean, 1),
            duration=round(span, 1),
        )

    def _score(self, payload: int, span: float) -> float:
        """0.55 at the thresholds; +0.15 at 100 times ``min_bytes``; +0.1 at 15 times ``min_duration``."""
        volume = min(1.0, math.log10(max(payload / self.min_bytes, 1.0)) / 2)
        duration = min(1.0, math.log10(max(span / self.min_duration, 1.0)) / math.log10(15))
        return 0.55 + 0.15 * volume + 0.1 * duration

    def _bound(self, now: float) -> None:
        """Forget episodes idle past ``idle_timeout``; past ``max_pairs``, the least recent half."""
        if len(self._pairs) <= self.max_pairs // 2:
            return
        cutoff = now - self.idle_timeout
        self._pairs = {k: ep for k, ep in self._pairs.items() if ep.last >= cutoff}
        if len(self._pairs) > self.max_pairs:
            recent = sorted(self._pairs.items(), key=lambda kv: kv[1].last)[-(self.max_pairs // 2) :]
            self._pairs = dict(recent)

    def flush(self, ctx: Context) -> list[Finding]:
        # Every episode is judged as its flows arrive: nothing is pending.
        return []


def _kb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n / 1e3:.0f} KB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


ANALYTICS = [IcmpTunnelDetector]
