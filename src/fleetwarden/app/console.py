"""Read services of the web console (:mod:`fleetwarden.web`): each page's data as plain dicts,
aggregated and paginated in SQL so a page stays fast on a large fleet (``bench/bench_console.py``:
10,000 devices and 100,000 findings).

*Contract.* Every function reads; none writes except through the response services it names
(:func:`decide_action`).  Values come back as they are stored: the face escapes them.  Lists are
bounded (``per_page`` at most :data:`MAX_PER_PAGE`; timelines at most :data:`TIMELINE_LIMIT`
rows).

*Blind spots.* The fleet posture reuses :func:`fleetwarden.app.metrics.fleet_posture`, which reads
every device (0.3 s on the benchmark's 10,000 devices, 3.4 s on 100,000): it is computed in a background
thread and cached for :data:`SLOW_CACHE_S` seconds per store; a page waits at most :data:`WAIT_S`
for it, else shows the previous figures or "computing" (None) and refreshes itself, so a posture
change can take that long to show.  The metrics page computes MTTD, MTTR and the false-positive
rate with :mod:`fleetwarden.control.metrics` over lean SQL rows (equal to
:func:`~fleetwarden.app.metrics.security_metrics`); drift reads at most :data:`MAX_DRIFT_SCORES`
finding scores (beyond, every k-th finding by id), so on a large store it is an estimate.
A device's "baseline versus recent" is its findings per hour before and within the last
:data:`RECENT_WINDOW_S` of its own history (flows are not stored, findings are).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from fleetwarden.core.errors import InputError
from fleetwarden.store.models import Action, AuditEntry, Device, FindingRecord, IncidentRecord

__all__ = [
    "MAX_PER_PAGE",
    "Page",
    "approvals",
    "audit_page",
    "decide_action",
    "device_page",
    "devices_page",
    "incident_page",
    "incidents_page",
    "live_counts",
    "metrics_page",
    "overview",
]

MAX_PER_PAGE = 200
TIMELINE_LIMIT = 200
RECENT_WINDOW_S = 24 * 3600.0
MAX_DRIFT_SCORES = 20_000  # drift reads at most this many finding scores (an even sample beyond)
SLOW_CACHE_S = 30.0
HOUR = 3600.0
DAY = 86400.0
RISK_BUCKETS = ((0, 19), (20, 39), (40, 59), (60, 79), (80, 100))
SEVERITIES = ("critical", "high", "medium", "low")
OPEN = ("open", "acknowledged")
PENDING = ("proposed", "approved", "failed")
DECISIONS = ("approve", "deny", "rollback", "execute")
_cache: dict[tuple[int, str], tuple[float, Any]] = {}
_jobs: dict[tuple[int, str], threading.Thread] = {}
_lock = threading.Lock()
WAIT_S = 0.3  # how long a page waits for a slow aggregate before showing the previous one


class ConsoleInputError(InputError):
    """A bad page number, filter or identifier in a console request."""


@dataclass(frozen=True)
class Page:
    """One page of a listing: ``rows``, the 1-based ``number``, ``per_page`` and the ``total``."""

    rows: list[dict[str, Any]]
    number: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


# ---------------------------------------------------------------------------- helpers


def _cached(store: Any, key: str, compute: Callable[[], Any], wait: float = WAIT_S) -> Any:
    """The cached value of ``key``; when missing or older than :data:`SLOW_CACHE_S`, computed in a
    background thread that the caller waits for at most ``wait`` seconds: on a small store the
    value is fresh, on a large one the page shows the previous value (or None: "computing") at
    once and the next request gets the new one."""
    slot = (id(store), key)
    with _lock:
        hit = _cache.get(slot)
        fresh = hit is not None and time.monotonic() - hit[0] < SLOW_CACHE_S
        job = _jobs.get(slot)
        if not fresh and job is None:
            job = threading.Thread(target=_fill, args=(slot, compute), daemon=True, name=f"console-{key}")
            _jobs[slot] = job
            job.start()
    if job is not None and not fresh:
        job.join(wait)
    with _lock:
        hit = _cache.get(slot)
    return hit[1] if hit is not None else None


def _fill(slot: tuple[int, str], compute: Callable[[], Any]) -> None:
    try:
        value = compute()
        with _lock:
            _cache[slot] = (time.monotonic(), value)
    finally:
        with _lock:
            _jobs.pop(slot, None)


def forget_cache() -> None:
    """Drop the cached posture and metrics (after a write the console made, and in tests)."""
    with _lock:
        _cache.clear()


def _paging(page: int, per_page: int) -> tuple[int, int]:
    if not isinstance(page, int) or not 1 <= page <= 1_000_000:
        raise ConsoleInputError(f"page {page!r}: expected a number from 1 to 1000000")
    if not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
        raise ConsoleInputError(f"per_page {per_page!r}: expected a number from 1 to {MAX_PER_PAGE}")
    return page, per_page


def _search(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    if len(text) > 200:
        raise ConsoleInputError("search text longer than 200 characters")
    return text.strip()


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _incident_row(inc: Any) -> dict[str, Any]:
    return {
        "id": inc.id, "entity": inc.entity, "device_id": inc.device_id, "category": inc.category,
        "severity": inc.severity, "risk": inc.risk, "status": inc.status, "first_seen": inc.first_seen,
        "last_seen": inc.last_seen, "mitre": list(inc.mitre or []),
    }  # fmt: skip


# ---------------------------------------------------------------------------- overview


def _risk_distribution(s: Any) -> list[dict[str, Any]]:
    risk = IncidentRecord.risk
    counts = []
    for lo, hi in RISK_BUCKETS:
        q = select(func.count()).where(IncidentRecord.status.in_(OPEN), risk >= lo, risk <= hi)
        counts.append({"bucket": f"{lo}–{hi}", "incidents": s.scalar(q) or 0})
    return counts


def _by_severity(s: Any) -> dict[str, int]:
    q = (
        select(IncidentRecord.severity, func.count())
        .where(IncidentRecord.status.in_(OPEN))
        .group_by(IncidentRecord.severity)
    )
    got = dict(s.execute(q).all())
    return {sev: int(got.get(sev, 0)) for sev in SEVERITIES}


def _unknown(s: Any, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
    total = s.scalar(select(func.count()).where(Device.discovered.is_(True))) or 0
    q = (
        select(Device.device_id, Device.ip, Device.mac, Device.last_seen)
        .where(Device.discovered.is_(True))
        .order_by(Device.last_seen.desc(), Device.device_id)
        .limit(limit)
    )
    return total, [dict(r._mapping) for r in s.execute(q)]


def live_counts(store: Any) -> dict[str, int]:
    """Open incidents and actions waiting for a decision: the console's live badge."""
    with store._read() as s:
        return {
            "open_incidents": s.scalar(select(func.count()).where(IncidentRecord.status.in_(OPEN))) or 0,
            "pending_actions": s.scalar(select(func.count()).where(Action.status == "proposed")) or 0,
        }


def latest_incidents(store: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The newest open incidents (by ``last_seen``), for the live list on the overview."""
    q = (
        select(IncidentRecord)
        .where(IncidentRecord.status.in_(OPEN))
        .order_by(IncidentRecord.last_seen.desc(), IncidentRecord.id.desc())
        .limit(max(1, min(limit, 50)))
    )
    with store._read() as s:
        return [_incident_row(i) for i in s.scalars(q)]


def posture(store: Any, wait: float = WAIT_S) -> dict[str, Any] | None:
    """Patch compliance, inventory accuracy and identity audit (cached, see the module's blind spots)."""
    from fleetwarden.app.metrics import fleet_posture

    return _cached(store, "posture", lambda: fleet_posture(store), wait)


def overview(store: Any) -> dict[str, Any]:
    """The fleet overview: counts, open incidents by risk bucket and severity, unknown devices,
    the posture gauges and the newest incidents."""
    with store._read() as s:
        devices = s.scalar(select(func.count()).select_from(Device)) or 0
        risk = _risk_distribution(s)
        severity = _by_severity(s)
        unknown_total, unknown = _unknown(s)
    return {
        "devices": devices, "risk": risk, "severity": severity, "unknown_total": unknown_total,
        "unknown": unknown, "posture": posture(store), "latest": latest_incidents(store), **live_counts(store),
    }  # fmt: skip


# ---------------------------------------------------------------------------- devices


def _device_risk(s: Any, ids: list[str]) -> dict[str, tuple[int, int]]:
    if not ids:
        return {}
    q = (
        select(IncidentRecord.entity, func.count(), func.max(IncidentRecord.risk))
        .where(IncidentRecord.entity.in_(ids), IncidentRecord.status.in_(OPEN))
        .group_by(IncidentRecord.entity)
    )
    return {e: (int(n), int(r or 0)) for e, n, r in s.execute(q)}


def devices_page(store: Any, *, page: int = 1, per_page: int = 50, q: str | None = None) -> Page:
    """Devices ordered by id, ``q`` matching the id, address, vendor, class or site; each row with
    its open incidents and their highest risk."""
    page, per_page = _paging(page, per_page)
    text = _search(q)
    where = []
    if text:
        pat = _like(text)
        cols = (Device.device_id, Device.ip, Device.vendor, Device.device_class, Device.site)
        where.append(func.coalesce(cols[0], "").like(pat, escape="\\"))
        for c in cols[1:]:
            where[-1] = where[-1] | func.coalesce(c, "").like(pat, escape="\\")
    with store._read() as s:
        total = s.scalar(select(func.count()).select_from(Device).where(*where)) or 0
        rows = list(
            s.scalars(
                select(Device)
                .where(*where)
                .order_by(Device.device_id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        )
        risk = _device_risk(s, [d.device_id for d in rows])
    out = []
    for d in rows:
        n, r = risk.get(d.device_id, (0, 0))
        out.append({**_device_summary(d), "open_incidents": n, "max_risk": r})
    return Page(out, page, per_page, total)


def _device_summary(d: Any) -> dict[str, Any]:
    return {
        "device_id": d.device_id, "name": d.name, "ip": d.ip, "mac": d.mac, "vendor": d.vendor,
        "model": d.model, "device_class": d.device_class, "site": d.site, "criticality": d.criticality,
        "lifecycle": d.lifecycle, "discovered": d.discovered, "firmware_version": d.firmware_version,
        "end_of_support": d.end_of_support, "last_seen": d.last_seen,
    }  # fmt: skip


def _hourly(s: Any, device_id: str) -> dict[str, Any]:
    """Findings per hour of one device: the hours before its last day (baseline) and within it."""
    hour = func.floor(FindingRecord.last_seen / HOUR)
    q = (
        select(hour, func.count(), func.max(FindingRecord.score))
        .where(FindingRecord.entity == device_id)
        .group_by(hour)
        .order_by(hour)
    )
    rows = [(int(h) * HOUR, int(n), float(m or 0)) for h, n, m in s.execute(q)]
    if not rows:
        return {"t": [], "baseline": [], "recent": [], "max_score": [], "cut": None}
    cut = rows[-1][0] - RECENT_WINDOW_S
    series = {"t": [], "baseline": [], "recent": [], "max_score": [], "cut": cut}
    for t, n, m in rows:
        series["t"].append(t)
        series["baseline"].append(n if t <= cut else None)
        series["recent"].append(n if t > cut else None)
        series["max_score"].append(round(m, 4))
    return series


def _containment(actions: list[dict[str, Any]]) -> str | None:
    """``quarantined`` / ``restricted`` while an executed containment action is not rolled back."""
    live = {a["kind"] for a in actions if a["status"] == "executed"}
    return "quarantined" if "quarantine" in live else "restricted" if "restrict" in live else None


def device_page(store: Any, device_id: str) -> dict[str, Any]:
    """One device: inventory row, certificates, firmware, findings per hour (baseline and recent),
    the newest findings, its incidents and response actions, and its containment state."""
    from fleetwarden.app.identity import list_certificates
    from fleetwarden.app.response import action_row

    if not isinstance(device_id, str) or not 0 < len(device_id) <= 200:
        raise ConsoleInputError("a device id has 1 to 200 characters")
    dev = store.get_device(device_id)
    if dev is None:
        raise ConsoleInputError(f"unknown device {device_id!r}")
    with store._read() as s:
        hourly = _hourly(s, device_id)
        findings = list(
            s.scalars(
                select(FindingRecord).where(FindingRecord.entity == device_id)
                .order_by(FindingRecord.last_seen.desc(), FindingRecord.id).limit(TIMELINE_LIMIT)
            )
        )  # fmt: skip
        incidents = list(
            s.scalars(select(IncidentRecord).where(IncidentRecord.entity == device_id).order_by(IncidentRecord.id.desc()).limit(50))
        )  # fmt: skip
    actions = [action_row(a) for a in store.list_actions(device_id=device_id)]
    return {
        "device": {**_device_summary(dev), "zone": dev.zone, "owner": dev.owner, "serial": dev.serial},
        "certificates": list_certificates(store, device_id=device_id),
        "hourly": hourly,
        "findings": [_finding_row(f) for f in findings],
        "incidents": [_incident_row(i) for i in incidents],
        "actions": actions,
        "containment": _containment(actions) or (dev.lifecycle if dev.lifecycle == "quarantined" else None),
    }


def _finding_row(f: Any) -> dict[str, Any]:
    return {
        "id": f.id, "detector": f.detector, "category": f.category, "severity": f.severity,
        "score": f.score, "first_seen": f.first_seen, "last_seen": f.last_seen,
        "evidence": list(f.evidence or [])[:5], "incident_id": f.incident_id,
    }  # fmt: skip


# ---------------------------------------------------------------------------- incidents


def incidents_page(store: Any, *, page: int = 1, per_page: int = 50, status: str | None = "open") -> Page:
    """The incident queue, highest risk first then newest; ``status`` open (with acknowledged),
    closed, or None for all."""
    page, per_page = _paging(page, per_page)
    if status not in (None, "open", "closed", "acknowledged"):
        raise ConsoleInputError(f"status {status!r}: expected open, acknowledged or closed")
    wanted = OPEN if status == "open" else (status,) if status else None
    where = [IncidentRecord.status.in_(wanted)] if wanted else []
    with store._read() as s:
        total = s.scalar(select(func.count()).select_from(IncidentRecord).where(*where)) or 0
    rows = store.list_incidents(
        status=list(wanted) if wanted else None, limit=per_page, offset=(page - 1) * per_page
    )
    return Page([_incident_row(i) for i in rows], page, per_page, total)


def incident_page(store: Any, incident_id: int) -> dict[str, Any]:
    """The incident's story, timeline, evidence, playbook, proposal and actions
    (:func:`fleetwarden.app.response.incident_view` under the current policy)."""
    from fleetwarden.app.response import incident_view, load_policy

    return incident_view(store, _incident_id(incident_id), policy=load_policy())


def _incident_id(value: Any) -> int:
    if not isinstance(value, int) or not 0 < value < 2**62:
        raise ConsoleInputError(f"incident id {value!r}: expected a positive number")
    return value


# ---------------------------------------------------------------------------- approvals


def approvals(store: Any) -> dict[str, list[dict[str, Any]]]:
    """Actions waiting for a human (``proposed``), approved but not executed, and failed: the
    inbox, newest first, each with its incident's entity, category and risk."""
    from fleetwarden.app.response import action_row

    q = select(Action).where(Action.status.in_(PENDING)).order_by(Action.id.desc()).limit(500)
    with store._read() as s:
        acts = list(s.scalars(q))
        ids = {a.incident_id for a in acts if a.incident_id}
        incs = (
            {i.id: i for i in s.scalars(select(IncidentRecord).where(IncidentRecord.id.in_(ids)))}
            if ids
            else {}
        )
    groups: dict[str, list[dict[str, Any]]] = {"proposed": [], "approved": [], "failed": [], "expired": []}
    for a in acts:
        row = action_row(a)
        inc = incs.get(a.incident_id)
        row["incident"] = _incident_row(inc) if inc is not None else None
        groups.setdefault(row["status"], []).append(row)
    return groups


def decide_action(store: Any, action_id: int, decision: str, *, actor: str) -> dict[str, Any]:
    """Approve, deny, execute or roll back an action as ``actor`` (the response services; every
    step audited).  In ``enforce`` mode an approval executes at once through the configured
    adapters (the nftables rule file under ``FLEETWARDEN_HOME/nftables``, the broker when
    ``FLEETWARDEN_BROKER_URL`` is set); in ``observe`` mode it stays approved."""
    from fleetwarden.app import response

    if decision not in DECISIONS:
        raise ConsoleInputError(f"decision {decision!r}: expected one of {', '.join(DECISIONS)}")
    forget_cache()
    if decision == "deny":
        return response.deny(store, action_id, actor=actor, note="denied in the console")
    if decision == "rollback":
        return response.rollback_action(store, action_id, actor=actor)
    if decision == "approve":
        row = response.approve(store, action_id, approver=actor)
        if response.load_policy().mode != "enforce":
            return row
    return response.execute_action(store, action_id, actor=actor)


# ---------------------------------------------------------------------------- metrics


def _metric_rows(store: Any) -> dict[str, Any]:
    """What :mod:`fleetwarden.control.metrics` reads, as lean SQL rows: incidents, findings
    aggregated per incident (the first ``first_seen`` and ``last_seen``: all MTTD looks at),
    actions, verdicts, and the ``(last_seen, score)`` pairs of every finding for drift."""
    from fleetwarden.store.models import Verdict

    f = FindingRecord
    with store._read() as s:
        incidents = [dict(r._mapping) for r in s.execute(select(
            IncidentRecord.id, IncidentRecord.first_seen, IncidentRecord.created_at,
            IncidentRecord.updated_at, IncidentRecord.status))]  # fmt: skip
        firsts = [dict(r._mapping) for r in s.execute(
            select(f.incident_id, func.min(f.first_seen).label("first_seen"), func.min(f.last_seen).label("last_seen"))
            .where(f.incident_id.is_not(None)).group_by(f.incident_id))]  # fmt: skip
        actions = [
            dict(r._mapping) for r in s.execute(select(Action.incident_id, Action.kind, Action.executed_at))
        ]
        verdicts = [dict(r._mapping) for r in s.execute(
            select(Verdict.id, Verdict.incident_id, Verdict.verdict, Verdict.created_at))]  # fmt: skip
        scores = _scores(s)
    return {
        "incidents": incidents,
        "findings": firsts,
        "actions": actions,
        "verdicts": verdicts,
        "scores": scores,
    }


def _scores(s: Any) -> list[tuple[float, float]]:
    """``(last_seen, score)`` of the findings in time order: all of them up to
    :data:`MAX_DRIFT_SCORES`, else an even sample by id (every k-th finding)."""
    f = FindingRecord
    total = s.scalar(select(func.count()).select_from(f)) or 0
    q = select(f.last_seen, f.score).order_by(f.last_seen)
    if total > MAX_DRIFT_SCORES:
        q = q.where(f.id % math.ceil(total / MAX_DRIFT_SCORES) == 0)
    return [(float(t), float(v)) for t, v in s.execute(q)]


def _incident_figures(
    incidents: list[dict], rows: dict[str, Any], verdicts: dict[int, Any]
) -> dict[str, Any]:
    """MTTD, MTTR and false-positive rate over ``incidents`` (as :func:`fleetwarden.app.metrics.security_metrics`)."""
    from fleetwarden.control import metrics as m

    ids = {int(i["id"]) for i in incidents}
    mine = {k: v for k, v in verdicts.items() if k in ids}
    true = [i for i in incidents if mine.get(int(i["id"]), {}).get("verdict") == "true-positive"]
    times, uncontained = m.response_times(incidents, rows["actions"])
    return {
        "incidents": len(incidents),
        "mttd": m.mttd(m.detection_delays(true, rows["findings"]).values()),
        "mttr": {**m.mttd(times.values()), "uncontained": uncontained},
        "false_positive": m.false_positive_rate((v["verdict"] for v in mine.values()), len(incidents)),
    }


def _drift(scores: list[tuple[float, float]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The PSI of the last day of scores against the rest, and per UTC day: findings, mean score
    and the PSI of the day against the seven days before it."""
    from fleetwarden.control import metrics as m

    overall: dict[str, Any] = {"psi": None, "level": None, "reference": 0, "recent": 0}
    if scores:
        cut = scores[-1][0] - DAY
        ref, new = [v for t, v in scores if t < cut], [v for t, v in scores if t >= cut]
        value = m.psi(ref, new)
        overall = {"psi": value, "level": m.drift_level(value), "reference": len(ref), "recent": len(new)}
    by_day: dict[int, list[float]] = {}
    for t, v in scores:
        by_day.setdefault(int(t // DAY), []).append(v)
    daily: dict[str, list[Any]] = {"t": [], "findings": [], "mean_score": [], "psi": []}
    for d, vals in by_day.items():
        week = [v for day in range(d - 7, d) for v in by_day.get(day, ())]
        daily["t"].append(d * DAY)
        daily["findings"].append(len(vals))
        daily["mean_score"].append(round(sum(vals) / len(vals), 4))
        daily["psi"].append(m.psi(week, vals) if week else None)
    return overall, daily


def _series(daily: dict[str, Any]) -> dict[str, list[Any]]:
    from datetime import UTC, datetime

    out: dict[str, list[Any]] = {"t": [], "incidents": [], "mttd": [], "mttr": [], "fp_rate": []}
    for day in sorted(daily):
        row = daily[day]
        out["t"].append(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
        out["incidents"].append(row["incidents"])
        out["mttd"].append((row["mttd"] or {}).get("mean_s"))
        out["mttr"].append((row["mttr"] or {}).get("mean_s"))
        out["fp_rate"].append((row["false_positive"] or {}).get("rate"))
    return out


def _metric_figures(store: Any) -> dict[str, Any]:
    from fleetwarden.control import metrics as m

    rows = _metric_rows(store)
    verdicts = m.latest_verdicts(rows["verdicts"])
    incidents = rows["incidents"]
    daily = {
        day: _incident_figures(inc, rows, verdicts) for day, inc in m.daily(incidents, "first_seen").items()
    }
    drift, drift_daily = _drift(rows["scores"])
    from fleetwarden.app.metrics import model_drift

    drift["models"] = model_drift(store)  # the flow models' own drift against their training reference
    return {
        "overall": _incident_figures(incidents, rows, verdicts), "drift": drift,
        "daily": _series(daily), "drift_daily": drift_daily,
    }  # fmt: skip


def metrics_page(store: Any) -> dict[str, Any]:
    """MTTD, MTTR and false-positive rate overall and per UTC day of ``first_seen`` (the
    definitions of :mod:`fleetwarden.control.metrics`, over lean SQL rows), drift of the finding
    scores overall and per day (cached for :data:`SLOW_CACHE_S`; the first request waits for
    them), and the fleet posture (None while it is computed, see the module's blind spots)."""
    figures = _cached(store, "metrics", lambda: _metric_figures(store), wait=600.0)
    if figures is None:  # the computation failed: compute here and let the error show
        figures = _metric_figures(store)
    return {**figures, "posture": posture(store, wait=0.1)}


# ---------------------------------------------------------------------------- audit


def audit_page(store: Any, *, page: int = 1, per_page: int = 50) -> dict[str, Any]:
    """The audit log newest first, one page, with the verification of the whole chain (without
    moving the anchor file)."""
    from fleetwarden.app.audit import verify_audit

    page, per_page = _paging(page, per_page)
    with store._read() as s:
        total = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
        q = select(AuditEntry).order_by(AuditEntry.seq.desc()).offset((page - 1) * per_page).limit(per_page)
        rows = [e.to_dict() for e in s.scalars(q)]
    report = _cached(store, "audit", lambda: verify_audit(store, save=False).to_dict())
    return {"page": Page(rows, page, per_page, total), "verify": report}


# ---------------------------------------------------------------------------- the demo console


DEMO_ROLES = ("admin", "operator", "viewer")


def prepare_demo(
    store: Any, *, devices: int = 60, hours: float = 6, seed: int = 7, actor: str = "demo-policy"
) -> dict[str, Any]:
    """Fill ``store`` for a console demonstration: the demo fleet (:func:`fleetwarden.app.demo.run_demo`),
    one user per role in :data:`DEMO_ROLES` (named ``demo-ROLE``) and the response actions the
    policy proposes for every incident (requested by ``actor``, so the demo operator may approve
    them).  Returns ``tokens`` (role → token: shown once, never stored), ``incidents``,
    ``actions`` and the demo ``report``."""
    from fleetwarden.app.demo import run_demo
    from fleetwarden.app.identity import add_user
    from fleetwarden.app.response import load_policy, propose

    report = run_demo(devices=devices, hours=hours, seed=seed, store=store)
    policy = load_policy()
    proposed = 0
    for inc in store.list_incidents(status=list(OPEN)):
        proposed += len(propose(store, inc.id, policy=policy, actor=actor))
    tokens = {role: add_user(store, f"demo-{role}", role, actor="demo")[1] for role in DEMO_ROLES}
    forget_cache()
    return {"tokens": tokens, "incidents": len(report.incidents), "actions": proposed, "report": report}
