"""Benchmark: pcap bytes -> scored flows, packets/s end to end, against Kitsune's reference speed.

Trains the flow model once on the IoT-23 CSVs (``fleetwarden.app.modeling.train`` into a
temporary directory), loads it, then for each capture times ``read_events`` (container walk,
vectorised decode, flow assembly, DNS, Arrow batches) plus ``score_batch`` on every flow batch,
one core, no caching between captures.  Sets: (a) a synthetic capture of >= 1,000,000 packets
(the ddos + stratosphere captures replayed with shifted times and addresses, as in
``bench_pcap.py``), (b) each real ddos / stratosphere capture and all of them together.

Packets are the capture's records (every frame, IP or not).  The ratio is to Kitsune's
reference Python implementation, ~3,200 packets/s for its feature extraction alone on this
machine (the target is >= 30x, i.e. >= 96,000 packets/s).  Wall and CPU (process_time) time
are both printed because the machine is shared: CPU time is the fairer figure under load.

Run: .venv/bin/python bench/bench_pcap_to_scores.py [--packets N] [--repeat R]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_pcap import synthetic  # same folder
from fleetwarden.app import modeling
from fleetwarden.app.models import load_flow_model
from fleetwarden.detection import flowmodel
from fleetwarden.sources import ReadStats, read_events
from fleetwarden.sources import pcap as pcapsrc

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KITSUNE_PPS = 3_200.0


def run(model: flowmodel.FlowModel, paths: list[Path]) -> dict[str, float]:
    """Read and score ``paths``; return packets, flows, alerts and read / total wall and CPU seconds."""
    packets = sum(len(pcapsrc.read_packets(p, skip_bad=True)) for p in paths)  # not timed
    flows = alerts = 0
    read_wall = read_cpu = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        model.reset_stream()  # each capture is its own stream
        stats = ReadStats()
        it = read_events(p, skip_bad=True, stats=stats)
        while True:
            rw, rc = time.perf_counter(), time.process_time()
            batch = next(it, None)
            read_wall += time.perf_counter() - rw
            read_cpu += time.process_time() - rc
            if batch is None:
                break
            if batch.kind != "flow":
                continue
            _scores, alert, _reasons = model.score_batch(batch)
            flows += len(batch)
            alerts += int(alert.sum())
    return {
        "packets": packets,
        "flows": flows,
        "alerts": alerts,
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
        "read_wall": read_wall,
        "read_cpu": read_cpu,
    }


def report(name: str, r: dict[str, float]) -> None:
    pps_wall = r["packets"] / r["wall"]
    pps_cpu = r["packets"] / r["cpu"]
    print(
        f"{name:<34} {r['packets']:>10,} pkts {r['flows']:>8,} flows {r['alerts']:>7,} alerts | "
        f"wall {r['wall']:6.2f} s {pps_wall:>9,.0f} pkts/s ({pps_wall / KITSUNE_PPS:5.1f}x Kitsune) | "
        f"cpu {r['cpu']:6.2f} s {pps_cpu:>9,.0f} pkts/s ({pps_cpu / KITSUNE_PPS:5.1f}x) | "
        f"read cpu {r['read_cpu']:5.2f} s, score cpu {r['cpu'] - r['read_cpu']:5.2f} s"
    )


def best(model: flowmodel.FlowModel, paths: list[Path], repeat: int) -> dict[str, float]:
    """Best of ``repeat`` runs by CPU time (the least disturbed by other processes)."""
    return min((run(model, paths) for _ in range(repeat)), key=lambda r: r["cpu"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="size of the synthetic capture")
    ap.add_argument("--repeat", type=int, default=1, help="runs per set; the best CPU time is kept")
    args = ap.parse_args(argv)
    iot23 = sorted((DATA / "iot23").glob("*.csv"))
    ddos = sorted((DATA / "ddos").glob("*.pcap"))
    strat = sorted((DATA / "stratosphere").glob("*.pcap"))
    if not iot23 or not ddos or not strat:
        print(f"shared data not found under {DATA}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = modeling.train(iot23, Path(tmp) / "model")
        print(f"trained on {summary['rows']:,} IoT-23 flows in {time.perf_counter() - t:.1f} s")
        model = load_flow_model(Path(tmp) / "model")
        big = Path(tmp) / "replay.pcap"
        n = synthetic(big, ddos + strat, args.packets)
        print(f"Kitsune reference: {KITSUNE_PPS:,.0f} pkts/s; target 30x = {30 * KITSUNE_PPS:,.0f} pkts/s")
        report(f"(a) synthetic {n:,} packets", best(model, [big], args.repeat))
        for p in ddos + strat:
            report(f"(b) {p.stem[:31]}", best(model, [p], args.repeat))
        report(f"(b) ddos+stratosphere x{len(ddos + strat)}", best(model, ddos + strat, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
