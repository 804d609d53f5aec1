"""STIX 2.1 bundles of indicators worth sharing, from findings: command-and-control addresses and
domains, and the image hashes of tampered firmware.  Pure: plain finding dicts in, a bundle dict
out (the JSON is written by :mod:`fleetwarden.app.export`).

*What is shared.*  Only what another organisation can block: a **public** IPv4/IPv6 address
(``ipaddress``'s ``is_global``: never RFC 1918, loopback, link-local, CGNAT or documentation
ranges) or a domain that is not a local name (``.local``, ``.lan``, ``.home.arpa``, reverse
zones…), never an address of the fleet's own devices (``own``), and only from findings of
severity ``medium`` or higher: a low-severity "beacon" to a public NTP server is not a C2
server.  Flood *targets* are victims, not indicators, and are never exported.

*Stable ids.*  Every id is a UUIDv5 under one FleetWarden namespace: the indicator's over its
pattern, the identity's over its name, the bundle's over its indicators' ids; ``created`` /
``valid_from`` are the first sighting, ``modified`` the last, so exporting the same store twice
gives the same bytes and a consumer de-duplicates by id.

*Blind spots.*  A C2 server behind a shared CDN address would be shared as is; the analyst
reviews before sharing.  Reference: STIX 2.1 (OASIS, 2021), §4.1 identity, §4.7 indicator, §9
patterning.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["NAMESPACE", "Observable", "indicators_from", "stix_bundle"]

NAMESPACE = uuid.UUID("6f1e3c52-6f0a-5b7e-9a4e-3f1c2d5e8b10")
_IDENTITY_CREATED = "2024-01-01T00:00:00.000Z"  # fixed: the identity is the same in every export
_SHARED_SEVERITIES = {"medium", "high", "critical"}
_LOCAL_SUFFIXES = (
    ".local",
    ".lan",
    ".home",
    ".internal",
    ".localdomain",
    ".home.arpa",
    ".in-addr.arpa",
    ".ip6.arpa",
    ".corp",
    ".test",
    ".example",
    ".invalid",
    ".localhost",
)
_DOMAIN = re.compile(
    r"^(?=.{4,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_INDICATORS = 10_000


@dataclass
class Observable:
    """One value worth sharing, with the span and categories of the findings behind it."""

    kind: str  # ipv4-addr, ipv6-addr, domain-name, file-sha256
    value: str
    first_seen: float
    last_seen: float
    categories: set[str] = field(default_factory=set)
    mitre: set[str] = field(default_factory=set)

    @property
    def pattern(self) -> str:
        v = self.value.replace("\\", "\\\\").replace("'", "\\'")
        if self.kind == "file-sha256":
            return f"[file:hashes.'SHA-256' = '{v}']"
        return f"[{self.kind}:value = '{v}']"


def indicators_from(findings: Iterable[Mapping[str, Any]], own: Iterable[str] = ()) -> list[Observable]:
    """The observables worth sharing in ``findings`` (see the module's rules), merged by value,
    sorted by kind and value; ``own``: the fleet's own addresses and names."""
    mine = {str(x).lower() for x in own if x}
    found: dict[tuple[str, str], Observable] = {}
    for f in findings:
        if str(f.get("severity")) not in _SHARED_SEVERITIES:
            continue
        for kind, value in _candidates(f):
            if value.lower() in mine or len(found) >= _MAX_INDICATORS and (kind, value) not in found:
                continue
            _merge(found, kind, value, f)
    return [found[k] for k in sorted(found)]


def _candidates(f: Mapping[str, Any]) -> list[tuple[str, str]]:
    attrs = f.get("attributes") or {}
    if not isinstance(attrs, Mapping):
        return []
    category = f.get("category")
    raw: list[object] = []
    if category == "c2-beacon":
        raw = [*_listed(attrs.get("destinations")), attrs.get("destination"), attrs.get("domain")]
    elif category in ("dns-tunnel", "exfiltration"):
        raw = [attrs.get("domain"), attrs.get("peer"), attrs.get("destination")]
    elif category == "firmware-tamper":
        sha = str(attrs.get("image_sha256") or "").lower()
        return [("file-sha256", sha)] if _SHA256.match(sha) else []
    return [c for c in (_classify(v) for v in raw if v) if c is not None]


def _listed(value: object) -> list[object]:
    return list(value)[:64] if isinstance(value, list | tuple) else []


def _classify(value: object) -> tuple[str, str] | None:
    """(kind, value) for a public address or a shareable domain, else None."""
    s = str(value).strip().lower().rstrip(".")
    if len(s) > 253:
        return None
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        ok = _DOMAIN.match(s) and not s.endswith(_LOCAL_SUFFIXES)
        return ("domain-name", s) if ok else None
    if not ip.is_global or ip.is_multicast:
        return None
    return ("ipv4-addr" if ip.version == 4 else "ipv6-addr", str(ip))


def _merge(found: dict[tuple[str, str], Observable], kind: str, value: str, f: Mapping[str, Any]) -> None:
    first, last = float(f.get("first_seen") or 0.0), float(f.get("last_seen") or 0.0)
    obs = found.setdefault((kind, value), Observable(kind, value, first, max(first, last)))
    obs.first_seen = min(obs.first_seen, first)
    obs.last_seen = max(obs.last_seen, last, obs.first_seen)
    obs.categories.add(str(f.get("category"))[:50])
    obs.mitre.update(str(t)[:20] for t in _listed(f.get("mitre"))[:32])


def stix_bundle(observables: Iterable[Observable], *, producer: str = "FleetWarden") -> dict[str, Any]:
    """A STIX 2.1 bundle: the producer's identity and one indicator per observable."""
    identity = _identity(producer)
    indicators = [_indicator(o, identity["id"]) for o in observables]
    bundle_key = ",".join(i["id"] for i in indicators) or "empty"
    return {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid5(NAMESPACE, bundle_key)}",
        "objects": [identity, *indicators],
    }


def _identity(name: str) -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{uuid.uuid5(NAMESPACE, 'identity:' + name)}",
        "created": _IDENTITY_CREATED,
        "modified": _IDENTITY_CREATED,
        "name": name[:200],
        "identity_class": "system",
    }


def _indicator(o: Observable, created_by: str) -> dict[str, Any]:
    what = {"file-sha256": "firmware image", "domain-name": "domain", "ipv4-addr": "address"}.get(
        o.kind, "address"
    )
    labels = sorted(o.categories)
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid5(NAMESPACE, o.pattern)}",
        "created_by_ref": created_by,
        "created": _stix_time(o.first_seen),
        "modified": _stix_time(o.last_seen),
        "name": f"{what} {o.value} ({', '.join(labels)})",
        "indicator_types": ["malicious-activity"] if o.kind != "file-sha256" else ["compromised"],
        "pattern": o.pattern,
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": _stix_time(o.first_seen),
        "labels": labels,
    }
    if o.mitre:  # STIX forbids empty lists
        indicator["external_references"] = [
            {"source_name": "mitre-attack", "external_id": t} for t in sorted(o.mitre)
        ]
    return indicator


def _stix_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"
