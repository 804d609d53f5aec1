"""``fleetwarden export``: findings and incidents for other security tools: CEF and OCSF lines (to
stdout, a file or a syslog server), signed webhooks, STIX 2.1 indicator bundles."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import DbUrl, _run, err

export_app = typer.Typer(
    no_args_is_help=True, help="Export findings and incidents: SIEM, SOAR, threat intel."
)

Since = Annotated[
    str | None, typer.Option("--since", help="only records last seen at or after this ISO 8601 time (UTC)")
]
OutFile = Annotated[Path | None, typer.Option("--out", help="write to this file instead of stdout")]
What = Annotated[str, typer.Option("--what", help="all, incidents or findings")]
Syslog = Annotated[
    str | None, typer.Option("--syslog", help="send each record to this syslog server (HOST:PORT), RFC 5424")
]
Tcp = Annotated[bool, typer.Option("--tcp", help="with --syslog: TCP with octet counting (default UDP)")]


def _in_store(db: str | None, fn, *args, **kwargs):
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


def _siem(
    fmt: str, since: str | None, out_file: Path | None, what: str, syslog: str | None, tcp: bool, db
) -> None:
    from fleetwarden.app.export import export_lines, parse_since, send_syslog, write_text

    start = _run(parse_since, since)
    if syslog is not None:
        protocol = "tcp" if tcp else "udp"
        sent = _in_store(db, send_syslog, fmt, syslog, protocol=protocol, since=start, what=what)
        err.print(Text(f"sent {sent} {fmt} message(s) to {syslog} over {protocol}"))
        return
    lines = _in_store(db, export_lines, fmt, since=start, what=what)
    text = "".join(line + "\n" for line in lines)
    if out_file is None:
        sys.stdout.write(text)
        return
    written = _run(write_text, out_file, text)
    err.print(Text(f"wrote {len(lines)} {fmt} record(s), {written:,} bytes, to {out_file}"))


@export_app.command("cef")
def export_cef(
    since: Since = None,
    out_file: OutFile = None,
    what: What = "all",
    syslog: Syslog = None,
    tcp: Tcp = False,
    db: DbUrl = None,
) -> None:
    """ArcSight CEF:0 lines, one per incident and finding (hostile values escaped)."""
    _siem("cef", since, out_file, what, syslog, tcp, db)


@export_app.command("ocsf")
def export_ocsf(
    since: Since = None,
    out_file: OutFile = None,
    what: What = "all",
    syslog: Syslog = None,
    tcp: Tcp = False,
    db: DbUrl = None,
) -> None:
    """OCSF Detection Finding (class 2004) JSON lines, one per incident and finding."""
    _siem("ocsf", since, out_file, what, syslog, tcp, db)


@export_app.command("webhook")
def export_webhook(
    url: Annotated[str, typer.Argument(help="the SOAR or ticketing endpoint (http or https)")],
    since: Since = None,
    what: Annotated[str, typer.Option("--what", help="all, incidents or findings")] = "incidents",
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file", help="file holding the HMAC secret (default: FLEETWARDEN_WEBHOOK_SECRET)"
        ),
    ] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, max=10, help="retries per record")] = 3,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=300, help="seconds per attempt")] = 10.0,
    db: DbUrl = None,
) -> None:
    """POST each record as OCSF JSON, signed with HMAC-SHA256 over a timestamp and the body."""
    from fleetwarden.app.export import export_webhook as send
    from fleetwarden.app.export import parse_since
    from fleetwarden.app.webhook import load_secret
    from fleetwarden.core.text import redact_url

    start = _run(parse_since, since)
    secret = _run(load_secret, secret_file)
    summary = _in_store(db, send, url, secret, since=start, what=what, retries=retries, timeout=timeout)
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(summary.statuses.items())) or "none"
    err.print(Text(f"{redact_url(url)}: {summary.sent} sent, {summary.failed} refused (HTTP {statuses})"))
    if summary.failed:
        raise typer.Exit(1)


@export_app.command("stix")
def export_stix(since: Since = None, out_file: OutFile = None, db: DbUrl = None) -> None:
    """A STIX 2.1 bundle of shareable indicators: public C2 addresses and domains, tampered firmware hashes."""
    from fleetwarden.app.export import export_stix as bundle_of
    from fleetwarden.app.export import parse_since, write_text

    start = _run(parse_since, since)
    bundle = _in_store(db, bundle_of, since=start)
    text = json.dumps(bundle, indent=2, sort_keys=True) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    _run(write_text, out_file, text)
    err.print(Text(f"wrote {len(bundle['objects']) - 1} indicator(s) to {out_file}"))
