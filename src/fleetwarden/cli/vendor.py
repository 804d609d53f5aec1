"""``fleetwarden vendor``: the vendor register (security contact, disclosure policy, patch cadence,
authentication support, support commitment) and each vendor's risk score.  A plain Typer app:
other command modules add subcommands to ``vendor_app``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.app.inventory import VENDOR_COLUMNS
from fleetwarden.cli._common import AsJson, DbUrl, _check_inputs, _run, out

vendor_app = typer.Typer(no_args_is_help=True, help="The vendor register and vendor risk.")

_COLUMNS_HELP = "\n\n".join(f"{name}: {what}" for name, what in VENDOR_COLUMNS.items())


@vendor_app.command("import", help=f"""Register vendors from a CSV with a header or a JSON list of objects.

Every row is checked first; any bad row (named by line or item, column and what was wrong) refuses the
whole file.  Columns (only name is required):

{_COLUMNS_HELP}""")
def vendor_import(
    file: Annotated[Path, typer.Argument(help="JSON list of vendor objects or CSV with a header")],
    db: DbUrl = None,
) -> None:
    from fleetwarden.app.inventory import import_vendors
    from fleetwarden.app.stores import store_at

    _run(_check_inputs, [file])

    def work() -> tuple[int, int]:
        with store_at(db) as store:
            return import_vendors(file, store)

    total, changed = _run(work)
    out.print(f"{total} vendors read, {changed} added or changed")


@vendor_app.command("list")
def vendor_list(db: DbUrl = None, as_json: AsJson = False) -> None:
    """List the vendors with their risk score (0-100) and its reasons."""
    from fleetwarden.app.inventory import list_vendors
    from fleetwarden.app.stores import store_at
    from fleetwarden.report import table_of

    def work() -> list[dict]:
        with store_at(db) as store:
            return list_vendors(store)

    rows = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cells = [
        (
            r["name"],
            r["security_contact"] or "",
            "" if r["patch_cadence_days"] is None else r["patch_cadence_days"],
            ", ".join(r["auth_support"] or []),
            r["risk"],
            "; ".join(r["risk_reasons"][:3]),
        )
        for r in rows
    ]
    heads = ("vendor", "security contact", "patch days", "authentication", "risk", "main reasons")
    out.print(table_of(heads, cells) if rows else "No vendors.")
