"""Throughput of the text sources: records/s for Zeek TSV, IoT-23 CSV, Zeek JSON and JSON lines.

Builds a Zeek ``conn.log`` of at least 500k flows in a temporary folder by repeating the
IoT-23 flows (timestamps shifted per copy) through :func:`~fleetwarden.sources.zeek.write_tsv`,
the same flows as Zeek-style JSON and as generic JSON lines, then times
:func:`fleetwarden.sources.read_events` over each (best of ``--repeat`` runs, one process).

Run: ``.venv/bin/python bench/bench_sources.py [--flows 500000] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.events import EventBatch
from fleetwarden.sources import ReadStats, read_events
from fleetwarden.sources.jsonl import write_jsonl
from fleetwarden.sources.zeek import write_tsv

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _time_read(path: Path, repeat: int) -> tuple[int, float, float]:
    """Records read, best wall seconds, best CPU seconds of this process (robust to a busy host)."""
    best = best_cpu = float("inf")
    records = 0
    for _ in range(repeat):
        stats = ReadStats()
        start, cpu = time.perf_counter(), time.process_time()
        for _batch in read_events(path, stats=stats):
            pass
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        records = stats.records
    return records, best, best_cpu


def _line(name: str, n: int, wall: float, cpu: float, extra: str = "") -> str:
    return (
        f"{name:<10} {n:>9,} records  wall {wall:6.3f} s {n / wall:>11,.0f}/s"
        f"  cpu {cpu:6.3f} s {n / cpu:>11,.0f}/s {extra}"
    )


def _replicate(base: EventBatch, n: int) -> list[EventBatch]:
    span = float(pc.max(base["ts"]).as_py() - pc.min(base["ts"]).as_py()) + 1.0
    out, total, copy = [], 0, 0
    while total < n:
        ts = pc.add(base["ts"], copy * span)
        out.append(EventBatch(base.kind, base.table.set_column(0, base.table.schema.field(0), ts)))
        total += len(base)
        copy += 1
    return out


def _write_zeek_json(batches: list[EventBatch], path: Path) -> None:
    with open(path, "w") as fh:
        for batch in batches:
            for rec in batch.table.drop_columns(["device_id", "label", "detailed_label"]).to_pylist():
                fh.write(json.dumps({k: v for k, v in rec.items() if v is not None}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=500_000)
    parser.add_argument("--json-flows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    csvs = sorted((DATA / "iot23").glob("*.csv"))
    if not csvs:
        print(f"no IoT-23 CSVs under {DATA / 'iot23'}", file=sys.stderr)
        return 2
    base = EventBatch.concat([b for f in csvs for b in read_events(f)])
    print(f"pyarrow {pa.__version__}; base: {len(base)} IoT-23 flows from {len(csvs)} CSVs")

    records, wall, cpu = 0, 0.0, 0.0
    for f in csvs:
        n, t, c = _time_read(f, args.repeat)
        records, wall, cpu = records + n, wall + t, cpu + c
    print(_line("iot23 csv", records, wall, cpu))

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        big = _replicate(base, args.flows)
        conn = tmpdir / "conn.log"
        start = time.perf_counter()
        write_tsv(big, conn)
        wrote = time.perf_counter() - start
        n_big = sum(len(b) for b in big)
        print(f"write_tsv   {n_big:>9,} records  {wrote:7.3f} s  {n_big / wrote:>12,.0f} records/s")
        n, t, c = _time_read(conn, args.repeat)
        print(_line("zeek tsv", n, t, c, f"({conn.stat().st_size / 1e6:.0f} MB)"))

        small = _replicate(base, args.json_flows)
        zjson = tmpdir / "conn.json.log"
        _write_zeek_json(small, zjson)
        n, t, c = _time_read(zjson, args.repeat)
        print(_line("zeek json", n, t, c))

        generic = tmpdir / "events.jsonl"
        write_jsonl(small, generic)
        n, t, c = _time_read(generic, args.repeat)
        print(_line("jsonl", n, t, c))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
