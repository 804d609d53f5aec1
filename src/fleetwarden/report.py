"""What the command line shows a person: tables of incidents and devices, finding lines, the demo.

Part of the CLI face (docs/architecture.md).  Every value that came from outside (evidence,
entity names, file names) goes to Rich as a :class:`~rich.text.Text` after
:func:`~fleetwarden.core.text.printable`, never as markup: a crafted user name or DNS label can
neither restyle a table nor send escape sequences to the terminal.  Our own styling is applied
as Rich styles, not markup strings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fleetwarden.core.findings import Finding, Incident
from fleetwarden.core.text import printable, redact

__all__ = ["DEFAULT_LIMIT", "finding_line", "incident_table", "render_demo", "safe", "table_of", "ts_text"]

SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}
DEFAULT_LIMIT = 50
# an evidence sentence longer than this is cut in tables (the JSON output keeps it whole)
EVIDENCE_CHARS = 400


def safe(value: Any, style: str = "", limit: int | None = None) -> Text:
    """A table cell from an untrusted value: credentials masked, escaped, optionally cut, never
    parsed as markup."""
    return Text("" if value is None else printable(redact(str(value)), limit), style=style)


def ts_text(ts: float) -> str:
    if ts != ts or ts in (float("inf"), float("-inf")):
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def table_of(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    """A table of untrusted values (every cell through :func:`safe`)."""
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(safe(v) for v in row))
    return table


def incident_table(
    incidents: Sequence[Incident], title: str = "Incidents", limit: int | None = DEFAULT_LIMIT
) -> Table:
    """Incidents, highest risk first; ``limit`` rows (None: all), the rest counted in the caption."""
    table = Table(title=title, show_lines=False)
    for col in ("risk", "severity", "category", "entity", "ip", "first seen (UTC)"):
        table.add_column(col, no_wrap=True)
    table.add_column("evidence", overflow="fold", min_width=30, ratio=1)
    ranked = sorted(incidents, key=lambda i: (-i.risk, i.first_seen))
    shown = ranked if limit is None else ranked[:limit]
    for inc in shown:
        table.add_row(
            str(inc.risk),
            safe(inc.severity, SEVERITY_STYLE.get(inc.severity, "")),
            safe(inc.category),
            safe(inc.entity, limit=80),
            safe(inc.ip or ""),
            ts_text(inc.first_seen),
            safe(inc.evidence[0] if inc.evidence else "", limit=EVIDENCE_CHARS),
        )
    if len(ranked) > len(shown):
        table.caption = f"{len(ranked) - len(shown)} more not shown (--limit N or --all shows more)"
    return table


def finding_line(f: Finding) -> Text:
    """One line for a live finding: time, severity, category, entity and its first evidence."""
    first = f.evidence[0] if f.evidence else ""
    return Text.assemble(
        f"{ts_text(f.last_seen)} ",
        (f"{f.severity:8s}", SEVERITY_STYLE.get(f.severity, "")),
        f" {printable(f.category):16s} ",
        printable(f.entity, 80),
        ": ",
        printable(redact(first), EVIDENCE_CHARS),
    )


def render_demo(report: Any, console: Any) -> None:
    """The demo's report (:class:`fleetwarden.app.demo.DemoReport`): fleet, scenarios, incidents, summary."""
    fleet = Table(title=f"Fleet: {report.devices} devices, {report.hours:g} h simulated (seed {report.seed})")
    fleet.add_column("device class")
    fleet.add_column("devices", justify="right")
    fleet.add_column("vendors")
    for cls, n, vendors in report.inventory_summary:
        fleet.add_row(safe(cls), str(n), safe(vendors))
    console.print(fleet)

    sc = Table(title="Tabletop scenarios: what was detected")
    sc.add_column("scenario", no_wrap=True)
    for col in ("device", "expected", "detected", "missed", "MTTD", "proposed (approval)", "result"):
        sc.add_column(col, overflow="fold")
    for o in report.outcomes:
        ttd = "-" if o.mttd_s is None else f"{o.mttd_s / 60:.1f} min"
        acts = ", ".join(a["kind"] + (" (approval)" if a["requires_approval"] else "") for a in o.actions)
        if o.benign:
            verdict = Text("quiet (benign)", "green") if o.ok else Text("false alarm", "red")
            expected = "(no incident)"
        else:
            verdict = (
                Text("detected", "green")
                if o.ok
                else (Text("partial", "yellow") if o.detected else Text("missed", "red"))
            )
            expected = ", ".join(o.expected)
        sc.add_row(
            safe(o.name),
            safe(", ".join(o.devices)),
            expected,
            ", ".join(o.detected) or "-",
            ", ".join(o.missed) or "-",
            ttd,
            safe(acts or "-"),
            verdict,
        )
    console.print(sc)
    if report.incidents:
        console.print(incident_table(report.incidents, title="Incidents (highest risk first)", limit=15))
    attacks = [o for o in report.outcomes if not o.benign]
    found = sum(1 for o in attacks if o.ok)
    partial = sum(1 for o in attacks if not o.ok and o.detected)
    benign_ok = all(o.ok for o in report.outcomes if o.benign)
    kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(report.events_by_kind.items()))
    sev = Counter(i.severity for i in report.incidents)
    lines = [
        f"events processed: {report.events:,} ({kinds})",
        f"wall time: {report.seconds:.1f} s ({report.events_per_second:,.0f} events/s end to end)",
        f"findings: {len(report.findings):,}; incidents: {len(report.incidents)} "
        f"({', '.join(f'{s} {sev[s]}' for s in ('critical', 'high', 'medium', 'low') if sev[s])})",
        f"attack scenarios fully detected: {found}/{len(attacks)}"
        + (f" (partially: {partial})" if partial else ""),
        f"benign firmware rollout kept quiet: {'yes' if benign_ok else 'NO'}",
        _unexplained_line(report.unexplained),
        *_metrics_lines(getattr(report, "metrics", None) or {}),
        f"results stored in: {printable(report.db_url)}",
    ]
    console.print(Panel(Text("\n".join(lines)), title="Summary", expand=False))


def _metrics_lines(met: dict[str, Any]) -> list[str]:
    """The demo's fleet metrics (:func:`fleetwarden.app.demo.demo_metrics`), a few lines."""
    if not met:
        return []
    mttd, patch = met["mttd"], met["patch_compliance"]
    acc, ident = met["inventory_accuracy"], met["identity_posture"]
    rate = "-" if patch["rate"] is None else f"{patch['rate']:.0%}"
    known = "-" if acc["known_share"] is None else f"{acc['known_share']:.0%}"
    return [
        f"MTTD: mean {mttd['mean_s'] or 0:.0f} s, median {mttd['median_s'] or 0:.0f} s, max {mttd['max_s'] or 0:.0f} s",
        f"actions proposed: {met['actions_proposed']} ({met['actions_requiring_approval']} need approval, "
        f"{met['actions_executed']} executed: observe mode)",
        f"patch compliance: {rate} of {patch['covered']} covered devices; seen devices registered: {known}; "
        f"identity audit: " + ", ".join(f"{n} {sev}" for sev, n in ident.items()),
    ]


def _unexplained_line(unexplained: list[Incident]) -> str:
    """False positives, split by what an analyst would have to look at (medium and above)."""
    serious = [i for i in unexplained if i.severity in ("medium", "high", "critical")]
    low = Counter(i.category for i in unexplained if i.severity == "low")
    low_text = ", ".join(f"{n} {cat}" for cat, n in low.most_common()) or "none"
    return (
        f"incidents not explained by a scenario (false positives): {len(serious)} at medium or above; "
        f"low-severity notes: {low_text}"
    )
