"""The correlator: findings in, one incident per (entity, category) with a 0-100 risk out, the
device's risk over all its signals, campaigns across devices and a story per incident.

Risk of one incident
    Every finding ``f`` counts with its detector's confidence ``s_f`` (``Finding.score``) decayed
    by its age at the correlation time ``now`` (default: the newest ``last_seen`` among the same
    device's findings, so the result depends on neither the wall clock nor the other devices
    correlated alongside, and a stored story re-correlated later tells what one run would)::

        s'_f = s_f * 0.5 ** ((now - f.last_seen) / HALF_LIFE)        HALF_LIFE = 72 h

    then, for the findings of one (entity, category)::

        r  = s'_1 (the strongest detector's best finding)
        r  = 1 - (1 - r) * (1 - 0.5 * s'_k)   for every other detector k   (corroboration)
        r += min(0.06, 0.02 * log2(n))        n findings                    (repetition)
        r += min(0.15, 0.05 * L)              L other attack categories on the entity (the story)
        r *= w = clip(crit * data, 0.85, 1.3)                               (what is at stake)
        risk = round(100 * clip(r, 0, 1))

    * corroboration: a second detector that saw the same thing is an independent witness
      (noisy-OR at half weight: detectors of one category read overlapping evidence);
    * repetition saturates: one device that beacons in ten captures is not ten times as risky;
    * the story: a scan, then a C2 beacon, then DDoS participation (the botnet life cycle) raise
      each of its incidents; context categories (policy, novelty) link nothing;
    * ``crit`` is the inventory's criticality (``DeviceInfo.extra["criticality"]``: low 0.9,
      medium 1.0, high 1.1, critical 1.2); without one, 1.2 for classes that control physical
      processes or patients (:data:`CRITICAL_CLASSES`), else 1.0.  ``data`` is the data
      classification (``extra["data_class"]``: public and internal 1.0, confidential 1.05,
      regulated 1.1);
    * weak signals stay weak: an incident whose only detector is sure of less than "medium"
      (0.4) and that no other attack step links to stays "low", however often it repeats and
      whatever the device.

Risk of a device (``Incident.device_risk``, :func:`device_risk`)
    Independent signals raise it more than one signal repeated: each category the device shows
    is one *signal family* with strength ``p_c`` (the incident formula's corroboration and
    repetition steps, decayed, before links and weight), and the families combine by noisy-OR::

        device = w * (1 - prod_c (1 - p_c))

    so a traffic anomaly at 0.5, a new authentication source at 0.5 and a firmware mismatch at
    0.5 make 0.875, while the anomaly seen eight times stays at 0.56.  A device whose every
    family is weak (< 0.4) and none an attack step is capped below medium like an incident.

Blind spots
    Independence is assumed between categories: two detectors reading the same flows under two
    categories (a flood counted as an anomaly too) are counted twice.  Decay is relative to the
    device's newest finding: a device that went quiet keeps its risk until a caller passes ``now``
    (there is no clock here).  The weights are judgement, not fitted: a mis-set
    criticality in the inventory moves risk by up to 30%.  Campaigns (below) link only what the
    findings name: a C2 reached by name on one device and by address on another is two campaigns.

Stories are per entity: every detector names the *local* device as the entity (the scanning
camera, not the external hosts that answered its probes), so the scan, C2 beacon and flood of one
compromised device link here.  Across devices, :func:`find_campaigns` groups (union-find)

1. the devices whose attack findings name the same external counterpart (one C2 address or
   domain, one flood target): ``peer``, ``destination(s)``, ``target``, ``domain`` attributes;
2. a finding whose counterpart is the subject of an attack incident (the victims of a scanner:
   the hosts that accepted its telnet sessions) with that incident's device,

and gives every incident of a group with an attack incident the same ``campaign`` id and a line
of its story naming the link (not of its evidence: the evidence of a stored incident is a function
of its own device's findings).  A new group's id is ``C-`` + a hash of its attacking entities; a
group holding incidents that already carry an id (``known``: the store's, when a recording
correlates new findings with stored incidents) keeps the id its earliest such incident carries
(the oldest campaign's), so a campaign's id never changes when victims or attackers join it
later, and when two campaigns merge the younger one's id gives way.  An id goes to one group only.

The links are between incidents, so they hold across recordings: a recording
(:func:`fleetwarden.app.session.join_stories`) correlates the new findings with the stored open
incidents they are campaign-related to (found through :mod:`fleetwarden.store.campaigns`, which
indexes each stored incident's subjects and counterparts as :mod:`fleetwarden.core.counterparts`
reads them, the definition this module links on), so a camera's scan recorded in one checkpoint
and its victims' sessions recorded in a later one share a campaign, as do two devices that start
beaconing to one C2 ten minutes apart.

Severity follows from risk with the cut points of :func:`fleetwarden.core.findings.severity_for`.
The incident's evidence is the strongest findings' sentences (then the links); its MITRE ids the
union of its findings' (:mod:`.attack` adds the category's default and, on a device of a physical
process class, ATT&CK for ICS); its ``story`` the plain-language account of :mod:`.story`.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.counterparts import counterparts, is_external, subjects
from fleetwarden.core.findings import Finding, Incident, severity_for
from fleetwarden.detection.attack import techniques
from fleetwarden.detection.story import incident_story

__all__ = [
    "ATTACK_CATEGORIES",
    "CRITICAL_CLASSES",
    "HALF_LIFE",
    "Campaign",
    "correlate",
    "counterparts",
    "decayed",
    "device_risk",
    "find_campaigns",
    "is_external",
    "risk_for",
    "subjects",
    "weight_for",
]

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
# A finding's confidence halves every HALF_LIFE seconds of age (72 h: a weekend's signal still counts half).
HALF_LIFE = 72 * 3600.0
CRITICALITY_WEIGHT = {"low": 0.9, "medium": 1.0, "high": 1.1, "critical": 1.2}
DATA_CLASS_WEIGHT = {"public": 1.0, "internal": 1.0, "confidential": 1.05, "regulated": 1.1}
CLASS_WEIGHT = 1.2  # no criticality in the inventory, a class in CRITICAL_CLASSES
WEIGHT_RANGE = (0.85, 1.3)


# ---------------------------------------------------------------------------- risk


def decayed(f: Finding, now: float | None) -> float:
    """``f.score`` decayed by its age at ``now`` (half-life :data:`HALF_LIFE`); no decay without ``now``."""
    if now is None:
        return f.score
    age = max(0.0, float(now) - float(f.last_seen))
    return f.score * 0.5 ** (age / HALF_LIFE)


def _device(ctx: Context, finding: Finding) -> DeviceInfo | None:
    return ctx.devices.get(finding.device_id or finding.entity)


def is_ics(info: DeviceInfo | None) -> bool:
    """A device whose class controls a physical process or a patient (:data:`CRITICAL_CLASSES`)."""
    cls = (info.device_class or "").lower() if info else ""
    return any(c in cls for c in CRITICAL_CLASSES)


def weight_for(info: DeviceInfo | None) -> float:
    """What is at stake on a device: criticality x data classification (module docstring)."""
    if info is None:
        return 1.0
    crit = str(info.extra.get("criticality") or "").lower()
    w = CRITICALITY_WEIGHT.get(crit, CLASS_WEIGHT if is_ics(info) else 1.0)
    w *= DATA_CLASS_WEIGHT.get(str(info.extra.get("data_class") or "").lower(), 1.0)
    return min(WEIGHT_RANGE[1], max(WEIGHT_RANGE[0], w))


def _strength(findings: Sequence[Finding], now: float | None) -> tuple[float, list[float]]:
    """Corroboration and repetition of one signal family; returns (strength, per-detector bests)."""
    best_by_detector: dict[str, float] = {}
    for f in findings:
        best_by_detector[f.detector] = max(best_by_detector.get(f.detector, 0.0), decayed(f, now))
    scores = sorted(best_by_detector.values(), reverse=True)
    r = scores[0]
    for s in scores[1:]:
        r = 1 - (1 - r) * (1 - 0.5 * s)
    r += min(0.06, 0.02 * math.log2(len(findings)))
    return r, scores


def risk_for(
    findings: list[Finding],
    linked_categories: int = 0,
    criticality: float = 1.0,
    now: float | None = None,
) -> int:
    """0-100 risk of one incident from its findings (the module docstring's formula; ``criticality``
    is the weight ``w``, ``now`` the decay reference)."""
    if not findings:
        return 0
    risk, scores = _strength(findings, now)
    risk += min(0.15, 0.05 * linked_categories)
    risk *= criticality
    if len(scores) == 1 and scores[0] < WEAK and linked_categories == 0:
        # One detector's weak signal stays weak however often it repeats and whatever the
        # device: it takes a second witness or a linked attack step to make it medium.
        risk = min(risk, WEAK - 0.01)
    return int(round(100 * min(1.0, max(0.0, risk))))


def device_risk(findings: Iterable[Finding], weight: float = 1.0, now: float | None = None) -> int:
    """0-100 risk of one device: noisy-OR over its signal families (categories), see the module docstring."""
    families: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        families[f.category].append(f)
    if not families:
        return 0
    miss, strongest = 1.0, 0.0
    for group in families.values():
        p = min(1.0, _strength(group, now)[0])
        strongest = max(strongest, p)
        miss *= 1 - p
    risk = (1 - miss) * weight
    if strongest < WEAK and not (set(families) & ATTACK_CATEGORIES):
        risk = min(risk, WEAK - 0.01)
    return int(round(100 * min(1.0, max(0.0, risk))))


# ---------------------------------------------------------------------------- incidents


def correlate(
    findings: Iterable[Finding],
    ctx: Context | None = None,
    now: float | None = None,
    *,
    known: Mapping[tuple[str, str], str] | None = None,
) -> list[Incident]:
    """Group findings into incidents per (entity, category), link campaigns, tell each story;
    highest risk first.  ``now`` (epoch seconds) is the decay reference, default the newest
    ``last_seen`` of each entity's findings; ``known`` the campaign ids (entity, category) already
    carry, kept as :func:`find_campaigns` says."""
    ctx = ctx if ctx is not None else Context()
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.entity, f.category)].append(f)
    if not groups:
        return []
    attack_cats: dict[str, set[str]] = defaultdict(set)
    by_entity: dict[str, list[Finding]] = defaultdict(list)
    for (entity, category), group in groups.items():
        by_entity[entity] += group
        if category in ATTACK_CATEGORIES:
            attack_cats[entity].add(category)
    ref = {e: now if now is not None else max(f.last_seen for f in fs) for e, fs in by_entity.items()}
    incidents = [
        _incident(entity, category, group, sorted(attack_cats[entity] - {category}), ctx, ref[entity])
        for (entity, category), group in groups.items()
    ]
    dev_risk = {e: device_risk(fs, weight_for(_device(ctx, fs[0])), ref[e]) for e, fs in by_entity.items()}
    for inc in incidents:
        inc.device_risk = dev_risk[inc.entity]
    campaigns = find_campaigns(incidents, known)
    for inc in incidents:
        inc.story = incident_story(inc, ctx.devices.get(inc.findings[0].device_id or inc.entity), campaigns)
    incidents.sort(key=lambda i: (-i.risk, i.first_seen, i.entity, i.category))
    return incidents


def _incident(
    entity: str, category: str, group: list[Finding], others: list[str], ctx: Context, now: float
) -> Incident:
    # strongest first; among equals the one that covers most (the whole episode rather than its
    # first telling, a week of retries rather than one), so the first evidence line says how much
    group.sort(key=lambda f: (-f.score, -(f.last_seen - f.first_seen), -len(f.record_ids), f.first_seen))
    linked = len(others) if category in ATTACK_CATEGORIES else 0
    infos = [_device(ctx, f) for f in group]
    weight = max(weight_for(i) for i in infos)
    ics = any(is_ics(i) for i in infos)
    risk = risk_for(group, linked, weight, now)
    evidence = _evidence(group)
    if len(group) > 1:
        evidence.append(f"{len(group)} findings from {len({f.detector for f in group})} detector(s)")
    if others:
        evidence.append(f"same entity also shows: {', '.join(others)}")
    if weight > 1.0:
        evidence.append("critical device class: risk weighted up")
    return Incident(
        entity=entity,
        category=category,
        severity=severity_for(risk / 100),
        risk=risk,
        first_seen=min(f.first_seen for f in group),
        last_seen=max(f.last_seen for f in group),
        evidence=evidence,
        mitre=techniques(category, (m for f in group for m in f.mitre), ics=ics),
        ip=next((f.ip for f in group if f.ip), None),
        mac=next((f.mac for f in group if f.mac), None),
        findings=group,
        device_id=next((f.device_id for f in group if f.device_id), None),
    )


def _evidence(group: list[Finding]) -> list[str]:
    evidence: list[str] = []
    for f in group:
        for sentence in f.evidence:
            if sentence not in evidence:
                evidence.append(sentence)
        if len(evidence) >= MAX_EVIDENCE:
            break
    return evidence[:MAX_EVIDENCE]


# ---------------------------------------------------------------------------- campaigns


@dataclass
class Campaign:
    """Incidents on several devices that one actor explains: ``attackers`` are the entities with
    attack incidents in it, ``members`` every entity, ``counterparts`` the shared external ends,
    ``timeline`` ``(first_seen, entity, category, severity)`` per incident in time order."""

    id: str
    attackers: list[str]
    members: list[str]
    counterparts: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_seen: float = 0.0
    timeline: list[tuple[float, str, str, str]] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # entity -> why it belongs (a sentence)


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_campaigns(
    incidents: Sequence[Incident], known: Mapping[tuple[str, str], str] | None = None
) -> list[Campaign]:
    """Group incidents across devices into campaigns (module docstring) and set each member
    incident's ``campaign`` id; returns the campaigns, oldest first (``links``: why each device
    belongs, for the story).  ``known``: (entity, category) -> the campaign id that incident
    already carries (a stored one); a group keeps the oldest of its members' ids."""
    uf = _Union()
    subject: dict[str, str] = {}  # address or entity of an attack incident -> its entity
    for inc in incidents:
        if inc.category in ATTACK_CATEGORIES:
            for key in {inc.entity, inc.ip, *(k for f in inc.findings for k in subjects(f))} - {None}:
                subject[str(key).lower()] = inc.entity
    shared: dict[str, set[str]] = defaultdict(set)  # external counterpart -> attacking entities
    why: dict[str, str] = {}
    for inc in incidents:
        for f in inc.findings:
            for cp in counterparts(f):
                attacker = subject.get(cp)
                if attacker is not None and attacker != inc.entity:
                    uf.join(inc.entity, attacker)  # a victim (or a peer) of an attacking device
                    why.setdefault(inc.entity, f"{cp} is the subject of attack incident(s) on {attacker}")
                elif inc.category in ATTACK_CATEGORIES and is_external(cp):
                    shared[cp].add(inc.entity)
    for entities in shared.values():
        first, *rest = sorted(entities)
        for e in rest:
            uf.join(first, e)
    return _campaigns_of(incidents, uf, shared, why, known or {})


def _campaigns_of(
    incidents: Sequence[Incident],
    uf: _Union,
    shared: dict[str, set[str]],
    why: dict[str, str],
    known: Mapping[tuple[str, str], str],
) -> list[Campaign]:
    members: dict[str, list[Incident]] = defaultdict(list)
    for inc in incidents:
        members[uf.find(inc.entity)].append(inc)
    groups = [g for g in members.values() if len({i.entity for i in g}) > 1]
    groups = [g for g in groups if any(i.category in ATTACK_CATEGORIES for i in g)]
    for group in groups:
        group.sort(key=lambda i: (i.first_seen, i.entity, i.category))
    groups.sort(key=lambda g: (g[0].first_seen, g[0].entity, g[0].category))
    taken: set[str] = set()
    out: list[Campaign] = []
    for group in groups:  # oldest first: an id two groups claim stays with the older
        entities = sorted({i.entity for i in group})
        attackers = sorted({i.entity for i in group if i.category in ATTACK_CATEGORIES})
        cid = _campaign_id(group, attackers, known, taken)
        taken.add(cid)
        cps = sorted(cp for cp, es in shared.items() if len(es) > 1 and es <= set(entities))
        camp = Campaign(
            id=cid,
            attackers=attackers,
            members=entities,
            counterparts=cps,
            first_seen=group[0].first_seen,
            last_seen=max(i.last_seen for i in group),
            timeline=[(i.first_seen, i.entity, i.category, i.severity) for i in group],
        )
        for inc in group:
            inc.campaign = cid
            camp.links[inc.entity] = _campaign_line(inc, camp, why)
        out.append(camp)
    out.sort(key=lambda c: (c.first_seen, c.id))
    return out


def _campaign_id(
    group: list[Incident], attackers: list[str], known: Mapping[tuple[str, str], str], taken: set[str]
) -> str:
    """The id a group already carries (that of its earliest incident with one not taken by an
    older group), else ``C-`` + a hash of its attackers."""
    for inc in group:  # in time order: the first id met is the oldest campaign's
        cid = known.get((inc.entity, inc.category))
        if cid and cid not in taken:
            return cid
    cid = "C-" + hashlib.sha256("\n".join(attackers).encode()).hexdigest()[:10]
    if cid in taken:  # a split campaign's other part already kept this id
        members = "\n".join(sorted({i.entity for i in group}))
        cid = "C-" + hashlib.sha256(f"{members}\n".encode()).hexdigest()[:10]
    return cid


def _campaign_line(inc: Incident, camp: Campaign, why: dict[str, str]) -> str:
    size = f"{len(camp.members)} devices, {len(camp.attackers)} attacking"
    if inc.entity in why and inc.entity not in camp.attackers:
        return f"campaign {camp.id} ({size}): {why[inc.entity]}"
    if camp.counterparts:
        return f"campaign {camp.id} ({size}): shared counterpart(s) {', '.join(camp.counterparts[:3])}"
    return f"campaign {camp.id} ({size})"
