"""Findings and incidents: what the detection engine and the correlator produce.

A :class:`Finding` is one signal from one detector about one entity, with the evidence
that drove it.  An :class:`Incident` is the correlator's story for one entity and one
category, built from findings, with a 0-100 risk score.  Both are plain dataclasses:
they are rare compared with events, so a Python object each is fine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetwarden.core.text import redact, redact_all

CATEGORIES = (
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
    "policy-violation",
    "unknown-device",
    "anomaly",
)
SEVERITIES = ("low", "medium", "high", "critical")


def severity_for(score: float) -> str:
    """Map a [0,1] confidence-weighted score onto the four severities."""
    if score >= 0.9:
        return "critical"
    if score >= 0.7:
        return "high"
    if score >= 0.4:
        return "medium"
    return "low"


@dataclass
class Finding:
    """One detector's signal about one entity.

    ``entity`` is the inventory's device id when known, else the IP address.
    ``score`` in [0,1] is how sure the detector is that this is malicious.
    ``evidence`` holds human sentences ("47 distinct hosts on tcp/23 in 60 s vs
    baseline 1.2"); ``record_ids`` the uids of the raw records behind it.
    """

    entity: str
    category: str
    detector: str
    score: float
    first_seen: float
    last_seen: float
    evidence: list[str] = field(default_factory=list)
    mitre: list[str] = field(default_factory=list)
    ip: str | None = None
    mac: str | None = None
    device_id: str | None = None
    record_ids: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown finding category {self.category!r}")
        self.score = float(min(1.0, max(0.0, self.score)))
        # Everything here may quote attacker-controlled input (a user name, a command line, a
        # device id): a credential in it is masked once, here, for every output and row after.
        self.entity = redact(self.entity)
        self.ip = redact(self.ip) if self.ip else self.ip
        self.mac = redact(self.mac) if self.mac else self.mac
        self.device_id = redact(self.device_id) if self.device_id else self.device_id
        self.evidence = [redact(str(e)) for e in self.evidence]
        self.record_ids = [redact(str(r)) for r in self.record_ids]
        self.attributes = redact_all(self.attributes)

    @property
    def severity(self) -> str:
        return severity_for(self.score)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON output; credentials in the evidence are masked."""
        d = asdict(self)
        d["severity"] = self.severity
        d["evidence"] = [redact(str(e)) for e in self.evidence]
        return d


@dataclass
class Incident:
    """The correlator's story about one entity in one category."""

    entity: str
    category: str
    severity: str
    risk: int
    first_seen: float
    last_seen: float
    evidence: list[str] = field(default_factory=list)
    mitre: list[str] = field(default_factory=list)
    ip: str | None = None
    mac: str | None = None
    findings: list[Finding] = field(default_factory=list)
    # the correlator's additions (fleetwarden.detection.correlation): the campaign linking this
    # incident to others across devices, the plain-language story in time order, the device's
    # risk over all its (independent) signals
    campaign: str | None = None
    story: list[str] = field(default_factory=list)
    device_risk: int | None = None
    device_id: str | None = None  # the inventory's id of the device, when its findings name one

    def to_dict(self) -> dict[str, Any]:
        """The ``analyze --json`` shape (the command-line contract, docs/architecture.md)."""
        return incident_json(self)


@dataclass
class CampaignLink(Incident):
    """A stored incident of another device, given only the campaign id a correlation assigned it
    (:func:`fleetwarden.app.session.join_stories`): the store writes its ``campaign`` alone, and
    only while the row still holds ``was``, the id the correlation read (compare and set), so
    another writer's newer risk, evidence or times on that incident are never overwritten."""

    incident_id: int = 0
    was: str | None = None


def incident_json(incident: Any) -> dict[str, Any]:
    """The ``analyze --json`` incident shape (the command-line contract, docs/architecture.md).

    Takes an :class:`Incident` or anything with the same attributes, such as the stored
    ``fleetwarden.store.models.IncidentRecord`` (whose JSON lists may be None), so the
    contract has one definition whichever side an incident comes from.
    """
    return {
        "entity": incident.entity,
        "ip": incident.ip,
        "mac": incident.mac,
        "category": incident.category,
        "severity": incident.severity,
        "risk": incident.risk,
        "first_seen": _iso(incident.first_seen),
        "last_seen": _iso(incident.last_seen),
        "evidence": [redact(str(e)) for e in incident.evidence or []],
        "mitre": list(incident.mitre or []),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
