"""Benchmark of the fleet simulator: events generated per second for 500 and 5,000 devices x 24 h.

Run: .venv/bin/python bench/bench_simulate.py [--sizes 500,5000] [--hours 24]
Prints one line per size: devices, hours, events, seconds, events/s, peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

from fleetwarden.simulate import simulate_fleet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,5000", help="comma-separated device counts")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for devices in (int(x) for x in args.sizes.split(",")):
        t = time.perf_counter()
        fleet = simulate_fleet(devices=devices, hours=args.hours, seed=args.seed)
        dt = time.perf_counter() - t
        n = fleet.event_count()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kinds = ", ".join(f"{k}={len(b):,}" for k, b in fleet.batches.items())
        print(
            f"devices={devices:>6} hours={args.hours:g} events={n:>11,} seconds={dt:6.2f} "
            f"events/s={n / dt:>11,.0f} peak_rss_mb={rss:,.0f}\n    {kinds}"
        )
        del fleet


if __name__ == "__main__":
    main()
