"""Suppression services: maintenance windows and analyst-approved exceptions, and the re-evaluation
of open incidents whenever they change.

* :func:`add` and :func:`remove` change the rules (audited, :mod:`fleetwarden.store.suppression`)
  and re-evaluate at once; an expiry needs :func:`reevaluate` alone (:func:`list_rules`, behind
  ``suppress list``, runs it when an expired exception still holds incidents closed);
* :func:`drop_suppressed` is what recording does (:func:`fleetwarden.app.session.join_stories`):
  a finding a rule explains is stored, marked ``attributes["suppressed"]``, and counts towards no
  incident;
* re-evaluation re-correlates the findings of every open incident, of the incidents a rule
  closed and of the findings a rule kept out of every incident, minus those the rules in force
  explain: an incident left with nothing is closed with the note "suppressed by rule #N (…)"; a
  closed one whose findings count again is reopened; the others get their new risk.

The matching is pure (:mod:`fleetwarden.control.suppression`); the clock is read here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from fleetwarden.control.suppression import Rule, check_rule, parse_time, suppressing
from fleetwarden.core.context import Context
from fleetwarden.core.findings import Finding
from fleetwarden.detection.correlation import correlate, counterparts
from fleetwarden.store import suppression as repo

__all__ = ["add", "drop_suppressed", "list_rules", "reevaluate", "remove", "rules_in_force"]


def rules_in_force(store: Any) -> list[Rule]:
    """Every rule not removed (an expired exception still matches nothing: :func:`~.matches`)."""
    return [Rule.from_row(r.to_dict()) for r in repo.list_suppressions(store)]


def _split(
    findings: Sequence[Finding], rules: Sequence[Rule], ctx: Context, now: float
) -> tuple[list[Finding], list[tuple[Finding, Rule]]]:
    kept: list[Finding] = []
    dropped: list[tuple[Finding, Rule]] = []
    for f in findings:
        info = ctx.devices.get(f.device_id or f.entity)
        rule = suppressing(rules, f, info, now, counterparts(f)) if rules else None
        if rule is None:
            kept.append(f)
        else:
            dropped.append((f, rule))
    return kept, dropped


def drop_suppressed(
    store: Any, findings: Sequence[Finding], ctx: Context, now: float | None = None
) -> list[Finding]:
    """The findings no rule in force explains; the others are marked (``attributes["suppressed"]``
    and a line of evidence, once) and left out."""
    rules = rules_in_force(store)
    if not rules:
        return list(findings)
    kept, dropped = _split(findings, rules, ctx, time.time() if now is None else now)
    for f, rule in dropped:
        if f.attributes.get("suppressed") != rule.label:
            f.attributes["suppressed"] = rule.label
            f.evidence.append(f"suppressed by {rule.label}")
    return kept


def _context(store: Any, ctx: Context | None) -> Context:
    if ctx is not None:
        return ctx
    from fleetwarden.app.inventory import context_from_store

    return context_from_store(store)


def reevaluate(
    store: Any, ctx: Context | None = None, *, actor: str = "suppression", now: float | None = None
) -> dict[str, list[int]]:
    """Re-evaluate the open incidents (and those a rule closed) under the rules in force (module
    docstring); returns the ids ``closed``, ``reopened``, ``updated`` and ``opened``."""
    ctx = _context(store, ctx)
    now = time.time() if now is None else now
    rows, by_incident, orphans = repo.reevaluation_candidates(store)
    findings = [f for fs in by_incident.values() for f in fs] + orphans
    kept, dropped = _split(findings, rules_in_force(store), ctx, now)
    fresh = {(i.entity, i.category): i for i in correlate(kept, ctx)}
    rule_of: dict[tuple[str, str], Rule] = {}
    for f, rule in dropped:
        rule_of.setdefault((f.entity, f.category), rule)
    stored: dict[tuple[str, str], Any] = {}
    for row in rows:  # an open row wins over one a rule closed; the newest of each
        key = (row.entity, row.category)
        if key not in stored or (stored[key].status == "closed") >= (row.status == "closed"):
            stored[key] = row
    return repo.apply_changes(store, _changes(stored, fresh, rule_of), actor=actor)


def _changes(
    stored: Mapping[tuple[str, str], Any], fresh: Mapping[tuple[str, str], Any], rule_of: Mapping
) -> list:
    changes = []
    for key in sorted(set(stored) | set(fresh)):
        row, inc = stored.get(key), fresh.get(key)
        if inc is not None:
            changes.append(
                repo.IncidentChange(row.id if row is not None else None, inc, findings=list(inc.findings))
            )
        elif row is not None and row.status != "closed" and key in rule_of:
            rule = rule_of[key]
            changes.append(repo.IncidentChange(row.id, None, rule.id, rule.label))
    return changes


def add(store: Any, fields: Mapping[str, Any], *, actor: str, ctx: Context | None = None,
        now: float | None = None) -> tuple[Any, dict[str, list[int]]]:  # fmt: skip
    """Check and save a rule (audited), then re-evaluate; returns the row and the re-evaluation."""
    now = time.time() if now is None else now
    fields = dict(fields)
    for name in ("starts_at", "expires_at"):  # text from a face: ISO 8601 or "+2h", "7d"
        if isinstance(fields.get(name), str):
            fields[name] = parse_time(fields[name], now, name.replace("_at", ""))
    row = repo.add_suppression(store, check_rule(fields, now), actor=actor)
    return row, reevaluate(store, ctx, actor=actor, now=now)


def remove(store: Any, rule_id: int, *, actor: str, ctx: Context | None = None,
           now: float | None = None) -> tuple[Any, dict[str, list[int]]]:  # fmt: skip
    """Lift a rule (audited), then re-evaluate: what it closed reopens if nothing else explains it."""
    row = repo.remove_suppression(store, rule_id, actor=actor)
    return row, reevaluate(store, ctx, actor=actor, now=now)


def list_rules(
    store: Any, *, include_removed: bool = False, now: float | None = None
) -> list[dict[str, Any]]:
    """The rules as plain rows with a ``state`` (in force, expired, removed), oldest first.  An
    exception that has expired while incidents it closed are still closed is applied first (a
    re-evaluation: they reopen), so an expiry takes effect when anyone looks, not only at the next
    change."""
    now = time.time() if now is None else now
    if any(
        r.kind == "exception" and r.expires_at <= now and r.closed_incidents
        for r in repo.list_suppressions(store)
    ):
        reevaluate(store, actor="suppression-expiry", now=now)
    out = []
    for r in repo.list_suppressions(store, include_removed=include_removed):
        d = r.to_dict()
        expired = r.kind == "exception" and r.expires_at <= now
        d["state"] = "removed" if r.removed_at is not None else ("expired" if expired else "in force")
        out.append(d)
    return out
