"""Scanning and brute-force detection from flows and ARP requests.

Contract
    :class:`ScanDetector` consumes ``flow`` batches (and ARP tables through
    :meth:`ScanDetector.update_arp`) and emits ``scan`` findings about the *scanning* host:

    * horizontal: one source probing one port on many hosts (``threshold_hosts`` distinct
      hosts within ``window`` seconds, at least a quarter of them failed attempts, or
      ``threshold_hosts`` failed ones); telnet ports (tcp/23, tcp/2323, the Mirai-family
      propagation ports) use a lower threshold;
    * vertical: one source probing many ports of one host (a low-confidence finding from
      ``min_ports_low`` ports when every probe failed);
    * ICMP sweep: echo/timestamp/mask requests to many hosts;
    * ARP sweep: ARP who-has requests for many distinct addresses.

    Probes are judged one by one in time order.  A target's latest outcome wins (a host that
    answered since is no longer a failed target): a master polling many PLCs that miss an
    occasional poll is not a scanner.  Every rule needs failed probes, so a source's probes
    count from its first failed one on, for as long as it keeps probing without a gap over
    ``window`` (the answered traffic of a source that fails nothing is never followed).  Each
    window slides record by record (the targets older than ``window`` go before a probe is
    added; when a window empties, its episode ends and the next one is reported afresh).

    A finding is emitted at the probe that completes the evidence (the distinct count
    crosses the threshold), and again each time the count doubles, so a long scan is
    reported while it runs and escalates; whatever the batches, the same probes do it.

    :class:`BruteForceDetector` consumes ``flow`` batches and emits ``brute-force`` findings
    about the *source* when it opens many short, completed, similarly sized sessions to one
    service of one host (``threshold`` sessions within ``window`` seconds, byte counts with a
    median absolute deviation under ``max_size_dispersion`` of the median): the shape of
    repeated failed logins seen from the network, whatever the port.  Each session is counted
    with the sessions of its key in the ``window`` before it (the last ``window`` seconds of
    sessions are kept between batches, as columns), and judged when the count reaches the
    threshold and each time it doubles; an episode ends after a gap over ``window``.

Blind spots
    Slow scans (fewer than ``threshold`` targets per window) and scans spread over many
    sources are missed; a scan of a service that answers every probe with data looks like
    normal use unless it is wide.  The brute-force rule cannot tell a failed login from a
    succeeding one (payload is encrypted): a client polling a service many times a second
    with identical requests is flagged too (its score stays low unless the service is a login
    service).  A horizontal scan at its threshold is low (a device whose cloud does not answer
    tries every address its DNS named); it weighs from twice the threshold, telnet scans at once.  Spoofed-source scans name the spoofed address.

Reference
    Slips (Stratosphere Lab) horizontal/vertical port-scan and ARP-scan modules; Zeek's
    ``scan.zeek`` (distinct-host and distinct-port thresholds over a time window).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    FAILED_STATES,
    MAX_RECORD_IDS,
    DistinctWindow,
    KindClock,
    group_mask,
    make_finding,
    num_col,
    parse_address,
    plain_table,
    ratio_score,
    sorted_by_time,
    str_col,
)

__all__ = ["ANALYTICS", "BruteForceDetector", "ScanDetector"]

TELNET_PORTS = frozenset({23, 2323})
# ICMP types that ask a host to answer: echo, timestamp, address-mask, info request.
ICMP_PROBE_TYPES = frozenset({8, 13, 15, 17})
# Services where many short sessions mean password guessing (by port or detected service).
# Below "medium" (core.findings.severity_for): the most a brute-force shape off a login service weighs.
NON_LOGIN_CAP = 0.39
# How long a DNS answer vouches for the addresses it gave its client (a priori: answers' TTLs run
# from minutes to an hour or so; a device retrying the addresses it was given does it at once).
RESOLVED_TTL = 3600.0
MAX_RESOLVED = 200_000
LOGIN_PORTS = frozenset({21, 22, 23, 2222, 2323, 3389, 5900, 110, 143, 445, 1433, 3306, 5432, 8291})
LOGIN_SERVICES = frozenset({"ssh", "telnet", "ftp", "rdp", "vnc", "rfb", "smb", "mysql", "pop3", "imap"})


def _proto_port(proto: str, port: int) -> str:
    return f"{proto}/{port}"


class _WindowTable:
    """Keyed :class:`DistinctWindow` objects; keys idle for the window are forgotten at sweeps
    (exactly: the next record of such a key would find its window empty and start afresh)."""

    def __init__(self, window: float, cap: int, max_keys: int = 200_000) -> None:
        self.window = window
        self.cap = cap
        self.max_keys = max_keys
        self.keys: dict[Any, DistinctWindow] = {}
        self._last_sweep = -np.inf

    def get(self, key: Any) -> DistinctWindow:
        w = self.keys.get(key)
        if w is None:
            w = self.keys[key] = DistinctWindow()
        return w

    def sweep(self, now: float) -> None:
        if now - self._last_sweep < self.window and len(self.keys) < self.max_keys:
            return
        self._last_sweep = now
        cutoff = now - self.window
        self.keys = {k: w for k, w in self.keys.items() if w.last_ts >= cutoff}
        if len(self.keys) > self.max_keys:  # safety valve far above any real load
            keep = sorted(self.keys.items(), key=lambda kv: kv[1].last_ts)[-(self.max_keys // 2) :]
            self.keys = dict(keep)


class ScanDetector:
    """Horizontal, vertical, ICMP and ARP scans (see the module docstring)."""

    name = "scan"
    kinds = ("flow", "dns")

    def __init__(
        self,
        window: float = 60.0,
        threshold_hosts: int = 20,
        threshold_telnet_hosts: int = 10,
        threshold_ports: int = 15,
        min_ports_low: int = 6,
        threshold_icmp_hosts: int = 10,
        threshold_arp_hosts: int = 20,
        min_failed_ratio: float = 0.25,
    ) -> None:
        self.window = window
        self.threshold_hosts = threshold_hosts
        self.threshold_telnet_hosts = threshold_telnet_hosts
        self.threshold_ports = threshold_ports
        self.min_ports_low = min_ports_low
        self.threshold_icmp_hosts = threshold_icmp_hosts
        self.threshold_arp_hosts = threshold_arp_hosts
        self.min_failed_ratio = min_failed_ratio
        cap = 8 * max(threshold_hosts, threshold_ports)
        self._horizontal = _WindowTable(window, cap * 64)
        self._vertical = _WindowTable(window, cap * 64)
        self._arp = _WindowTable(window, cap * 64)
        # source -> time of its latest counted probe (see _counted)
        self._last_counted: dict[str, float] = {}
        # Flows wait until the DNS answers up to their time are in (KindClock): an address DNS gave
        # a client of the network (the device itself, or the resolver or gateway that relays for
        # it) is a destination someone means to reach, not a scan target: a device whose cloud does
        # not answer tries every address its name resolved to.
        self.clock = KindClock(self.kinds)
        self._held_flows: pa.Table | None = None
        self._held_dns: pa.Table | None = None
        self._resolved: OrderedDict[str, float] = OrderedDict()  # address -> latest time DNS gave it

    # flows and the DNS answers that name their destinations ---------------------------------
    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if len(batch) == 0 or batch.kind not in self.kinds:
            return []
        batch = sorted_by_time(batch)
        self.clock.note(batch.kind, float(np.nanmax(batch.np("ts"))))
        if batch.kind == "dns":
            answers = str_col(batch, "answers")
            has = answers != ""
            if has.any():
                part = pa.table(
                    {"ts": pa.array(batch.np("ts")[has], pa.float64()), "answers": pa.array(answers[has], pa.string())}
                )
                self._held_dns = part if self._held_dns is None else pa.concat_tables([self._held_dns, part])
        else:
            part = plain_table(batch.table)
            self._held_flows = part if self._held_flows is None else pa.concat_tables([self._held_flows, part])
        return self._release(ctx, self.clock.through)

    def flush(self, ctx: Context) -> list[Finding]:
        self.clock.finish()
        return self._release(ctx, np.inf)

    def _release(self, ctx: Context, until: float) -> list[Finding]:
        """Judge the held flows up to ``until``, in event time, with the DNS answers before each."""
        dns, self._held_dns = _split(self._held_dns, until)
        fresh = self._answers(dns)
        flows, self._held_flows = _split(self._held_flows, until)
        found: list[Finding] = []
        if flows is not None and flows.num_rows:
            found = self._flows(EventBatch.from_table("flow", flows), ctx, fresh)
        for key, times in fresh.items():
            self._resolved.pop(key, None)
            self._resolved[key] = times[-1]
        while len(self._resolved) > MAX_RESOLVED:  # the oldest answers go first
            self._resolved.popitem(last=False)
        return found

    @staticmethod
    def _answers(dns: pa.Table | None) -> dict[str, list[float]]:
        """address -> the times, in order, DNS gave that address in an answer."""
        out: dict[str, list[float]] = {}
        if dns is None or dns.num_rows == 0:
            return out
        dns = dns.sort_by("ts")
        for t, ans in zip(dns.column("ts").to_pylist(), dns.column("answers").to_pylist(), strict=True):
            for a in ans.split(","):
                a = a.strip()
                if a and parse_address(a) is not None:
                    out.setdefault(a, []).append(t)
        return out

    def _named(self, dst: np.ndarray, ts: np.ndarray, fresh: dict) -> np.ndarray:
        """Per flow: did DNS give this destination to a client of the network within RESOLVED_TTL
        before the flow?"""
        out = np.zeros(len(dst), dtype=bool)
        if not fresh and not self._resolved:
            return out
        for i, (d, t) in enumerate(zip(dst.tolist(), ts.tolist(), strict=True)):
            times = fresh.get(d)
            last = None
            if times:
                k = bisect.bisect_right(times, t)
                last = times[k - 1] if k else None
            if last is None:
                last = self._resolved.get(d)
            out[i] = last is not None and last <= t and t - last <= RESOLVED_TTL
        return out

    # flows ------------------------------------------------------------------------------
    def _flows(self, batch: EventBatch, ctx: Context, fresh: dict) -> list[Finding]:
        batch = sorted_by_time(batch)
        src = str_col(batch, "id.orig_h")
        dst = str_col(batch, "id.resp_h")
        proto = str_col(batch, "proto")
        sport = num_col(batch, "id.orig_p").astype(np.int64)
        dport = num_col(batch, "id.resp_p").astype(np.int64)
        state = str_col(batch, "conn_state")
        ob = num_col(batch, "orig_bytes").astype(np.int64)
        rb = num_col(batch, "resp_bytes").astype(np.int64)
        rp = num_col(batch, "resp_pkts").astype(np.int64)
        op = num_col(batch, "orig_pkts").astype(np.int64)
        history = str_col(batch, "history")
        ts = batch.np("ts")
        now = float(ts[-1])
        # Only what the originator started is a probe: flows where it sent nothing (replies
        # flipped by the flow builder, backscatter) and TCP flows without its SYN (lone RSTs
        # and ACKs of reflection attacks) say nothing about the originator scanning.
        initiated = ~((op <= 0) & (rp > 0))
        has_history = history != ""
        hist = history.astype(str)
        # SYN, or FIN/NULL/Xmas-style probes (F); a lone RST or ACK is not a probe.
        probe_flag = (np.char.find(hist, "S") >= 0) | (np.char.find(hist, "F") >= 0)
        initiated &= (proto != "tcp") | ~has_history | probe_flag

        unicast = ~group_mask(dst)
        is_icmp = proto == "icmp"
        no_data = (ob <= 0) & (rb <= 0)
        failed = np.isin(state, list(FAILED_STATES)) | no_data
        failed = np.where(proto == "udp", rb <= 0, failed)
        # ICMP: the "port" is the type; only requests count as probes.
        icmp_probe = is_icmp & np.isin(sport, list(ICMP_PROBE_TYPES))
        port_key = np.where(is_icmp, sport, dport)
        failed = np.where(is_icmp, rp <= 0, failed)
        keep = unicast & initiated & (~is_icmp | icmp_probe) & (src != "") & (dst != "")
        rows = np.flatnonzero(keep)
        if len(rows):
            rows = rows[self._counted(src[rows], ts[rows], failed[rows])]
        findings: list[Finding] = []
        if len(rows):
            findings = self._judge(
                src[rows], dst[rows], proto[rows], port_key[rows], ts[rows], failed[rows],
                str_col(batch, "uid")[rows], str_col(batch, "orig_l2_addr")[rows], ctx,
                self._named(dst[rows], ts[rows], fresh),
            )  # fmt: skip
        self._horizontal.sweep(now)
        self._vertical.sweep(now)
        if len(self._last_counted) > self._horizontal.max_keys or now - self._horizontal._last_sweep == 0:
            cutoff = now - self.window
            self._last_counted = {s: t for s, t in self._last_counted.items() if t >= cutoff}
        return findings

    def _counted(self, src: np.ndarray, ts: np.ndarray, failed: np.ndarray) -> np.ndarray:
        """Which probes count: every scan rule needs failed probes, so a source's probes count from
        its first failed one on, for as long as it keeps probing (no gap over the window); the
        answered traffic of a source that fails nothing is never followed.  Record by record in
        time order, vectorised: per source, runs without a gap over the window start counting
        at their first failed probe (or at once when the source's last counted probe, in an
        earlier batch, is within the window)."""
        enc = pc.dictionary_encode(pa.array(src, pa.string()))
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = enc.dictionary.to_pylist()
        order = np.lexsort((np.arange(len(code)), code))
        c, t, f = code[order], ts[order], failed[order]
        first = np.r_[True, c[1:] != c[:-1]]
        prev = np.r_[-np.inf, t[:-1]]
        brk = first | (t - prev > self.window)
        carry = np.zeros(len(c), dtype=bool)
        if self._last_counted:
            at = np.flatnonzero(first)
            last = np.array([self._last_counted.get(names[k], -np.inf) for k in c[at].tolist()])
            carry[at] = t[at] - last <= self.window
        start = f | carry
        cs = np.cumsum(start)
        base = (cs - start)[brk]
        counted_sorted = cs - base[np.cumsum(brk) - 1] > 0
        if counted_sorted.any():
            cc, ct = c[counted_sorted], t[counted_sorted]
            tail = np.r_[cc[1:] != cc[:-1], True]
            for k, tk in zip(cc[tail].tolist(), ct[tail].tolist(), strict=True):
                self._last_counted[names[k]] = tk
        counted = np.empty(len(c), dtype=bool)
        counted[order] = counted_sorted
        return counted

    def _judge(self, src, dst, proto, port, ts, failed, uid, mac, ctx: Context, named) -> list[Finding]:
        """Add each counted probe to its windows, in time order, and judge the windows it touched.
        A destination DNS named to the source (``named``) is no scan target."""
        findings: list[Finding] = []
        window = self.window
        horizontal, vertical = self._horizontal, self._vertical
        h_keys, v_keys = horizontal.keys, vertical.keys
        h_cap, v_cap = horizontal.cap, vertical.cap
        telnet_thr, host_thr, icmp_thr = (
            self.threshold_telnet_hosts,
            self.threshold_hosts,
            self.threshold_icmp_hosts,
        )
        low = min(self.min_ports_low, self.threshold_ports)
        for s, d, p, pt, t, f, u, m, nm in zip(
            src.tolist(), dst.tolist(), proto.tolist(), port.tolist(), ts.tolist(), failed.tolist(),
            uid.tolist(), mac.tolist(), named.tolist(), strict=True,
        ):  # fmt: skip
            if nm:
                continue  # a destination its DNS gave it: neither a horizontal nor a vertical target
            key = (s, p, pt)
            w = h_keys.get(key)
            if w is None:
                w = h_keys[key] = DistinctWindow()
            w.add(d, t, u, f, h_cap, window)
            if m:
                w.macs = m
            thr = icmp_thr if p == "icmp" else (telnet_thr if p == "tcp" and pt in TELNET_PORTS else host_thr)
            if len(w.items) >= thr:
                finding = self._check_horizontal(key, w, ctx)
                if finding is not None:
                    findings.append(finding)
            if p == "icmp":
                continue
            key2 = (s, d)
            w = v_keys.get(key2)
            if w is None:
                w = v_keys[key2] = DistinctWindow()
            w.add(_proto_port(p, pt), t, u, f, v_cap, window)
            if m:
                w.macs = m
            if len(w.items) >= low:
                finding = self._check_vertical(key2, w, ctx)
                if finding is not None:
                    findings.append(finding)
        return findings

    def _due(self, w: DistinctWindow, distinct: int, threshold: int) -> bool:
        # First crossing, then each doubling: reports a running scan without flooding.
        return distinct >= threshold and (w.reported == 0 or distinct >= 2 * w.reported)

    def _check_horizontal(self, key: tuple, w: DistinctWindow, ctx: Context) -> Finding | None:
        src, proto, port = key
        distinct = len(w.items)
        n_failed = len(w.failed)
        if proto == "icmp":
            threshold, kind = self.threshold_icmp_hosts, "ICMP sweep"
            counted = distinct
        else:
            telnet = proto == "tcp" and port in TELNET_PORTS
            threshold = self.threshold_telnet_hosts if telnet else self.threshold_hosts
            kind = "telnet scan" if telnet else "horizontal scan"
            # Mostly-answered fan-out (CDNs, NTP pools) is not a scan: need failures.
            counted = distinct if n_failed >= self.min_failed_ratio * distinct else n_failed
        if not self._due(w, counted, threshold):
            return None
        w.reported = counted
        what = f"icmp type {port}" if proto == "icmp" else f"{proto}/{port}"
        span = max(w.last_ts - w.first_ts, 0.0)
        score = ratio_score(counted, threshold, floor=0.55)
        if kind == "telnet scan":
            score = min(1.0, score + 0.1)
        evidence = [
            f"{kind}: probed {distinct} distinct hosts on {what} in {span:.0f} s "
            f"(threshold {threshold} per {self.window:.0f} s); {n_failed} of them failed or unanswered"
        ]
        return make_finding(
            ctx,
            src,
            "scan",
            self.name,
            score,
            w.first_ts,
            w.last_ts,
            evidence,
            ["T1046"] if proto != "icmp" else ["T1018", "T1046"],
            w.uids,
            mac=w.macs,
            scan_type=kind,
            port=what,
            distinct_hosts=distinct,
        )

    def _check_vertical(self, key: tuple, w: DistinctWindow, ctx: Context) -> Finding | None:
        src, dst = key
        distinct = len(w.items)
        n_failed = len(w.failed)
        counted = distinct if n_failed >= 0.5 * distinct else n_failed
        # A short burst where every probe failed is a low-confidence scan below the threshold.
        low = counted < self.threshold_ports and n_failed == distinct >= self.min_ports_low
        if not low and not self._due(w, counted, self.threshold_ports):
            return None
        if low and w.reported:
            return None
        w.reported = counted
        span = max(w.last_ts - w.first_ts, 0.0)
        sample = ", ".join(sorted(w.items, key=lambda s: (s.rsplit("/", 1)[0], int(s.rsplit("/", 1)[1])))[:8])
        evidence = [
            f"vertical scan: probed {distinct} distinct ports of {dst} in {span:.0f} s "
            f"(threshold {self.threshold_ports} per {self.window:.0f} s, {self.min_ports_low} if all fail); "
            f"{n_failed} refused or "
            f"unanswered; e.g. {sample}"
        ]
        return make_finding(
            ctx,
            src,
            "scan",
            self.name,
            0.2 + 0.2 * counted / self.threshold_ports
            if low
            else ratio_score(counted, self.threshold_ports, 0.55),
            w.first_ts,
            w.last_ts,
            evidence,
            ["T1046"],
            w.uids,
            mac=w.macs,
            scan_type="vertical scan",
            target=dst,
            distinct_ports=distinct,
        )

    # ARP --------------------------------------------------------------------------------
    def update_arp(self, table: pa.Table, ctx: Context) -> list[Finding]:
        """Consume ARP records (columns ts, src_mac, src_ip, dst_ip, op; op 1 = request), judged
        record by record in time order like flows."""
        if table.num_rows == 0:
            return []
        ts = np.asarray(table.column("ts").to_numpy(zero_copy_only=False), dtype=float)
        op = np.asarray(table.column("op").fill_null(0).to_numpy(zero_copy_only=False))
        src_ip = np.asarray(table.column("src_ip").fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        dst_ip = np.asarray(table.column("dst_ip").fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        src_mac = np.asarray(
            table.column("src_mac").fill_null("").to_numpy(zero_copy_only=False), dtype=object
        )
        # Requests only; gratuitous ARP (asking for one's own address) and probes from
        # 0.0.0.0 (duplicate-address detection) are not sweeps.
        keep = (op == 1) & (src_ip != dst_ip) & (dst_ip != "")
        findings: list[Finding] = []
        order = np.argsort(ts[keep], kind="stable")
        for t, sip, mac, dip in zip(
            ts[keep][order].tolist(), src_ip[keep][order].tolist(), src_mac[keep][order].tolist(),
            dst_ip[keep][order].tolist(), strict=True,
        ):  # fmt: skip
            key = (sip if sip and sip != "0.0.0.0" else mac, mac)
            w = self._arp.get(key)
            w.add(dip, t, "", True, self._arp.cap, self.window)
            distinct = len(w.items)
            if not self._due(w, distinct, self.threshold_arp_hosts):
                continue
            w.reported = distinct
            entity_ip, mac = key
            span = max(w.last_ts - w.first_ts, 0.0)
            findings.append(
                make_finding(
                    ctx,
                    entity_ip,
                    "scan",
                    self.name,
                    ratio_score(distinct, self.threshold_arp_hosts, floor=0.55),
                    w.first_ts,
                    w.last_ts,
                    [
                        f"ARP sweep: who-has requests for {distinct} distinct addresses in {span:.0f} s "
                        f"(threshold {self.threshold_arp_hosts} per {self.window:.0f} s)"
                    ],
                    ["T1018", "T1046"],
                    mac=mac or None,
                    scan_type="ARP sweep",
                    distinct_hosts=distinct,
                )
            )
        if len(ts):
            self._arp.sweep(float(ts.max()))
        return findings



class BruteForceDetector:
    """Many short, completed, alike sessions from one source to one service (see module docstring)."""

    name = "bruteforce"
    kinds = ("flow",)

    def __init__(
        self,
        window: float = 60.0,
        threshold: int = 20,
        max_session_bytes: int = 20_000,
        max_duration: float = 30.0,
        max_size_dispersion: float = 0.25,
        max_sizes: int = 256,
    ) -> None:
        self.window = window
        self.threshold = threshold
        self.max_session_bytes = max_session_bytes
        self.max_duration = max_duration
        self.max_size_dispersion = max_size_dispersion
        self.max_sizes = max_sizes
        # The login-like sessions of the last ``window`` seconds (columns of _COLUMNS), so each
        # session is counted with the ones before it whatever the batches were.
        self._recent: pa.Table | None = None
        # (source, host, port) -> [last session time, reported count, service, mac, uids] of its
        # episode (sessions no more than ``window`` apart)
        self._state: dict[tuple, list] = {}

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        proto = str_col(batch, "proto")
        ob = num_col(batch, "orig_bytes").astype(np.int64)
        rb = num_col(batch, "resp_bytes").astype(np.int64)
        dur = num_col(batch, "duration", fill=0.0)
        dur = np.nan_to_num(dur)
        # A login attempt: the handshake completed and both sides said something small.
        attempt = (
            (proto == "tcp")
            & (ob > 0)
            & (rb > 0)
            & (ob + rb <= self.max_session_bytes)
            & (dur <= self.max_duration)
        )
        if not attempt.any():
            return []
        sub = batch.filter(attempt)
        # (a flow without a responder port, or an address, is keyed with 0 or "" in its place)
        key_col = pc.binary_join_element_wise(
            pc.fill_null(sub["id.orig_h"], ""),
            pc.fill_null(sub["id.resp_h"], ""),
            pc.cast(pc.fill_null(sub["id.resp_p"], 0), pa.string()),
            "|",
        )
        fresh = pa.table(
            {
                "key": pc.fill_null(key_col, "").combine_chunks(),
                "ts": sub["ts"].combine_chunks(),
                "ob": pa.array(ob[attempt]),
                "rb": pa.array(rb[attempt]),
                "new": pa.array(np.ones(len(sub), dtype=bool)),
            }
        )
        table = fresh if self._recent is None else pa.concat_tables([self._recent, fresh]).combine_chunks()
        now = float(sub.np("ts")[-1])
        # Keep for the next batch what a later session can still count with.
        ts_all = table.column("ts").to_numpy()
        self._recent = table.filter(pa.array(ts_all >= now - self.window)).set_column(
            4, "new", pa.array(np.zeros(int((ts_all >= now - self.window).sum()), dtype=bool))
        )
        findings = self._judge(table, sub, ctx)
        cutoff = now - self.window
        self._state = {k: st for k, st in self._state.items() if st[0] >= cutoff}
        return findings

    def _judge(self, table: pa.Table, sub: EventBatch, ctx: Context) -> list[Finding]:
        """Count each new session with the sessions of its key in the window before it (record by
        record, vectorised per key) and judge the keys that reach the threshold."""
        enc = pc.dictionary_encode(table.column("key").combine_chunks())
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        per_key = np.bincount(code)
        busy = np.flatnonzero(per_key >= self.threshold)
        new = table.column("new").to_numpy(zero_copy_only=False)
        n_old = len(new) - len(sub)
        names = enc.dictionary.to_pylist()
        # Episode bookkeeping (last session, service, mac) for every key of the batch.
        sub_code = code[n_old:]
        service = str_col(sub, "service")
        mac = str_col(sub, "orig_l2_addr")
        uid = str_col(sub, "uid")
        ts_new = sub.np("ts")
        findings: list[Finding] = []
        busy_set = set(busy.tolist())
        order = np.lexsort((np.arange(len(sub_code)), sub_code))
        sc = sub_code[order]
        starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
        ends = np.r_[starts[1:], len(sc)]
        ts_all = table.column("ts").to_numpy()
        ob_all = table.column("ob").to_numpy()
        rb_all = table.column("rb").to_numpy()
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            k = int(sc[a])
            rows = order[a:b]  # the key's new sessions (indices into ``sub``), in time order
            name = names[k]
            s, d, port = name.rsplit("|", 2)
            key = (s, d, int(port) if port else 0)
            st = self._state.get(key)
            if k not in busy_set:
                # Cannot reach the threshold in this batch: only the episode bookkeeping moves.
                st = self._advance(key, st, ts_new[rows], service[rows], mac[rows], uid[rows])
                continue
            # every session of the key (kept ones first), in time order (a stable sort: the identity
            # unless a session came behind the kept ones, out of time order)
            mine = np.flatnonzero(code == k)
            mine = mine[np.argsort(ts_all[mine], kind="stable")]
            t = ts_all[mine]
            left = np.searchsorted(t, t - self.window, side="left")
            count = np.minimum(np.arange(len(t)) - left + 1, self.max_sizes)
            for j in range(len(mine)):
                if mine[j] < n_old:
                    continue  # kept from an earlier batch: judged then
                r = int(mine[j] - n_old)
                st = self._advance(
                    key, st, ts_new[r : r + 1], service[r : r + 1], mac[r : r + 1], uid[r : r + 1]
                )
                n = int(count[j])
                if n < self.threshold or (st[1] and n < 2 * st[1]):
                    continue
                lo = j - n + 1
                f = self._check(
                    key, st, n, t[lo : j + 1], ob_all[mine[lo : j + 1]], rb_all[mine[lo : j + 1]], ctx
                )
                if f is not None:
                    findings.append(f)
        return findings

    def _advance(self, key: tuple, st: list | None, t, service, mac, uid) -> list:
        """Move a key's episode over its next sessions (a gap over the window starts a new one)."""
        for ti, sv, m, u in zip(t.tolist(), service.tolist(), mac.tolist(), uid.tolist(), strict=True):
            if st is None or ti - st[0] > self.window:
                st = self._state[key] = [ti, 0, "", None, []]
            st[0] = ti
            if sv:
                st[2] = sv
            if m:
                st[3] = m
            if u and len(st[4]) < MAX_RECORD_IDS:
                st[4].append(u)
        return st

    def _check(
        self, key: tuple, st: list, n: int, t: np.ndarray, ob: np.ndarray, rb: np.ndarray, ctx: Context
    ) -> Finding | None:
        disp = max(_rel_mad(ob), _rel_mad(rb))
        if disp > self.max_size_dispersion:
            return None
        src, dst, port = key
        service = st[2]
        login = port in LOGIN_PORTS or service in LOGIN_SERVICES
        # Off login services, alike sessions at tens per minute are what pollers and
        # beacons do: ask for a guessing rate (3x) before calling it brute force.
        if not login and n < 3 * self.threshold:
            return None
        st[1] = n
        score = ratio_score(n, self.threshold, floor=0.6 if login else 0.45)
        if not login:
            # Off login services the flow shape cannot tell password guessing from an API polled
            # many times a minute (an IoT switch polling its hub over HTTP): a lead, low.
            score = min(score, NON_LOGIN_CAP)
        span = float(t[-1] - t[0])
        label = f"tcp/{port}" + (f" ({service})" if service else "")
        evidence = [
            f"{n} short sessions to {dst} {label} in {span:.0f} s (threshold {self.threshold} per "
            f"{self.window:.0f} s), alike in size: median {int(np.median(ob))} B out / "
            f"{int(np.median(rb))} B back, dispersion {disp:.2f} (limit {self.max_size_dispersion})"
        ]
        return make_finding(
            ctx,
            src,
            "brute-force",
            self.name,
            score,
            float(t[0]),
            float(t[-1]),
            evidence,
            ["T1110", "T1110.001"],
            st[4],
            mac=st[3],
            target=dst,
            port=port,
            sessions=n,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        return []


def _split(table: pa.Table | None, until: float) -> tuple[pa.Table | None, pa.Table | None]:
    """(rows with ts <= until, in time order; the rest) of a held table."""
    if table is None or table.num_rows == 0:
        return None, None
    ts = table.column("ts").to_numpy()
    ready = ts <= until
    if ready.all():
        return table.sort_by("ts"), None
    if not ready.any():
        return None, table
    return table.filter(pa.array(ready)).sort_by("ts"), table.filter(pa.array(~ready))


def _rel_mad(x: np.ndarray) -> float:
    med = float(np.median(x))
    if med <= 0:
        return 1.0
    return float(np.median(np.abs(x - med)) / med)


ANALYTICS = [ScanDetector, BruteForceDetector]
