"""``fleetwarden suppress``: maintenance windows and analyst-approved exceptions (allowlists).

Every change is audited and re-evaluates the open incidents at once: a finding a rule explains no
longer counts; an incident left with nothing is closed ("suppressed by rule #N"); removing the
rule (or its expiry) reopens it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, _run, out

suppress_app = typer.Typer(no_args_is_help=True, help="Maintenance windows and approved exceptions.")

Opt = Annotated[str | None, typer.Option()]


def _summary(done: dict[str, list[int]]) -> str:
    return ", ".join(f"{len(ids)} {what}" for what, ids in done.items()) + " incident(s)"


@suppress_app.command("add")
def suppress_add(
    kind: Annotated[
        str, typer.Argument(help="maintenance (a window of planned work) or exception (an allowlist entry)")
    ],
    reason: Annotated[str, typer.Option("--reason", help="why (required; kept in the audit log)")],
    expires: Annotated[
        str, typer.Option("--expires", help="end: ISO 8601 (2026-12-24T08:00Z) or from now (+2h, 30d)")
    ],
    starts: Annotated[
        str | None, typer.Option("--starts", help="start of a maintenance window (same forms)")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="device id")] = None,
    site: Annotated[str | None, typer.Option("--site", help="site (a cohort)")] = None,
    device_class: Annotated[str | None, typer.Option("--class", help="device class (a cohort)")] = None,
    category: Annotated[
        str | None, typer.Option("--category", help="finding category (default: any)")
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--destination", help="address, CIDR network or domain")
    ] = None,
    actor: Annotated[str, typer.Option("--actor", help="who approves it (audited)")] = "cli",
    db: DbUrl = None,
) -> None:
    """Add a rule, then re-evaluate the open incidents."""
    from fleetwarden.app.stores import store_at
    from fleetwarden.app.suppression import add

    fields = {"kind": kind, "reason": reason, "expires_at": expires, "starts_at": starts, "device_id": device,
              "site": site, "device_class": device_class, "category": category, "destination": destination}  # fmt: skip

    def work():
        with store_at(db) as store:
            return add(store, fields, actor=actor)

    row, done = _run(work)
    out.print(Text(f"suppression {row.id} added; {_summary(done)}"))


@suppress_app.command("remove")
def suppress_remove(
    rule_id: Annotated[int, typer.Argument(help="the rule's id (suppress list)")],
    actor: Annotated[str, typer.Option("--actor", help="who lifts it (audited)")] = "cli",
    db: DbUrl = None,
) -> None:
    """Lift a rule now, then re-evaluate: what it closed reopens unless another rule explains it."""
    from fleetwarden.app.stores import store_at
    from fleetwarden.app.suppression import remove

    def work():
        with store_at(db) as store:
            return remove(store, rule_id, actor=actor)

    row, done = _run(work)
    out.print(Text(f"suppression {row.id} removed; {_summary(done)}"))


@suppress_app.command("list")
def suppress_list(
    show_removed: Annotated[bool, typer.Option("--removed", help="include removed rules")] = False,
    as_json: AsJson = False,
    db: DbUrl = None,
) -> None:
    """The rules (id, kind, state, scope, window, reason, incidents closed)."""
    from fleetwarden.app.stores import store_at
    from fleetwarden.app.suppression import list_rules

    def work():
        with store_at(db) as store:
            return list_rules(store, include_removed=show_removed)

    rows = _run(work)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    from fleetwarden.core.text import printable

    for r in rows:
        scope = " ".join(
            f"{k}={r[k]}" for k in ("device_id", "site", "device_class", "category", "destination") if r[k]
        )
        window = (
            f"{_when(r['starts_at'])} to {_when(r['expires_at'])}"
            if r["starts_at"]
            else _when(r["expires_at"])
        )
        line = f"#{r['id']}  {r['kind']}  {r['state']}  {scope}  until {window}  closed {len(r['closed_incidents'] or [])}"
        out.print(Text(printable(f"{line}  reason: {r['reason']}", 2000)))


def _when(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "-" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")
