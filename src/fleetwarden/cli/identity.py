"""``fleetwarden identity``: audit the fleet's identities (certificates, credentials, operators)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.cli._common import AsJson, DbUrl, _check_inputs, _run, out

identity_app = typer.Typer(no_args_is_help=True, help="Audit device and operator identities.")


@identity_app.command("audit")
def identity_audit(
    db: DbUrl = None,
    as_json: AsJson = False,
    broker_log: Annotated[
        list[Path] | None,
        typer.Option("--broker-log", help="a Mosquitto log whose connections are audited too (repeat)"),
    ] = None,
    record: Annotated[
        bool, typer.Option("--record", help="record device checks as findings: they join incidents and risk")
    ] = False,
) -> None:
    """Run the identity audit checks: shared, cloned, expiring, aged, weak or revoked-but-connecting
    certificates, conflicting client ids, default or shared credentials, over-privileged operators."""
    from fleetwarden.app.identity_audit import identity_audit as run_audit
    from fleetwarden.app.stores import store_at
    from fleetwarden.report import table_of

    logs = list(broker_log or [])
    _run(_check_inputs, logs)

    def work() -> dict:
        with store_at(db) as store:
            return run_audit(store, broker_logs=logs, record=record)

    result = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    if "recorded" in result:
        r = result["recorded"]
        out.print(f"Recorded {r['findings_added']} findings: {r['incidents_opened']} incidents opened, "
                  f"{r['incidents_updated']} updated.")  # fmt: skip
    if not result["checks"]:
        out.print("No identity findings.")
        return
    rows = [
        (c["severity"], c["check"], f"{c['count']}: " + ", ".join(c["entities"][:5]), c["found"], c["fix"])
        for c in result["checks"]
    ]
    out.print(table_of(("severity", "check", "entities", "found", "fix"), rows))
