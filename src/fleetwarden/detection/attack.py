"""MITRE ATT&CK technique ids per finding category, Enterprise and ICS.

Contract
    :func:`techniques` gives the ids an incident carries: its findings' own ids first (the detector
    knows best: T1008 Fallback Channels for a C2 retry over several addresses), then the
    category's Enterprise default when no finding named one, then, for a device whose class
    controls a physical process (``ics=True``: PLC, RTU, HMI, SCADA, controller, medical
    device…), the category's ATT&CK for ICS technique.  Every category has at least one id, so
    every incident has one.

Blind spots
    A category is a coarse summary: a "policy-violation" (plaintext management accepted) is
    mapped to Remote Services, which is what it enables rather than proof it was used; "anomaly"
    (a traffic change no rule explains) is mapped to Application Layer Protocol, the usual
    carrier of the C2 or exfiltration such a change hides.  Ids are pinned to ATT&CK v15.

Reference
    https://attack.mitre.org/matrices/enterprise/ and https://attack.mitre.org/matrices/ics/
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ENTERPRISE", "ICS", "techniques"]

# category -> Enterprise technique ids (used when no finding of the incident names one)
ENTERPRISE: dict[str, tuple[str, ...]] = {
    "scan": ("T1046",),  # Network Service Discovery
    "c2-beacon": ("T1071",),  # Application Layer Protocol
    "ddos": ("T1498",),  # Network Denial of Service
    "brute-force": ("T1110",),  # Brute Force
    "exfiltration": ("T1041",),  # Exfiltration Over C2 Channel
    "dns-tunnel": ("T1071.004",),  # Application Layer Protocol: DNS
    "lateral-movement": ("T1021",),  # Remote Services
    "firmware-tamper": ("T1542.001",),  # Pre-OS Boot: System Firmware
    "credential-misuse": ("T1078",),  # Valid Accounts
    "cloned-device": ("T1036",),  # Masquerading
    "policy-violation": ("T1021",),  # Remote Services (plaintext management is their door)
    "unknown-device": ("T1200",),  # Hardware Additions
    "anomaly": ("T1071",),  # Application Layer Protocol (see the blind spots)
}
# category -> ATT&CK for ICS technique ids (added for devices of a physical-process class)
ICS: dict[str, tuple[str, ...]] = {
    "scan": ("T0846",),  # Remote System Discovery
    "c2-beacon": ("T0869",),  # Standard Application Layer Protocol
    "ddos": ("T0814",),  # Denial of Service
    "brute-force": ("T0812",),  # Default Credentials
    "exfiltration": ("T0882",),  # Theft of Operational Information
    "dns-tunnel": ("T0869",),  # Standard Application Layer Protocol
    "lateral-movement": ("T0866",),  # Exploitation of Remote Services
    "firmware-tamper": ("T0839",),  # Module Firmware
    "credential-misuse": ("T0859",),  # Valid Accounts
    "cloned-device": ("T0849",),  # Masquerading
    "policy-violation": ("T0886",),  # Remote Services
    "unknown-device": ("T0848",),  # Rogue Master
    "anomaly": ("T0869",),  # Standard Application Layer Protocol
}


def techniques(category: str, found: Iterable[str], *, ics: bool = False) -> list[str]:
    """The technique ids of an incident of ``category`` whose findings named ``found``."""
    out = list(dict.fromkeys(str(m) for m in found))
    if not out:
        out = list(ENTERPRISE.get(category, ()))
    if ics:
        out += [m for m in ICS.get(category, ()) if m not in out]
    return out
