"""The demo: a simulated fleet with tabletop attack scenarios, run through the whole pipeline.

``run_demo`` simulates the fleet, enrols every device through attested onboarding
(:mod:`fleetwarden.app.fleet_onboarding`: vendor keys, signed firmware registry, expected
shipments, one provisioning request per ``provision`` event; a clone's second enrolment is
refused there), reads the detection context back from the store (inventory and signed registry),
streams every event through a
detection session in time order (the same session that serves files and live streams),
correlates findings into incidents, records them, and scores the result against the
scenarios' ground truth: which scenario was detected (and when), which was missed, and
what was raised that no scenario explains.  The CLI renders the report
(:func:`fleetwarden.report.render_demo`).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.app.fleet_onboarding import FleetEnrolment, enrol_simulated_fleet
from fleetwarden.app.metrics import fleet_posture
from fleetwarden.app.session import DetectionSession
from fleetwarden.control.inventory import context_from_store, store_row
from fleetwarden.control.metrics import mttd as mttd_summary
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.core.text import redact_url
from fleetwarden.detection.correlation import ATTACK_CATEGORIES, correlate


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
    # MTTD: seconds from the scenario's start (its first malicious event) to its first finding
    # complete (the earliest ``last_seen`` of a finding behind a matching incident)
    mttd_s: float | None = None
    incident_category: str | None = None  # the category of the scenario's first matching incident
    actions: list[dict[str, Any]] = field(default_factory=list)  # proposed for its incidents

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
    enrolled: int = 0  # devices enrolled through onboarding (attested, certified, baselined)
    enrolment_refusals: list[tuple[str, str]] = field(default_factory=list)  # (device id, reason)
    metrics: dict[str, Any] = field(default_factory=dict)  # the fleet metrics (:func:`demo_metrics`)

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
    if status is not None:
        status("Enrolling the fleet…")
    with _demo_store(store) as db:
        ctx, enrolment = _onboard(db, fleet)
        session = DetectionSession(ctx=ctx, store=store, source=f"demo seed={seed}")
        chunks = list(fleet.iter_batches(seconds=600))
        if status is not None:
            status("Detecting…")
        for k, batch in enumerate(chunks, start=1):
            session.process(batch)
            if progress is not None:
                progress(k, len(chunks), session.stats.events)
        session.flush()
        # the refusals of onboarding (a clone's enrolment) and the stream's findings tell one story
        incidents = correlate([*enrolment.findings, *session.findings], session.ctx)
        session.record(final=True)
        outcomes, unexplained = score_against_scenarios(fleet.scenarios, incidents)
        _propose(outcomes, incidents, {d["device_id"]: d for d in db.device_rows()})
        posture = fleet_posture(db)
    inv = Counter((r["device_class"], r["vendor"]) for r in fleet.inventory)
    by_class: dict[str, list[str]] = {}
    for (cls, vendor), _n in sorted(inv.items()):
        by_class.setdefault(cls, []).append(vendor)
    summary = [
        (cls, sum(n for (c, _v), n in inv.items() if c == cls), ", ".join(vendors))
        for cls, vendors in by_class.items()
    ]
    report = DemoReport(
        devices=len(fleet.inventory),
        hours=hours,
        seed=seed,
        db_url=redact_url(db_url),
        events=session.stats.events,
        events_by_kind=dict(session.stats.events_by_kind),
        seconds=time.perf_counter() - t0,
        inventory_summary=summary,
        findings=[*enrolment.findings, *session.findings],
        incidents=incidents,
        outcomes=outcomes,
        unexplained=unexplained,
        enrolled=enrolment.accepted + enrolment.skipped,
        enrolment_refusals=enrolment.refused,
    )
    report.metrics = demo_metrics(report, posture)
    return report


@contextmanager
def _demo_store(store: Any) -> Iterator[Any]:
    """``store``, or a scratch SQLite database for the run: onboarding needs its tables either way."""
    if store is not None:
        yield store
        return
    from fleetwarden.store import open_store

    with (
        tempfile.TemporaryDirectory(prefix="fleetwarden-demo-") as tmp,
        open_store(f"sqlite:///{tmp}/demo.db") as db,
    ):
        yield db


def _onboard(store: Any, fleet: Any) -> tuple[Any, FleetEnrolment]:
    """Enrol the fleet through onboarding, add what the network knows of each device (addresses,
    zone, owner…), and read the detection context back from the store: the inventory and the
    signed firmware registry (not the simulator's own catalogue)."""
    from fleetwarden.app.firmware import with_registry

    enrolment = enrol_simulated_fleet(store, fleet)
    store.upsert_devices([store_row(r) for r in fleet.inventory], actor="demo")
    return with_registry(context_from_store(store), store), enrolment


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
        matching = sorted((inc for _, inc in hits if inc.category in expected), key=lambda i: i.first_seen)
        first = [inc.first_seen for inc in matching]
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
                mttd_s=_mttd(matching, sc.start),
                incident_category=matching[0].category if matching else None,
            )
        )
        if not sc.benign:
            explained.update(k for k, _ in hits)
    # the victim side of an explained attack (a campaign of the correlator: the hosts that accepted
    # the infected camera's telnet sessions) is explained by it; another device's ATTACK incident in
    # the same campaign is not (the truth does not name it)
    campaigns = {incidents[k].campaign for k in explained if incidents[k].campaign}
    explained.update(
        k
        for k, inc in enumerate(incidents)
        if inc.campaign in campaigns and inc.category not in ATTACK_CATEGORIES
    )
    unexplained = [inc for k, inc in enumerate(incidents) if k not in explained]
    return outcomes, unexplained


def _mttd(matching: list[Incident], start: float) -> float | None:
    """Seconds from ``start`` to the first finding behind ``matching`` completing (its ``last_seen``);
    an incident without findings counts from its ``first_seen``."""
    done = [f.last_seen for inc in matching for f in inc.findings] or [inc.first_seen for inc in matching]
    return round(max(0.0, min(done) - start), 3) if done else None


# ---------------------------------------------------------------------------- proposed actions


def proposed_actions(
    incident: Incident, device: dict[str, Any] | None, policy: Any, now: float
) -> list[dict[str, Any]]:
    """The actions the response policy (:func:`fleetwarden.control.response.decide`, the same
    decision `actions propose` and `response dry-run` make) proposes for ``incident`` on ``device``
    (its store row, or None).  The demo runs in observe mode: everything proposed, nothing executed."""
    from fleetwarden.control.response import decide

    facts = {
        "id": None,
        "risk": incident.risk,
        "severity": incident.severity,
        "category": incident.category,
        "entity": incident.entity,
        "device_id": incident.device_id,
    }
    return [
        {
            "kind": act.kind,
            "target": act.device_id or incident.entity,
            "requires_approval": act.needs_approval,
            "executed": False,
        }
        for act in decide(facts, device, policy, now)
    ]


def _propose(outcomes: list[ScenarioOutcome], incidents: list[Incident], devices: dict[str, dict]) -> None:
    """Fill each attack scenario's ``actions`` from its matching incidents (deduplicated), as the
    response policy decides them (observe mode: the packaged policy unless FLEETWARDEN_HOME holds an
    override)."""
    from fleetwarden.app.response import load_policy

    policy = load_policy()
    for o in outcomes:
        if o.benign:
            continue
        devs, seen = set(o.devices), set()
        for inc in incidents:
            if inc.entity not in devs or inc.category not in o.expected:
                continue
            for act in proposed_actions(inc, devices.get(inc.entity), policy, inc.last_seen):
                key = (act["kind"], act["target"])
                if key not in seen:
                    seen.add(key)
                    o.actions.append(act)


# ---------------------------------------------------------------------------- metrics and JSON


def demo_metrics(report: DemoReport, posture: dict[str, Any]) -> dict[str, Any]:
    """The fleet metrics of a demo run: detection against the truth, MTTD, false incidents, the
    actions proposed, and the fleet's posture (patch compliance, inventory accuracy, identity audit)."""
    attacks = [o for o in report.outcomes if not o.benign]
    actions = [a for o in attacks for a in o.actions]
    incidents = len(report.incidents)
    return {
        "scenarios": len(attacks),
        "detected": sum(1 for o in attacks if o.ok),
        "mttd": mttd_summary(o.mttd_s for o in attacks if o.mttd_s is not None),
        "incidents": incidents,
        "false_incidents_by_severity": dict(Counter(i.severity for i in report.unexplained)),
        "false_positive_rate": round(len(report.unexplained) / incidents, 4) if incidents else None,
        "benign_quiet": all(o.ok for o in report.outcomes if o.benign),
        "actions_proposed": len(actions),
        "actions_requiring_approval": sum(1 for a in actions if a["requires_approval"]),
        "actions_executed": sum(1 for a in actions if a["executed"]),
        **posture,
        "events": report.events,
        "seconds": round(report.seconds, 3),
    }


def demo_json(report: DemoReport) -> dict[str, Any]:
    """``fleetwarden demo --json``: ONE object, a contract checked by outside scripts.

    ``scenarios``: the attack scenarios (the benign rollout is not one: an incident it raises counts
    in ``false_incidents``), each ``name``, ``detected`` (every expected category raised), ``mttd_s``
    (number or null), ``incident_category`` (string or null) and ``actions`` (``kind``, ``target``,
    ``requires_approval``, ``executed``); ``false_incidents``: incidents no attack scenario explains
    (an int); ``metrics``: :func:`demo_metrics`."""
    return {
        "scenarios": [
            {
                "name": o.name,
                "detected": o.ok,
                "mttd_s": o.mttd_s,
                "incident_category": o.incident_category,
                "actions": [dict(a) for a in o.actions],
            }
            for o in report.outcomes
            if not o.benign
        ],
        "false_incidents": len(report.unexplained),
        "metrics": report.metrics,
    }
