"""Command-line interface: parse, call a service in :mod:`fleetwarden.app`, render.

Exit codes follow the command-line contract: 0 on success, 2 on bad usage or bad input, with a
one-line reason on stderr.  Bad input is an :class:`~fleetwarden.core.errors.InputError` (a
source's, the store's, a usage error) or an OS error about a file the user named; anything else
is a bug and shows its traceback.  Nothing here computes, and nothing from outside reaches the
terminal unescaped (:mod:`fleetwarden.report`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden import __version__
from fleetwarden.cli._common import (
    DbUrl,
    Files,
    Limit,
    ModelDir,
    OptModel,
    ShowAll,
    SkipBad,
    StreamMaxBytes,
    UsageError,
    _check_inputs,
    _fail,
    _limit,
    _report_skips,
    _run,
    err,
    out,
)

__all__ = ["UsageError", "app", "err", "main", "out"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="FleetWarden: AI-powered threat detection for IoT fleets.",
)


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
    from fleetwarden.app.inputs import describe
    from fleetwarden.report import table_of, ts_text

    _run(_check_inputs, files)
    described = _run(describe, files, skip_bad=skip_bad)
    rows = []
    for d in described:
        if not d["kinds"]:
            rows.append((d["path"], d["format"], "-", "0", "-", "-", d["skipped"]))
        for kind, k in d["kinds"].items():
            rows.append((d["path"], d["format"], kind, k["records"], ts_text(k["first"]), ts_text(k["last"]), d["skipped"]))
        _report_skips({d["path"]: d})
    out.print(table_of(("file", "format", "kind", "records", "first", "last", "skipped"), rows))


@app.command()
def train(
    files: Files,
    model: ModelDir,
    skip_bad: SkipBad = False,
    target_fpr: Annotated[
        float, typer.Option(help="false-positive rate the alert threshold is set for")
    ] = 0.01,
    labels: Annotated[
        list[Path] | None,
        typer.Option("--labels", help="labels by uid (verdict export or uid,label CSV); repeatable"),
    ] = None,
) -> None:
    """Train the flow models (unsupervised baseline + supervised classifier when labels exist)."""
    from fleetwarden.app.modeling import train as train_model

    _run(_check_inputs, files)
    summary = _run(
        train_model, list(files), model, skip_bad=skip_bad, target_fpr=target_fpr, labels=list(labels or ())
    )
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")


@app.command()
def score(
    files: Files,
    model: ModelDir,
    out_csv: Annotated[Path, typer.Option("--out", help="CSV to write: uid,score,alert,reasons")],
    skip_bad: SkipBad = False,
) -> None:
    """Score every flow: one CSV row per input flow with uid, score, alert and reasons."""
    from fleetwarden.app.modeling import score as score_flows

    _run(_check_inputs, files)
    summary = _run(score_flows, list(files), model, out_csv, skip_bad=skip_bad)
    sys.stderr.write(json.dumps(summary, indent=2, default=str) + "\n")


@app.command()
def evaluate(files: Files, model: ModelDir, skip_bad: SkipBad = False) -> None:
    """Metrics JSON (AUC-ROC, average precision, TPR at 1 % FPR, per label) on labelled input."""
    from fleetwarden.app.modeling import evaluate as evaluate_model

    _run(_check_inputs, files)
    metrics = _run(evaluate_model, list(files), model, skip_bad=skip_bad)
    sys.stdout.write(json.dumps(metrics, indent=2, default=str) + "\n")


@app.command()
def analyze(
    files: Files,
    model: OptModel = None,
    as_json: Annotated[bool, typer.Option("--json", help="print incidents as a JSON list")] = False,
    skip_bad: SkipBad = False,
    db: DbUrl = None,
    limit: Limit = 50,
    show_all: ShowAll = False,
) -> None:
    """Run the whole pipeline over captures or logs and print the incidents.

    Files given together are ONE network's stream: they are merged in event time, so a Zeek
    conn.log and dns.log (or the pcaps of one site) are analysed together.  Analyse captures of
    unrelated networks in separate runs (one `fleetwarden analyze` each)."""
    from fleetwarden.app.analyze import analyze as analyze_files

    _run(_check_inputs, files)

    def work():
        if db is None:
            return analyze_files(files, model=model, skip_bad=skip_bad)
        from fleetwarden.app.stores import store_at

        with store_at(db) as store:
            return analyze_files(files, model=model, skip_bad=skip_bad, store=store)

    result = _run(work)
    _report_skips(result.stats.get("files", {}))
    if as_json:
        sys.stdout.write(json.dumps([i.to_dict() for i in result.incidents], indent=2) + "\n")
        return
    from fleetwarden.report import incident_table

    if not result.incidents:
        out.print("No incidents.")
        return
    out.print(incident_table(result.incidents, limit=_limit(limit, show_all)))


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=24, max=100_000, help="devices in the simulated fleet")] = 200,
    hours: Annotated[float, typer.Option(min=1, max=24 * 14, help="simulated hours")] = 24,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same fleet")] = 7,
    db: DbUrl = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print ONE JSON object: scenarios, false_incidents, metrics")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="then serve the web console on 127.0.0.1 (prints demo users' tokens)")
    ] = False,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="with --serve: TCP port")] = 8080,
) -> None:
    """Simulate a fleet with tabletop attack scenarios and run the whole pipeline on it."""
    if serve:
        from fleetwarden.web.server import serve_demo

        _run(serve_demo, db_url=db, port=port, devices=devices, hours=hours, seed=seed, say=out.print)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleetwarden.app.demo import run_demo
    from fleetwarden.app.stores import shown_url, store_at
    from fleetwarden.report import render_demo

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[events]} events"),
        TimeElapsedColumn(),
        console=err if as_json else out,  # with --json, stdout carries only the object
        transient=True,
    )
    task = bar.add_task("Simulating", total=None, events=0)

    def progress(done: int, total: int, events: int) -> None:
        bar.update(task, description="Detecting", completed=done, total=total, events=f"{events:,}")

    def work():
        with store_at(db) as store, bar:
            return run_demo(
                devices=devices, hours=hours, seed=seed, store=store, db_url=shown_url(db), progress=progress
            )

    report = _run(work)
    if as_json:
        from fleetwarden.app.demo import demo_json

        sys.stdout.write(json.dumps(demo_json(report), indent=2) + "\n")
        return
    render_demo(report, out)


TlsCa = Annotated[
    str | None, typer.Option("--tls-ca", help="with --mqtt: CA certificate (PEM) of the broker; switches TLS on")
]
TlsCert = Annotated[
    str | None, typer.Option("--tls-cert", help="with --mqtt: this client's certificate (PEM), for mutual TLS")
]
TlsKey = Annotated[str | None, typer.Option("--tls-key", help="with --mqtt: this client's private key (PEM)")]


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
    stream_max_bytes: StreamMaxBytes = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Simulate a fleet: write Zeek logs, events.jsonl and the scenario truth, or drive an MQTT broker
    or a NATS JetStream bus."""
    from fleetwarden.app.simulation import simulate as run_simulation
    from fleetwarden.core.text import redact_url
    from fleetwarden.report import table_of

    if out_dir is None and mqtt is None and bus is None:
        _fail("simulate needs --out DIR, --mqtt URL, --bus URL or several")
    result = _run(
        run_simulation,
        devices=devices,
        hours=hours,
        seed=seed,
        out_dir=out_dir,
        mqtt=mqtt,
        bus=bus,
        partitions=partitions,
        stream=stream,
        subjects=subjects,
        rate=rate,
        per_message=per_message,
        stream_max_bytes=stream_max_bytes,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    if result.written:
        rows = [(str(p), f"{Path(p).stat().st_size:,}") for _n, p in sorted(result.written.items())]
        out.print(table_of(("file", "bytes"), rows))
    if mqtt is not None:
        out.print(Text(f"published {result.sent_mqtt:,} events to {redact_url(mqtt)}"))
    if bus is not None:
        out.print(Text(f"published {result.sent_bus:,} events to {redact_url(bus)} in {partitions} partitions"))


def _finding_printer(as_json: bool):
    """How live commands (watch, worker) print a finding the moment it is complete: a JSON line, or
    one escaped line of time, severity, category, entity and first evidence."""
    from fleetwarden.report import finding_line

    def show(f) -> None:
        if as_json:
            sys.stdout.write(json.dumps(f.to_dict(), default=str) + "\n")
            sys.stdout.flush()
        else:
            out.print(finding_line(f))

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
    model: OptModel = None,
    as_json: Annotated[bool, typer.Option("--json", help="print findings as JSON lines")] = False,
    db: DbUrl = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=1, max=65535, help="serve Prometheus metrics on 127.0.0.1:PORT"),
    ] = None,
    stream_max_bytes: StreamMaxBytes = None,
) -> None:
    """Scale-out engine worker: consume device partitions from NATS JetStream, print findings as they
    happen, checkpoint engine state to the store (--db, else the default SQLite file)."""
    from fleetwarden.app.stores import store_at
    from fleetwarden.app.worker import run_worker
    from fleetwarden.core.text import redact_url

    show = _finding_printer(as_json)

    def status(line: str) -> None:  # how far behind the worker is, at each checkpoint
        (err if as_json else out).print(Text(line))

    def work():
        with store_at(db) as store:
            return run_worker(
                bus,
                store,
                partitions=partitions,
                owned=partition or None,
                stream=stream,
                prefix=subjects,
                record=db is not None,
                flow_model=model,
                checkpoint_every=checkpoint_every,
                on_finding=show,
                on_status=status,
                metrics_port=metrics_port,
                duration=duration,
                idle_exit=idle_exit,
                drain=drain,
                **({"max_bytes": stream_max_bytes} if stream_max_bytes else {}),
            )

    result = _run(work)
    _report_skips({f"nats {redact_url(bus)}": result.stats})
    summary = (
        f"{result.events:,} events in {result.messages:,} messages ({result.redelivered_skipped} redelivered, "
        f"skipped), {result.findings} findings, {result.checkpoints} checkpoints, "
        f"{result.seconds:.1f} s; most messages waiting at a checkpoint: {result.lag_max:,}"
    )
    # with --json, stdout carries only findings
    (err if as_json else out).print(Text(summary))


@app.command()
def watch(
    mqtt: Annotated[str, typer.Option("--mqtt", help="broker to subscribe to (mqtt://host:port)")],
    topic: Annotated[str, typer.Option(help="topic filter carrying JSON events")] = "fleetwarden/events/#",
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: run until Ctrl-C)")
    ] = None,
    model: OptModel = None,
    as_json: Annotated[bool, typer.Option("--json", help="print findings as JSON lines")] = False,
    db: DbUrl = None,
    limit: Limit = 50,
    show_all: ShowAll = False,
    device_level: Annotated[
        str | None,
        typer.Option(
            "--device-level",
            help="which topic level names the device of a record without device_id: an index (0, 2, -1) "
            "or a pattern such as 'site/+/{device}/telemetry' (default: the level after .../events/)",
        ),
    ] = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """Detect on a live MQTT event stream: findings print as they happen, incidents at the end."""
    from fleetwarden.app.watch import watch_mqtt
    from fleetwarden.core.text import redact_url

    show = _finding_printer(as_json)
    tls = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}

    def work():
        if db is None:
            return watch_mqtt(
                mqtt, topic, duration=duration, model=model, on_finding=show, device_level=device_level, **tls
            )
        from fleetwarden.app.stores import store_at

        with store_at(db) as store:
            return watch_mqtt(
                mqtt, topic, duration=duration, model=model, on_finding=show, store=store, device_level=device_level,
                **tls,
            )

    result = _run(work)
    _report_skips({f"mqtt {redact_url(mqtt)}": result.stats})
    closing = f"{result.events:,} events, {len(result.findings)} findings, {len(result.incidents)} incidents"
    if as_json:
        err.print(Text(closing))  # stdout carries only findings
        return
    from fleetwarden.report import incident_table

    out.print(Text(closing))
    if result.incidents:
        out.print(incident_table(result.incidents, limit=_limit(limit, show_all)))


# command groups, one module each (cli/<group>.py defines a Typer app)
_GROUPS = {
    "inventory": ("fleetwarden.cli.inventory", "inventory_app"),
    "vendor": ("fleetwarden.cli.vendor", "vendor_app"),
    "fingerprint": ("fleetwarden.cli.fingerprint", "fingerprint_app"),
    "onboard": ("fleetwarden.cli.onboard", "onboard_app"),
    "audit": ("fleetwarden.cli.audit", "audit_app"),
    "vendor-key": ("fleetwarden.cli.vendorkeys", "vendor_key_app"),
    "firmware": ("fleetwarden.cli.firmware", "firmware_app"),
    "rollout": ("fleetwarden.cli.rollout", "rollout_app"),
    "ca": ("fleetwarden.cli.ca", "ca_app"),
    "users": ("fleetwarden.cli.users", "users_app"),
    "identity": ("fleetwarden.cli.identity", "identity_app"),
    "incident": ("fleetwarden.cli.incident", "incident_app"),
    "metrics": ("fleetwarden.cli.metrics", "metrics_app"),
    "export": ("fleetwarden.cli.export", "export_app"),
    "actions": ("fleetwarden.cli.response", "actions_app"),
    "response": ("fleetwarden.cli.response", "response_app"),
    "suppress": ("fleetwarden.cli.suppress", "suppress_app"),
    "serve": ("fleetwarden.cli.serve", "serve_app"),
}


def _register_groups() -> None:
    import importlib

    for name, (module, attr) in _GROUPS.items():
        app.add_typer(getattr(importlib.import_module(module), attr), name=name)


_register_groups()


def main() -> None:
    app()
