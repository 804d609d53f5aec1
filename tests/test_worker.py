"""The scale-out worker against the real NATS JetStream server and PostgreSQL.

A simulated fleet with an attack is published to a partitioned stream of its own; workers
consume it and their findings are held against one in-process engine over the same events.
Each test uses its own stream, subject prefix and database schema, and removes them.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import sqlalchemy as sa

from fleetwarden.app.worker import Worker, dump_engine, load_engine, read_checkpoint
from fleetwarden.bus.jetstream import connect, partition_of, publish_batches_nats
from fleetwarden.detection.engine import Engine
from fleetwarden.simulate import simulate_fleet
from fleetwarden.store import open_store

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

PARTITIONS = 4


@pytest.fixture(scope="module")
def fleet():
    return simulate_fleet(devices=30, hours=2, seed=5, scenarios=["mirai-camera"])


@pytest.fixture(scope="module")
def reference(fleet) -> set[tuple[str, str, str]]:
    """What one in-process engine finds over the whole fleet, in time order."""
    engine = Engine()
    found = []
    for batch in fleet.iter_batches(seconds=60):
        found += engine.process(batch)
    found += engine.flush()
    return {(f.entity, f.category, f.detector) for f in found}


@pytest.fixture
def bus(nats_url, fleet):
    """A fresh stream holding the fleet's events: (url, stream, prefix); deleted afterwards."""
    tag = secrets.token_hex(4)
    stream, prefix = f"FWTEST_{tag}", f"fwtest.{tag}.events"
    sent = publish_batches_nats(
        fleet.iter_batches(seconds=60), nats_url, PARTITIONS, per_message=50, stream=stream, prefix=prefix
    )
    assert sent == fleet.event_count()
    yield nats_url, stream, prefix

    async def delete() -> None:
        nc = await connect(nats_url)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


@pytest.fixture
def store(postgres_url):
    schema = f"fw_worker_{secrets.token_hex(4)}"
    st = open_store(postgres_url, schema=schema)
    yield st
    st.close()
    eng = sa.create_engine(postgres_url)
    with eng.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


def _worker(bus, store, owned=None, **kwargs) -> tuple[Worker, list]:
    url, stream, prefix = bus
    found: list = []
    w = Worker(
        url,
        store,
        partitions=PARTITIONS,
        owned=owned,
        stream=stream,
        prefix=prefix,
        record=True,
        checkpoint_every=1.0,
        on_finding=found.append,
        **kwargs,
    )
    return w, found


def _keys(findings) -> set[tuple[str, str, str]]:
    return {(f.entity, f.category, f.detector) for f in findings}


def test_two_workers_on_disjoint_partitions_find_what_one_engine_finds(bus, store, fleet, reference):
    assert reference, "the scenario should be detected by the plain engine"
    w1, found1 = _worker(bus, store, owned=[0, 2])
    w2, found2 = _worker(bus, store, owned=[1, 3])

    async def both() -> None:
        # two workers in one event loop, as two processes would run them side by side
        await asyncio.gather(w1.run(idle_exit=1.5, drain=True), w2.run(idle_exit=1.5, drain=True))

    asyncio.run(both())
    # every event went to exactly one worker
    assert w1.result.events + w2.result.events == fleet.event_count()
    assert w1.result.events > 0 and w2.result.events > 0
    assert _keys(found1) | _keys(found2) == reference
    # each device's state lives in one engine: no entity is reported by both workers
    assert not {k[0] for k in _keys(found1)} & {k[0] for k in _keys(found2)}
    # findings were stored once each, and every partition was checkpointed at its last message
    with store.engine.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT entity, category, detector FROM findings")).all())
    assert {tuple(r) for r in stored} == reference
    for w in (w1, w2):
        cp = store.load_checkpoint(w.key)
        assert cp is not None and cp.partitions == PARTITIONS
        positions = read_checkpoint(cp.state)[0]["positions"]
        for ps in w.parts:
            assert positions[str(ps.index)]["done"] == ps.done == ps.fetched > 0
            assert not positions[str(ps.index)]["partial"]


def test_crash_and_restart_from_the_checkpoint_neither_loses_nor_double_counts(bus, store, fleet, reference):
    total = fleet.event_count()

    async def crashed_run() -> tuple[Worker, list]:
        w, found = _worker(bus, store, ack_wait=1.0, fetch_batch=32)
        await w.start()
        deadline = time.monotonic() + 20

        async def until(events: int) -> None:
            while w.result.events < events and time.monotonic() < deadline:
                await w.poll()

        await until(total // 4)
        # checkpoints whose acks never left (a crash right after each commit): the server still
        # counts every message as unacknowledged and redelivers it after ack_wait
        assert await w.checkpoint(ack=False)
        await asyncio.sleep(1.2)
        await until(total // 2)
        for _ in range(3):  # the partitions fetched whole come back as redeliveries now
            await w.poll()
        assert w.result.redelivered_skipped > 0, "redelivered messages should have been recognised"
        await w.checkpoint(ack=False)
        await until(3 * total // 4)
        await w.abandon()  # crash: the last quarter processed but neither checkpointed nor acked
        return w, found

    w1, found1 = asyncio.run(crashed_run())
    saved = store.load_checkpoint(w1.key)
    # the checkpoint holds each event once, despite the redeliveries seen before the second one
    header, state = read_checkpoint(saved.state)
    assert saved.events == header["events"] == load_engine(state, None).events
    assert sum(p["events"] for p in header["positions"].values()) == saved.events
    assert total // 2 <= saved.events < w1.result.events < total

    w2, found2 = _worker(bus, store)
    asyncio.run(w2.run(idle_exit=1.5, drain=True))
    assert all(ps.resumed for ps in w2.parts)
    # the restarted engines hold every event exactly once: the checkpointed part from the
    # crashed run, the rest (including the crashed run's unsaved second third) from the stream
    assert w2.engine.events == total
    assert _keys(found1) | _keys(found2) == reference
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT entity, category, detector, fingerprint FROM findings")).all()
    assert {tuple(r[:3]) for r in rows} == reference
    assert len({r[3] for r in rows}) == len(rows)


def test_partitions_are_stable_and_cover_every_device(fleet):
    for batch in fleet.iter_batches(seconds=3600):
        parts = partition_of(batch, PARTITIONS)
        assert len(parts) == len(batch) and parts.min() >= 0 and parts.max() < PARTITIONS
        # one device, one partition
        dev = batch.np("device_id", fill="")
        pairs = {(d, int(p)) for d, p in zip(dev, parts, strict=True) if d}
        assert len(pairs) == len({d for d, _ in pairs})


def test_engine_checkpoint_round_trip_keeps_detecting(fleet, reference):
    """The checkpointed engine continues exactly where the original would have."""
    batches = list(fleet.iter_batches(seconds=60))
    half = len(batches) // 2
    engine = Engine()
    found = [f for b in batches[:half] for f in engine.process(b)]
    restored = load_engine(dump_engine(engine), engine.ctx)
    assert restored.events == engine.events and restored.flow_model is None
    found += [f for b in batches[half:] for f in restored.process(b)] + restored.flush()
    assert _keys(found) == reference


def test_simulate_and_worker_commands_end_to_end(nats_url, tmp_path):
    # the command line: `simulate --bus` fills a stream of its own, `worker --json` prints every
    # finding as a JSON line while it consumes, and stores them with --db
    import json
    import subprocess
    import sys

    tag = secrets.token_hex(4)
    stream, subjects = f"FWCLI_{tag}", f"fwcli.{tag}.events"
    base = [sys.executable, "-m", "fleetwarden"]
    bus_args = ["--bus", nats_url, "--partitions", "4", "--stream", stream, "--subjects", subjects]
    try:
        pub = subprocess.run(
            [*base, "simulate", *bus_args, "--devices", "30", "--hours", "2", "--seed", "5"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pub.returncode == 0, pub.stderr
        db = f"sqlite:///{tmp_path / 'worker.db'}"
        res = subprocess.run(
            [*base, "worker", *bus_args, "--idle-exit", "3", "--drain", "--json", "--db", db],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:

        async def delete() -> None:
            nc = await connect(nats_url)
            await nc.jetstream().delete_stream(stream)
            await nc.close()

        asyncio.run(delete())
    assert res.returncode == 0, res.stderr
    findings = [json.loads(line) for line in res.stdout.splitlines()]
    assert findings and {"scan", "ddos"} <= {f["category"] for f in findings}
    assert "events in" in res.stderr  # the summary goes to stderr with --json
    with open_store(db) as store:
        assert store.counts()["findings"] > 0


def test_the_stored_story_equals_one_uninterrupted_session(bus, store, fleet):
    """Findings recorded at many checkpoints join the open incidents of their devices in the store:
    the stored incidents (risk, severity, evidence, linked attack steps) are the ones a single
    detection session over the same event windows correlates at the end (what `analyze` does)."""
    from fleetwarden.app.session import DetectionSession
    from fleetwarden.control.inventory import context_from_fleet
    from fleetwarden.core.events import time_windows

    ctx = context_from_fleet(fleet)
    session = DetectionSession(ctx=ctx)
    by_kind = {
        b.kind: b
        for b in (
            _whole(fleet, k)
            for k in ("flow", "dns", "auth", "telemetry", "firmware_report", "provision", "command")
        )
        if b
    }
    session.run(time_windows(by_kind, 60.0, origin=0.0))
    expected = {(i.entity, i.category): i for i in session.incidents()}

    w, _found = _worker(bus, store, fetch_batch=8, ctx=ctx)
    w.checkpoint_every = 0.05  # dozens of checkpoints: the story is built across them
    asyncio.run(w.run(idle_exit=1.5, drain=True))
    assert w.result.checkpoints > 10
    stored = {(i.entity, i.category): i for i in store.list_incidents()}
    assert set(stored) == set(expected)
    mirai = {c for (e, c) in expected if e in fleet.scenarios[0].device_ids}
    assert {"scan", "ddos"} <= mirai, "the attack's steps should be linked on one device"
    for key, inc in expected.items():
        row = stored[key]
        assert (row.risk, row.severity, list(row.evidence)) == (inc.risk, inc.severity, inc.evidence), key


def _whole(fleet, kind):
    from fleetwarden.core.events import EventBatch

    parts = [b for b in fleet.iter_batches(seconds=3600) if b.kind == kind and len(b)]
    return EventBatch.concat(parts).sort_by_time() if parts else None


@pytest.fixture(scope="module")
def wide_fleet():
    """Enough gateways and cameras polling shared clouds that prevalence decides what is a beacon."""
    return simulate_fleet(devices=120, hours=6, seed=7)


def _two_workers(nats_url, fleet, *, share: bool) -> list:
    from fleetwarden.control.inventory import context_from_fleet

    tag = secrets.token_hex(4)
    stream, prefix = f"FWFLEET_{tag}", f"fwfleet.{tag}.events"
    parts = 8
    publish_batches_nats(fleet.iter_batches(seconds=60), nats_url, parts, stream=stream, prefix=prefix)
    found: list = []
    ctx = context_from_fleet(fleet)
    with open_store("sqlite:///:memory:") as st:
        workers = [
            Worker(
                nats_url,
                st,
                partitions=parts,
                owned=owned,
                stream=stream,
                prefix=prefix,
                ctx=ctx,
                on_finding=found.append,
                checkpoint_every=5.0,
            )
            for owned in ([0, 2, 4, 6], [1, 3, 5, 7])
        ]
        if not share:
            for w in workers:
                w._fleet = None  # what sharded workers did before they shared fleet statistics

        async def both() -> None:
            await asyncio.gather(*(w.run(idle_exit=2.0, drain=True) for w in workers))

        asyncio.run(both())

    async def delete() -> None:
        nc = await connect(nats_url)
        js = nc.jetstream()
        await js.delete_stream(stream)
        if share:
            await js.delete_stream(f"{stream}-FLEET")
        await nc.close()

    asyncio.run(delete())
    return found


def test_sharded_workers_share_fleet_statistics_and_report_what_one_engine_reports(nats_url, wide_fleet):
    from fleetwarden.control.inventory import context_from_fleet
    from fleetwarden.core.events import KINDS, time_windows

    engine = Engine(ctx=context_from_fleet(wide_fleet))
    by_kind = {k: b for k in KINDS if (b := _whole(wide_fleet, k))}
    reference = [f for b in time_windows(by_kind, 60.0, origin=0.0) for f in engine.process(b)] + engine.flush()

    def exact(findings) -> list:
        # the command analytic's cohort and site profiles are per worker still (see app/worker.py)
        return sorted(
            (f.entity, f.category, f.detector, round(f.score, 6), f.first_seen, f.last_seen)
            for f in findings
            if f.detector != "commands.baseline"
        )

    def beacons(findings) -> list:
        return [f for f in findings if f.category == "c2-beacon"]

    shared = _two_workers(nats_url, wide_fleet, share=True)
    mine, ref = exact(shared), exact(reference)
    assert [(e, c, d, a, b) for e, c, d, _s, a, b in mine] == [(e, c, d, a, b) for e, c, d, _s, a, b in ref]
    # a beacon's coverage is measured over the time its engine has observed: a worker's own
    # partitions' span, a few seconds off the fleet's (see app/worker.py's blind spots)
    assert max(abs(x[3] - y[3]) for x, y in zip(mine, ref, strict=True)) < 0.01
    # without the shared statistics each worker sees half the fleet: gateways' heartbeats to their
    # vendor cloud look rare, and benign beacons appear (the test would catch their return)
    alone = _two_workers(nats_url, wide_fleet, share=False)
    assert len(beacons(alone)) > 2 * len(beacons(reference))
