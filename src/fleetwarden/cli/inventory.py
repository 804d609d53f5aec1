"""``fleetwarden inventory``: the device inventory in the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.cli._common import AsJson, DbUrl, Limit, ShowAll, _check_inputs, _run, out

inventory_app = typer.Typer(no_args_is_help=True, help="The device inventory in the store.")


@inventory_app.command("import")
def inventory_import(
    file: Annotated[Path, typer.Argument(help="JSON list of device objects or CSV with a header")],
    db: DbUrl = None,
) -> None:
    """Register devices (device_id, ip, mac, vendor, model, device_class, site, …) in the store."""
    from fleetwarden.app.inventory import import_inventory
    from fleetwarden.app.stores import store_at

    _run(_check_inputs, [file])

    def work() -> tuple[int, int]:
        with store_at(db) as store:
            return import_inventory(file, store)

    total, changed = _run(work)
    out.print(f"{total} devices read, {changed} added or changed")


@inventory_app.command("list")
def inventory_list(db: DbUrl = None, as_json: AsJson = False, limit: Limit = 1000, show_all: ShowAll = False) -> None:
    """List the devices in the store."""
    from fleetwarden.app.inventory import list_devices
    from fleetwarden.app.stores import store_at
    from fleetwarden.report import table_of

    def work() -> list[dict]:
        with store_at(db) as store:
            return list_devices(store)

    rows = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cols = ("device_id", "device_class", "vendor", "model", "ip", "site", "lifecycle")
    shown = rows if show_all else rows[:limit]
    table = table_of(("device_id", "class", "vendor", "model", "ip", "site", "lifecycle"), [[r.get(k) or "" for k in cols] for r in shown])
    if len(rows) > len(shown):
        table.caption = f"{len(rows) - len(shown)} more not shown (--limit N or --all shows more)"
    out.print(table)


