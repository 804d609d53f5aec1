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

    A target counts as failed when none of its attempts in a batch was answered, and the
    latest outcome wins (a host that answered since is no longer a failed target): a
    master polling many PLCs that miss an occasional poll is not a scanner.

    A finding is emitted in the update that completes the evidence (the distinct count
    crosses the threshold), and again each time the count doubles, so a long scan is
    reported while it runs and escalates.

    :class:`BruteForceDetector` consumes ``flow`` batches and emits ``brute-force`` findings
    about the *source* when it opens many short, completed, similarly sized sessions to one
    service of one host (``threshold`` sessions within ``window`` seconds, byte counts with a
    median absolute deviation under ``max_size_dispersion`` of the median): the shape of
    repeated failed logins seen from the network, whatever the port.

Blind spots
    Slow scans (fewer than ``threshold`` targets per window) and scans spread over many
    sources are missed; a scan of a service that answers every probe with data looks like
    normal use unless it is wide.  The brute-force rule cannot tell a failed login from a
    succeeding one (payload is encrypted): a client polling a service many times a second
    with identical requests is flagged too (its score stays medium unless the service is a
    login service).  Spoofed-source scans name the spoofed address.

Reference
    Slips (Stratosphere Lab) horizontal/vertical port-scan and ARP-scan modules; Zeek's
    ``scan.zeek`` (distinct-host and distinct-port thresholds over a time window).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    FAILED_STATES,
    DistinctWindow,
    group_mask,
    make_finding,
    num_col,
    ratio_score,
    sorted_by_time,
    str_col,
)

__all__ = ["ANALYTICS", "BruteForceDetector", "ScanDetector"]

TELNET_PORTS = frozenset({23, 2323})
# ICMP types that ask a host to answer: echo, timestamp, address-mask, info request.
ICMP_PROBE_TYPES = frozenset({8, 13, 15, 17})
# Services where many short sessions mean password guessing (by port or detected service).
LOGIN_PORTS = frozenset({21, 22, 23, 2222, 2323, 3389, 5900, 110, 143, 445, 1433, 3306, 5432, 8291})
LOGIN_SERVICES = frozenset({"ssh", "telnet", "ftp", "rdp", "vnc", "rfb", "smb", "mysql", "pop3", "imap"})


def _proto_port(proto: str, port: int) -> str:
    return f"{proto}/{port}"


class _WindowTable:
    """Keyed :class:`DistinctWindow` objects with periodic eviction of idle keys."""

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


class ScanDetector:
    """Horizontal, vertical, ICMP and ARP scans (see the module docstring)."""

    name = "scan"
    kinds = ("flow",)

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
        self._sources: set[str] = set()

    # flows ------------------------------------------------------------------------------
    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
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
        uid = str_col(batch, "uid")
        mac = str_col(batch, "orig_l2_addr")
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
        # Every scan rule needs failed probes, so a source without any (in this batch or in
        # the window state) cannot fire: skip its answered traffic before the per-key work.
        active = set(src[keep & failed].tolist()) | self._sources
        if not active:
            return []
        # pyarrow's hash-based is_in: numpy's isin on object arrays is quadratic.
        keep &= pc.is_in(pa.array(src, pa.string()), value_set=pa.array(list(active), pa.string())).to_numpy(
            zero_copy_only=False
        )
        if not keep.any():
            return []

        table = pa.table(
            {
                "src": src[keep],
                "dst": dst[keep],
                "proto": proto[keep],
                "port": port_key[keep],
                "ts": ts[keep],
                "failed": failed[keep],
                "uid": uid[keep],
                "mac": mac[keep],
            }
        )
        findings: list[Finding] = []
        # Horizontal (incl. ICMP sweeps): distinct hosts per (source, proto, port).  A host
        # counts as failed when none of its attempts in the batch was answered: a poller whose
        # targets answer most polls is not probing dead addresses.
        h = table.group_by(["src", "proto", "port", "dst"], use_threads=False).aggregate(
            [("ts", "max"), ("failed", "all"), ("uid", "min"), ("mac", "max")]
        )
        touched: set[tuple] = set()
        for s, p, port, d, t, f, u, m in zip(
            *(h.column(c).to_pylist() for c in ("src", "proto", "port", "dst")),
            *(h.column(c).to_pylist() for c in ("ts_max", "failed_all", "uid_min", "mac_max")),
            strict=True,
        ):
            key = (s, p, port)
            w = self._horizontal.get(key)
            w.add(d, t, u or "", bool(f), self._horizontal.cap)
            w.macs = m or w.macs
            touched.add(key)
        for key in touched:
            f = self._check_horizontal(key, self._horizontal.keys[key], ctx)
            if f:
                findings.append(f)
        # Vertical: distinct (proto, port) per (source, host); ICMP types are not ports.
        tcpudp = table.filter(
            pa.array(np.asarray(table.column("proto").to_numpy(zero_copy_only=False)) != "icmp")
        )
        v = tcpudp.group_by(["src", "dst", "proto", "port"], use_threads=False).aggregate(
            [("ts", "max"), ("failed", "all"), ("uid", "min"), ("mac", "max")]
        )
        touched = set()
        for s, d, p, port, t, f, u, m in zip(
            *(v.column(c).to_pylist() for c in ("src", "dst", "proto", "port")),
            *(v.column(c).to_pylist() for c in ("ts_max", "failed_all", "uid_min", "mac_max")),
            strict=True,
        ):
            key = (s, d)
            w = self._vertical.get(key)
            w.add(_proto_port(p, port), t, u or "", bool(f), self._vertical.cap)
            w.macs = m or w.macs
            touched.add(key)
        for key in touched:
            f = self._check_vertical(key, self._vertical.keys[key], ctx)
            if f:
                findings.append(f)
        self._horizontal.sweep(now)
        self._vertical.sweep(now)
        self._sources = {k[0] for k in self._horizontal.keys} | {k[0] for k in self._vertical.keys}
        return findings

    def _due(self, w: DistinctWindow, distinct: int, threshold: int) -> bool:
        # First crossing, then each doubling: reports a running scan without flooding.
        return distinct >= threshold and (w.reported == 0 or distinct >= 2 * w.reported)

    def _check_horizontal(self, key: tuple, w: DistinctWindow, ctx: Context) -> Finding | None:
        src, proto, port = key
        w.expire(w.last_ts, self.window)
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
        w.expire(w.last_ts, self.window)
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
        """Consume ARP records (columns ts, src_mac, src_ip, dst_ip, op; op 1 = request)."""
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
        touched: set[tuple] = set()
        order = np.argsort(ts[keep], kind="stable")
        for t, sip, mac, dip in zip(
            ts[keep][order], src_ip[keep][order], src_mac[keep][order], dst_ip[keep][order], strict=True
        ):
            key = (sip if sip and sip != "0.0.0.0" else mac, mac)
            w = self._arp.get(key)
            w.add(dip, float(t), "", True, self._arp.cap)
            touched.add(key)
        for key in touched:
            w = self._arp.keys[key]
            w.expire(w.last_ts, self.window)
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

    def flush(self, ctx: Context) -> list[Finding]:
        # Findings are emitted as soon as a threshold is crossed; nothing is held back.
        return []


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
        self._state: dict[tuple, dict[str, Any]] = {}
        self._last_sweep = -np.inf
        self._counts: dict[str, int] = {}
        self._prev_counts: dict[str, int] = {}
        self._count_win = -1

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
        key_col = pc.binary_join_element_wise(
            sub["id.orig_h"], sub["id.resp_h"], pc.cast(sub["id.resp_p"], pa.string()), "|"
        )
        busy = self._busy_keys(key_col, float(sub.np("ts")[-1]))
        if busy is None:
            return []
        sub = sub.filter(busy)
        src = str_col(sub, "id.orig_h")
        dst = str_col(sub, "id.resp_h")
        dport = num_col(sub, "id.resp_p").astype(np.int64)
        service = str_col(sub, "service")
        ts = sub.np("ts")
        uid = str_col(sub, "uid")
        obs = num_col(sub, "orig_bytes").astype(np.int64)
        rbs = num_col(sub, "resp_bytes").astype(np.int64)
        mac = str_col(sub, "orig_l2_addr")
        touched: set[tuple] = set()
        for i in range(len(sub)):
            key = (src[i], dst[i], int(dport[i]))
            st = self._state.get(key)
            if st is None:
                st = self._state[key] = {
                    "ts": [],
                    "ob": [],
                    "rb": [],
                    "uids": [],
                    "reported": 0,
                    "service": "",
                    "mac": None,
                }
            st["ts"].append(float(ts[i]))
            st["ob"].append(int(obs[i]))
            st["rb"].append(int(rbs[i]))
            if len(st["uids"]) < 50 and uid[i]:
                st["uids"].append(uid[i])
            st["service"] = service[i] or st["service"]
            st["mac"] = mac[i] or st["mac"]
            if len(st["ts"]) > self.max_sizes:
                for k in ("ts", "ob", "rb"):
                    del st[k][: len(st[k]) - self.max_sizes]
            touched.add(key)
        findings = [f for key in touched if (f := self._check(key, ctx)) is not None]
        now = float(ts[-1])
        if now - self._last_sweep > self.window:
            self._last_sweep = now
            self._state = {
                k: s for k, s in self._state.items() if s["ts"] and s["ts"][-1] >= now - self.window
            }
        return findings

    def _busy_keys(self, key_col: pa.ChunkedArray, now: float) -> np.ndarray | None:
        """Rows whose (source, host, port) has at least a quarter of the threshold this window."""
        win = int(now // self.window)
        if win != self._count_win:
            self._prev_counts = self._counts if win == self._count_win + 1 else {}
            self._counts, self._count_win = {}, win
        counts = pc.value_counts(key_col.combine_chunks() if hasattr(key_col, "combine_chunks") else key_col)
        hot = []
        for k, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            total = self._counts.get(k, 0) + n
            self._counts[k] = total
            if total + self._prev_counts.get(k, 0) >= max(2, self.threshold // 4):
                hot.append(k)
        if not hot:
            return None
        # typed: when every hot key is null (no responder ports in the input) the set is not a null array
        return pc.is_in(key_col, value_set=pa.array(hot, type=pa.string())).to_numpy(zero_copy_only=False)

    def _check(self, key: tuple, ctx: Context) -> Finding | None:
        st = self._state[key]
        t = np.asarray(st["ts"])
        recent = t >= t[-1] - self.window
        n = int(recent.sum())
        if n < self.threshold or (st["reported"] and n < 2 * st["reported"]):
            return None
        ob = np.asarray(st["ob"])[recent]
        rb = np.asarray(st["rb"])[recent]
        disp = max(_rel_mad(ob), _rel_mad(rb))
        if disp > self.max_size_dispersion:
            return None
        src, dst, port = key
        service = st["service"]
        login = port in LOGIN_PORTS or service in LOGIN_SERVICES
        # Off login services, alike sessions at tens per minute are what pollers and
        # beacons do: ask for a guessing rate (3x) before calling it brute force.
        if not login and n < 3 * self.threshold:
            return None
        st["reported"] = n
        score = ratio_score(n, self.threshold, floor=0.6 if login else 0.45)
        if not login:
            score = min(score, 0.6)
        span = float(t[recent][-1] - t[recent][0])
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
            float(t[recent][0]),
            float(t[recent][-1]),
            evidence,
            ["T1110", "T1110.001"],
            st["uids"],
            mac=st["mac"],
            target=dst,
            port=port,
            sessions=n,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        return []


def _rel_mad(x: np.ndarray) -> float:
    med = float(np.median(x))
    if med <= 0:
        return 1.0
    return float(np.median(np.abs(x - med)) / med)


ANALYTICS = [ScanDetector, BruteForceDetector]
