"""The vendor register: vendor file rows in, cleaned rows and a vendor risk score out.

A vendor file is a CSV with a header or a JSON list of objects with the columns of
:data:`VENDOR_COLUMNS` (``name`` required); like the inventory it is checked whole and refused
with every bad row named (:func:`read_vendors`).

:func:`vendor_risk` scores how much a vendor's *practices* add to the risk of its devices, 0
(best) to 100, with one reason per point-earning gap.  The rule, and why each weight:

==========================================  =====  ==================================================
gap                                          points why
==========================================  =====  ==================================================
no security contact                           15    nobody to send a flaw to (ETSI EN 303 645 5.2-1)
no vulnerability disclosure policy            15    flaws found by others are not handled in the open
                                                    (EN 303 645 5.2-1, ISO/IEC 29147)
patch cadence unknown / >180 / >90 / >30 d  15/20/10/5  exposure window after a disclosure; 30 days is
                                                    the usual target for critical fixes
hard-coded credentials supported              25    cannot be changed by the operator (CWE-798):
                                                    one leak opens every device
default passwords                             15    universal defaults are what Mirai-style worms
                                                    try first (EN 303 645 5.1-1)
no certificate authentication                  5    device identity rests on shared secrets
no multi-factor authentication                 5    an operator password alone opens the device
authentication support unknown                15    instead of the four above: unknown is not safe
support period unknown                        10    end of patches cannot be planned (5.3-13)
support ended / ends within a year          20/10   devices run without fixes
support commitment under 3 years               5    shorter than a typical deployment
==========================================  =====  ==================================================

The sum is capped at 100.  A vendor missing from the register scores as one with every field
unknown (70), with that as its first reason: unknown practice is treated as poor practice so
that registering a vendor is what lowers the score.

Blind spots: the score reads declared practice, not track record (CVE history, actual patch
delays, breach history); it trusts what the register says; it does not weigh the device's own
end-of-support date or firmware age (the firmware registry does), nor how exposed a device is.
The pure function takes ``today`` so results never depend on a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from fleetwarden.control.inventory import (
    InventoryError,
    _attributes_of,
    _blank,
    _parse_table,
    _text_of,
    clean_date,
    read_text,
)

AUTH_METHODS = ("certificates", "mfa", "unique-password", "default-password", "hard-coded")
VENDOR_COLUMNS: dict[str, str] = {
    "name": "vendor name (required; devices name it in their vendor column)",
    "website": "web site",
    "security_contact": "where to report a vulnerability (e-mail or URL)",
    "disclosure_policy": "vulnerability disclosure policy: URL or text",
    "patch_cadence_days": "days between security patches (0-3650)",
    "auth_support": "authentication the products support, ';'-separated (JSON: a list): "
    + ", ".join(AUTH_METHODS),
    "support_years": "years of security support promised per product (0-100)",
    "support_until": "date security support ends, YYYY-MM-DD",
    "attributes": "JSON object of extra facts",
}
_LIMITS = {"name": 200, "website": 500, "security_contact": 500, "disclosure_policy": 2000}


@dataclass
class VendorRisk:
    """A vendor risk score (0-100) and the reasons that earned its points, largest first."""

    score: int
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "reasons": list(self.reasons)}


# ---------------------------------------------------------------------- the score


def vendor_risk(vendor: Mapping[str, Any] | None, *, today: date) -> VendorRisk:
    """Score ``vendor`` (a vendor row, or None for a vendor missing from the register)."""
    points: list[tuple[int, str]] = []
    if vendor is None:
        points.append((0, "vendor not in the vendor register: every practice unknown"))
        vendor = {}
    points += _contact_points(vendor)
    points += _patch_points(vendor.get("patch_cadence_days"))
    points += _auth_points(vendor.get("auth_support") or [])
    points += _support_points(vendor.get("support_years"), vendor.get("support_until"), today)
    score = min(100, sum(p for p, _ in points))
    ordered = sorted(points, key=lambda p: -p[0])
    return VendorRisk(score, [f"{reason} (+{p})" if p else reason for p, reason in ordered])


def _contact_points(v: Mapping[str, Any]) -> list[tuple[int, str]]:
    out = []
    if _blank(v.get("security_contact")):
        out.append((15, "no security contact"))
    if _blank(v.get("disclosure_policy")):
        out.append((15, "no vulnerability disclosure policy"))
    return out


def _patch_points(days: int | None) -> list[tuple[int, str]]:
    if days is None:
        return [(15, "patch cadence unknown")]
    for limit, p in ((180, 20), (90, 10), (30, 5)):
        if days > limit:
            return [(p, f"patches every {days} days (over {limit})")]
    return []


def _auth_points(methods: Iterable[str]) -> list[tuple[int, str]]:
    methods = set(methods)
    if not methods:
        return [(15, "authentication support unknown")]
    out = []
    if "hard-coded" in methods:
        out.append((25, "hard-coded credentials"))
    if "default-password" in methods:
        out.append((15, "default passwords"))
    if "certificates" not in methods:
        out.append((5, "no certificate authentication"))
    if "mfa" not in methods:
        out.append((5, "no multi-factor authentication"))
    return out


def _support_points(years: int | None, until: date | None, today: date) -> list[tuple[int, str]]:
    if until is None and years is None:
        return [(10, "support period unknown")]
    out = []
    if until is not None and until < today:
        out.append((20, f"security support ended {until.isoformat()}"))
    elif until is not None and (until - today).days < 365:
        out.append((10, f"security support ends {until.isoformat()}"))
    if years is not None and years < 3:
        out.append((5, f"support commitment of {years} year(s)"))
    return out


# ---------------------------------------------------------------------- the file


def read_vendors(path: str | Path) -> list[dict[str, Any]]:
    """Vendors from a CSV with a header or a JSON list of objects (:data:`VENDOR_COLUMNS`), cleaned;
    raises :class:`~fleetwarden.control.inventory.InventoryError` naming every bad row."""
    path = Path(path)
    entries = _parse_table(path, read_text(path), required="name", what="vendor objects")
    rows, problems, seen = [], [], set()
    for n, (where, raw) in enumerate(entries, start=1):
        row, bad = clean_vendor(raw)
        problems += [f"vendor {n} ({where}), column {b}" for b in bad]
        key = str(row.get("name", "")).lower()
        if key and key in seen:
            problems.append(f"vendor {n} ({where}), column name: {row['name']!r} appears twice")
        seen.add(key)
        rows.append(row)
    if problems:
        raise InventoryError(path, problems, what="vendor row")
    return rows


def clean_vendor(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """One vendor row cleaned for the store, and its problems as ``"column: what"`` strings."""
    row: dict[str, Any] = {}
    problems: list[str] = []
    if None in raw:
        problems.append("(extra cells): more cells than the header has columns")
    for key, value in raw.items():
        if key in _CLEANERS and not _blank(value):
            try:
                row[key] = _CLEANERS[key](value)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    if not row.get("name") and not any(p.startswith("name:") for p in problems):
        problems.insert(0, "name: missing")
    extra = {k: v for k, v in raw.items() if k is not None and k not in VENDOR_COLUMNS and not _blank(v)}
    attributes, bad = _attributes_of({**extra, "attributes": raw.get("attributes")})
    problems += bad
    row["auth_support"] = row.get("auth_support", [])
    if attributes:
        row["attributes"] = attributes
    return row, problems


def _bounded_int(low: int, high: int):
    def clean(value: Any) -> int:
        try:
            if isinstance(value, bool | float):
                raise ValueError
            n = value if isinstance(value, int) else int(str(value).strip())
        except ValueError:
            raise ValueError(f"{str(value)[:40]!r} is not a whole number") from None
        if not low <= n <= high:
            raise ValueError(f"{n} is outside {low}-{high}")
        return n

    return clean


def _clean_auth(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value).replace(",", ";").split(";")
    out = []
    for item in items:
        word = str(item).strip().lower()
        if not word:
            continue
        if word not in AUTH_METHODS:
            raise ValueError(f"{word[:40]!r} is not one of {', '.join(AUTH_METHODS)}")
        out.append(word)
    return sorted(set(out))


_CLEANERS = {
    **{k: _text_of(k, limit) for k, limit in _LIMITS.items()},
    "patch_cadence_days": _bounded_int(0, 3650),
    "support_years": _bounded_int(0, 100),
    "auth_support": _clean_auth,
    "support_until": clean_date,
}
