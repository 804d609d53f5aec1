"""``fleetwarden incident``: an analyst's verdict on an incident, and the labels verdicts give the
supervised model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import DbUrl, _run, out

incident_app = typer.Typer(no_args_is_help=True, help="Analysts' verdicts on incidents.")


@incident_app.command("verdict")
def incident_verdict(
    incident_id: Annotated[int, typer.Argument(min=1, help="the incident's id in the store")],
    verdict: Annotated[str, typer.Argument(help="true-positive or false-positive")],
    reason: Annotated[str, typer.Option("--reason", help="why (1 to 1000 characters); audited")],
    analyst: Annotated[str, typer.Option("--as", help="the analyst's name (audited)")],
    db: DbUrl = None,
) -> None:
    """Mark an incident true or false positive with a reason; the newest verdict counts."""
    from fleetwarden.app.stores import store_at
    from fleetwarden.app.verdicts import record_verdict
    from fleetwarden.core.text import printable

    def work():
        with store_at(db) as store:
            return record_verdict(store, incident_id, verdict, reason, analyst=analyst)

    row = _run(work)
    out.print(Text(f"incident {row['incident_id']}: {row['verdict']} (by {printable(row['analyst'], 80)})"))


@incident_app.command("labels")
def incident_labels(
    out_file: Annotated[Path, typer.Option("--out", help="JSON-lines file to write")],
    db: DbUrl = None,
) -> None:
    """Write the records behind judged incidents as labelled rows (uid, label, detailed_label…)."""
    from fleetwarden.app.stores import store_at
    from fleetwarden.app.verdicts import export_labels

    def work():
        with store_at(db) as store:
            return export_labels(store, out_file)

    sys.stdout.write(json.dumps(_run(work), indent=2) + "\n")
