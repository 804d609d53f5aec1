"""Security metrics as pure computations over plain rows: MTTD, MTTR, false-positive rate, drift.

Rows in (dicts of numbers and strings: incidents, findings, actions, verdicts), numbers out.  No
store, no clock: ``now`` is passed in where it matters.  The service that reads the store and
groups by site and device class is :mod:`fleetwarden.app.metrics`.

Definitions (what each number means, and what it cannot see):

* **MTTD** (mean time to detect): for each true incident, the seconds from its first malicious
  event to its first finding.  The "first malicious event" needs the truth: in the demo it is the
  scenario's start (the simulator's ground truth); in the store it is the earliest ``first_seen``
  of the findings of an incident an analyst marked ``true-positive``, and the "first finding" is
  the earliest ``last_seen`` among them (a finding is complete when its last record arrived).
  Blind spot: in the store the first malicious *record* is the first one a detector attached to a
  finding; malicious activity no finding cites is invisible, so stored MTTD is a lower bound.
* **MTTR** (mean time to respond/contain): per incident, from when it was opened (recorded,
  ``created_at``) to when it was contained: the earliest ``executed_at`` of a containment action
  (:data:`CONTAINMENT_KINDS`) on it, else, for a closed incident, the time it was closed
  (``updated_at``: the last status change).  Open, uncontained incidents are counted, not timed.
* **False-positive rate**: false-positive verdicts over all verdicts (the latest verdict per
  incident).  Incidents nobody judged are counted apart (``unjudged``); the rate is None without
  any verdict.  It measures what analysts looked at, not every incident.
* **Drift**: the population stability index (PSI) between a reference and a recent sample of
  the flow model's scores (or one feature).  Bins are the reference's deciles; each bin's share
  is floored at :data:`PSI_FLOOR` so an empty bin stays finite;
  ``PSI = sum((recent - ref) * ln(recent / ref))``.  Rule of thumb (Siddiqi, *Credit Risk
  Scorecards*, 2006; Yurdakul, *Statistical properties of the population stability index*, 2018):
  below 0.1 stable, 0.1–0.25 moderate shift, above 0.25 significant shift: re-check the model.
  The flow model's own drift (:mod:`fleetwarden.app.drift`) keeps the reference as bin edges and
  shares (:func:`quantile_edges`, :func:`shares_of_counts`) and compares live counts with
  :func:`psi_of_shares`; the levels are fixed a priori, not fitted to any data.
  Blind spot: PSI compares distributions only; a shift in which flows are malicious at the same
  score distribution is invisible to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CONTAINMENT_KINDS",
    "DAY",
    "PSI_FLOOR",
    "daily",
    "detection_delays",
    "drift_level",
    "false_positive_rate",
    "grouped",
    "latest_verdicts",
    "mean_or_none",
    "mttd",
    "psi",
    "psi_of_shares",
    "quantile_edges",
    "response_times",
    "shares_of_counts",
    "severity_counts",
]

DAY = 86_400.0
# actions that contain a device: once one executed, the incident is contained
CONTAINMENT_KINDS = frozenset({"quarantine", "restrict", "revoke"})
PSI_FLOOR = 1e-4
PSI_BINS = 10
VERDICTS = ("true-positive", "false-positive")


def mean_or_none(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return round(sum(vals) / len(vals), 3) if vals else None


def _summary(values: Sequence[float]) -> dict[str, Any]:
    vals = sorted(values)
    return {
        "count": len(vals),
        "mean_s": mean_or_none(vals),
        "median_s": (round(vals[len(vals) // 2], 3) if vals else None),
        "max_s": (round(vals[-1], 3) if vals else None),
    }


# ---------------------------------------------------------------------------- MTTD


def detection_delays(
    incidents: Iterable[Mapping[str, Any]], findings: Iterable[Mapping[str, Any]]
) -> dict[int, float]:
    """Seconds from first malicious record to first finding, per incident id that has findings.

    ``findings`` rows carry ``incident_id``, ``first_seen`` and ``last_seen``; ``incidents`` are
    the true ones (verdict true-positive).  A negative span (clock skew between sources) is 0."""
    wanted = {int(i["id"]) for i in incidents}
    first: dict[int, float] = {}
    raised: dict[int, float] = {}
    for f in findings:
        iid = f.get("incident_id")
        if iid is None or int(iid) not in wanted:
            continue
        k = int(iid)
        first[k] = min(first.get(k, math.inf), float(f["first_seen"]))
        raised[k] = min(raised.get(k, math.inf), float(f["last_seen"]))
    return {k: max(0.0, raised[k] - first[k]) for k in first}


def mttd(delays: Iterable[float]) -> dict[str, Any]:
    """count, mean, median and max of detection delays (seconds)."""
    return _summary(list(delays))


# ---------------------------------------------------------------------------- MTTR


def response_times(
    incidents: Iterable[Mapping[str, Any]], actions: Iterable[Mapping[str, Any]]
) -> tuple[dict[int, float], int]:
    """Seconds from opened to contained per contained incident, and how many are not contained.

    ``incidents``: ``id``, ``created_at``, ``status``, ``updated_at``; ``actions``: ``incident_id``,
    ``kind``, ``executed_at``.  See the module's definition of MTTR."""
    executed: dict[int, float] = {}
    for a in actions:
        if a.get("incident_id") is None or a.get("executed_at") is None or a.get("kind") not in CONTAINMENT_KINDS:
            continue
        k = int(a["incident_id"])
        executed[k] = min(executed.get(k, math.inf), float(a["executed_at"]))
    times: dict[int, float] = {}
    open_count = 0
    for inc in incidents:
        k = int(inc["id"])
        end = executed.get(k)
        if end is None and inc.get("status") == "closed":
            end = float(inc["updated_at"])
        if end is None:
            open_count += 1
            continue
        times[k] = max(0.0, end - float(inc["created_at"]))
    return times, open_count


# ---------------------------------------------------------------------------- verdicts


def latest_verdicts(verdicts: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """The newest verdict per incident id (by ``created_at``, then ``id``)."""
    best: dict[int, Mapping[str, Any]] = {}
    for v in verdicts:
        k = int(v["incident_id"])
        old = best.get(k)
        if old is None or (v["created_at"], v.get("id", 0)) >= (old["created_at"], old.get("id", 0)):
            best[k] = v
    return best


def false_positive_rate(verdicts: Iterable[str], incidents: int | None = None) -> dict[str, Any]:
    """Counts of true and false positives and their rate; ``unjudged`` when ``incidents`` is given."""
    tp = fp = 0
    for v in verdicts:
        tp += v == "true-positive"
        fp += v == "false-positive"
    judged = tp + fp
    out: dict[str, Any] = {
        "true_positive": tp,
        "false_positive": fp,
        "rate": round(fp / judged, 4) if judged else None,
    }
    if incidents is not None:
        out["unjudged"] = max(0, incidents - judged)
    return out


# ---------------------------------------------------------------------------- drift


def _quantile_edges(ref: Sequence[float], bins: int) -> list[float]:
    s = sorted(ref)
    edges = sorted({s[min(len(s) - 1, (len(s) * q) // bins)] for q in range(1, bins)})
    return edges


def _shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    from bisect import bisect_right

    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect_right(edges, v)] += 1
    n = max(1, len(values))
    return [max(PSI_FLOOR, c / n) for c in counts]


def psi(reference: Sequence[float], recent: Sequence[float], bins: int = PSI_BINS) -> float | None:
    """Population stability index of ``recent`` against ``reference`` (None if either is empty).

    Non-finite values are dropped.  Bins: the reference's quantiles (at most ``bins``)."""
    ref = [float(v) for v in reference if math.isfinite(float(v))]
    new = [float(v) for v in recent if math.isfinite(float(v))]
    if not ref or not new:
        return None
    edges = _quantile_edges(ref, max(2, bins))
    return psi_of_shares(_shares(ref, edges), _shares(new, edges))


def quantile_edges(values: Sequence[float], bins: int = PSI_BINS) -> list[float]:
    """The inner bin edges of at most ``bins`` quantile bins of ``values`` (finite ones; ties merge
    bins).  A value ``v`` falls in bin ``bisect_right(edges, v)``.  Empty input: no edges (one bin)."""
    ref = [float(v) for v in values if math.isfinite(float(v))]
    return _quantile_edges(ref, max(2, bins)) if ref else []


def shares_of_counts(counts: Sequence[float]) -> list[float]:
    """Counts per bin as shares summing to 1 (all zero when there is nothing counted)."""
    total = float(sum(counts))
    return [float(c) / total if total > 0 else 0.0 for c in counts]


def psi_of_shares(reference: Sequence[float], recent: Sequence[float]) -> float:
    """PSI between two share vectors over the same bins, each share floored at :data:`PSI_FLOOR`
    (an empty bin stays finite): ``sum((recent - ref) * ln(recent / ref))``, rounded to 4 places."""
    if len(reference) != len(recent):
        raise ValueError(f"PSI needs the same bins: {len(reference)} reference shares, {len(recent)} recent")
    p = [max(PSI_FLOOR, float(a)) for a in reference]
    q = [max(PSI_FLOOR, float(b)) for b in recent]
    return round(sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True)), 4)


def drift_level(value: float | None) -> str | None:
    """``stable`` (< 0.1), ``moderate`` (< 0.25) or ``significant``; None when not computed."""
    if value is None:
        return None
    return "stable" if value < 0.1 else ("moderate" if value < 0.25 else "significant")


# ---------------------------------------------------------------------------- grouping


def severity_counts(checks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Identity-audit posture: failing checks per severity (every severity present, 0 if none)."""
    out = {"critical": 0, "high": 0, "medium": 0, "low": 0}
    for c in checks:
        sev = str(c.get("severity"))
        if sev in out:
            out[sev] += 1
    return out


def grouped(
    rows: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], str]
) -> dict[str, list[Mapping[str, Any]]]:
    """Rows by ``key(row)``, keys sorted."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items()))


def daily(rows: Iterable[Mapping[str, Any]], ts_field: str) -> dict[str, list[Mapping[str, Any]]]:
    """Rows by UTC day (``YYYY-MM-DD``) of ``row[ts_field]`` (epoch seconds); rows without it are left out."""
    import datetime as _dt

    def day(r: Mapping[str, Any]) -> str:
        return _dt.datetime.fromtimestamp(float(r[ts_field]), tz=_dt.UTC).strftime("%Y-%m-%d")

    return grouped((r for r in rows if r.get(ts_field) is not None), day)
