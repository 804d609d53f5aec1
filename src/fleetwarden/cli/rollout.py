"""``fleetwarden rollout``: staged firmware rollouts (canary, waves, maintenance windows, rollback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, _check_inputs, _run, out

rollout_app = typer.Typer(
    no_args_is_help=True, help="Staged firmware rollouts: canary, waves, windows, rollback."
)
RolloutId = Annotated[int, typer.Argument(min=1, help="rollout id")]


def _with_store(db: str | None, fn, *args, **kwargs):
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


def _show(status: dict, as_json: bool) -> None:
    from fleetwarden.report import table_of

    if as_json:
        sys.stdout.write(json.dumps(status, indent=2, default=str) + "\n")
        return
    out.print(
        Text(
            f"rollout {status['id']} {status['name']!r}: {status['vendor']} {status['model']} -> "
            f"{status['target_version']} ({status['target_sha256'][:16]}), {status['status']}, "
            f"wave {status['plan'].get('current_wave')} of 0..{status['plan'].get('wave_count', 1) - 1}"
        )
    )
    rows = [(w["wave"], ", ".join(f"{k} {v}" for k, v in w.items() if k != "wave")) for w in status["waves"]]
    out.print(table_of(("wave", "devices"), rows))
    for device, reasons in (status.get("regressions") or {}).items():
        out.print(Text(f"regression on {device}: {'; '.join(reasons)}"))
    if status.get("regressions"):
        out.print(Text(f"rollout halted; `fleetwarden rollout rollback {status['id']}` rolls it back"))


@rollout_app.command("plan")
def rollout_plan(
    name: Annotated[str, typer.Argument(help="a name for the rollout")],
    vendor: Annotated[str, typer.Option("--vendor")],
    model: Annotated[str, typer.Option("--model")],
    version: Annotated[str, typer.Option("--version", help="target version (a signed registry image)")],
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="the image, when the version has several")
    ] = None,
    canary: Annotated[int, typer.Option("--canary", min=1, help="devices in the canary wave")] = 1,
    waves: Annotated[
        str, typer.Option("--waves", help="later waves: counts or percentages, e.g. 25%,100%")
    ] = "25%,100%",
    window: Annotated[
        list[str] | None,
        typer.Option("--window", help="maintenance window, UTC, e.g. 'mon-fri 01-05' (repeat)"),
    ] = None,
    soak: Annotated[
        float, typer.Option("--soak", help="hours a wave is watched before the next starts")
    ] = 24.0,
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Plan a rollout of a signed image to every active device of a vendor and model."""
    from fleetwarden.app.rollout import plan_rollout

    status = _with_store(
        db,
        plan_rollout,
        name,
        vendor,
        model,
        version,
        sha256=sha256,
        canary=canary,
        waves=waves,
        windows=window or [],
        soak_hours=soak,
    )
    _show(status, as_json)


@rollout_app.command("status")
def rollout_status(rollout_id: RolloutId, db: DbUrl = None, as_json: AsJson = False) -> None:
    """A rollout, its waves and device statuses."""
    from fleetwarden.app.rollout import rollout_status as status_of

    _show(_with_store(db, status_of, rollout_id), as_json)


@rollout_app.command("report")
def rollout_report(
    files: Annotated[
        list[Path], typer.Argument(help="event files holding firmware_report records (JSONL, …)")
    ],
    db: DbUrl = None,
) -> None:
    """Record the devices' firmware reports against the running rollouts."""
    from fleetwarden.app.rollout import record_report_files

    _run(_check_inputs, files)
    moved = _with_store(db, record_report_files, files)
    out.print(Text(f"{moved} device(s) reported the new image"))


@rollout_app.command("advance")
def rollout_advance(rollout_id: RolloutId, db: DbUrl = None, as_json: AsJson = False) -> None:
    """Start the next wave once the current one reported the new image, soaked and did not regress;
    refused outside the maintenance windows.  A regression halts the rollout."""
    from fleetwarden.app.rollout import advance

    status = _with_store(db, advance, rollout_id)
    _show(status, as_json)
    if status.get("regressions"):
        raise typer.Exit(1)


@rollout_app.command("rollback")
def rollout_rollback(rollout_id: RolloutId, db: DbUrl = None, as_json: AsJson = False) -> None:
    """Roll a running or halted rollout back: a firmware-rollback action is proposed per touched device."""
    from fleetwarden.app.rollout import rollback

    status = _with_store(db, rollback, rollout_id)
    _show(status, as_json)
    if not as_json:
        out.print(Text(f"{len(status['actions'])} firmware-rollback action(s) proposed"))
