"""Events per second through one scale-out worker (NATS JetStream in, PostgreSQL checkpoints).

Publishes a simulated fleet to a fresh stream, then times one worker owning every partition
from start to caught-up (warm-up and connection included), with a checkpoint every 2 s, and
the in-process engine on the same events (``fleet.iter_batches(60)``, as the worker's event-time
windows): events/s of both, their ratio, and whether the two found the same
(entity, category, detector) set.

    .venv/bin/python bench/bench_worker.py [--devices 300] [--hours 6] [--partitions 8]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import sqlalchemy as sa

from fleetwarden.app.runtime import warm_up
from fleetwarden.app.worker import Worker
from fleetwarden.bus.jetstream import connect, publish_batches_nats
from fleetwarden.detection.engine import Engine
from fleetwarden.simulate import simulate_fleet
from fleetwarden.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bus", default="nats://127.0.0.1:4222")
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--devices", type=int, default=300)
    ap.add_argument("--hours", type=float, default=6)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()

    tag = secrets.token_hex(4)
    stream, prefix, schema = f"FWBENCH_{tag}", f"fwbench.{tag}.events", f"fw_bench_{tag}"
    fleet = simulate_fleet(devices=args.devices, hours=args.hours, seed=7)
    t = time.perf_counter()
    sent = publish_batches_nats(
        fleet.iter_batches(60), args.bus, args.partitions, stream=stream, prefix=prefix
    )
    pub_s = time.perf_counter() - t
    warm_up()
    engine = Engine()
    t = time.perf_counter()
    reference = [f for b in fleet.iter_batches(60) for f in engine.process(b)] + engine.flush()
    eng_s = time.perf_counter() - t
    store = open_store(args.db, schema=schema)
    try:
        found: list = []
        w = Worker(
            args.bus,
            store,
            partitions=args.partitions,
            stream=stream,
            prefix=prefix,
            checkpoint_every=2.0,
            on_finding=found.append,
        )
        r = asyncio.run(w.run(idle_exit=1.0, drain=True))
        work_s = r.seconds - 1.0  # the idle wait before exit is not work
        print(f"publish: {sent:,} events in {pub_s:.2f} s = {sent / pub_s:,.0f} events/s")
        print(f"engine:  {engine.events:,} events in {eng_s:.2f} s = {engine.events / eng_s:,.0f} events/s (in-process)")
        print(
            f"worker:  {r.events:,} events in {work_s:.2f} s = {r.events / work_s:,.0f} events/s "
            f"= {(r.events / work_s) / (engine.events / eng_s):.2f} of the in-process engine "
            f"({r.messages} messages, {r.findings} findings, {r.checkpoints} checkpoints, "
            f"last checkpoint {r.checkpoint_bytes / 1e6:.1f} MB for {args.partitions} partitions)"
        )
        keys = {(f.entity, f.category, f.detector) for f in found}
        ref = {(f.entity, f.category, f.detector) for f in reference}
        print(
            f"findings: worker {len(found)}, engine {len(reference)}; (entity, category, detector) "
            f"{'identical' if keys == ref else f'differ: only worker {sorted(keys - ref)}, only engine {sorted(ref - keys)}'}"
        )
    finally:
        store.close()
        eng = sa.create_engine(args.db)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()

        async def delete() -> None:
            nc = await connect(args.bus)
            await nc.jetstream().delete_stream(stream)
            await nc.close()

        asyncio.run(delete())


if __name__ == "__main__":
    main()
