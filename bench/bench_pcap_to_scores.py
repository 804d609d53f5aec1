"""Benchmark: pcap bytes -> scored flows, packets/s end to end, beside Kitsune's measured speed.

Trains the flow model once on the IoT-23 CSVs (``fleetwarden.app.modeling.train`` into a
temporary directory), loads it, then for each capture times ``read_events`` (container walk,
vectorised decode, flow assembly, DNS, Arrow batches) plus ``score_batch`` on every flow batch,
one core, no caching between captures.  Sets: (a) a synthetic capture of >= 1,000,000 packets
(the ddos + stratosphere captures replayed with shifted times and addresses, as in
``bench_pcap.py``), (b) each real ddos / stratosphere capture and all of them together, (c) every
IoT Sentinel set-up capture, read as one stream merged in event time
(``fleetwarden.app.inputs.InputSet``): the stream Kitsune was measured on.

Packets are the capture's records (every frame, IP or not).  The Kitsune figures are those of
../shared/ANCHORS.md, measured side by side on a machine of this kind (Kitsune-py 7c8ea51 with
its example settings, tshark parsing included), and they measure different things:

* 321 packets/s: the whole run over all IoT Sentinel set-up captures merged in time order plus
  a 2,000-packet botnet capture (195,421 packets).  Set (c) is the same kind of stream (without
  the botnet capture, which is not in the shared data): the comparable figure;
* about 1,000 packets/s: its first 60,000 packets, before its per-stream statistics grow;
* about 3,200 packets/s: a 2,000-packet capture alone: a tiny input, not a fleet.

Ratios are printed against the first (the stream figure); the target is at least 30x it.  Wall
and CPU (process_time) time are both printed because the machine is shared: CPU time is the
fairer figure under load.

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
from fleetwarden.app.inputs import InputSet
from fleetwarden.app.models import load_flow_model
from fleetwarden.detection import flowmodel
from fleetwarden.sources import ReadStats, read_events
from fleetwarden.sources import pcap as pcapsrc

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# ../shared/ANCHORS.md, "Kitsune-py": packets per second over the whole IoT Sentinel stream
# (the comparable figure), over its first 60k packets, and on a 2k-packet capture alone
KITSUNE_PPS = 321.0
KITSUNE_EARLY_PPS = 1_000.0
KITSUNE_TINY_PPS = 3_200.0


def run(model: flowmodel.FlowModel, paths: list[Path], merged: bool = False) -> dict[str, float]:
    """Read and score ``paths`` (each its own stream, or with ``merged`` one stream in event time);
    return packets, flows, alerts and read / total wall and CPU seconds."""
    packets = sum(len(pcapsrc.read_packets(p, skip_bad=True)) for p in paths)  # not timed
    flows = alerts = 0
    read_wall = read_cpu = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    for group in [paths] if merged else [[p] for p in paths]:
        model.reset_stream()
        if merged:
            it = InputSet(group, skip_bad=True).batches()
        else:
            it = read_events(group[0], skip_bad=True, stats=ReadStats())
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


def best(model: flowmodel.FlowModel, paths: list[Path], repeat: int, merged: bool = False) -> dict[str, float]:
    """Best of ``repeat`` runs by CPU time (the least disturbed by other processes)."""
    return min((run(model, paths, merged) for _ in range(repeat)), key=lambda r: r["cpu"])


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
        print(
            f"Kitsune (ANCHORS.md): {KITSUNE_PPS:,.0f} pkts/s over the IoT Sentinel stream (the ratio below), "
            f"~{KITSUNE_EARLY_PPS:,.0f} over its first 60k packets, ~{KITSUNE_TINY_PPS:,.0f} on a 2k-packet capture"
        )
        report(f"(a) synthetic {n:,} packets", best(model, [big], args.repeat))
        for p in ddos + strat:
            report(f"(b) {p.stem[:31]}", best(model, [p], args.repeat))
        report(f"(b) ddos+stratosphere x{len(ddos + strat)}", best(model, ddos + strat, args.repeat))
        sentinel = sorted((DATA / "iot-sentinel").glob("*/*.pcap"))
        if sentinel:
            report(f"(c) IoT Sentinel x{len(sentinel)}, one stream", best(model, sentinel, args.repeat, merged=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
