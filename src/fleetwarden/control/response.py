"""Graduated response, pure: the policy (data), the decision per incident, the approval rule, the
playbooks, and the texts the adapters send (dynsec quarantine commands, the nftables rule set).

*Contract.* :func:`parse_policy` reads the policy TOML (``response_policy.toml`` in this package;
an override's top-level keys replace the packaged ones) and names the first wrong field.
:func:`decide` maps one incident and its device onto :class:`ProposedAction`\\ s: the first rule
whose conditions hold fires (risk, severity, category, device criticality, device class), and
every action says which rule fired and why.  A *disruptive* action (quarantine, restrict, revoke,
disable-account) on a device whose criticality is in ``approval_criticality`` or whose class is
safety-critical (medical, controller/PLC) ALWAYS needs a human approval, whatever the rule says; a
revocation always does (it cannot be undone).  In ``observe`` mode nothing executes.  An approval
is valid for ``approval_ttl_hours`` (:func:`approval_expired`).

*Blind spots.* The policy sees one incident at a time (no fleet-wide rate limit on containment);
the nftables text isolates addresses the inventory knows: a device that changes its address
escapes until the inventory follows.

*Reference.* NIST SP 800-61r2 (containment strategies, §3.3.1); NIST SP 800-82r3 (safety of OT
containment: a human decides); nftables wiki (``inet`` family, atomic rule-set replacement).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetwarden.core.errors import InputError

__all__ = [
    "ACTIONS",
    "DISRUPTIVE",
    "IRREVERSIBLE",
    "NftEntry",
    "Policy",
    "PolicyError",
    "ProposedAction",
    "Rule",
    "approval_expired",
    "decide",
    "dynsec_disable",
    "dynsec_enable",
    "dynsec_quarantine",
    "dynsec_release",
    "nft_ruleset",
    "parse_playbooks",
    "parse_policy",
    "playbook_for",
]

ACTIONS = ("alert", "ticket", "restrict", "quarantine", "revoke", "disable-account")
DISRUPTIVE = frozenset({"restrict", "quarantine", "revoke", "disable-account"})
IRREVERSIBLE = frozenset({"revoke"})
MODES = ("observe", "enforce")
SEVERITIES = ("low", "medium", "high", "critical")
CRITICALITIES = ("low", "medium", "high", "critical", "unknown")
PLAYBOOK_CLASSES = ("camera", "controller", "medical", "pos", "sensor", "gateway", "default")
ESCALATION = ("security", "operations", "engineering", "vendor")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_WORD = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MAX_RULES = 200
_MAX_TEXT = 1 << 20


class PolicyError(InputError):
    """A response policy or playbook file that is not valid: names the field and what was wrong."""


@dataclass(frozen=True)
class Rule:
    name: str
    actions: tuple[str, ...]
    min_risk: int = 0
    min_severity: str | None = None
    categories: tuple[str, ...] = ()
    criticality: tuple[str, ...] = ()
    device_classes: tuple[str, ...] = ()
    require_approval: bool = False


@dataclass(frozen=True)
class Policy:
    version: int
    mode: str
    approval_ttl_hours: float
    approval_criticality: tuple[str, ...]
    safety_critical_classes: tuple[str, ...]
    rules: tuple[Rule, ...]

    @property
    def approval_ttl_seconds(self) -> float:
        return self.approval_ttl_hours * 3600.0


@dataclass(frozen=True)
class ProposedAction:
    """One action the policy proposes for an incident, with the rule that fired and why."""

    kind: str
    incident_id: int | None
    device_id: str | None
    rule: str
    reason: str
    needs_approval: bool
    approval_reason: str
    disruptive: bool
    reversible: bool
    may_execute: bool  # enforce mode and no approval needed: `actions execute` may run it at once
    proposed_at: float = 0.0
    expires_after: float = 0.0  # seconds an approval stays valid
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


# ---------------------------------------------------------------------------------- policy parsing


def _load_toml(text: str | bytes, what: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        if len(text) > _MAX_TEXT:
            raise PolicyError(f"{what}: larger than {_MAX_TEXT} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{what}: not UTF-8 ({exc.reason})") from None
    if len(text) > _MAX_TEXT:
        raise PolicyError(f"{what}: larger than {_MAX_TEXT} characters")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{what}: not valid TOML ({exc})") from None


def _words(value: Any, where: str, allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 100:
        raise PolicyError(f"{where}: expected a list of at most 100 names")
    out = []
    for v in value:
        if not isinstance(v, str) or not _WORD.match(v):
            raise PolicyError(f"{where}: bad name {str(v)[:40]!r} (lower-case letters, digits, - and _)")
        if allowed is not None and v not in allowed:
            raise PolicyError(f"{where}: unknown value {v!r}; expected one of {', '.join(allowed)}")
        out.append(v)
    return tuple(out)


def _rule(raw: Any, index: int) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a table")
    unknown = set(raw) - {f for f in Rule.__dataclass_fields__}
    if unknown:
        raise PolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _WORD.match(name):
        raise PolicyError(f"{where}.name: expected a short name (lower-case letters, digits, - and _)")
    where = f"rule {name!r}"
    actions = _words(raw.get("actions"), f"{where}.actions", ACTIONS)
    if not actions:
        raise PolicyError(f"{where}.actions: at least one action")
    min_risk = raw.get("min_risk", 0)
    if not isinstance(min_risk, int) or isinstance(min_risk, bool) or not 0 <= min_risk <= 100:
        raise PolicyError(f"{where}.min_risk: expected an integer 0-100")
    severity = raw.get("min_severity")
    if severity is not None and severity not in SEVERITIES:
        raise PolicyError(f"{where}.min_severity: expected one of {', '.join(SEVERITIES)}")
    approval = raw.get("require_approval", False)
    if not isinstance(approval, bool):
        raise PolicyError(f"{where}.require_approval: expected true or false")
    return Rule(
        name=name, actions=actions, min_risk=min_risk, min_severity=severity,
        categories=_words(raw.get("categories", []), f"{where}.categories"),
        criticality=_words(raw.get("criticality", []), f"{where}.criticality", CRITICALITIES),
        device_classes=_words(raw.get("device_classes", []), f"{where}.device_classes"),
        require_approval=approval,
    )  # fmt: skip


def parse_policy(text: str | bytes, override: str | bytes | None = None, *, what: str = "policy") -> Policy:
    """The policy of ``text`` (the packaged TOML), with ``override``'s top-level keys replacing it.
    Raises :class:`PolicyError` naming the first wrong field."""
    data = _load_toml(text, what)
    if override is not None:
        data = {**data, **_load_toml(override, f"{what} override")}
    known = {
        "version",
        "mode",
        "approval_ttl_hours",
        "approval_criticality",
        "safety_critical_classes",
        "rules",
    }
    unknown = set(data) - known
    if unknown:
        raise PolicyError(f"{what}: unknown field {sorted(unknown)[0]!r}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PolicyError(f"{what}.version: expected a positive integer")
    mode = data.get("mode", "observe")
    if mode not in MODES:
        raise PolicyError(f"{what}.mode: expected 'observe' or 'enforce', got {str(mode)[:20]!r}")
    ttl = data.get("approval_ttl_hours", 4.0)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl <= 24 * 30:
        raise PolicyError(f"{what}.approval_ttl_hours: expected a number of hours in (0, 720]")
    rules = data.get("rules", [])
    if not isinstance(rules, list) or not 1 <= len(rules) <= _MAX_RULES:
        raise PolicyError(f"{what}.rules: expected 1 to {_MAX_RULES} [[rules]] tables")
    parsed = tuple(_rule(r, i) for i, r in enumerate(rules))
    names = [r.name for r in parsed]
    if len(set(names)) != len(names):
        raise PolicyError(
            f"{what}.rules: duplicate rule name {next(n for n in names if names.count(n) > 1)!r}"
        )
    return Policy(
        version=version, mode=mode, approval_ttl_hours=float(ttl),
        approval_criticality=_words(data.get("approval_criticality", ["critical"]), f"{what}.approval_criticality", CRITICALITIES),
        safety_critical_classes=_words(data.get("safety_critical_classes", []), f"{what}.safety_critical_classes"),
        rules=parsed,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- decisions


def _norm(value: Any) -> str:
    return str(value or "").strip().lower()


def _criticality(device: Mapping[str, Any] | None) -> str:
    c = _norm((device or {}).get("criticality"))
    return c if c in CRITICALITIES else "unknown"


def _matches(rule: Rule, incident: Mapping[str, Any], device: Mapping[str, Any] | None) -> str | None:
    """Why ``rule`` fires for ``incident`` (a sentence), or None when a condition fails."""
    risk = int(incident.get("risk") or 0)
    severity = _norm(incident.get("severity"))
    category = _norm(incident.get("category"))
    crit, dclass = _criticality(device), _norm((device or {}).get("device_class"))
    if risk < rule.min_risk:
        return None
    if rule.min_severity and (
        severity not in SEVERITIES or SEVERITIES.index(severity) < SEVERITIES.index(rule.min_severity)
    ):
        return None
    if rule.categories and category not in rule.categories:
        return None
    if rule.criticality and crit not in rule.criticality:
        return None
    if rule.device_classes and dclass not in rule.device_classes:
        return None
    return f"risk {risk} >= {rule.min_risk}, category {category or '-'}, severity {severity or '-'}, criticality {crit}, class {dclass or '-'}"


def _approval(kind: str, rule: Rule, policy: Policy, device: Mapping[str, Any] | None) -> str:
    """Why ``kind`` needs a human approval ('' when it does not)."""
    if kind in IRREVERSIBLE:
        return "irreversible: a revoked certificate cannot be restored"
    if kind in DISRUPTIVE:
        crit, dclass = _criticality(device), _norm((device or {}).get("device_class"))
        if crit in policy.approval_criticality:
            return f"disruptive action on a {crit}-criticality device"
        if dclass and dclass in policy.safety_critical_classes:
            return f"disruptive action on a safety-critical device class ({dclass})"
        if device is None:
            return "disruptive action on a device missing from the inventory"
    if rule.require_approval:
        return f"rule {rule.name!r} requires approval"
    return ""


def decide(
    incident: Mapping[str, Any], device: Mapping[str, Any] | None, policy: Policy, now: float
) -> list[ProposedAction]:
    """The actions ``policy`` proposes for ``incident`` (a mapping with ``id``, ``risk``,
    ``severity``, ``category``, ``device_id``/``entity``) on ``device`` (an inventory row as a
    mapping, or None when unknown): those of the first rule that fires, or none."""
    device_id = (device or {}).get("device_id") or incident.get("device_id") or incident.get("entity")
    for rule in policy.rules:
        why = _matches(rule, incident, device)
        if why is None:
            continue
        out = []
        for kind in rule.actions:
            approval = _approval(kind, rule, policy, device)
            out.append(ProposedAction(
                kind=kind, incident_id=incident.get("id"), device_id=device_id, rule=rule.name,
                reason=f"rule {rule.name!r} fired: {why}", needs_approval=bool(approval),
                approval_reason=approval, disruptive=kind in DISRUPTIVE, reversible=kind not in IRREVERSIBLE,
                may_execute=policy.mode == "enforce" and not approval, proposed_at=float(now),
                expires_after=policy.approval_ttl_seconds,
                notes=() if policy.mode == "enforce" else ("observe mode: proposed only, never executed",),
            ))  # fmt: skip
        return out
    return []


def approval_expired(approved_at: float | None, ttl_seconds: float, now: float) -> bool:
    """True when an approval given at ``approved_at`` is older than ``ttl_seconds`` (or missing)."""
    return approved_at is None or now > float(approved_at) + float(ttl_seconds)


# ---------------------------------------------------------------------------------- playbooks


def _playbook(name: str, raw: Any) -> dict[str, Any]:
    where = f"playbooks.{name}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a table")
    steps = raw.get("containment")
    if (
        not isinstance(steps, list)
        or not 1 <= len(steps) <= 50
        or not all(isinstance(s, str) and 0 < len(s) <= 500 for s in steps)
    ):
        raise PolicyError(f"{where}.containment: expected 1-50 steps (text, at most 500 characters)")
    owners = raw.get("owners")
    if (
        not isinstance(owners, dict)
        or set(owners) - set(ESCALATION)
        or not all(isinstance(v, str) and len(v) <= 200 for v in owners.values())
    ):
        raise PolicyError(f"{where}.owners: expected a table of {', '.join(ESCALATION)} -> text")
    chain = _words(raw.get("escalation", list(ESCALATION)), f"{where}.escalation", ESCALATION)
    return {"class": name, "containment": list(steps), "owners": dict(owners), "escalation": list(chain)}


def parse_playbooks(text: str | bytes, *, what: str = "playbooks") -> dict[str, Any]:
    """The playbooks of ``text``: ``version`` and one table per device class (``default``
    required).  Raises :class:`PolicyError` naming the wrong field."""
    data = _load_toml(text, what)
    version = data.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 40:
        raise PolicyError(f"{what}.version: expected a version string")
    raw = data.get("playbooks")
    if not isinstance(raw, dict) or "default" not in raw:
        raise PolicyError(f"{what}.playbooks: expected tables per device class, 'default' included")
    unknown = set(raw) - set(PLAYBOOK_CLASSES)
    if unknown:
        raise PolicyError(f"{what}.playbooks: unknown device class {sorted(unknown)[0]!r}")
    return {"version": version, "playbooks": {k: _playbook(k, v) for k, v in raw.items()}}


_CLASS_ALIASES = {
    "plc": "controller",
    "ics": "controller",
    "hmi": "controller",
    "ipcam": "camera",
    "pos-terminal": "pos",
}


def playbook_for(device_class: str | None, playbooks: Mapping[str, Any]) -> dict[str, Any]:
    """The playbook of ``device_class`` (aliases: plc → controller…), else ``default``; with the
    playbooks' version."""
    name = _norm(device_class)
    name = _CLASS_ALIASES.get(name, name)
    book = playbooks["playbooks"].get(name) or playbooks["playbooks"]["default"]
    return {**book, "version": playbooks["version"]}


# ---------------------------------------------------------------------------------- adapter texts


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(f"bad device id {str(name)[:60]!r}: letters, digits and ._:@- only, at most 128")
    return name


def quarantine_role(device_id: str) -> str:
    return f"quarantine:{_check_name(device_id)}"


def dynsec_quarantine(device_id: str, prefix: str) -> list[dict]:
    """Dynsec commands replacing the device's own-topic role by a quarantine role that allows
    nothing but its status topic ``<prefix>/<id>/status`` (the broker applies it at the next
    publish).  "already exists" for the role is expected on a second quarantine."""
    role = quarantine_role(device_id)
    acl = {
        "acltype": "publishClientSend",
        "topic": f"{prefix}/{device_id}/status",
        "priority": 0,
        "allow": True,
    }
    return [
        {"command": "createRole", "rolename": role, "acls": [acl]},
        {"command": "addClientRole", "username": device_id, "rolename": role, "priority": 10},
        {"command": "removeClientRole", "username": device_id, "rolename": f"device:{device_id}"},
    ]


def dynsec_release(device_id: str) -> list[dict]:
    """The undo of :func:`dynsec_quarantine`: the own-topic role back, the quarantine role off."""
    role = quarantine_role(device_id)
    return [
        {"command": "addClientRole", "username": device_id, "rolename": f"device:{device_id}"},
        {"command": "removeClientRole", "username": device_id, "rolename": role},
    ]


def dynsec_disable(device_id: str) -> list[dict]:
    """Dynsec commands disabling the device's account: the client is disabled (password logins
    refused) and loses its own-topic role (a certificate login, which the plugin does not
    authenticate, may then publish nothing)."""
    return [
        {"command": "disableClient", "username": _check_name(device_id)},
        {"command": "removeClientRole", "username": device_id, "rolename": f"device:{device_id}"},
    ]


def dynsec_enable(device_id: str) -> list[dict]:
    """The undo of :func:`dynsec_disable`."""
    return [
        {"command": "enableClient", "username": _check_name(device_id)},
        {"command": "addClientRole", "username": device_id, "rolename": f"device:{device_id}"},
    ]


@dataclass(frozen=True)
class NftEntry:
    """One contained device: ``isolate`` (drop everything to and from its addresses) or
    ``restrict`` (it may only reach ``allowed``: addresses or networks)."""

    device_id: str
    mode: str
    addresses: tuple[str, ...]
    allowed: tuple[str, ...] = ()


def _split(values: Iterable[str], what: str) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for v in values:
        try:
            net = ipaddress.ip_network(str(v).strip(), strict=False)
        except ValueError:
            raise PolicyError(f"{what}: bad address {str(v)[:60]!r}") from None
        (v4 if net.version == 4 else v6).append(
            str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        )
    return v4, v6


def _entry_rules(e: NftEntry) -> list[str]:
    _check_name(e.device_id)
    if e.mode not in ("isolate", "restrict"):
        raise PolicyError(f"nftables entry {e.device_id}: mode must be isolate or restrict")
    if not e.addresses or len(e.addresses) > 64 or len(e.allowed) > 256:
        raise PolicyError(
            f"nftables entry {e.device_id}: 1-64 addresses and at most 256 allowed destinations"
        )
    tag = f'comment "fleetwarden {e.mode} {e.device_id}"'
    own = dict(zip(("ip", "ip6"), _split(e.addresses, e.device_id), strict=True))
    allow = dict(zip(("ip", "ip6"), _split(e.allowed, f"{e.device_id} allowed_destinations"), strict=True))
    rules = []
    for fam, addrs in own.items():
        if not addrs:
            continue
        mine = "{ " + ", ".join(addrs) + " }"
        if e.mode == "isolate":
            rules += [f"{fam} saddr {mine} drop {tag}", f"{fam} daddr {mine} drop {tag}"]
            continue
        if allow[fam]:
            rules.append(f"{fam} saddr {mine} {fam} daddr {{ {', '.join(allow[fam])} }} accept {tag}")
        rules += [
            f"{fam} saddr {mine} ct state established,related accept {tag}",
            f"{fam} saddr {mine} drop {tag}",
        ]
    return rules


def nft_ruleset(entries: Iterable[NftEntry]) -> str:
    """The whole ``inet fleetwarden`` table for the contained devices, as an ``nft -f`` file that
    replaces the table atomically (create-if-missing, delete, re-create); with no entry it only
    removes the table.  Undoing one device's containment is this text without its entry."""
    lines = [
        "# FleetWarden containment (generated; replaced as a whole)",
        "table inet fleetwarden {}",
        "delete table inet fleetwarden",
    ]
    rules = [r for e in sorted(entries, key=lambda e: e.device_id) for r in _entry_rules(e)]
    if not rules:
        return "\n".join(lines) + "\n"
    lines.append("table inet fleetwarden {")
    for hook in ("forward", "input", "output"):
        lines.append(f"\tchain {hook} {{")
        lines.append(f"\t\ttype filter hook {hook} priority filter; policy accept;")
        lines += [f"\t\t{r}" for r in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"
