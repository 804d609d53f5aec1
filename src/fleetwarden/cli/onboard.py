"""``fleetwarden onboard``: expected shipments, enrolment nonces, attested provisioning requests.

``onboard request FILE`` exits 0 when the device is enrolled (its certificate written to
``--out-dir``), 1 when the request is refused (the reason code and sentence on stdout), and 2 when
the file is not a well-formed request or the CA cannot be used (one line on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, Limit, ShowAll, _check_inputs, _limit, _run, out

onboard_app = typer.Typer(no_args_is_help=True, help="Attested onboarding of devices.")

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="file whose first line is the CA passphrase (default: env FLEETWARDEN_CA_PASSPHRASE)",
    ),
]


def _in_store(db: str | None, fn, *args, **kwargs):
    """Open the store at ``db``, call the service ``fn(store, ...)``, close it."""
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


@onboard_app.command("expect")
def onboard_expect(
    file: Annotated[
        Path,
        typer.Argument(help="JSON list or CSV: serial,vendor,model,site[,country,device_id,device_class]"),
    ],
    db: DbUrl = None,
) -> None:
    """Import expected shipments: only devices listed here may enrol."""
    from fleetwarden.app.onboarding import import_shipments

    _run(_check_inputs, [file])
    read, added, updated = _in_store(db, import_shipments, file)
    out.print(f"{read} expected devices read, {added} added, {updated} updated")


@onboard_app.command("nonce")
def onboard_nonce(
    db: DbUrl = None,
    ttl: Annotated[
        float, typer.Option("--ttl", min=1, max=7 * 86400, help="seconds the nonce stays valid")
    ] = 900,
) -> None:
    """Issue a fresh enrolment nonce (printed alone on stdout; valid once, for --ttl seconds)."""
    from fleetwarden.app.onboarding import issue_nonce

    sys.stdout.write(_in_store(db, issue_nonce, ttl=ttl) + "\n")


@onboard_app.command("request")
def onboard_request(
    file: Annotated[Path, typer.Argument(help="the provisioning request (JSON, see README: Onboarding)")],
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="write DIR/DEVICE_ID.crt on success")
    ] = None,
    db: DbUrl = None,
    passphrase_file: PassphraseFile = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="certificate validity in days")] = 365,
    as_json: AsJson = False,
) -> None:
    """Verify a provisioning request; enrol the device (certificate, baseline) or refuse it (exit 1)."""
    from fleetwarden.app.onboarding import enrol_file

    _run(_check_inputs, [file])
    result = _in_store(db, enrol_file, file, out_dir=out_dir, passphrase_file=passphrase_file, days=days)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    elif result.accepted:
        where = f": wrote {result.certificate_path}" if result.certificate_path else ""
        zone = (result.baseline or {}).get("zone", "-")
        out.print(
            Text(
                f"enrolled {result.device_id} (certificate serial {result.certificate_serial}, zone {zone}){where}"
            )
        )
    else:
        out.print(Text(f"refused {result.device_id}: {result.reason}: {result.sentence}"))
        for code in result.reasons[1:]:
            out.print(Text(f"  also: {code}"))
    if not result.accepted:
        raise typer.Exit(1)


@onboard_app.command("list")
def onboard_list(
    db: DbUrl = None, as_json: AsJson = False, limit: Limit = 100, show_all: ShowAll = False
) -> None:
    """Every enrolment, newest first: accepted, or refused with its reason."""
    from fleetwarden.app.onboarding import list_enrolments
    from fleetwarden.report import table_of, ts_text

    rows = _in_store(db, list_enrolments, limit=_limit(limit, show_all))
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cols = ("ts", "serial", "vendor", "device_id", "result", "reason", "site", "source")
    out.print(
        table_of(cols, [[ts_text(r["ts"]) if k == "ts" else r.get(k) or "" for k in cols] for r in rows])
    )
