"""Identity audit checks, as AWS IoT Device Defender's audit runs them, and a few more: pure rows
in (certificates, devices, operators, observed broker connections), findings out.

Each check has an id, a severity, the entities it found and one fix sentence:

=================================  ========  ====================================================
check                              severity  what it finds
=================================  ========  ====================================================
CERTIFICATE_SHARED                 critical  one certificate fingerprint recorded for several devices
CERTIFICATE_SEEN_TWICE             critical  one identity connected from two addresses at once
CONFLICTING_CLIENT_IDS             high      one client id used by several identities, or taken over
REVOKED_STILL_CONNECTING           critical  a device connected after its certificate was revoked
CERTIFICATE_EXPIRING               medium    an active certificate ending within 30 days
CERTIFICATE_AGED                   low       an active certificate older than one year
WEAK_KEY                           high      RSA under 2048 bits, EC under 256 bits
DEFAULT_CREDENTIALS                high      a device marked ``default_credentials``, or a broker
                                             login with a well-known default user name
SHARED_CREDENTIALS                 high      one credential (``credential_id``) on several devices
OPERATOR_TOO_MANY_ADMINS           medium    more than ``max_admins`` enabled admins
OPERATOR_ADMIN_UNUSED              medium    an admin token unused for 90 days (or never)
OPERATOR_SERVICE_PRIVILEGED        high      a service account (name ``svc-``/``service``…) whose
                                             role is not ``service``
=================================  ========  ====================================================

*Contract.* Rows are plain dicts (the store's ``to_dict``): certificates with ``device_id``,
``fingerprint``, ``status``, ``key_type``, ``key_size``, ``not_before``, ``not_after``, ``revoked_at``;
devices with ``device_id`` and ``attributes``/``extra``; operators with ``name``, ``role``,
``disabled``, ``created_at``, ``last_used_at``; connections are ``auth`` records (dicts) of a broker
log (:mod:`fleetwarden.sources.mosquitto`).  ``now`` is epoch seconds.

*Blind spots.* Only what the store and the given logs saw: a certificate copied to a second device
that never connected while the first was online is invisible; default user names are a short list.

*Reference.* AWS IoT Device Defender audit checks (DEVICE_CERTIFICATE_SHARED_CHECK,
CONFLICTING_CLIENT_IDS_CHECK, DEVICE_CERTIFICATE_EXPIRING_CHECK, DEVICE_CERTIFICATE_AGE_CHECK,
DEVICE_CERTIFICATE_KEY_QUALITY_CHECK, REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK); NIST SP
800-57 Part 1 (key sizes); NISTIR 8259A (no universal default passwords); ETSI EN 303 645 §5.1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_USERS", "AuditCheck", "audit_identity"]

DAY = 86_400.0
# Well-known factory user names (Mirai's credential list, vendor defaults); bounded, lower case.
DEFAULT_USERS = frozenset(
    {"admin", "root", "user", "guest", "default", "support", "ubnt", "pi", "mqtt", "test", "operator", "service"}
)
SERVICE_NAMES = ("svc-", "svc_", "service", "bot-", "ci-")
MAX_ENTITIES = 50  # entities listed per check; the count says how many in all


@dataclass
class AuditCheck:
    check: str
    severity: str
    entities: list[str]
    found: str
    fix: str
    count: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(check: str, severity: str, entities: Iterable[str], found: str, fix: str) -> AuditCheck | None:
    names = sorted({str(e) for e in entities})
    if not names:
        return None
    return AuditCheck(check, severity, names[:MAX_ENTITIES], found, fix, count=len(names))


def audit_identity(
    certificates: list[Mapping[str, Any]],
    devices: list[Mapping[str, Any]],
    operators: list[Mapping[str, Any]],
    connections: list[Mapping[str, Any]],
    *,
    now: float,
    max_admins: int = 2,
) -> list[AuditCheck]:
    """Every check over the rows; checks that found nothing are left out.  Most severe first."""
    found = [
        _shared_certificates(certificates),
        _seen_twice(connections),
        _client_id_conflicts(connections),
        _revoked_connecting(certificates, connections),
        _expiring(certificates, now),
        _aged(certificates, now),
        _weak_keys(certificates),
        _default_credentials(devices, connections),
        _shared_credentials(devices),
        *_operators(operators, now, max_admins),
    ]
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    return sorted((c for c in found if c is not None), key=lambda c: (order[c.severity], c.check))


def _active(certs: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in certs if c.get("status") == "active"]


def _shared_certificates(certs: list[Mapping[str, Any]]) -> AuditCheck | None:
    owners: dict[str, set[str]] = defaultdict(set)
    for c in certs:
        owners[str(c.get("fingerprint"))].add(str(c.get("device_id")))
    shared = [d for fp, ds in owners.items() if len(ds) > 1 for d in ds]
    return _check("CERTIFICATE_SHARED", "critical", shared, "one certificate is recorded for several devices",
                  "issue each device its own certificate (fleetwarden ca rotate) and revoke the shared one")  # fmt: skip


def _sessions(connections: list[Mapping[str, Any]]) -> list[tuple[str, str, str, float, float]]:
    """(user, client id, address, start, end) per broker session; end inf while open."""
    open_: dict[str, tuple[str, str, float]] = {}
    out: list[tuple[str, str, str, float, float]] = []
    for r in sorted(connections, key=lambda r: float(r.get("ts") or 0)):
        cid, act = r.get("client_id"), r.get("action")
        if not cid:
            continue
        if act == "login" and r.get("success"):
            open_[cid] = (str(r.get("user")), str(r.get("src_ip") or ""), float(r["ts"]))
        elif act in ("disconnect", "conflict") and cid in open_:
            user, ip, start = open_.pop(cid)
            out.append((user, cid, ip, start, float(r["ts"])))
    out += [(u, cid, ip, start, float("inf")) for cid, (u, ip, start) in open_.items()]
    return out


def _seen_twice(connections: list[Mapping[str, Any]]) -> AuditCheck | None:
    by_user: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for user, _cid, ip, start, end in _sessions(connections):
        by_user[user].append((ip, start, end))
    twice = [
        u for u, ss in by_user.items()
        if any(a[0] != b[0] and a[0] and b[0] and a[1] < b[2] and b[1] < a[2] for i, a in enumerate(ss) for b in ss[i + 1:])
    ]  # fmt: skip
    return _check("CERTIFICATE_SEEN_TWICE", "critical", twice,
                  "one identity was connected from two addresses at the same time (a cloned certificate)",
                  "revoke the identity's certificate, re-provision the genuine device, find the clone")  # fmt: skip


def _client_id_conflicts(connections: list[Mapping[str, Any]]) -> AuditCheck | None:
    users: dict[str, set[str]] = defaultdict(set)
    taken: set[str] = set()
    for r in connections:
        cid = r.get("client_id")
        if not cid:
            continue
        if r.get("action") == "login" and r.get("success"):
            users[cid].add(str(r.get("user")))
        elif r.get("action") == "conflict":
            taken.add(cid)
    conflicts = {c for c, us in users.items() if len(us) > 1} | taken
    return _check("CONFLICTING_CLIENT_IDS", "high", conflicts,
                  "client ids used by several identities or taken over while connected",
                  "give every device a unique client id equal to its device id, and look for a clone")  # fmt: skip


def _revoked_connecting(certs: list[Mapping[str, Any]], connections: list[Mapping[str, Any]]) -> AuditCheck | None:
    revoked_at: dict[str, float] = {}
    active = {str(c.get("device_id")) for c in _active(certs)}
    for c in certs:
        if c.get("status") == "revoked" and c.get("revoked_at") is not None and str(c.get("device_id")) not in active:
            d = str(c.get("device_id"))
            revoked_at[d] = min(revoked_at.get(d, float("inf")), float(c["revoked_at"]))
    late = [
        str(r.get("user")) for r in connections
        if r.get("action") == "login" and r.get("success") and str(r.get("user")) in revoked_at
        and float(r.get("ts") or 0) > revoked_at[str(r.get("user"))]
    ]  # fmt: skip
    return _check("REVOKED_STILL_CONNECTING", "critical", late,
                  "devices connected to the broker after their certificate was revoked",
                  "publish a new CRL (fleetwarden ca crl) and reload the broker so it refuses them")  # fmt: skip


def _expiring(certs: list[Mapping[str, Any]], now: float) -> AuditCheck | None:
    soon = [c["device_id"] for c in _active(certs) if float(c.get("not_after") or 0) - now < 30 * DAY]
    return _check("CERTIFICATE_EXPIRING", "medium", soon, "active certificates that end within 30 days (or ended)",
                  "rotate them (fleetwarden ca rotate DEVICE_ID) before they expire")  # fmt: skip


def _aged(certs: list[Mapping[str, Any]], now: float) -> AuditCheck | None:
    old = [c["device_id"] for c in _active(certs) if now - float(c.get("not_before") or now) > 365 * DAY]
    return _check("CERTIFICATE_AGED", "low", old, "active certificates older than one year",
                  "rotate long-lived device keys yearly (fleetwarden ca rotate DEVICE_ID)")  # fmt: skip


def _weak_keys(certs: list[Mapping[str, Any]]) -> AuditCheck | None:
    def weak(c: Mapping[str, Any]) -> bool:
        kind, size = str(c.get("key_type") or "").lower(), int(c.get("key_size") or 0)
        if kind.startswith("rsa"):
            return size < 2048
        if kind.startswith("ed"):
            return False
        return size < 256

    return _check("WEAK_KEY", "high", [c["device_id"] for c in _active(certs) if weak(c)],
                  "certificates with weak keys (RSA < 2048 bits, EC < 256 bits)",
                  "re-key the devices with ECDSA P-256 or Ed25519 and revoke the weak certificates")  # fmt: skip


def _attributes(device: Mapping[str, Any]) -> Mapping[str, Any]:
    attrs = device.get("attributes") or device.get("extra") or {}
    return attrs if isinstance(attrs, Mapping) else {}


def _default_credentials(devices: list[Mapping[str, Any]], connections: list[Mapping[str, Any]]) -> AuditCheck | None:
    marked = [str(d.get("device_id")) for d in devices if _attributes(d).get("default_credentials") is True]
    logins = [
        f"{r.get('user')}@{r.get('src_ip') or '?'}" for r in connections
        if r.get("success") and r.get("action") in (None, "login") and str(r.get("user", "")).lower() in DEFAULT_USERS
    ]  # fmt: skip
    return _check("DEFAULT_CREDENTIALS", "high", marked + logins,
                  "devices with factory credentials, or logins with a well-known default user name",
                  "replace default credentials with a per-device certificate; disable password logins")  # fmt: skip


def _shared_credentials(devices: list[Mapping[str, Any]]) -> AuditCheck | None:
    holders: dict[str, set[str]] = defaultdict(set)
    for d in devices:
        cred = _attributes(d).get("credential_id")
        if isinstance(cred, str) and cred:
            holders[cred[:128]].add(str(d.get("device_id")))
    shared = [d for ds in holders.values() if len(ds) > 1 for d in ds]
    return _check("SHARED_CREDENTIALS", "high", shared, "one credential configured on several devices",
                  "give every device its own credential (a certificate per device)")  # fmt: skip


def _operators(operators: list[Mapping[str, Any]], now: float, max_admins: int) -> list[AuditCheck | None]:
    enabled = [o for o in operators if not o.get("disabled")]
    admins = [str(o["name"]) for o in enabled if o.get("role") == "admin"]
    too_many = admins if len(admins) > max_admins else []
    unused = [
        str(o["name"]) for o in enabled if o.get("role") == "admin"
        and now - float(o.get("last_used_at") or o.get("created_at") or now) > 90 * DAY
    ]  # fmt: skip
    service = [
        str(o["name"]) for o in enabled
        if str(o["name"]).lower().startswith(SERVICE_NAMES) and o.get("role") != "service"
    ]  # fmt: skip
    return [
        _check("OPERATOR_TOO_MANY_ADMINS", "medium", too_many, f"{len(admins)} enabled admins (at most {max_admins})",
               "give people the least role they need (operator, analyst, viewer)"),
        _check("OPERATOR_ADMIN_UNUSED", "medium", unused, "admin tokens unused for 90 days",
               "disable unused admin accounts (fleetwarden users disable NAME)"),
        _check("OPERATOR_SERVICE_PRIVILEGED", "high", service, "service accounts with a non-service role",
               "give service accounts the service role only"),
    ]  # fmt: skip
