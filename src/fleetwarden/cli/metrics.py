"""``fleetwarden metrics``: security metrics of the store (MTTD, MTTR, false-positive rate, drift,
posture), as a table, JSON or the Prometheus text format."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from fleetwarden.cli._common import AsJson, DbUrl, _fail, _run, out

metrics_app = typer.Typer(no_args_is_help=False, help="Security metrics (MTTD, MTTR, false positives, drift).")


@metrics_app.callback(invoke_without_command=True)
def metrics(
    as_json: AsJson = False,
    prometheus: Annotated[bool, typer.Option("--prometheus", help="print the Prometheus text format")] = False,
    by: Annotated[str | None, typer.Option("--by", help="also per site or class")] = None,
    db: DbUrl = None,
) -> None:
    """Security metrics over the store: overall, per UTC day, and per site or device class."""
    from fleetwarden.app.metrics import prometheus_text, security_metrics
    from fleetwarden.app.stores import store_at

    if as_json and prometheus:
        _fail("--json and --prometheus exclude each other")

    def work():
        with store_at(db) as store:
            return security_metrics(store, by=by)

    result = _run(work)
    if prometheus:
        sys.stdout.write(prometheus_text(result))
    elif as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        out.print(_table(result))


def _table(result):
    from fleetwarden.report import table_of

    def row(name, v):
        fp = v["false_positive"]
        return (name, v["incidents"], v["mttd"]["mean_s"], v["mttr"]["mean_s"], v["mttr"]["uncontained"],
                fp["rate"], fp["unjudged"])  # fmt: skip

    rows = [row("all", result["overall"])]
    rows += [row(f"day {d}", v) for d, v in result["daily"].items()]
    rows += [row(f"{result['by']} {g}", v) for g, v in result.get("groups", {}).items()]
    cols = ("scope", "incidents", "MTTD s", "MTTR s", "uncontained", "FP rate", "unjudged")
    return table_of(cols, [tuple("-" if c is None else c for c in r) for r in rows], title="Security metrics")
