"""Streaming latency of the detection engine at a fixed event rate.

Replays a synthetic flow stream (background traffic of many devices with injected telnet
scans, vertical scans, C2 beacons and an outbound flood) at ``--rate`` events/s through
``Engine.process`` in batches of ``--batch-ms`` of event time, and prints p50/p99 wall-clock
latency from the arrival of the event that completes a finding's evidence (the finding's
``last_seen``) to the finding's emission.

The clock is a queue model driven by measured processing times, so the run takes only
as long as the processing itself: event e arrives at ``start + (e.ts - t0)``; a batch is
handed to the engine when its last event has arrived and the engine is free; a finding
is emitted when the call that produced it returns.  Latency therefore includes batching
delay, queueing behind slow batches and processing time.

    .venv/bin/python bench/bench_streaming.py --seconds 60 --rate 10000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fleetwarden.detection.engine import Engine
from fleetwarden.events import EventBatch


def synthetic_stream(seconds: float, rate: float, seed: int = 1) -> tuple[EventBatch, dict]:
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000.0
    n_bg = int(seconds * rate)
    devices = np.array([f"10.1.{i // 250}.{i % 250 + 1}" for i in range(2000)], dtype=object)
    clouds = np.array([f"52.{i // 250}.{i % 250}.10" for i in range(500)], dtype=object)
    ts = [np.sort(rng.uniform(t0, t0 + seconds, n_bg))]
    src = [devices[rng.integers(0, len(devices), n_bg)]]
    dst = [clouds[rng.integers(0, len(clouds), n_bg)]]
    dport = [rng.choice([443, 8883, 123, 53], n_bg)]
    state = [np.full(n_bg, "SF", dtype=object)]
    ob = [rng.integers(100, 3000, n_bg)]
    injected = {}
    # telnet scans: one host per 50 ms from a compromised device, starting at random times
    for k in range(3):
        start = t0 + rng.uniform(5, seconds - 15)
        n = 150
        ts.append(start + np.arange(n) * 0.05)
        src.append(np.full(n, f"10.9.0.{k + 1}", dtype=object))
        dst.append(np.array([f"198.18.{k}.{i}" for i in range(n)], dtype=object))
        dport.append(np.full(n, 23))
        state.append(np.full(n, "S0", dtype=object))
        ob.append(np.zeros(n, dtype=np.int64))
        injected[f"10.9.0.{k + 1}"] = "scan"
    # vertical scan of one host
    start = t0 + rng.uniform(5, seconds - 10)
    ts.append(start + np.arange(200) * 0.02)
    src.append(np.full(200, "10.9.1.1", dtype=object))
    dst.append(np.full(200, "10.1.0.1", dtype=object))
    dport.append(np.arange(1, 201))
    state.append(np.full(200, "REJ", dtype=object))
    ob.append(np.zeros(200, dtype=np.int64))
    injected["10.9.1.1"] = "scan"
    # beacons: every 2 s with 5 % jitter to one external host
    for k in range(3):
        n = int(seconds / 2) - 1
        ts.append(t0 + 1 + np.arange(n) * 2.0 + rng.normal(0, 0.1, n))
        src.append(np.full(n, f"10.9.2.{k + 1}", dtype=object))
        dst.append(np.full(n, f"185.220.{k}.9", dtype=object))
        dport.append(np.full(n, 443))
        state.append(np.full(n, "SF", dtype=object))
        ob.append(np.full(n, 620))
        injected[f"10.9.2.{k + 1}"] = "c2-beacon"
    ts_all = np.concatenate(ts)
    order = np.argsort(ts_all, kind="stable")
    src_all = np.concatenate(src)[order]
    n_all = len(ts_all)
    sf = np.concatenate(state)[order] == "SF"
    batch = EventBatch.from_columns(
        "flow",
        {
            "ts": ts_all[order],
            "uid": np.array([f"C{i:x}" for i in range(n_all)], dtype=object),
            "id.orig_h": src_all,
            "id.orig_p": rng.integers(1024, 65535, n_all),
            "id.resp_h": np.concatenate(dst)[order],
            "id.resp_p": np.concatenate(dport)[order],
            "proto": np.full(n_all, "tcp", dtype=object),
            "conn_state": np.concatenate(state)[order],
            "orig_bytes": np.concatenate(ob)[order],
            "resp_bytes": np.where(sf, 1500, 0),
            "orig_pkts": np.where(sf, 6, 1),
            "resp_pkts": np.where(sf, 5, 0),
            "duration": np.where(sf, 0.3, 0.0),
        },
    )
    return batch, injected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the stream in event time")
    ap.add_argument("--rate", type=float, default=10_000.0, help="background events per second")
    ap.add_argument("--batch-ms", type=float, default=100.0, help="event time per engine call")
    args = ap.parse_args()

    stream, injected = synthetic_stream(args.seconds, args.rate)
    ts = stream.np("ts")
    t0 = float(ts[0])
    edges = np.searchsorted(ts, t0 + np.arange(0, args.seconds + 1, args.batch_ms / 1000.0))
    engine = Engine()
    clock = 0.0  # virtual wall time of the engine, seconds after the stream started
    latencies: list[float] = []
    proc: list[float] = []
    found: dict[str, set[str]] = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        batch = stream.slice(int(lo), int(hi - lo))
        arrived = float(ts[hi - 1]) - t0
        clock = max(clock, arrived)
        t = time.perf_counter()
        findings = engine.process(batch)
        dt = time.perf_counter() - t
        proc.append(dt)
        clock += dt
        for f in findings:
            latencies.append(clock - (f.last_seen - t0))
            found.setdefault(f.entity, set()).add(f.category)
    engine.flush()
    lat = np.asarray(latencies)
    events = len(stream)
    print(
        f"events: {events} over {args.seconds:.0f} s of event time ({events / args.seconds:,.0f} events/s), "
        f"batches of {args.batch_ms:.0f} ms"
    )
    print(
        f"engine time per batch: p50 {np.percentile(proc, 50) * 1e3:.1f} ms, p99 "
        f"{np.percentile(proc, 99) * 1e3:.1f} ms, total {sum(proc):.2f} s "
        f"({events / sum(proc):,.0f} events/s of capacity)"
    )
    if len(lat):
        print(
            f"finding latency (completing event -> emission): p50 {np.percentile(lat, 50):.3f} s, "
            f"p99 {np.percentile(lat, 99):.3f} s, max {lat.max():.3f} s over {len(lat)} findings"
        )
    hits = sum(1 for e, c in injected.items() if c in found.get(e, set()))
    print(
        f"injected attacks detected while streaming: {hits}/{len(injected)}; findings on background "
        f"devices: {sum(1 for e in found if e not in injected)}"
    )


if __name__ == "__main__":
    main()
