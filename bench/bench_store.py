"""Store throughput on SQLite and PostgreSQL: open+migrate, device upserts, result writes, audit.

Run: .venv/bin/python bench/bench_store.py   (PostgreSQL part skipped when 127.0.0.1:5432 is closed)
"""

from __future__ import annotations

import socket
import tempfile
import time
import uuid

import sqlalchemy as sa

from fleetwarden.core.findings import Finding, Incident
from fleetwarden.store import open_store

DEVICES = 5_000
FINDINGS = 10_000
INCIDENTS = 200


def _ip(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def run(url: str, schema: str | None = None) -> None:
    t = time.perf_counter()
    store = open_store(url, schema=schema)
    t_open = time.perf_counter() - t
    store.upsert_devices(
        [{"device_id": f"dev-{i}", "ip": _ip(i), "last_seen": float(i)} for i in range(DEVICES)]
    )
    t = time.perf_counter()
    store.upsert_devices([{"device_id": f"dev-{i}", "last_seen": float(i + 1)} for i in range(DEVICES)])
    t_upsert = time.perf_counter() - t
    findings = [
        Finding(
            f"dev-{i % DEVICES}",
            "scan",
            "scan",
            0.7,
            float(i),
            float(i + 60),
            ["e"],
            ["T1046"],
            record_ids=[f"C{i}"],
        )
        for i in range(FINDINGS)
    ]
    incidents = [
        Incident(f"dev-{i}", "scan", "high", 70, 0.0, 1.0, ["e"], ["T1046"], findings=findings[i::INCIDENTS])
        for i in range(INCIDENTS)
    ]
    t = time.perf_counter()
    store.record_results("bench", findings, incidents, batches=[("flow", 10**6, 0.0, 1.0)])
    t_record = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(200):
        store.audit_append("bench", "x", "y", {"i": i})
    t_audit = (time.perf_counter() - t) / 200
    t = time.perf_counter()
    ok = store.audit_verify()
    t_verify = time.perf_counter() - t
    entries = store.counts()["audit_entries"]
    print(
        f"{store.dialect:10s} open+migrate {t_open * 1000:.0f} ms | upsert {DEVICES} devices (merge) "
        f"{t_upsert * 1000:.0f} ms | record_results {FINDINGS} findings + {INCIDENTS} incidents "
        f"{t_record * 1000:.0f} ms | audit_append {t_audit * 1000:.2f} ms each | verify {entries} entries "
        f"{t_verify * 1000:.0f} ms ok={ok[0]}"
    )
    store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        run(f"sqlite:///{d}/bench.db")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        print("postgresql: not reachable on 127.0.0.1:5432, skipped")
        return
    schema = f"fw_bench_{uuid.uuid4().hex[:8]}"
    try:
        run("postgresql://postgres@127.0.0.1:5432/test", schema=schema)
    finally:
        engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        engine.dispose()


if __name__ == "__main__":
    main()
