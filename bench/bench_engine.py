"""Throughput of the detection engine on the simulated fleet, with CPU time per analytic.

Simulates the demo fleet (``simulate_fleet``), builds the inventory context the demo uses,
streams ``fleet.iter_batches(seconds=...)`` through ``Engine.process`` and flushes, exactly
as ``fleetwarden demo`` does (without the store).  Prints events/s for the engine alone
(wall and CPU) and the CPU seconds each analytic spent in ``update`` and ``flush``.

``--save FILE`` writes the findings (detector, entity, category, score rounded to 3 places,
first_seen, last_seen, plus the evidence) as JSON; ``--compare FILE`` checks this run's
findings against such a file and exits 1 when they differ, so an optimisation can be shown
to leave detection unchanged.

    .venv/bin/python bench/bench_engine.py --devices 300 --hours 24 --seed 7
    .venv/bin/python bench/bench_engine.py --seed 7 --save /tmp/engine_seed7.json
    .venv/bin/python bench/bench_engine.py --seed 7 --compare /tmp/engine_seed7.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from fleetwarden.control.inventory import context_from_fleet
from fleetwarden.core.findings import Finding
from fleetwarden.detection.engine import Engine
from fleetwarden.simulate import simulate_fleet


class _Timed:
    """Wraps an analytic and adds the CPU time of its update/flush calls to a ledger."""

    def __init__(self, inner: Any, ledger: dict[str, list[float]]) -> None:
        self._inner = inner
        self.name = inner.name
        self.kinds = inner.kinds
        self._row = ledger.setdefault(f"{type(inner).__name__} ({inner.name})", [0.0, 0.0, 0])
        if hasattr(inner, "update_arp"):
            self.update_arp = inner.update_arp

    def update(self, batch: Any, ctx: Any) -> list[Finding]:
        t = time.process_time()
        out = self._inner.update(batch, ctx)
        self._row[0] += time.process_time() - t
        self._row[2] += 1
        return out

    def flush(self, ctx: Any) -> list[Finding]:
        t = time.process_time()
        out = self._inner.flush(ctx)
        self._row[1] += time.process_time() - t
        return out


def finding_key(f: Finding) -> list[Any]:
    return [f.detector, f.entity, f.category, round(f.score, 3), f.first_seen, f.last_seen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk", type=float, default=600.0, help="seconds of event time per engine call batch")
    ap.add_argument("--save", help="write the findings to this JSON file")
    ap.add_argument("--compare", help="compare the findings with this JSON file (exit 1 on a difference)")
    ap.add_argument("--profile", help="write a cProfile of the engine run to this file")
    args = ap.parse_args()

    t = time.perf_counter()
    fleet = simulate_fleet(devices=args.devices, hours=args.hours, seed=args.seed)
    ctx = context_from_fleet(fleet)
    chunks = list(fleet.iter_batches(seconds=args.chunk))
    sim_s = time.perf_counter() - t
    events_by_kind = Counter()
    for b in chunks:
        events_by_kind[b.kind] += len(b)
    events = sum(events_by_kind.values())

    ledger: dict[str, list[float]] = {}
    engine = Engine(ctx=ctx)
    engine.analytics = [_Timed(a, ledger) for a in engine.analytics]
    engine._by_kind = {}
    for a in engine.analytics:
        for kind in a.kinds:
            engine._by_kind.setdefault(kind, []).append(a)

    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    w0, c0 = time.perf_counter(), time.process_time()
    findings: list[Finding] = []
    for batch in chunks:
        findings += engine.process(batch)
    findings += engine.flush()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)

    print(
        f"fleet: {args.devices} devices, {args.hours:g} h, seed {args.seed}: {events:,} events in "
        f"{len(chunks)} batches ({', '.join(f'{k} {n:,}' for k, n in events_by_kind.most_common())}); "
        f"simulated in {sim_s:.1f} s"
    )
    print(
        f"engine: {wall:.2f} s wall, {cpu:.2f} s CPU -> {events / wall:,.0f} events/s wall, "
        f"{events / cpu:,.0f} events/s CPU; {len(findings)} findings"
    )
    total = sum(r[0] + r[1] for r in ledger.values())
    print(f"CPU seconds per analytic (sum {total:.2f} s; engine overhead {cpu - total:.2f} s):")
    print(f"  {'analytic':<40} {'update':>8} {'flush':>8} {'calls':>6} {'share':>6}")
    for name, (up, fl, calls) in sorted(ledger.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        share = (up + fl) / cpu * 100 if cpu else 0.0
        print(f"  {name:<40} {up:8.2f} {fl:8.2f} {calls:6d} {share:5.1f}%")

    rows = sorted(
        ([*finding_key(f), list(f.evidence)] for f in findings), key=lambda r: json.dumps(r, sort_keys=True)
    )
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(rows, fh)
        print(f"saved {len(rows)} findings to {args.save}")
    if args.compare:
        with open(args.compare) as fh:
            before = json.load(fh)
        # JSON round trip so floats and lists compare the same way on both sides
        now = json.loads(json.dumps(rows))
        keys_now = sorted(json.dumps(r[:6]) for r in now)
        keys_before = sorted(json.dumps(r[:6]) for r in before)
        same_keys = keys_now == keys_before
        same_evidence = now == before
        print(
            f"compare with {args.compare}: {len(before)} findings before, {len(now)} now; "
            f"(detector, entity, category, score, first, last) {'identical' if same_keys else 'DIFFER'}; "
            f"evidence {'identical' if same_evidence else 'DIFFERS'}"
        )
        if not same_keys:
            for k in sorted(set(keys_before) - set(keys_now))[:10]:
                print(f"  only before: {k}")
            for k in sorted(set(keys_now) - set(keys_before))[:10]:
                print(f"  only now:    {k}")
        if not (same_keys and same_evidence):
            sys.exit(1)


if __name__ == "__main__":
    main()
