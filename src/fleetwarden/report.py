"""Rich renderings shared by the CLI commands (tables of incidents, findings, devices)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from rich.table import Table

from fleetwarden.findings import Incident

SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def ts_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def incident_table(incidents: Sequence[Incident], title: str = "Incidents", limit: int = 50) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("risk", "severity", "category", "entity", "ip", "first seen (UTC)", "evidence"):
        table.add_column(col, overflow="fold")
    ranked = sorted(incidents, key=lambda i: (-i.risk, i.first_seen))
    for inc in ranked[:limit]:
        style = SEVERITY_STYLE.get(inc.severity, "")
        table.add_row(
            str(inc.risk),
            f"[{style}]{inc.severity}[/]" if style else inc.severity,
            inc.category,
            inc.entity,
            inc.ip or "",
            ts_text(inc.first_seen),
            inc.evidence[0] if inc.evidence else "",
        )
    if len(ranked) > limit:
        table.caption = f"{len(ranked) - limit} more not shown"
    return table
