"""``fleetwarden inventory``: the device inventory in the store (import, export, list, the unknown
devices passive discovery found, and the inventory's accuracy)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.app.inventory import IMPORT_COLUMNS
from fleetwarden.cli._common import AsJson, DbUrl, Limit, ShowAll, _check_inputs, _run, out

inventory_app = typer.Typer(no_args_is_help=True, help="The device inventory in the store.")

_COLUMNS_HELP = "\n\n".join(f"{name}: {what}" for name, what in IMPORT_COLUMNS.items())


@inventory_app.command("import", help=f"""Register devices from a CSV with a header or a JSON list of objects.

Every row is checked first; any bad row (named by line or item, column and what was wrong) refuses the
whole file, so nothing is half-imported.  Columns (only device_id is required; any other column is kept
under attributes, e.g. allowed_destinations):

{_COLUMNS_HELP}""")
def inventory_import(
    file: Annotated[Path, typer.Argument(help="JSON list of device objects or CSV with a header")],
    db: DbUrl = None,
) -> None:
    from fleetwarden.app.inventory import import_inventory
    from fleetwarden.app.stores import store_at

    _run(_check_inputs, [file])

    def work() -> tuple[int, int]:
        with store_at(db) as store:
            return import_inventory(file, store)

    total, changed = _run(work)
    out.print(f"{total} devices read, {changed} added or changed")


@inventory_app.command("export")
def inventory_export(
    out_file: Annotated[Path, typer.Option("--out", help="file to write")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the file name, else csv)")
    ] = None,
    db: DbUrl = None,
) -> None:
    """Write every device in the import format (importing the file again gives the same inventory)."""
    from fleetwarden.app.inventory import export_inventory
    from fleetwarden.app.stores import store_at

    def work() -> int:
        with store_at(db) as store:
            return export_inventory(store, out_file, fmt)

    n = _run(work)
    out.print(f"{n} devices written to {out_file}", markup=False, highlight=False)


@inventory_app.command("list")
def inventory_list(db: DbUrl = None, as_json: AsJson = False, limit: Limit = 1000, show_all: ShowAll = False) -> None:
    """List the devices in the store, with the risk each inherits from its vendor."""
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
    cols = ("device_id", "device_class", "vendor", "model", "ip", "site", "lifecycle", "vendor_risk")
    shown = rows if show_all else rows[:limit]
    table = table_of(
        ("device_id", "class", "vendor", "model", "ip", "site", "lifecycle", "vendor risk"),
        [["" if r.get(k) is None else r.get(k) for k in cols] for r in shown],
    )
    if len(rows) > len(shown):
        table.caption = f"{len(rows) - len(shown)} more not shown (--limit N or --all shows more)"
    out.print(table)


@inventory_app.command("unknown")
def inventory_unknown(db: DbUrl = None, as_json: AsJson = False, limit: Limit = 200, show_all: ShowAll = False) -> None:
    """Devices seen in traffic (analyze --db, watch --db, worker --db) that nobody registered: first and
    last seen, addresses, top peers and ports."""
    from fleetwarden.app.inventory import unknown_devices
    from fleetwarden.app.stores import store_at
    from fleetwarden.report import table_of, ts_text

    def work() -> list[dict]:
        with store_at(db) as store:
            return unknown_devices(store)

    rows = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    shown = rows if show_all else rows[:limit]
    cells = [
        (
            r["device_id"],
            r["mac"] or "",
            " ".join(r["ips"]),
            ts_text(r["first_seen"]) if r["first_seen"] is not None else "-",
            ts_text(r["last_seen"]) if r["last_seen"] is not None else "-",
            ", ".join(f"{p} ({n})" for p, n in r["peers"][:5]),
            ", ".join(f"{p} ({n})" for p, n in r["ports"][:5]),
        )
        for r in shown
    ]
    table = table_of(("device_id", "mac", "addresses", "first seen", "last seen", "top peers", "top ports"), cells)
    if len(rows) > len(shown):
        table.caption = f"{len(rows) - len(shown)} more not shown (--limit N or --all shows more)"
    out.print(table if rows else "No unknown devices.")


@inventory_app.command("accuracy")
def inventory_accuracy(db: DbUrl = None, as_json: AsJson = False) -> None:
    """Known vs seen: the share of devices seen in traffic that are registered, and the registered
    devices (active or quarantined) traffic never showed."""
    from fleetwarden.app.inventory import inventory_accuracy as accuracy
    from fleetwarden.app.stores import store_at
    from fleetwarden.report import table_of

    def work() -> dict:
        with store_at(db) as store:
            return accuracy(store)

    m = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(m, indent=2) + "\n")
        return
    share = "-" if m["known_share"] is None else f"{m['known_share']:.1%}"
    rows = [
        ("devices seen in traffic", m["seen"]),
        ("  registered", m["seen_registered"]),
        ("  unknown", m["seen_unknown"]),
        ("known share of seen", share),
        ("registered devices", m["registered"]),
        ("  expected on the network", m["expected_on_network"]),
        ("  never seen", m["registered_never_seen"]),
    ]
    out.print(table_of(("inventory accuracy", "value"), rows))
    if m["never_seen"]:
        out.print(table_of(("registered, never seen",), [(d,) for d in m["never_seen"]]))
