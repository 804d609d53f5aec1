"""Staged firmware rollouts, the pure part: waves, maintenance windows and the regression rule.

*Plan.*  The devices of a rollout are split into a canary (wave 0, ``canary`` devices, default 1)
then the listed waves, each a device count (``10``) or a percentage of all the rollout's devices
(``25%``); devices left after the last listed wave join it.  Canary and early waves take the least
critical devices first (criticality attribute, then device class), so a bad image hurts least.

*Windows.*  Maintenance windows are UTC: ``"mon-fri 01-05"``, ``"sat,sun 00-24"``, ``"* 22-02"``
(an end before the start runs past midnight into the next day).  A wave may start only inside one.

*Regression rule* (:func:`regression`).  For each device of a finished wave, the findings the store
holds about it are compared in two equal windows: ``[t - soak, t)`` before its update and
``[t, t + soak)`` after (``t`` = the time it reported the new hash).  The device regressed when
after the update it shows a finding category it did not show before, or a finding of medium or
higher severity when its worst finding before was lower.  Fewer or milder findings are never a
regression.  A regression halts the rollout.

*Blind spots.*  The rule only sees what the detectors report: a change that raises no finding (a
sensor reporting slightly wrong values) passes.  Equal windows assume a device's behaviour is
stationary over a soak period; a weekly rhythm longer than the soak can look like a change.

*Reference.*  Google SRE workbook, "Canarying Releases" (2018): compare a canary with a control
population over the same metric and window before promoting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetwarden.control.firmware import FirmwareInputError, criticality_of

__all__ = ["Window", "next_window", "parse_waves", "parse_windows", "plan_waves", "regression", "in_window"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SEVERITIES = ("low", "medium", "high", "critical")
MAX_WAVES = 50
_WINDOW = re.compile(r"^\s*(?P<days>\*|daily|[a-z,\-]+)\s+(?P<start>\d{1,2})-(?P<end>\d{1,2})\s*$")
_CRIT_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@dataclass(frozen=True)
class Window:
    """Weekdays (0 = Monday) and an hour range [start, end) in UTC; end <= start runs past midnight."""

    days: tuple[int, ...]
    start: int
    end: int

    def to_text(self) -> str:
        return f"{','.join(DAYS[d] for d in self.days)} {self.start:02d}-{self.end:02d}"


def parse_windows(specs: Sequence[str]) -> list[Window]:
    """``["mon-fri 01-05", "sat,sun 00-24"]`` -> windows; an empty list means "any time"."""
    return [_window(s) for s in specs]


def _window(spec: str) -> Window:
    m = _WINDOW.match(str(spec).lower()[:60])
    if not m:
        raise FirmwareInputError(
            f"maintenance window {str(spec)[:60]!r}: expected 'DAYS HH-HH' such as 'mon-fri 01-05'"
        )
    start, end = int(m["start"]), int(m["end"])
    if start > 23 or end > 24 or start == end:
        raise FirmwareInputError(f"maintenance window {spec!r}: hours run 00-24 and must differ")
    return Window(_days(m["days"], spec), start, end)


def _days(text: str, spec: str) -> tuple[int, ...]:
    if text in ("*", "daily"):
        return tuple(range(7))
    days: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        if a not in DAYS or (b and b not in DAYS):
            raise FirmwareInputError(f"maintenance window {spec!r}: unknown day in {part!r} (mon..sun)")
        i, j = DAYS.index(a), DAYS.index(b or a)
        days.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    return tuple(sorted(days))


def in_window(ts: float, windows: Sequence[Window]) -> bool:
    """True when ``ts`` (epoch seconds) falls inside a window (always true without windows)."""
    if not windows:
        return True
    t = datetime.fromtimestamp(ts, UTC)
    for w in windows:
        if w.start < w.end:
            if t.weekday() in w.days and w.start <= t.hour < w.end:
                return True
        elif (t.weekday() in w.days and t.hour >= w.start) or (
            (t.weekday() - 1) % 7 in w.days and t.hour < w.end
        ):
            return True
    return False


def next_window(ts: float, windows: Sequence[Window]) -> float | None:
    """Start of the next window after ``ts`` (the hour it opens), or None without windows."""
    if not windows:
        return None
    t = datetime.fromtimestamp(ts, UTC).replace(minute=0, second=0, microsecond=0)
    for _ in range(8 * 24):
        t += timedelta(hours=1)
        if in_window(t.timestamp(), windows):
            return t.timestamp()
    return None


def parse_waves(spec: str) -> list[str]:
    """``"10%,50%,100%"`` or ``"5,20"`` -> the wave sizes as given (checked)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts or len(parts) > MAX_WAVES:
        raise FirmwareInputError(
            f"waves {spec[:60]!r}: give 1 to {MAX_WAVES} sizes such as '25%,100%' or '5,20'"
        )
    for p in parts:
        if (
            not re.fullmatch(r"\d{1,6}%?", p)
            or float(p.rstrip("%")) <= 0
            or (p.endswith("%") and float(p[:-1]) > 100)
        ):
            raise FirmwareInputError(f"wave size {p!r}: a positive count or a percentage up to 100%")
    return parts


def plan_waves(devices: Sequence[Mapping[str, Any]], canary: int, waves: Sequence[str]) -> list[list[str]]:
    """Device ids per wave: wave 0 the canary, then ``waves`` (see the module docstring)."""
    if canary < 1:
        raise FirmwareInputError("a rollout needs at least one canary device")
    order = sorted(devices, key=lambda d: (_CRIT_ORDER[criticality_of(d)], str(d["device_id"])))
    ids = [str(d["device_id"]) for d in order]
    if not ids:
        raise FirmwareInputError("no device to update: none of this vendor and model runs another image")
    plan, rest = [ids[:canary]], ids[canary:]
    for size in waves:
        if not rest:
            break
        n = max(1, round(len(ids) * float(size[:-1]) / 100)) if size.endswith("%") else int(size)
        plan.append(rest[:n])
        rest = rest[n:]
    if rest:
        if len(plan) == 1:
            plan.append(rest)
        else:
            plan[-1].extend(rest)
    return plan


def regression(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why a device's findings after its update are a regression (empty: none); findings are
    mappings with ``category`` and ``severity``.  See the module docstring for the rule."""
    reasons = []
    seen = {f["category"] for f in before}
    new = sorted({f["category"] for f in after} - seen)
    if new:
        reasons.append(f"new finding categories after the update: {', '.join(new)}")
    worst_before = max((_sev(f) for f in before), default=-1)
    worst_after = max((_sev(f) for f in after), default=-1)
    if worst_after >= 1 and worst_after > worst_before:
        reasons.append(
            f"{SEVERITIES[worst_after]} finding after the update, worst before was "
            f"{SEVERITIES[worst_before] if worst_before >= 0 else 'none'}"
        )
    return reasons


def _sev(finding: Mapping[str, Any]) -> int:
    s = str(finding.get("severity") or "low")
    return SEVERITIES.index(s) if s in SEVERITIES else 0
