"""The scale-out path under faults, against real servers: a worker killed with SIGKILL mid-stream
and restarted, and the NATS server restarted while events are published and while they are
consumed.  Afterwards the store holds exactly what an uninterrupted run stores: the same findings
(none lost, none twice) and the same incidents.

Each test starts its own ``nats-server -js`` on a spare port with a storage directory of its own
(the machine's server on 4222 is left alone) and uses its own PostgreSQL schemas.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.conftest import IN_CI

from fleetwarden.app.worker import Worker
from fleetwarden.bus.jetstream import publish_batches_nats
from fleetwarden.control.inventory import context_from_store, store_row
from fleetwarden.simulate import simulate_fleet
from fleetwarden.store import open_store

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

PARTITIONS = 4


def _nats_binary() -> str:
    found = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)), None
    )
    if found is None:
        reason = "nats-server is not installed (Debian package nats-server)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class NatsServer:
    """A JetStream server of the test's own, restartable on the same port and storage."""

    def __init__(self, store_dir: Path) -> None:
        self.binary = _nats_binary()
        self.dir = store_dir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
            self.proc = None

    def restart(self, down: float = 0.5) -> None:
        self.stop()
        time.sleep(down)
        self.start()


@pytest.fixture
def nats(tmp_path, postgres_url):
    server = NatsServer(tmp_path / "js")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet():
    return simulate_fleet(devices=40, hours=3, seed=9, scenarios=["mirai-camera", "slow-exfiltration"])


@pytest.fixture
def schemas(postgres_url):
    made: list[str] = []

    def url(name: str) -> str:
        schema = f"fw_fault_{name}_{secrets.token_hex(3)}"
        made.append(schema)
        return f"{postgres_url}?options=-csearch_path%3D{schema}"

    yield url
    eng = sa.create_engine(postgres_url)
    with eng.begin() as conn:
        for schema in made:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


def _publish(url: str, fleet, stream: str, prefix: str, rate: float | None = None) -> int:
    return publish_batches_nats(
        fleet.iter_batches(seconds=60),
        url,
        PARTITIONS,
        per_message=25,
        stream=stream,
        prefix=prefix,
        rate=rate,
    )


def _reference(url: str, fleet, db: str) -> tuple[set, set]:
    """An uninterrupted worker over a stream of the same events: what the store should hold."""
    tag = secrets.token_hex(3)
    stream, prefix = f"REF_{tag}", f"ref.{tag}.events"
    assert _publish(url, fleet, stream, prefix) == fleet.event_count()
    with open_store(db) as store:
        w = Worker(
            url,
            store,
            partitions=PARTITIONS,
            stream=stream,
            prefix=prefix,
            record=True,
            ctx=_inventory(store, fleet),
            checkpoint_every=1.0,
        )
        asyncio.run(w.run(idle_exit=1.5, drain=True))
        assert w.result.events == fleet.event_count()
    return _stored(db)


def _inventory(store, fleet):
    """Register the fleet in the store; the context a command-line worker builds from it."""
    store.upsert_devices([store_row(r) for r in fleet.inventory])
    return context_from_store(store)


def _stored(db: str) -> tuple[set, set]:
    """(findings, incidents) in the store, as comparable tuples; fails on a duplicate finding."""
    with open_store(db) as store:
        findings = store.list_findings()
        incidents = store.list_incidents()
    keys = [
        (f.entity, f.category, f.detector, f.first_seen, f.last_seen, tuple(f.evidence)) for f in findings
    ]
    assert len(keys) == len(set(keys)), "a finding was stored twice"
    return set(keys), {(i.entity, i.category, i.risk, i.severity, tuple(i.evidence)) for i in incidents}


def _worker_cmd(url: str, stream: str, prefix: str, db: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fleetwarden",
        "worker",
        "--bus",
        url,
        "--partitions",
        str(PARTITIONS),
        "--stream",
        stream,
        "--subjects",
        prefix,
        "--db",
        db,
        "--json",
        *extra,
    ]


def test_sigkill_mid_stream_then_restart_stores_what_an_uninterrupted_run_stores(nats, fleet, schemas):
    findings_ref, incidents_ref = _reference(nats.url, fleet, schemas("ref"))
    assert any(c == "ddos" for _e, c, *_ in incidents_ref)

    tag = secrets.token_hex(3)
    stream, prefix = f"KILL_{tag}", f"kill.{tag}.events"
    assert _publish(nats.url, fleet, stream, prefix) == fleet.event_count()
    db = schemas("kill")
    with open_store(db) as store:
        _inventory(store, fleet)  # the command-line worker names devices from it
        base = store.counts()

    victim = subprocess.Popen(
        _worker_cmd(nats.url, stream, prefix, db, "--checkpoint-every", "0.3"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # kill it once it has checkpointed some findings and before it can have finished
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and victim.poll() is None:
            with open_store(db) as store:
                counts = store.counts()
            if counts["engine_checkpoints"] and counts["findings"] > base["findings"]:
                break
            time.sleep(0.05)
        assert victim.poll() is None, (
            "the worker finished before it could be killed: " + victim.stderr.read().decode()
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    with open_store(db) as store:
        partial = store.counts()["findings"]
    assert partial < len(findings_ref), "the kill should have come mid-stream"

    done = subprocess.run(
        _worker_cmd(nats.url, stream, prefix, db, "--idle-exit", "2", "--drain"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    findings, incidents = _stored(db)
    assert findings == findings_ref
    assert incidents == incidents_ref


def test_nats_restarts_during_publishing_and_consuming_lose_and_double_nothing(nats, fleet, schemas):
    findings_ref, incidents_ref = _reference(nats.url, fleet, schemas("ref"))

    tag = secrets.token_hex(3)
    stream, prefix = f"RST_{tag}", f"rst.{tag}.events"
    total = fleet.event_count()
    published: dict[str, object] = {}

    def publish() -> None:
        try:
            published["n"] = _publish(nats.url, fleet, stream, prefix, rate=total / 4.0)
        except BaseException as exc:  # reported by the assertion below
            published["error"] = exc

    t = threading.Thread(target=publish)
    t.start()
    time.sleep(1.5)
    nats.restart()  # while the publisher is mid-way
    t.join(timeout=120)
    assert "error" not in published, published.get("error")
    assert published["n"] == total

    db = schemas("rst")
    with open_store(db) as store:
        w = Worker(
            nats.url,
            store,
            partitions=PARTITIONS,
            stream=stream,
            prefix=prefix,
            record=True,
            ctx=_inventory(store, fleet),
            checkpoint_every=0.2,
            fetch_batch=16,
        )

        async def consume() -> None:
            await w.start()
            restarted = False
            idle_since = None
            at_restart: list[int] = []
            while True:
                n = await w.poll()
                await w.checkpoint()
                if not restarted and w.result.events > total // 3:
                    # while the worker is mid-way, and it keeps polling through the outage
                    at_restart.append(w.result.events)
                    restarter = threading.Thread(target=nats.restart, kwargs={"down": 1.0})
                    restarter.start()
                    restarted = True
                if n == 0 and restarted:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 1.5 and await w.caught_up():
                        break
                else:
                    idle_since = None
            restarter.join()
            assert at_restart[0] < total, "the restart should come while events are still waiting"
            await w.close(drain=True)

        asyncio.run(asyncio.wait_for(consume(), timeout=240))
        # every event once: nothing lost to the restarts, no duplicate from a retried publish
        assert w.engine.events == total
        late = w.result.late_events
        print(f"worker felt {w.result.bus_errors} failed bus calls during the restart, {late} late events")
    # the publisher keeps each partition in order through the restart (a publish lost in it is
    # retried before the partition's next one), so nothing comes behind the watermark
    assert late == 0, f"{late} events came behind the event-time watermark"
    findings, incidents = _stored(db)
    assert findings == findings_ref  # exactly what an uninterrupted run stores
    assert incidents == incidents_ref
