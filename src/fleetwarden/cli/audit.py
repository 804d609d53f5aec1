"""``fleetwarden audit``: the tamper-evident audit log (verify, head, list).

``audit verify`` exits 0 when the log is intact, 1 when it is not (each problem on stdout with the
entry where it is), 2 on bad usage (an anchor that is not ``SEQ:HASH``, a database that cannot be
opened).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, Limit, _run, out

audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")


def _in_store(db: str | None, fn, *args, **kwargs):
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        str | None, typer.Option("--anchor", help="SEQ:HASH from an earlier `audit head`, kept elsewhere")
    ] = None,
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Re-hash the whole chain and hold its end against the stored heads (exit 1 when tampered)."""
    from fleetwarden.app.audit import format_head, parse_anchor, verify_audit

    parsed = _run(parse_anchor, anchor) if anchor is not None else None
    report = _in_store(db, verify_audit, anchor=parsed)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    elif report.ok:
        out.print(Text(f"audit log intact: {report.entries} entries, head {format_head(report.head)}"))
        out.print(Text(f"checked: {', '.join(report.checked)}"))
    else:
        out.print(Text(f"audit log TAMPERED ({len(report.problems)} problem(s)):"))
        for p in report.problems:
            out.print(Text(f"  at entry {p.seq if p.seq is not None else '-'}: {p.what}"))
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("head")
def audit_head(db: DbUrl = None) -> None:
    """Print the newest entry as SEQ:HASH: keep it elsewhere and pass it back with --anchor."""
    from fleetwarden.app.audit import audit_head as head

    sys.stdout.write(_in_store(db, head) + "\n")


@audit_app.command("list")
def audit_list(db: DbUrl = None, as_json: AsJson = False, limit: Limit = 50) -> None:
    """The newest entries (oldest of them first)."""
    from fleetwarden.app.audit import list_entries
    from fleetwarden.report import table_of, ts_text

    rows = _in_store(db, list_entries, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cols = ("seq", "ts", "actor", "action", "subject")
    out.print(table_of(cols, [[ts_text(r["ts"]) if k == "ts" else r[k] for k in cols] for r in rows]))
