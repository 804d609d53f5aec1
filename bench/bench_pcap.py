"""Benchmark of the pcap source: packets/s and flows/s, the numpy fast path against dpkt alone.

Sets: (a) every IoT Sentinel capture, (b) the StopDDoS captures, (c) a synthetic capture of
>= 1,000,000 packets made in a temporary folder by replaying the ddos + stratosphere captures
with shifted timestamps and addresses.  "fast" is ``fleetwarden.sources.pcap.read`` end to
end (container walk, vectorised decode, flow assembly, DNS, Arrow batches); "dpkt" decodes
each packet with dpkt (Ethernet -> IP -> TCP/UDP/ICMP) and counts packets/bytes per
bidirectional 5-tuple in a dict, a lower bound of what a per-packet dpkt reader costs.
Packets are every record of the captures (counted before timing); wall and CPU
(process_time) seconds are both printed because the machine is shared.

Run: .venv/bin/python bench/bench_pcap.py [--packets N] [--dpkt-limit N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dpkt
import numpy as np

from fleetwarden.sources import ReadStats
from fleetwarden.sources import pcap as pcapsrc

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fast(paths: list[Path]) -> tuple[int, int, float, float]:
    """Packets (every record of the captures), flows, wall and CPU seconds of ``pcap.read``."""
    packets = sum(len(pcapsrc.read_packets(p, skip_bad=True)) for p in paths)  # not timed
    flows = 0
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        stats = ReadStats()
        for batch in pcapsrc.read(p, skip_bad=True, stats=stats, batch_size=65_536):
            if batch.kind == "flow":
                flows += len(batch)
    return packets, flows, time.perf_counter() - t, time.process_time() - c


def dpkt_only(paths: list[Path], limit: int | None = None) -> tuple[int, int, float, float]:
    table: dict[tuple, list[int]] = {}
    packets = 0
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        with open(p, "rb") as fh:
            for _ts, buf in dpkt.pcap.Reader(fh):
                packets += 1
                try:
                    ip = dpkt.ethernet.Ethernet(buf).data
                    if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                        continue
                    l4 = ip.data
                    sp, dp = (l4.sport, l4.dport) if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) else (0, 0)
                    a, b = (ip.src, sp), (ip.dst, dp)
                    key = (ip.p, a, b) if a <= b else (ip.p, b, a)
                    row = table.setdefault(key, [0, 0])
                    row[0] += 1
                    row[1] += len(ip)
                except (dpkt.dpkt.Error, AttributeError):
                    continue
                if limit and packets >= limit:
                    return packets, len(table), time.perf_counter() - t, time.process_time() - c
    return packets, len(table), time.perf_counter() - t, time.process_time() - c


def synthetic(out: Path, sources: list[Path], target: int) -> int:
    """Replay ``sources`` with shifted times and addresses until ``target`` packets."""
    parts = []
    header = None
    for src in sources:
        cap = pcapsrc.read_packets(src)
        d = pcapsrc.decode(cap)
        raw = cap.buf
        if header is None:
            header = raw[:24].tobytes()
        assert raw[:4].tobytes() == header[:4] and int(cap.linktype[0]) == pcapsrc.LT_ETHERNET
        v4 = np.flatnonzero(d.net == 4)
        parts.append(
            (
                raw[24:].copy(),
                cap.rec_off - 24,
                cap.ts,
                (cap.off + d.l3)[v4] - 24 + 12,  # IPv4 source address
                len(cap),
            )
        )
    per_round = sum(p[4] for p in parts)
    rounds = -(-target // per_round)
    written = 0
    with open(out, "wb") as fh:
        fh.write(header)
        for r in range(rounds):
            for body, rec, ts, ipsrc, n in parts:
                b = body.copy()
                secs = ts.astype(np.int64) + r * 86_400  # a day later per round
                for k in range(4):
                    b[rec + k] = (secs >> (8 * k)) & 0xFF
                # second octet of both addresses moved by the round: new hosts, new flows
                b[ipsrc + 1] = (b[ipsrc + 1].astype(np.int64) + r) & 0xFF
                b[ipsrc + 5] = (b[ipsrc + 5].astype(np.int64) + r) & 0xFF
                fh.write(b.tobytes())
                written += n
    return written


def report(name: str, packets: int, flows: int, seconds: float, cpu: float, files: int = 1) -> None:
    print(
        f"{name:<40} {packets:>10,} pkts {flows:>9,} flows | wall {seconds:>6.2f} s "
        f"{packets / seconds:>9,.0f} pkts/s | cpu {cpu:>6.2f} s {packets / cpu:>9,.0f} pkts/s "
        f"{flows / cpu:>9,.0f} flows/s | {cpu / files * 1e3:7.2f} ms cpu/file"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="size of the synthetic capture")
    ap.add_argument("--dpkt-limit", type=int, default=200_000, help="packets of (c) decoded by dpkt")
    args = ap.parse_args(argv)
    sentinel = sorted((DATA / "iot-sentinel").glob("*/*.pcap"))
    ddos = sorted((DATA / "ddos").glob("*.pcap"))
    strat = sorted((DATA / "stratosphere").glob("*.pcap"))
    if not sentinel or not ddos:
        print(f"shared data not found under {DATA}", file=sys.stderr)
        return 2
    report(f"(a) iot-sentinel x{len(sentinel)} fast", *fast(sentinel), files=len(sentinel))
    report(f"(a) iot-sentinel x{len(sentinel)} dpkt", *dpkt_only(sentinel), files=len(sentinel))
    report("(b) ddos fast", *fast(ddos), files=len(ddos))
    report("(b) ddos dpkt", *dpkt_only(ddos), files=len(ddos))
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "replay.pcap"
        n = synthetic(big, ddos + strat, args.packets)
        print(f"(c) synthetic capture: {n:,} packets, {big.stat().st_size / 1e6:,.0f} MB")
        report("(c) synthetic fast", *fast([big]))
        report(f"(c) synthetic dpkt (first {args.dpkt_limit:,})", *dpkt_only([big], args.dpkt_limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
