"""The demo: a simulated fleet with tabletop attack scenarios, run through the whole pipeline.

``run_demo`` simulates the fleet, registers it in the store, streams every event through a
detection session in time order (the same session that serves files and live streams),
correlates findings into incidents, records them, and scores the result against the
scenarios' ground truth: which scenario was detected (and when), which was missed, and
what was raised that no scenario explains.  The CLI renders the report
(:func:`fleetwarden.report.render_demo`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.app.session import DetectionSession
from fleetwarden.control.inventory import context_from_fleet, store_row
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.core.text import redact_url


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


def run_demo(
    devices: int = 200,
    hours: float = 24,
    seed: int = 7,
    store: Any = None,
    db_url: str = "",
    status: Callable[[str], Any] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> DemoReport:
    """Simulate, detect, correlate, record into ``store`` and score against the scenarios.

    ``status(text)`` announces a phase; ``progress(done, total, events)`` follows the engine."""
    from fleetwarden.simulate import simulate_fleet

    t0 = time.perf_counter()
    if status is not None:
        status("Simulating the fleet…")
    fleet = simulate_fleet(devices=devices, hours=hours, seed=seed)
    if store is not None:
        store.upsert_devices([store_row(r) for r in fleet.inventory])
    session = DetectionSession(ctx=context_from_fleet(fleet), store=store, source=f"demo seed={seed}")
    chunks = list(fleet.iter_batches(seconds=600))
    if status is not None:
        status("Detecting…")
    for k, batch in enumerate(chunks, start=1):
        session.process(batch)
        if progress is not None:
            progress(k, len(chunks), session.stats.events)
    session.flush()
    incidents = session.incidents()
    session.record()
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
        db_url=redact_url(db_url),
        events=session.stats.events,
        events_by_kind=dict(session.stats.events_by_kind),
        seconds=time.perf_counter() - t0,
        inventory_summary=summary,
        findings=session.findings,
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
