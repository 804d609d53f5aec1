"""Live detection latency through a real MQTT broker at a fixed event rate.

A simulated fleet (with the Mirai-like camera and DNS tunnelling scenarios) is published to
Mosquitto at ``--rate`` events/s, in time order, ``--per-message`` events per MQTT message
(as a gateway batching its devices).  `fleetwarden watch`'s code path subscribes, decodes
and runs the engine.  For every finding we take the wall-clock moment the event that
completed its evidence (the first published event at or after the finding's ``last_seen``)
left the publisher, and the moment the finding came out: the difference is the latency.

Run: .venv/bin/python bench/bench_mqtt_stream.py [--rate 10000] [--devices 60] [--hours 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import uuid

import numpy as np

from fleetwarden.app.runtime import warm_up
from fleetwarden.app.watch import watch
from fleetwarden.control.inventory import context_from_fleet
from fleetwarden.simulate import simulate_fleet
from fleetwarden.sources import ReadStats
from fleetwarden.sources.mqtt import MqttEventSource, publish_batches


def _publish(batches, url, prefix, per_message, rate, progress_q) -> None:
    t0 = time.monotonic()
    progress_q.put((0, t0))
    publish_batches(
        batches,
        url,
        prefix=prefix,
        per_message=per_message,
        rate=rate,
        on_sent=lambda n, t: progress_q.put((n, t)),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--devices", type=int, default=60)
    ap.add_argument("--hours", type=float, default=2)
    ap.add_argument("--per-message", type=int, default=50)
    args = ap.parse_args()

    fleet = simulate_fleet(
        devices=args.devices, hours=args.hours, seed=1, scenarios=["mirai-camera", "dns-tunnel"]
    )
    batches = list(fleet.iter_batches(seconds=30))
    warm_up()  # what `watch` does before its first event, done before the publisher starts
    ts_sorted = np.sort(np.concatenate([b.np("ts") for b in batches]))
    total = len(ts_sorted)
    prefix = f"fwbench-{uuid.uuid4().hex[:6]}/events"
    stats = ReadStats()
    source = MqttEventSource(args.url, f"{prefix}/#", stats=stats, flush_interval=0.1)
    source.start()
    source.subscribed.wait(5)
    emitted: list[tuple[float, float]] = []  # (finding.last_seen, wall time out)
    # The publisher runs in its own process, as a gateway would: it does not share our GIL.
    ctx = mp.get_context("fork")
    progress_q = ctx.SimpleQueue()
    pub = ctx.Process(
        target=_publish,
        args=(batches, args.url, prefix, args.per_message, args.rate, progress_q),
    )
    pub.start()
    limit = time.monotonic() + total / args.rate + 120

    def until_all_received():
        while time.monotonic() < limit:
            yield from source.drain()
            if stats.records + stats.skipped >= total:
                return
            time.sleep(source.flush_interval)

    result = watch(
        until_all_received(),
        ctx=context_from_fleet(fleet),
        on_finding=lambda f: emitted.append((f.last_seen, time.monotonic())),
    )
    pub.join()
    source.close()
    progress = []
    while not progress_q.empty():
        progress.append(progress_q.get())
    started = {"t0": progress[0][1], "t1": progress[-1][1]}
    t0 = started["t0"]
    sent_n = np.asarray([n for n, _ in progress])
    sent_t = np.asarray([t for _, t in progress])
    lat = []
    for last_seen, out_at in emitted[: len(emitted)]:
        k = int(np.searchsorted(ts_sorted, last_seen, side="left"))
        if k >= total:  # completed only at end of input (flush): no live latency to speak of
            continue
        # the moment the message holding event k left the publisher
        j = min(int(np.searchsorted(sent_n, k + 1, side="left")), len(sent_t) - 1)
        lat.append(out_at - sent_t[j])
    lat_arr = np.asarray(lat)
    achieved = total / (started["t1"] - t0)
    print(
        f"events {total:,} published at {achieved:,.0f}/s (target {args.rate:,.0f}/s), received "
        f"{result.events:,} (lost {total - result.events - stats.skipped:,}), skipped {stats.skipped}; findings {len(result.findings)}, "
        f"incidents {len(result.incidents)}"
    )
    if len(lat_arr):
        print(
            f"finding latency from completing event to emission: p50 {np.percentile(lat_arr, 50):.3f} s, "
            f"p99 {np.percentile(lat_arr, 99):.3f} s, max {lat_arr.max():.3f} s over {len(lat_arr)} findings"
        )
    eng = np.asarray(result.engine_latency)
    print(
        f"engine time per flush: p50 {np.percentile(eng, 50) * 1000:.1f} ms, p99 {np.percentile(eng, 99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
