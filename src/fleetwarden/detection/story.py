"""The plain-language story of an incident: what happened, to what, how much, since when, in time order.

Contract
    :func:`incident_story` gives a list of sentences: first the summary (the device named by its
    class, address and site when the inventory knows them; the category in words; the time span
    and its duration; how many findings from how many detectors; the risk and the device's risk),
    then one line per finding in time order (its time, detector, confidence and first evidence
    sentence, and the raw record ids behind it: Zeek uids, MQTT message ids…), at most
    :data:`MAX_STEPS` of them (the first and the last ones, with a line counting those left out),
    then the campaign it belongs to.  Pure: the same incident always tells the same story.

Blind spots
    A step quotes its finding's first evidence sentence only; the rest stays on the finding.  Record
    ids are capped per step (:data:`MAX_RECORD_IDS`), so the full list lives on the finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fleetwarden.core.context import DeviceInfo
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.core.text import redact

__all__ = ["MAX_RECORD_IDS", "MAX_STEPS", "WHAT", "incident_story", "step_line"]

MAX_STEPS = 8
MAX_RECORD_IDS = 5
# a category in words: what happened
WHAT = {
    "scan": "scanned other hosts",
    "c2-beacon": "called a command-and-control server",
    "ddos": "took part in a flood (denial of service)",
    "brute-force": "tried passwords against a service (brute force)",
    "exfiltration": "sent data out of the site (exfiltration)",
    "dns-tunnel": "hid traffic inside DNS queries (DNS tunnel)",
    "lateral-movement": "moved to other hosts of the site (lateral movement)",
    "firmware-tamper": "reported firmware that is not the signed image (firmware tampering)",
    "credential-misuse": "used credentials in a way their owner does not (credential misuse)",
    "cloned-device": "appeared twice under one identity (a cloned device)",
    "policy-violation": "broke the security policy",
    "unknown-device": "appeared on the network without being registered",
    "anomaly": "behaved unlike itself or its peers (anomaly)",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _subject(inc: Incident, info: DeviceInfo | None) -> str:
    parts = []
    if info is not None and info.device_class:
        parts.append(info.device_class)
    if inc.ip and inc.ip != inc.entity:
        parts.append(f"at {inc.ip}")
    if info is not None and info.site:
        parts.append(f"site {info.site}")
    return f"{inc.entity} ({', '.join(parts)})" if parts else inc.entity


def step_line(f: Finding) -> str:
    """One finding as a step of the story: when, who saw it, how sure, what, from which records."""
    first = f.evidence[0] if f.evidence else f.category
    ids = list(f.record_ids[:MAX_RECORD_IDS])
    more = f" and {len(f.record_ids) - len(ids)} more" if len(f.record_ids) > len(ids) else ""
    records = f"; records {', '.join(ids)}{more}" if ids else ""
    return redact(f"{_iso(f.first_seen)}: {f.detector} (confidence {f.score:.2f}): {first}{records}")


def incident_story(inc: Incident, info: DeviceInfo | None, campaigns: Sequence[Any] = ()) -> list[str]:
    """The incident's story (module docstring); ``campaigns`` as :func:`.correlation.find_campaigns` returns."""
    steps = sorted(inc.findings, key=lambda f: (f.first_seen, f.last_seen, f.detector))
    detectors = len({f.detector for f in steps})
    device = (
        f"; the device's risk over all its signals {inc.device_risk}/100"
        if inc.device_risk is not None
        else ""
    )
    out = [
        f"{_subject(inc, info)} {WHAT.get(inc.category, inc.category)} from {_iso(inc.first_seen)} to "
        f"{_iso(inc.last_seen)} ({_duration(inc.last_seen - inc.first_seen)}): {len(steps)} finding(s) from "
        f"{detectors} detector(s), risk {inc.risk}/100 ({inc.severity}){device}."
    ]
    if len(steps) > MAX_STEPS:
        head, tail = steps[: MAX_STEPS - 2], steps[-2:]
        out += [step_line(f) for f in head]
        out.append(f"… {len(steps) - len(head) - len(tail)} more step(s) …")
        out += [step_line(f) for f in tail]
    else:
        out += [step_line(f) for f in steps]
    camp = next((c for c in campaigns if c.id == inc.campaign), None)
    if camp is not None:
        role = (
            "one of its attacking devices" if inc.entity in camp.attackers else "affected by its attacker(s)"
        )
        out.append(
            f"Part of campaign {camp.id} since {_iso(camp.first_seen)}: {len(camp.members)} devices, "
            f"attacking: {', '.join(camp.attackers[:5])}; this device is {role}."
        )
        if inc.entity in getattr(camp, "links", {}):
            out.append(camp.links[inc.entity])
    return out
