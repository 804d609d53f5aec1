"""Command-line interface: parse, call a service, render.

Exit codes follow DESIGN.md: 0 on success, 2 on bad usage or bad input, with a one-line
reason on stderr.  Services live in their own modules; nothing here computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleetwarden import __version__

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="FleetWarden: AI-powered threat detection for IoT fleets.",
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

Files = Annotated[list[Path], typer.Argument(help="input files: pcap/pcapng, Zeek logs, IoT-23 CSV, JSONL")]
ModelDir = Annotated[Path, typer.Option("--model", help="model directory")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="skip malformed records and report how many")]
DbUrl = Annotated[str | None, typer.Option("--db", help="database URL (default: FLEETWARDEN_DB or SQLite)")]


class InputError(Exception):
    """Bad input or usage detected by a command: reported in one line, exit code 2."""


def _fail(message: str) -> None:
    err.print(f"fleetwarden: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _known_errors() -> tuple[type[BaseException], ...]:
    from fleetwarden.sources import SourceError

    return (SourceError, InputError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError)


def _check_inputs(files: list[Path]) -> None:
    for f in files:
        if not f.exists():
            raise InputError(f"{f}: no such file")
        if f.is_dir():
            raise InputError(f"{f}: is a directory, expected a capture or log file")


def _report_skips(stats_by_file: dict[str, object]) -> None:
    """One stderr line per input that had bad records skipped, with the first reasons."""
    for name, stats in stats_by_file.items():
        get = stats.get if isinstance(stats, dict) else lambda key, default, s=stats: getattr(s, key, default)
        skipped = get("skipped", 0)
        if skipped:
            err.print(f"{name}: skipped {skipped} bad record(s)", markup=False, highlight=False)
            for problem in list(get("problems", []))[:3]:
                err.print(f"  {problem}", markup=False, highlight=False)


def _run(fn, *args, **kwargs):
    """Call a service; turn expected input errors into one line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except _known_errors() as exc:
        _fail(str(exc) or exc.__class__.__name__)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"fleetwarden {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="print the version and exit"),
    ] = False,
) -> None:
    """FleetWarden: AI-powered threat detection for IoT fleets."""


@app.command()
def inspect(files: Files, skip_bad: SkipBad = False) -> None:
    """Read input files and show what they hold: format, records per event kind, time span."""
    from fleetwarden.sources import ReadStats, detect_format, read_events

    def work() -> None:
        _check_inputs(files)
        table = Table("file", "format", "kind", "records", "first", "last", "skipped")
        for f in files:
            stats = ReadStats()
            fmt = detect_format(f)
            counts: dict[str, list[float]] = {}
            for batch in read_events(f, skip_bad=skip_bad, stats=stats):
                if not len(batch):
                    continue
                ts = batch.np("ts")
                c = counts.setdefault(batch.kind, [0, float("inf"), float("-inf")])
                c[0] += len(batch)
                c[1] = min(c[1], float(ts.min()))
                c[2] = max(c[2], float(ts.max()))
            if not counts:
                table.add_row(str(f), fmt, "-", "0", "-", "-", str(stats.skipped))
            for kind, (n, lo, hi) in counts.items():
                table.add_row(str(f), fmt, kind, str(int(n)), _fmt_ts(lo), _fmt_ts(hi), str(stats.skipped))
            _report_skips({str(f): stats})
        out.print(table)

    _run(work)


@app.command()
def train(
    files: Files,
    model: ModelDir,
    skip_bad: SkipBad = False,
    target_fpr: Annotated[
        float, typer.Option(help="false-positive rate the alert threshold is set for")
    ] = 0.01,
) -> None:
    """Train the flow models (unsupervised baseline + supervised classifier when labels exist)."""
    from fleetwarden.detection import flowmodel

    _run(_check_inputs, files)
    summary = _run(flowmodel.train, list(files), model, skip_bad=skip_bad, target_fpr=target_fpr)
    out.print_json(json.dumps(summary, default=str))


@app.command()
def score(
    files: Files,
    model: ModelDir,
    out_csv: Annotated[Path, typer.Option("--out", help="CSV to write: uid,score,alert,reasons")],
    skip_bad: SkipBad = False,
) -> None:
    """Score every flow: one CSV row per input flow with uid, score, alert and reasons."""
    from fleetwarden.detection import flowmodel

    _run(_check_inputs, files)
    summary = _run(flowmodel.score, list(files), model, out_csv, skip_bad=skip_bad)
    err.print_json(json.dumps(summary, default=str))


@app.command()
def evaluate(files: Files, model: ModelDir, skip_bad: SkipBad = False) -> None:
    """Metrics JSON (AUC-ROC, average precision, TPR at 1 % FPR, per label) on labelled input."""
    from fleetwarden.detection import flowmodel

    _run(_check_inputs, files)
    metrics = _run(flowmodel.evaluate, list(files), model, skip_bad=skip_bad)
    sys.stdout.write(json.dumps(metrics, indent=2, default=str) + "\n")


@app.command()
def analyze(
    files: Files,
    model: Annotated[Path | None, typer.Option("--model", help="flow model directory (optional)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print incidents as a JSON list")] = False,
    skip_bad: SkipBad = False,
    db: DbUrl = None,
) -> None:
    """Run the whole pipeline over captures or logs and print the incidents."""
    from fleetwarden.detection.engine import analyze_paths

    _run(_check_inputs, files)
    ctx = _run(_inventory_context, db) if db is not None else None
    result = _run(analyze_paths, list(files), model_dir=model, skip_bad=skip_bad, ctx=ctx)
    if db is not None:
        _run(_record_analysis, db, files, result)
    _report_skips(result.stats.get("files", {}))
    if as_json:
        sys.stdout.write(json.dumps([i.to_dict() for i in result.incidents], indent=2) + "\n")
        return
    from fleetwarden.report import incident_table

    if not result.incidents:
        out.print("No incidents.")
        return
    out.print(incident_table(result.incidents))


def _inventory_context(db: str):
    from fleetwarden.config import database_url
    from fleetwarden.inventory import context_from_store
    from fleetwarden.store import open_store

    store = open_store(database_url(db))
    try:
        return context_from_store(store)
    finally:
        store.close()


def _record_analysis(db: str, files: list[Path], result) -> None:
    from fleetwarden.config import database_url
    from fleetwarden.store import open_store

    store = open_store(database_url(db))
    try:
        store.record_results(", ".join(str(f) for f in files), result.findings, result.incidents)
    finally:
        store.close()


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=24, max=100_000, help="devices in the simulated fleet")] = 200,
    hours: Annotated[float, typer.Option(min=1, max=24 * 14, help="simulated hours")] = 24,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same fleet")] = 7,
    db: DbUrl = None,
) -> None:
    """Simulate a fleet with tabletop attack scenarios and run the whole pipeline on it."""
    from fleetwarden.demo import render_report, run_demo

    report = _run(run_demo, devices=devices, hours=hours, seed=seed, db=db, console=out)
    render_report(report, out)


@app.command()
def simulate(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="write the fleet's files to this directory")
    ] = None,
    mqtt: Annotated[
        str | None, typer.Option("--mqtt", help="publish the events to this broker (mqtt://host:port)")
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            "--bus", help="publish the events to NATS JetStream, partitioned by device (nats://host:port)"
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, max=4096, help="with --bus: device partitions")] = 8,
    stream: Annotated[str, typer.Option(help="with --bus: JetStream stream name")] = "FLEETWARDEN",
    subjects: Annotated[
        str, typer.Option(help="with --bus: subject prefix (events go to PREFIX.p<K>)")
    ] = "fleetwarden.events",
    devices: Annotated[int, typer.Option(min=24, max=100_000, help="devices in the fleet")] = 300,
    hours: Annotated[float, typer.Option(min=0.5, max=24 * 14, help="simulated hours")] = 24,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same fleet")] = 7,
    rate: Annotated[
        float | None,
        typer.Option(help="with --mqtt/--bus: events per second (default: as fast as possible)"),
    ] = None,
    per_message: Annotated[
        int | None,
        typer.Option(min=1, help="events packed per message (default: 1 with --mqtt, 100 with --bus)"),
    ] = None,
) -> None:
    """Simulate a fleet: write Zeek logs, events.jsonl and the scenario truth, or drive an MQTT broker
    or a NATS JetStream bus."""
    from fleetwarden.simulate import simulate_fleet, write_files

    if out_dir is None and mqtt is None and bus is None:
        _fail("simulate needs --out DIR, --mqtt URL, --bus URL or several")

    def work() -> tuple[dict, int, int]:
        fleet = simulate_fleet(devices=devices, hours=hours, seed=seed)
        written = write_files(fleet, out_dir) if out_dir is not None else {}
        sent = sent_bus = 0
        if mqtt is not None:
            from fleetwarden.sources.mqtt import publish_batches

            sent = publish_batches(
                fleet.iter_batches(seconds=60), mqtt, per_message=per_message or 1, rate=rate
            )
        if bus is not None:
            from fleetwarden.bus import publish_batches_nats

            sent_bus = publish_batches_nats(
                fleet.iter_batches(seconds=60),
                bus,
                partitions,
                per_message=per_message or 100,
                rate=rate,
                stream=stream,
                prefix=subjects,
            )
        return written, sent, sent_bus

    written, sent, sent_bus = _run(work)
    if written:
        table = Table("file", "bytes")
        for _name, path in sorted(written.items()):
            table.add_row(str(path), f"{Path(path).stat().st_size:,}")
        out.print(table)
    if mqtt is not None:
        out.print(f"published {sent:,} events to {mqtt}")
    if bus is not None:
        out.print(f"published {sent_bus:,} events to {bus} in {partitions} partitions")


def _finding_printer(as_json: bool):
    """How live commands (watch, worker) print a finding the moment it is complete: a JSON line, or
    one line of time, severity, category, entity and first evidence."""
    from fleetwarden.report import ts_text

    def show(f) -> None:
        if as_json:
            sys.stdout.write(json.dumps(f.to_dict(), default=str) + "\n")
            sys.stdout.flush()
        else:
            first = f.evidence[0] if f.evidence else ""
            out.print(
                f"{ts_text(f.last_seen)} {f.severity:8s} {f.category:16s} {f.entity}: {first}", markup=False
            )

    return show


@app.command()
def worker(
    bus: Annotated[str, typer.Option("--bus", help="NATS JetStream server (nats://host:port)")],
    partitions: Annotated[
        int, typer.Option(min=1, max=4096, help="device partitions of the stream (same as the publisher's)")
    ] = 8,
    partition: Annotated[
        list[int] | None,
        typer.Option("--partition", min=0, help="a partition this worker owns (repeat; default: all)"),
    ] = None,
    stream: Annotated[str, typer.Option(help="JetStream stream name")] = "FLEETWARDEN",
    subjects: Annotated[
        str, typer.Option(help="subject prefix of the partitions (PREFIX.p<K>, as the publisher's)")
    ] = "fleetwarden.events",
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: run until Ctrl-C)")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", help="stop once nothing arrived for this many seconds")
    ] = None,
    checkpoint_every: Annotated[
        float, typer.Option("--checkpoint-every", min=0.1, help="seconds between state checkpoints")
    ] = 10.0,
    drain: Annotated[
        bool, typer.Option("--drain", help="at exit, also emit findings still pending (end of a replay)")
    ] = False,
    model: Annotated[Path | None, typer.Option("--model", help="flow model directory (optional)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print findings as JSON lines")] = False,
    db: DbUrl = None,
) -> None:
    """Scale-out engine worker: consume device partitions from NATS JetStream, print findings as they
    happen, checkpoint engine state to the store (--db, else the default SQLite file)."""
    from fleetwarden.bus.worker import run_worker
    from fleetwarden.config import database_url
    from fleetwarden.store import open_store

    ctx = _run(_inventory_context, db) if db is not None else None

    show = _finding_printer(as_json)

    def work():
        flow_model = None
        if model is not None:
            from fleetwarden.detection.flowmodel import load_model

            flow_model = load_model(model)
        store = open_store(database_url(db))
        try:
            return run_worker(
                bus,
                store,
                partitions=partitions,
                owned=partition or None,
                stream=stream,
                prefix=subjects,
                record=db is not None,
                ctx=ctx,
                flow_model=flow_model,
                checkpoint_every=checkpoint_every,
                on_finding=show,
                duration=duration,
                idle_exit=idle_exit,
                drain=drain,
            )
        finally:
            store.close()

    result = _run(work)
    _report_skips({f"nats {bus}": result.stats})
    summary = (
        f"{result.events:,} events in {result.messages:,} messages ({result.redelivered_skipped} redelivered, "
        f"skipped), {result.findings} findings, {result.checkpoints} checkpoints, "
        f"{result.seconds:.1f} s"
    )
    # with --json, stdout carries only findings
    (err if as_json else out).print(summary, markup=False, highlight=False)


@app.command()
def watch(
    mqtt: Annotated[str, typer.Option("--mqtt", help="broker to subscribe to (mqtt://host:port)")],
    topic: Annotated[str, typer.Option(help="topic filter carrying JSON events")] = "fleetwarden/events/#",
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: run until Ctrl-C)")
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", help="flow model directory (optional)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print findings as JSON lines")] = False,
    db: DbUrl = None,
) -> None:
    """Detect on a live MQTT event stream: findings print as they happen, incidents at the end."""
    from fleetwarden.sources import ReadStats
    from fleetwarden.sources.mqtt import MqttEventSource
    from fleetwarden.stream import watch as run_watch

    stats = ReadStats()
    ctx = _run(_inventory_context, db) if db is not None else None

    show = _finding_printer(as_json)

    def work():
        import signal

        source = MqttEventSource(mqtt, topic, stats=stats)
        # Ctrl-C ends the stream cleanly: pending findings are flushed and incidents printed.
        previous = signal.signal(signal.SIGINT, lambda *_: source.stop())
        try:
            with source:
                return run_watch(source.batches(duration), ctx=ctx, model_dir=model, on_finding=show)
        finally:
            signal.signal(signal.SIGINT, previous)

    result = _run(work)
    _report_skips({f"mqtt {mqtt}": stats})
    if db is not None:
        _run(_record_analysis, db, [Path(f"mqtt:{mqtt}")], result)
    if not as_json:
        from fleetwarden.report import incident_table

        out.print(
            f"{result.events:,} events, {len(result.findings)} findings, {len(result.incidents)} incidents"
        )
        if result.incidents:
            out.print(incident_table(result.incidents))


inventory_app = typer.Typer(no_args_is_help=True, help="The device inventory in the store.")
app.add_typer(inventory_app, name="inventory")


@inventory_app.command("import")
def inventory_import(
    file: Annotated[Path, typer.Argument(help="JSON list of device objects or CSV with a header")],
    db: DbUrl = None,
) -> None:
    """Register devices (device_id, ip, mac, vendor, model, device_class, site, …) in the store."""
    from fleetwarden.config import database_url
    from fleetwarden.inventory import read_inventory, store_row
    from fleetwarden.store import open_store

    def work() -> tuple[int, int]:
        _check_inputs([file])
        rows = read_inventory(file)
        store = open_store(database_url(db))
        try:
            return len(rows), store.upsert_devices([store_row(r) for r in rows], actor="cli")
        finally:
            store.close()

    total, changed = _run(work)
    out.print(f"{total} devices read, {changed} added or changed")


@inventory_app.command("list")
def inventory_list(db: DbUrl = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the devices in the store."""
    from fleetwarden.config import database_url
    from fleetwarden.store import open_store

    def work() -> list[dict]:
        store = open_store(database_url(db))
        try:
            return [d.to_dict() for d in store.list_devices()]
        finally:
            store.close()

    rows = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table("device_id", "class", "vendor", "model", "ip", "site", "lifecycle")
    for r in rows:
        table.add_row(
            *(
                str(r.get(k) or "")
                for k in ("device_id", "device_class", "vendor", "model", "ip", "site", "lifecycle")
            )
        )
    out.print(table)


def _fmt_ts(ts: float) -> str:
    from datetime import UTC, datetime

    if ts != ts or ts in (float("inf"), float("-inf")):
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    app()
