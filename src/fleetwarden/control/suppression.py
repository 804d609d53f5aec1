"""Suppression and allowlists: which findings a maintenance window or an approved exception explains.

Contract
    A :class:`Rule` is either

    * a **maintenance window** (``kind="maintenance"``): planned work on a device, a site or a
      device class between ``starts_at`` and ``expires_at``; a finding that *began* inside the
      window is explained, and stays explained after the window ends (the work was planned).
      Identity and integrity findings (:data:`NEVER_MAINTENANCE`: firmware tampering, a cloned
      device, credential misuse) are never explained by maintenance: work does not clone devices;
    * an **exception** (``kind="exception"``): an analyst-approved allowlist entry for a device or
      a cohort (site, device class) × a category × a destination (an address, a network in CIDR
      notation or a domain), with a reason and an expiry; it explains a matching finding of any
      time while it is in force (``now < expires_at``).  Once it expires, the findings count again.

    Every field given must match (device id, site and class exactly, case-insensitive for the
    class; the category exactly; the destination one of the finding's counterparts); a rule must
    name at least one of device, site, class or destination, so no rule silences the whole fleet.
    :func:`suppressing` returns the first rule (lowest id) that explains a finding.  Pure: rules,
    a finding, what the inventory knows of its device and ``now`` in, a rule out.

    :func:`check_rule` validates an analyst's input (bounded fields, a known category and kind,
    an expiry after the start and in the future, a parseable destination) and raises
    :class:`SuppressionError` (an ``InputError``: one line, exit 2) naming what was wrong.

Blind spots
    A destination matches only what the finding names (``peer``, ``destination(s)``, ``target``,
    ``domain`` attributes): a finding that names no counterpart (a firmware report) is matched by
    device, cohort and category alone.  A maintenance window covers the finding's start only: a
    flood that began one minute before the window opened is not explained.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetwarden.core.context import DeviceInfo
from fleetwarden.core.errors import InputError
from fleetwarden.core.findings import CATEGORIES, Finding

__all__ = [
    "KINDS",
    "MAX_DURATION",
    "NEVER_MAINTENANCE",
    "Rule",
    "SuppressionError",
    "check_rule",
    "matches",
    "parse_time",
    "suppressing",
]

KINDS = ("maintenance", "exception")
NEVER_MAINTENANCE = frozenset({"firmware-tamper", "cloned-device", "credential-misuse"})
MAX_DURATION = 366 * 86400.0  # no rule lasts longer than a year: exceptions are reviewed
LIMITS = {
    "device_id": 200,
    "site": 200,
    "device_class": 100,
    "destination": 253,
    "reason": 1000,
    "actor": 200,
}
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SuppressionError(InputError):
    """A suppression rule refused: the message names the field and what was wrong."""


@dataclass(frozen=True)
class Rule:
    """One suppression rule as the matcher needs it (a row of the store's ``suppressions`` table)."""

    id: int
    kind: str
    expires_at: float
    reason: str = ""
    device_id: str | None = None
    site: str | None = None
    device_class: str | None = None
    category: str | None = None
    destination: str | None = None
    starts_at: float | None = None

    @property
    def label(self) -> str:
        return f"rule #{self.id} ({self.kind}: {self.reason[:80]})"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rule:
        return cls(**{k: row.get(k) for k in cls.__dataclass_fields__ if k in row})


def _destination_matches(rule_dest: str, ends: Iterable[str]) -> bool:
    dest = rule_dest.lower()
    try:
        net = ipaddress.ip_network(dest, strict=False)
    except ValueError:
        net = None
    for end in ends:
        end = end.lower()
        if end == dest or (net is None and end.endswith("." + dest)):
            return True
        if net is not None:
            try:
                if ipaddress.ip_address(end) in net:
                    return True
            except ValueError:
                continue
    return False


def matches(
    rule: Rule, finding: Finding, info: DeviceInfo | None, now: float, ends: Sequence[str] = ()
) -> bool:
    """Whether ``rule`` explains ``finding`` at ``now`` (``ends``: the finding's counterparts)."""
    if rule.category is not None and rule.category != finding.category:
        return False
    if rule.device_id is not None and rule.device_id != (finding.device_id or finding.entity):
        return False
    if rule.site is not None and (info is None or info.site != rule.site):
        return False
    if rule.device_class is not None and (
        info is None or (info.device_class or "").lower() != rule.device_class.lower()
    ):
        return False
    if rule.destination is not None and not _destination_matches(rule.destination, ends):
        return False
    if rule.kind == "maintenance":
        if finding.category in NEVER_MAINTENANCE:
            return False
        start = rule.starts_at if rule.starts_at is not None else -math.inf
        return start <= finding.first_seen <= rule.expires_at
    return now < rule.expires_at and (rule.starts_at is None or now >= rule.starts_at)


def suppressing(
    rules: Sequence[Rule], finding: Finding, info: DeviceInfo | None, now: float, ends: Sequence[str] = ()
) -> Rule | None:
    """The first rule (lowest id) that explains ``finding``, or None."""
    for rule in sorted(rules, key=lambda r: r.id):
        if matches(rule, finding, info, now, ends):
            return rule
    return None


# ---------------------------------------------------------------------------- input

_RELATIVE = re.compile(r"^\+?(\d{1,6})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str | None, now: float, name: str = "time") -> float | None:
    """Epoch seconds from ISO 8601 (``2026-12-24T08:00Z``; no zone: UTC), a duration from ``now``
    (``+2h``, ``30m``, ``7d``) or epoch seconds; None for None or empty text."""
    if text is None or not str(text).strip():
        return None
    value = str(text).strip()
    if len(value) > 40:
        raise SuppressionError(
            f"{name}: {len(value)} characters, expected a time like 2026-12-24T08:00Z or +2h"
        )
    if m := _RELATIVE.match(value.lower()):
        return now + int(m[1]) * _UNIT[m[2]]
    try:
        return float(value) if re.fullmatch(r"\d{9,11}(\.\d+)?", value) else _iso(value)
    except ValueError:
        raise SuppressionError(
            f"{name}: {value!r} is not a time (ISO 8601 like 2026-12-24T08:00Z, or +2h, 7d)"
        ) from None


def _iso(value: str) -> float:
    t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise SuppressionError(f"{name}: expected text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > LIMITS[name]:
        raise SuppressionError(f"{name}: {len(value)} characters, at most {LIMITS[name]}")
    if _CONTROL.search(value):
        raise SuppressionError(f"{name}: control characters are not allowed")
    return value


def _destination(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return (
            str(ipaddress.ip_network(value, strict=False))
            if "/" in value
            else str(ipaddress.ip_address(value))
        )
    except ValueError:
        pass
    if _DOMAIN.match(value.lower()):
        return value.lower()
    raise SuppressionError(
        f"destination: {value[:60]!r} is not an IP address, a CIDR network or a domain name"
    )


def _times(fields: Mapping[str, Any], kind: str, now: float) -> tuple[float | None, float]:
    starts, expires = fields.get("starts_at"), fields.get("expires_at")
    for name, v in (("starts_at", starts), ("expires_at", expires)):
        if v is not None and (not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
            raise SuppressionError(f"{name}: expected epoch seconds, got {v!r}"[:120])
    if expires is None:
        raise SuppressionError("expires: every suppression needs an expiry (--expires)")
    if kind == "maintenance" and starts is None:
        raise SuppressionError("starts: a maintenance window needs a start (--starts)")
    if starts is not None and expires <= starts:
        raise SuppressionError("expires: the expiry must come after the start")
    if kind == "exception" and expires <= now:
        raise SuppressionError("expires: the expiry is in the past")
    if expires - (starts if starts is not None else now) > MAX_DURATION:
        raise SuppressionError(f"expires: at most {MAX_DURATION / 86400:.0f} days after the start")
    return (float(starts) if starts is not None else None), float(expires)


def check_rule(fields: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Validated column values for a new rule (see the module docstring); raises SuppressionError."""
    kind = fields.get("kind")
    if kind not in KINDS:
        raise SuppressionError(f"kind: {str(kind)[:40]!r}, expected one of {', '.join(KINDS)}")
    category = fields.get("category") or None
    if category is not None and category not in CATEGORIES:
        raise SuppressionError(f"category: {str(category)[:60]!r}, expected one of {', '.join(CATEGORIES)}")
    out: dict[str, Any] = {"kind": kind, "category": category}
    for name in ("device_id", "site", "device_class", "destination"):
        out[name] = _text(fields, name)
    out["destination"] = _destination(out["destination"])
    if not any(out[n] for n in ("device_id", "site", "device_class", "destination")):
        raise SuppressionError("a suppression must name a device, a site, a device class or a destination")
    reason = _text(fields, "reason")
    if reason is None:
        raise SuppressionError("reason: every suppression needs a reason (--reason)")
    out["reason"] = reason
    out["starts_at"], out["expires_at"] = _times(fields, kind, now)
    return out
