"""What a finding names besides its device: its *subject* keys (the entity and address it is about)
and its *counterparts* (the other ends: a C2 address or domain, a flood target, the host that
opened a session).  Campaigns link on them (:func:`fleetwarden.detection.correlation.find_campaigns`)
and the store indexes them (:mod:`fleetwarden.store.campaigns`), so both read one definition.

Keys are lower case; ports are stripped ("10.0.0.4 23" names 10.0.0.4); a finding names at most
:data:`MAX_COUNTERPARTS` counterparts, each at most :data:`MAX_COUNTERPART_LEN` characters (a DNS
name's bound), so a finding listing thousands of destinations costs a bounded index.
"""

from __future__ import annotations

import ipaddress

from fleetwarden.core.findings import Finding

__all__ = [
    "COUNTERPART_KEYS",
    "MAX_COUNTERPARTS",
    "MAX_COUNTERPART_LEN",
    "counterparts",
    "is_external",
    "subjects",
]

# attribute names under which detectors name a finding's counterpart (the other end)
COUNTERPART_KEYS = ("peer", "destination", "target", "domain", "destinations")
MAX_COUNTERPARTS = 16
MAX_COUNTERPART_LEN = 253


def counterparts(f: Finding) -> list[str]:
    """The other ends a finding names (addresses or domains, ports stripped), bounded."""
    out: list[str] = []
    for key in COUNTERPART_KEYS:
        value = f.attributes.get(key)
        values = value if isinstance(value, list | tuple) else [value]
        for v in values[:MAX_COUNTERPARTS]:
            if isinstance(v, str) and v and len(v) <= MAX_COUNTERPART_LEN:
                out.append(v.split(" ")[0].lower())
    return list(dict.fromkeys(out))[:MAX_COUNTERPARTS]


def subjects(f: Finding) -> list[str]:
    """What names the device a finding is about (its entity and address, lower case): the keys
    under which another finding's counterpart points at it."""
    return list(dict.fromkeys(str(k).lower() for k in (f.entity, f.ip) if k))


def is_external(value: str) -> bool:
    """A counterpart outside the fleet: a global address or a domain name (a shared one links
    attack incidents of several devices into one campaign)."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return "." in value  # a domain name
    return addr.is_global
