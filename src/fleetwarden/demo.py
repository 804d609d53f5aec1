"""The demo: a simulated fleet with tabletop attack scenarios, run through the whole pipeline.

``run_demo`` simulates the fleet, registers it in the store, streams every event through
the detection engine in time order (the same engine that serves files and live streams),
correlates findings into incidents, records them, and scores the result against the
scenarios' ground truth: which scenario was detected (and when), which was missed, and
what was raised that no scenario explains.  ``render_report`` prints it with Rich.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetwarden.detection.analytics.base import Context
from fleetwarden.findings import Finding, Incident
from fleetwarden.inventory import context_from_rows, store_row
from fleetwarden.report import incident_table


@dataclass
class ScenarioOutcome:
    name: str
    devices: list[str]
    expected: tuple[str, ...]
    benign: bool
    detected: list[str]  # expected categories that were raised on the scenario's devices
    missed: list[str]
    other: list[str]  # other categories raised on those devices during the scenario
    time_to_detect: float | None  # seconds from scenario start to the first matching incident evidence

    @property
    def ok(self) -> bool:
        return not self.detected and not self.other if self.benign else not self.missed


@dataclass
class DemoReport:
    devices: int
    hours: float
    seed: int
    db_url: str
    events: int
    events_by_kind: dict[str, int]
    seconds: float
    inventory_summary: list[tuple[str, int, str]]
    findings: list[Finding]
    incidents: list[Incident]
    outcomes: list[ScenarioOutcome]
    unexplained: list[Incident] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def context_from_fleet(fleet: Any) -> Context:
    """Inventory context for the engine, from the simulator's inventory and firmware catalogue."""
    return context_from_rows(fleet.inventory, getattr(fleet, "firmware_catalog", None))


def run_demo(
    devices: int = 200,
    hours: float = 24,
    seed: int = 7,
    db: str | None = None,
    console: Console | None = None,
) -> DemoReport:
    from fleetwarden.config import database_url
    from fleetwarden.correlation import correlate
    from fleetwarden.detection.engine import Engine
    from fleetwarden.simulate import simulate_fleet
    from fleetwarden.store import open_store

    console = console or Console()
    t0 = time.perf_counter()
    with console.status("Simulating the fleet…"):
        fleet = simulate_fleet(devices=devices, hours=hours, seed=seed)
    ctx = context_from_fleet(fleet)
    url = database_url(db)
    store = open_store(url)
    try:
        store.upsert_devices([store_row(r) for r in fleet.inventory])
        engine = Engine(ctx=ctx)
        findings: list[Finding] = []
        by_kind: Counter[str] = Counter()
        chunks = list(fleet.iter_batches(seconds=600))
        progress = Progress(
            TextColumn("[bold]Detecting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[events]} events"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        with progress:
            task = progress.add_task("engine", total=len(chunks), events=0)
            for batch in chunks:
                by_kind[batch.kind] += len(batch)
                findings.extend(engine.process(batch))
                progress.update(task, advance=1, events=sum(by_kind.values()))
            findings.extend(engine.flush())
        incidents = correlate(findings, ctx)
        store.record_results(f"demo seed={seed}", findings, incidents)
    finally:
        store.close()
    outcomes, unexplained = score_against_scenarios(fleet.scenarios, incidents)
    inv = Counter((r["device_class"], r["vendor"]) for r in fleet.inventory)
    by_class: dict[str, list[str]] = {}
    for (cls, vendor), _n in sorted(inv.items()):
        by_class.setdefault(cls, []).append(vendor)
    summary = [
        (cls, sum(n for (c, _v), n in inv.items() if c == cls), ", ".join(vendors))
        for cls, vendors in by_class.items()
    ]
    return DemoReport(
        devices=len(fleet.inventory),
        hours=hours,
        seed=seed,
        db_url=_redact(url),
        events=sum(by_kind.values()),
        events_by_kind=dict(by_kind),
        seconds=time.perf_counter() - t0,
        inventory_summary=summary,
        findings=findings,
        incidents=incidents,
        outcomes=outcomes,
        unexplained=unexplained,
    )


def score_against_scenarios(
    scenarios, incidents: list[Incident]
) -> tuple[list[ScenarioOutcome], list[Incident]]:
    """Match incidents to the scenarios' ground truth (device and time window)."""
    explained: set[int] = set()
    outcomes = []
    for sc in scenarios:
        devs = set(sc.device_ids)
        hits = [
            (k, inc)
            for k, inc in enumerate(incidents)
            if inc.entity in devs and inc.last_seen >= sc.start and inc.first_seen <= sc.end + 3600
        ]
        cats = {inc.category for _, inc in hits}
        expected = tuple(sc.expected_categories)
        detected = [c for c in expected if c in cats]
        first = [inc.first_seen for _, inc in hits if inc.category in expected]
        outcomes.append(
            ScenarioOutcome(
                name=sc.name,
                devices=sorted(devs),
                expected=expected,
                benign=bool(sc.benign),
                detected=sorted(cats) if sc.benign else detected,
                missed=[] if sc.benign else [c for c in expected if c not in cats],
                other=[] if sc.benign else sorted(cats - set(expected)),
                time_to_detect=(max(0.0, min(first) - sc.start) if first else None),
            )
        )
        if not sc.benign:
            explained.update(k for k, _ in hits)
    unexplained = [inc for k, inc in enumerate(incidents) if k not in explained]
    return outcomes, unexplained


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def render_report(report: DemoReport, console: Console) -> None:
    fleet = Table(title=f"Fleet: {report.devices} devices, {report.hours:g} h simulated (seed {report.seed})")
    fleet.add_column("device class")
    fleet.add_column("devices", justify="right")
    fleet.add_column("vendors")
    for cls, n, vendors in report.inventory_summary:
        fleet.add_row(cls, str(n), vendors)
    console.print(fleet)

    sc = Table(title="Tabletop scenarios: what was detected")
    sc.add_column("scenario", no_wrap=True)
    for col in ("device", "expected", "detected", "missed", "time to detect", "result"):
        sc.add_column(col, overflow="fold")
    for o in report.outcomes:
        ttd = "-" if o.time_to_detect is None else f"{o.time_to_detect / 60:.1f} min"
        if o.benign:
            verdict = "[green]quiet (benign)[/]" if o.ok else "[red]false alarm[/]"
            expected = "(no incident)"
        else:
            verdict = (
                "[green]detected[/]" if o.ok else ("[yellow]partial[/]" if o.detected else "[red]missed[/]")
            )
            expected = ", ".join(o.expected)
        sc.add_row(
            o.name,
            ", ".join(o.devices),
            expected,
            ", ".join(o.detected) or "-",
            ", ".join(o.missed) or "-",
            ttd,
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
        f"results stored in: {report.db_url}",
    ]
    console.print(Panel("\n".join(lines), title="Summary", expand=False))


def _unexplained_line(unexplained: list[Incident]) -> str:
    """False positives, split by what an analyst would have to look at (medium and above)."""
    serious = [i for i in unexplained if i.severity in ("medium", "high", "critical")]
    low = Counter(i.category for i in unexplained if i.severity == "low")
    low_text = ", ".join(f"{n} {cat}" for cat, n in low.most_common()) or "none"
    return (
        f"incidents not explained by a scenario (false positives): {len(serious)} at medium or above; "
        f"low-severity notes: {low_text}"
    )
