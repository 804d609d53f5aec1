"""The staged-rollout services: plan, status, device reports, advance, rollback, and whether a
device's behaviour change at a time belongs to a planned rollout.

Wave planning, maintenance windows and the regression rule are pure
(:mod:`fleetwarden.control.rollout`); this module reads the registry, the inventory and the
stored findings, and writes every change through :mod:`fleetwarden.store.firmware` (audited).

Life of a rollout: ``planned`` --advance--> ``running`` (wave 0, the canary, is ``updating``) ...
each ``advance`` checks the current wave: every device must have reported the target hash
(:func:`record_reports`) and soaked for ``soak`` seconds; a device whose findings regress
(control.rollout's rule) halts the rollout (``halted``), which then only ``rollback`` moves on
(``rolled-back``, a ``firmware-rollback`` action proposed per updated device).  When the current
wave is clean the next one starts, inside a maintenance window only; after the last, ``completed``.

Where reports come from: every detecting path (``analyze --db``, ``watch``, the JetStream worker,
``serve --mqtt``, API ingestion) runs a :class:`~fleetwarden.app.session.DetectionSession`, which
keeps, per device, the image its ``firmware_report`` events name last (as of the first report of
it) and applies it here at each ``record()``: a running rollout follows its devices' own reports
with no manual step.  :func:`record_report_files` (``rollout report FILE``) remains for reports
collected offline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetwarden.control.firmware import FirmwareInputError
from fleetwarden.control.rollout import (
    in_window,
    next_window,
    parse_waves,
    parse_windows,
    plan_waves,
    regression,
)
from fleetwarden.store import StoreError
from fleetwarden.store import firmware as repo

__all__ = [
    "advance",
    "ChangeWindow",
    "expected_change",
    "expected_changes",
    "plan_rollout",
    "record_report_files",
    "record_reports",
    "rollback",
    "rollout_status",
]

DEFAULT_SOAK_S = 24 * 3600.0


class RolloutRefused(FirmwareInputError):
    """A rollout step that cannot be taken now (window, wave not finished, wrong status)."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- plan


def plan_rollout(
    store: Any,
    name: str,
    vendor: str,
    model: str,
    version: str,
    *,
    sha256: str | None = None,
    canary: int = 1,
    waves: str = "25%,100%",
    windows: Iterable[str] = (),
    soak_hours: float = 24.0,
    actor: str = "cli",
) -> dict[str, Any]:
    """Plan a rollout of a signed registry image to every active device of ``vendor``/``model``
    not already on it; returns :func:`rollout_status`."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise FirmwareInputError("rollout name must be 1 to 200 characters")
    if not 0 < soak_hours <= 24 * 30:
        raise FirmwareInputError("soak must be between 0 and 720 hours")
    wins = parse_windows(list(windows))
    sizes = parse_waves(waves)
    target = _target_image(store, vendor, model, version, sha256)
    devices = _candidates(store, vendor, model, target)
    plan = plan_waves(devices, canary, sizes)
    known = {
        (img.version): img.sha256
        for img in repo.list_firmware_images(store, vendor, model, verified_only=True)
    }
    rows = [_device_row(d, w, known) for w, ids in enumerate(plan) for d in devices if d["device_id"] in ids]
    spec = {
        "canary": canary,
        "waves": sizes,
        "windows": [w.to_text() for w in wins],
        "soak_s": soak_hours * 3600.0,
        "wave_count": len(plan),
        "current_wave": None,
    }
    row = repo.create_rollout(
        store,
        {
            "name": name,
            "vendor": vendor,
            "model": model,
            "target_version": version,
            "target_sha256": target,
            "plan": spec,
        },
        rows,
        actor=actor,
    )
    return rollout_status(store, row.id)


def _target_image(store: Any, vendor: str, model: str, version: str, sha256: str | None) -> str:
    images = [
        i for i in repo.list_firmware_images(store, vendor, model, verified_only=True) if i.version == version
    ]
    if sha256:
        images = [i for i in images if i.sha256 == sha256.lower()]
    if not images:
        raise FirmwareInputError(f"no verified signed image of {vendor} {model} {version} in the registry")
    if len(images) > 1:
        raise FirmwareInputError(
            f"{vendor} {model} {version} has {len(images)} signed images; choose one with --sha256"
        )
    return images[0].sha256


def _candidates(store: Any, vendor: str, model: str, target: str) -> list[dict[str, Any]]:
    out = []
    for d in store.list_devices(lifecycle="active"):
        row = d.to_dict()
        same = (row.get("vendor") or "").lower() == vendor.lower() and (
            row.get("model") or ""
        ).lower() == model.lower()
        if same and (row.get("attributes") or {}).get("firmware_sha256") != target:
            out.append(row)
    return out


def _device_row(d: dict[str, Any], wave: int, known: dict[str, str]) -> dict[str, Any]:
    version = d.get("firmware_version")
    sha = (d.get("attributes") or {}).get("firmware_sha256") or known.get(version or "")
    return {"device_id": d["device_id"], "wave": wave, "previous_version": version, "previous_sha256": sha}


# ---------------------------------------------------------------------------- status


def rollout_status(store: Any, rollout_id: int) -> dict[str, Any]:
    """The rollout, its devices and a per-wave count of device statuses."""
    row, devices = repo.get_rollout(store, rollout_id)
    waves: dict[int, dict[str, int]] = {}
    for d in devices:
        per = waves.setdefault(d.wave, {})
        per[d.status] = per.get(d.status, 0) + 1
    return {
        **row.to_dict(),
        "waves": [{"wave": w, **counts} for w, counts in sorted(waves.items())],
        "devices": [d.to_dict() for d in devices],
    }


def list_rollouts(store: Any) -> list[dict[str, Any]]:
    return [r.to_dict() for r in repo.list_rollouts(store)]


# ---------------------------------------------------------------------------- reports


def record_reports(store: Any, reports: Iterable[tuple[str, str, float]], *, actor: str = "cli") -> int:
    """Record firmware reports ``(device_id, image_sha256, ts)`` against the running rollouts: an
    updating device that reports the target hash becomes ``updated`` as of ``ts`` (its latest
    report counts; never earlier than the start of its wave), one reporting another hash stays
    ``updating`` with ``reported_sha256`` set.  Returns how many devices moved.

    Idempotent: a device that is not ``updating`` any more, or whose report changes nothing, is
    not written (no audit entry), so the same reports applied twice, or every check-in of a stuck
    device, change nothing.  Without a running rollout it costs one query (the rollouts table).
    A rollout halted, rolled back or completed while the reports were being applied takes none."""
    latest: dict[str, tuple[str, float]] = {}
    for device_id, sha, ts in reports:
        if device_id and sha and (device_id not in latest or ts >= latest[device_id][1]):
            latest[device_id] = (_digest(sha), float(ts))
    if not latest:
        return 0
    moved = 0
    for rollout in repo.list_rollouts(store):
        if rollout.status != "running":
            continue
        _, devices = repo.get_rollout(store, rollout.id)
        changes = {}
        for d in devices:
            seen = latest.get(d.device_id)
            if d.status != "updating" or seen is None:
                continue
            sha, ts = seen
            if sha == rollout.target_sha256:
                at = ts if d.started_at is None else max(ts, d.started_at)
                changes[d.device_id] = {"reported_sha256": sha, "status": "updated", "updated_at": at}
            elif sha != d.reported_sha256:
                changes[d.device_id] = {"reported_sha256": sha}
        if changes and _apply_reports(store, rollout.id, changes, actor):
            moved += sum(1 for c in changes.values() if c.get("status") == "updated")
    return moved


def _digest(sha: Any) -> str:
    """A reported image hash as the registry writes it: lower-case hex, no ``sha256:`` prefix, at
    most 64 characters (the column's size: a malformed report must not make every write fail)."""
    return str(sha).strip().lower().removeprefix("sha256:")[:64]


def _apply_reports(store: Any, rollout_id: int, changes: dict[str, Any], actor: str) -> bool:
    """Write ``changes`` if the rollout is still running; False when it moved on meanwhile."""
    try:
        repo.update_rollout(
            store, rollout_id, actor=actor, action="report", devices=changes, expect_status="running"
        )
    except StoreError:
        row, _ = repo.get_rollout(store, rollout_id)
        if row.status == "running":
            raise
        return False  # halted, rolled back or completed by another writer: nothing to report into
    return True


def record_report_files(store: Any, paths: Iterable[str | Path], *, actor: str = "cli") -> int:
    """:func:`record_reports` from the ``firmware_report`` events of event files (JSONL, ...): for
    reports collected offline (live ones reach :func:`record_reports` through the detection
    session)."""
    from fleetwarden.app.inputs import InputSet

    reports: list[tuple[str, str, float]] = []
    for batch in InputSet(list(paths)).batches():
        if batch.kind == "firmware_report":
            reports += zip(
                batch.np("device_id").tolist(),
                batch.np("image_sha256").tolist(),
                batch.np("ts").tolist(),
                strict=True,
            )
    return record_reports(store, reports, actor=actor)


# ---------------------------------------------------------------------------- advance


def advance(store: Any, rollout_id: int, *, now: float | None = None, actor: str = "cli") -> dict[str, Any]:
    """Check the current wave and start the next one (see the module docstring).  Raises
    :class:`RolloutRefused` when the wave is unfinished or outside the maintenance windows; a
    regression halts the rollout and returns its status with ``regressions``."""
    now = time.time() if now is None else now
    row, devices = repo.get_rollout(store, rollout_id)
    if row.status not in ("planned", "running"):
        hint = "; `rollout rollback` undoes it" if row.status == "halted" else ""
        raise RolloutRefused(f"rollout {rollout_id} is {row.status}: it cannot advance{hint}")
    plan = dict(row.plan)
    current = plan.get("current_wave")
    if current is not None:
        regressions = _check_wave(store, row, [d for d in devices if d.wave == current], plan, now)
        if regressions:
            return _halt(store, row, regressions, actor)
    nxt = 0 if current is None else current + 1
    if nxt >= plan["wave_count"]:
        repo.update_rollout(
            store, rollout_id, actor=actor, action="complete", status="completed", expect_status=row.status
        )
        return rollout_status(store, rollout_id)
    _check_window(plan, now)
    started = {d.device_id: {"status": "updating", "started_at": now} for d in devices if d.wave == nxt}
    repo.update_rollout(
        store,
        rollout_id,
        actor=actor,
        action="advance",
        status="running",
        plan={**plan, "current_wave": nxt},
        devices=started,
        details={"wave": nxt},
        expect_status=row.status,
    )
    return rollout_status(store, rollout_id)


def _check_wave(
    store: Any, row: Any, wave: list[Any], plan: dict[str, Any], now: float
) -> dict[str, list[str]]:
    waiting = [d.device_id for d in wave if d.status != "updated"]
    if waiting:
        raise RolloutRefused(
            f"rollout {row.id}: wave {plan['current_wave']} not finished, {len(waiting)} of {len(wave)} device(s) "
            f"have not reported the new image ({', '.join(waiting[:5])})"
        )
    soak = float(plan.get("soak_s", DEFAULT_SOAK_S))
    soaking = [d for d in wave if now < d.updated_at + soak]
    if soaking:
        until = max(d.updated_at for d in soaking) + soak
        raise RolloutRefused(
            f"rollout {row.id}: wave {plan['current_wave']} is soaking until {_iso(until)} (UTC)"
        )
    out = {}
    for d in wave:
        t = d.updated_at
        reasons = regression(
            repo.device_findings(store, d.device_id, t - soak, t),
            repo.device_findings(store, d.device_id, t, t + soak),
        )
        if reasons:
            out[d.device_id] = reasons
    return out


def _halt(store: Any, row: Any, regressions: dict[str, list[str]], actor: str) -> dict[str, Any]:
    repo.update_rollout(
        store,
        row.id,
        actor=actor,
        action="halt",
        status="halted",
        devices={d: {"status": "regressed"} for d in regressions},
        details={"regressions": regressions},
        expect_status=row.status,
    )
    return {**rollout_status(store, row.id), "regressions": regressions}


def _check_window(plan: dict[str, Any], now: float) -> None:
    wins = parse_windows(plan.get("windows") or [])
    if in_window(now, wins):
        return
    opens = next_window(now, wins)
    when = _iso(opens) if opens is not None else "never"
    raise RolloutRefused(
        f"outside the maintenance windows ({'; '.join(plan['windows'])} UTC); the next window opens at {when}"
    )


# ---------------------------------------------------------------------------- rollback


def rollback(store: Any, rollout_id: int, *, actor: str = "cli") -> dict[str, Any]:
    """Mark a running or halted rollout rolled back: its touched devices return to their previous
    image, each through a proposed ``firmware-rollback`` response action (audited)."""
    row, devices = repo.get_rollout(store, rollout_id)
    if row.status not in ("running", "halted"):
        raise RolloutRefused(
            f"rollout {rollout_id} is {row.status}: only a running or halted rollout rolls back"
        )
    touched = [d for d in devices if d.status in ("updating", "updated", "regressed")]
    repo.update_rollout(
        store,
        rollout_id,
        actor=actor,
        action="rollback",
        status="rolled-back",
        devices={d.device_id: {"status": "rolled-back"} for d in touched},
        expect_status=row.status,
    )
    actions = _propose_rollbacks(store, row, touched, actor)
    return {**rollout_status(store, rollout_id), "actions": actions}


def _propose_rollbacks(store: Any, row: Any, touched: list[Any], actor: str) -> list[int]:
    known = {d.device_id for d in store.list_devices()}
    ids = []
    for d in touched:
        if d.device_id in known:
            act = store.propose_action(
                "firmware-rollback",
                requested_by=actor,
                device_id=d.device_id,
                details={
                    "rollout_id": row.id,
                    "to_version": d.previous_version,
                    "to_sha256": d.previous_sha256,
                },
            )
            ids.append(act.id)
    return ids


# ---------------------------------------------------------------------------- expected change


_EXPECTING = ("running", "completed")  # a halted or rolled-back rollout expects nothing


@dataclass(frozen=True)
class ChangeWindow:
    """When a device's behaviour may change because of a rollout: from the start of its update
    to the end of its soak (``end`` None while it is still updating: open-ended)."""

    rollout_id: int
    rollout: str  # the rollout's name
    start: float
    end: float | None

    def covers(self, ts: float) -> bool:
        return self.start <= ts and (self.end is None or ts < self.end)

    @property
    def label(self) -> str:
        return f"rollout {self.rollout} (#{self.rollout_id})"


def _window(rollout: Any, dev: Any) -> ChangeWindow | None:
    if rollout.status not in _EXPECTING or dev.status not in ("updating", "updated"):
        return None
    soak = float(rollout.plan.get("soak_s", DEFAULT_SOAK_S))
    start = dev.started_at if dev.started_at is not None else dev.updated_at
    end = dev.updated_at + soak if dev.status == "updated" else None
    return ChangeWindow(int(rollout.id), str(rollout.name), float(start), end)


def expected_changes(store: Any, device_ids: Iterable[str]) -> dict[str, list[ChangeWindow]]:
    """The change windows of every device of ``device_ids`` (one store query for all of them,
    newest rollout first): what a recording step asks once per call.  Devices in no running or
    completed rollout are absent."""
    out: dict[str, list[ChangeWindow]] = {}
    for rollout, dev in repo.rollouts_of_devices(store, list(device_ids), _EXPECTING):
        win = _window(rollout, dev)
        if win is not None:
            out.setdefault(dev.device_id, []).append(win)
    return out


def expected_change(store: Any, device_id: str, ts: float) -> bool:
    """True when a behaviour change of ``device_id`` at ``ts`` belongs to a planned rollout: the
    device is updating or updated in a running or completed rollout, and ``ts`` lies between the
    start of its update and the end of its soak (no end while it is still updating).  A halted or
    rolled-back rollout expects nothing (its change is what is under suspicion)."""
    return any(w.covers(ts) for w in expected_changes(store, [device_id]).get(device_id, ()))
