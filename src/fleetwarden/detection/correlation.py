"""The correlator: findings in, one incident per (entity, category) with a 0-100 risk out.

Risk is built from what the findings say, in this order:

1. the strongest finding's score (how sure its detector is);
2. corroboration: every other detector that saw the same thing adds half its own score
   as an independent witness (noisy-OR), so two detectors at 0.6 weigh more than one;
3. repetition: more findings of the same story add a little (log of the count, capped),
   so one device that beacons in ten captures is not ten times as risky;
4. the story: other *attack* categories on the same entity (a scan, then a C2 beacon,
   then DDoS participation: the botnet life cycle) raise each of its incidents;
5. criticality: devices whose class controls physical processes or patients (PLCs,
   infusion pumps, ...) weigh more;
6. weak signals stay weak: an incident whose only detector is sure of less than "medium"
   and that no other attack step links to stays "low", however often it repeats.

Stories are per entity: every detector names the *local* device as the entity (the
scanning camera, not the external hosts that answered its probes; the flooding device, not
its outside victim), so the scan, C2 beacon and flood of one compromised device link here.

Severity follows from risk with the same cut points as :func:`fleetwarden.core.findings.severity_for`.
The incident's evidence is the strongest findings' sentences (then a line naming the
linked categories); its MITRE techniques the union of its findings'.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from fleetwarden.core.context import Context
from fleetwarden.core.findings import Finding, Incident, severity_for

__all__ = ["ATTACK_CATEGORIES", "CRITICAL_CLASSES", "correlate", "risk_for"]

# Categories that are steps of an attack (as opposed to context such as policy or novelty).
ATTACK_CATEGORIES = frozenset(
    {
        "scan",
        "c2-beacon",
        "ddos",
        "brute-force",
        "exfiltration",
        "dns-tunnel",
        "lateral-movement",
        "firmware-tamper",
        "credential-misuse",
        "cloned-device",
    }
)
# Substrings of device classes whose compromise endangers people or processes.
CRITICAL_CLASSES = (
    "plc",
    "infusion",
    "pump",
    "ventilator",
    "medical",
    "patient",
    "scada",
    "rtu",
    "hmi",
    "controller",
    "insulin",
    "pacemaker",
    "safety",
)
MAX_EVIDENCE = 6
# Below this a finding is "low" (fleetwarden.core.findings.severity_for's medium cut point).
WEAK = 0.4


def _criticality(ctx: Context, finding: Finding) -> float:
    info = ctx.devices.get(finding.device_id or finding.entity)
    cls = (info.device_class or "").lower() if info else ""
    return 1.2 if any(c in cls for c in CRITICAL_CLASSES) else 1.0


def risk_for(findings: list[Finding], linked_categories: int = 0, criticality: float = 1.0) -> int:
    """0-100 risk of one incident from its findings (see the module docstring)."""
    if not findings:
        return 0
    best_by_detector: dict[str, float] = {}
    for f in findings:
        best_by_detector[f.detector] = max(best_by_detector.get(f.detector, 0.0), f.score)
    scores = sorted(best_by_detector.values(), reverse=True)
    risk = scores[0]
    for s in scores[1:]:
        risk = 1 - (1 - risk) * (1 - 0.5 * s)
    risk += min(0.06, 0.02 * math.log2(len(findings)))
    risk += min(0.15, 0.05 * linked_categories)
    risk *= criticality
    if len(scores) == 1 and scores[0] < WEAK and linked_categories == 0:
        # One detector's weak signal stays weak however often it repeats and whatever the
        # device: it takes a second witness or a linked attack step to make it medium.
        risk = min(risk, WEAK - 0.01)
    return int(round(100 * min(1.0, max(0.0, risk))))


def correlate(findings: Iterable[Finding], ctx: Context | None = None) -> list[Incident]:
    """Group findings into incidents per (entity, category); highest risk first."""
    ctx = ctx if ctx is not None else Context()
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.entity, f.category)].append(f)
    attack_cats: dict[str, set[str]] = defaultdict(set)
    for entity, category in groups:
        if category in ATTACK_CATEGORIES:
            attack_cats[entity].add(category)
    incidents = []
    for (entity, category), group in groups.items():
        group.sort(key=lambda f: (-f.score, f.first_seen))
        others = sorted(attack_cats[entity] - {category})
        linked = len(others) if category in ATTACK_CATEGORIES else 0
        crit = max(_criticality(ctx, f) for f in group)
        risk = risk_for(group, linked, crit)
        evidence: list[str] = []
        for f in group:
            for sentence in f.evidence:
                if sentence not in evidence:
                    evidence.append(sentence)
            if len(evidence) >= MAX_EVIDENCE:
                break
        evidence = evidence[:MAX_EVIDENCE]
        if len(group) > 1:
            evidence.append(f"{len(group)} findings from {len({f.detector for f in group})} detector(s)")
        if others:
            evidence.append(f"same entity also shows: {', '.join(others)}")
        if crit > 1.0:
            evidence.append("critical device class: risk weighted up")
        mitre: list[str] = []
        for f in group:
            mitre += [m for m in f.mitre if m not in mitre]
        ip = next((f.ip for f in group if f.ip), None)
        mac = next((f.mac for f in group if f.mac), None)
        incidents.append(
            Incident(
                entity=entity,
                category=category,
                severity=severity_for(risk / 100),
                risk=risk,
                first_seen=min(f.first_seen for f in group),
                last_seen=max(f.last_seen for f in group),
                evidence=evidence,
                mitre=mitre,
                ip=ip,
                mac=mac,
                findings=group,
            )
        )
    incidents.sort(key=lambda i: (-i.risk, i.first_seen, i.entity, i.category))
    return incidents
