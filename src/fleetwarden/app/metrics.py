"""The security metrics service: the store's incidents, findings, actions and verdicts through the
pure computations of :mod:`fleetwarden.control.metrics`, overall, per UTC day, and per site or
device class; and the same numbers as Prometheus metrics.

What each number means and what it cannot see is documented in :mod:`fleetwarden.control.metrics`
(MTTD, MTTR, false-positive rate, drift).  The posture numbers come from the control-plane services:
patch compliance (:func:`fleetwarden.app.firmware.compliance_report`), inventory accuracy
(:func:`fleetwarden.app.inventory.inventory_accuracy`) and the identity audit's failing checks by
severity (:func:`fleetwarden.app.identity_audit.identity_audit`).

Day buckets are the UTC day of an incident's ``first_seen`` (event time); a group (site, class) is
the incident's device's, ``(unknown)`` for an incident about an unregistered entity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from fleetwarden.control import metrics as m
from fleetwarden.core.errors import InputError

__all__ = [
    "MetricsInputError",
    "fill_registry",
    "fleet_posture",
    "model_drift",
    "prometheus_text",
    "security_metrics",
]

GROUP_BY = {"site": "site", "class": "device_class"}
DRIFT_WINDOW_S = m.DAY  # the recent window of the drift test: the last day of stored findings


class MetricsInputError(InputError, ValueError):
    """Bad arguments to the metrics service."""


# ---------------------------------------------------------------------------- posture


def fleet_posture(store: Any, now: float | None = None) -> dict[str, Any]:
    """Patch compliance, inventory accuracy and identity-audit posture of the fleet in ``store``."""
    from fleetwarden.app.firmware import compliance_report
    from fleetwarden.app.identity_audit import identity_audit
    from fleetwarden.app.inventory import inventory_accuracy

    devices = store.device_rows()  # read once for the three
    groups = compliance_report(store, "class", devices=devices)
    covered = sum(g["covered"] for g in groups)
    compliant = sum(g["compliant"] for g in groups)
    acc = inventory_accuracy(store, devices=devices)
    checks = identity_audit(store, now=now, devices=devices)["checks"]
    return {
        "patch_compliance": {
            "devices": sum(g["devices"] for g in groups),
            "covered": covered,
            "compliant": compliant,
            "rate": round(compliant / covered, 4) if covered else None,
        },
        "inventory_accuracy": {
            k: acc[k] for k in ("seen", "seen_unknown", "known_share", "registered_never_seen", "never_seen_share")
        },
        "identity_posture": m.severity_counts(checks),
    }


# ---------------------------------------------------------------------------- incident metrics


def _rows(store: Any) -> dict[str, list[dict[str, Any]]]:
    from fleetwarden.store.verdicts import list_verdicts

    return {
        "incidents": [i.to_dict() for i in store.list_incidents()],
        "findings": [
            {"incident_id": f.incident_id, "first_seen": f.first_seen, "last_seen": f.last_seen, "score": f.score}
            for f in store.list_findings()
        ],
        "actions": [a.to_dict() for a in store.list_actions()],
        "verdicts": [v.to_dict() for v in list_verdicts(store)],
        "devices": store.device_rows(),
    }


def _incident_metrics(
    incidents: Sequence[Mapping[str, Any]], rows: Mapping[str, Any], verdicts: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """MTTD, MTTR and the false-positive rate over ``incidents``."""
    ids = {int(i["id"]) for i in incidents}
    mine = {k: v for k, v in verdicts.items() if k in ids}
    true = [i for i in incidents if mine.get(int(i["id"]), {}).get("verdict") == "true-positive"]
    delays = m.detection_delays(true, rows["findings"])
    times, uncontained = m.response_times(incidents, rows["actions"])
    return {
        "incidents": len(incidents),
        "mttd": m.mttd(delays.values()),
        "mttr": {**m.mttd(times.values()), "uncontained": uncontained},
        "false_positive": m.false_positive_rate((v["verdict"] for v in mine.values()), len(incidents)),
    }


def _drift(findings: Sequence[Mapping[str, Any]], window: float) -> dict[str, Any]:
    """PSI of stored finding scores: the last ``window`` seconds against everything before."""
    if not findings:
        return {"psi": None, "level": None, "reference": 0, "recent": 0}
    cut = max(float(f["last_seen"]) for f in findings) - window
    ref = [f["score"] for f in findings if f["last_seen"] < cut]
    new = [f["score"] for f in findings if f["last_seen"] >= cut]
    value = m.psi(ref, new)
    return {"psi": value, "level": m.drift_level(value), "reference": len(ref), "recent": len(new)}


def model_drift(
    store: Any, window_s: float = DRIFT_WINDOW_S, *, now: float | None = None
) -> dict[str, dict[str, Any]]:
    """Per flow model (``flow@<id>``) the drift its sessions saved (:mod:`fleetwarden.app.drift`)
    over the last ``window_s`` seconds before ``now``: PSI of its scores against its training
    reference, with level, the top features' PSI, the flows counted and ``since`` (where the
    oldest counted hour starts); the same over everything ever counted under ``all_time``."""
    from fleetwarden.app.drift import DRIFT_MODEL_NAME, stored_drift

    out: dict[str, dict[str, Any]] = {}
    for rec in store.list_models():
        meta = rec.meta or {}
        if rec.name != DRIFT_MODEL_NAME or meta.get("kind") != "flow-model-drift":
            continue
        drift = stored_drift(meta, rec.created_at, window_s=window_s, now=now)
        out[f"{rec.name}@{rec.version}"] = {"path": rec.path, "updated_at": rec.created_at, **drift}
    return out


def security_metrics(
    store: Any, *, by: str | None = None, now: float | None = None, drift_window_s: float = DRIFT_WINDOW_S
) -> dict[str, Any]:
    """Every metric: ``overall``, ``daily`` (UTC day of ``first_seen``), ``groups`` (with ``by`` =
    ``site`` or ``class``), ``drift`` (stored finding scores, the last ``drift_window_s`` against the
    rest; and under ``models`` each flow model's score drift against its training reference over
    the same last ``drift_window_s`` before ``now`` and all time, see :func:`model_drift`) and the
    fleet ``posture``.  Plain JSON-ready values."""
    if by is not None and by not in GROUP_BY:
        raise MetricsInputError(f"--by {by!r}? expected one of {', '.join(GROUP_BY)}")
    if not 0 < drift_window_s <= 366 * m.DAY:
        raise MetricsInputError("the drift window must be between 0 and 366 days")
    rows = _rows(store)
    verdicts = m.latest_verdicts(rows["verdicts"])
    incidents = rows["incidents"]
    out: dict[str, Any] = {
        "generated_at": now if now is not None else time.time(),
        "overall": _incident_metrics(incidents, rows, verdicts),
        "daily": {day: _incident_metrics(inc, rows, verdicts) for day, inc in m.daily(incidents, "first_seen").items()},
        "drift": {**_drift(rows["findings"], drift_window_s), "models": model_drift(store, drift_window_s, now=now)},
        "posture": fleet_posture(store, now=now),
    }
    if by is not None:
        column = GROUP_BY[by]
        where = {d["device_id"]: str(d.get(column) or "(none)") for d in rows["devices"]}
        groups = m.grouped(incidents, lambda i: where.get(i.get("device_id") or "", "(unknown)"))
        out["by"] = by
        out["groups"] = {g: _incident_metrics(inc, rows, verdicts) for g, inc in groups.items()}
    return out


# ---------------------------------------------------------------------------- Prometheus


def fill_registry(registry: Any, metrics: Mapping[str, Any]) -> Any:
    """Gauges for ``metrics`` (:func:`security_metrics`) in a ``prometheus_client`` registry.

    Names start ``fleetwarden_``; per-group values carry a ``group`` label (and ``by``), the overall
    ones ``group="all"``.  A metric that is None (nothing to measure) is left out, not set to 0.
    The worker's ``--metrics-port`` server can serve a registry filled here."""
    from prometheus_client import Gauge

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
        return Gauge(name, doc, list(labels), registry=registry)

    inc = gauge("fleetwarden_incidents", "incidents in the store", ("by", "group"))
    mttd = gauge("fleetwarden_mttd_seconds", "mean time to detect (true-positive incidents)", ("by", "group"))
    mttr = gauge("fleetwarden_mttr_seconds", "mean time from incident opened to contained", ("by", "group"))
    fpr = gauge("fleetwarden_false_positive_rate", "false-positive verdicts over all verdicts", ("by", "group"))
    sets = [("all", "all", metrics["overall"])]
    sets += [(metrics.get("by", ""), g, v) for g, v in metrics.get("groups", {}).items()]
    for by, group, vals in sets:
        inc.labels(by, group).set(vals["incidents"])
        _set(mttd.labels(by, group), vals["mttd"]["mean_s"])
        _set(mttr.labels(by, group), vals["mttr"]["mean_s"])
        _set(fpr.labels(by, group), vals["false_positive"]["rate"])
    _posture_gauges(gauge, metrics)
    return registry


def _set(child: Any, value: float | None) -> None:
    if value is not None:
        child.set(value)


def _posture_gauges(gauge: Any, metrics: Mapping[str, Any]) -> None:
    posture = metrics["posture"]
    scalars = (
        ("fleetwarden_patch_compliance_ratio", "compliant share of covered devices",
         posture["patch_compliance"]["rate"]),
        ("fleetwarden_inventory_known_share", "share of seen devices that are registered",
         posture["inventory_accuracy"]["known_share"]),
        ("fleetwarden_model_drift_psi", "population stability index of finding scores", metrics["drift"]["psi"]),
    )  # fmt: skip
    for name, doc, value in scalars:
        if value is not None:  # an unlabelled gauge would export 0 at once
            gauge(name, doc).set(value)
    psi = gauge("fleetwarden_flow_model_score_psi",
                "PSI of a flow model's scores against its training, over the recent window", ("model",))
    psi_all = gauge("fleetwarden_flow_model_score_psi_all_time",
                    "PSI of a flow model's scores against its training, over every flow counted", ("model",))
    flows = gauge("fleetwarden_flow_model_drift_flows",
                  "flows a flow model's drift counts, over the recent window or all time", ("model", "span"))
    for name, d in metrics["drift"].get("models", {}).items():
        _set(psi.labels(name), d.get("psi"))
        _set(psi_all.labels(name), d.get("all_time", {}).get("psi"))
        _set(flows.labels(name, "window"), d.get("flows"))
        _set(flows.labels(name, "all_time"), d.get("all_time", {}).get("flows"))
    ident = gauge("fleetwarden_identity_audit_checks", "failing identity-audit checks", ("severity",))
    for sev, n in posture["identity_posture"].items():
        ident.labels(sev).set(n)


def prometheus_text(metrics: Mapping[str, Any]) -> str:
    """The Prometheus text exposition of ``metrics`` (a fresh registry)."""
    from prometheus_client import CollectorRegistry, generate_latest

    return generate_latest(fill_registry(CollectorRegistry(), metrics)).decode()
