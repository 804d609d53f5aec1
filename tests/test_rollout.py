"""Staged firmware rollouts: canary then waves, reports, soak, the regression rule, rollback,
maintenance windows and the correlator's expected_change (real SQLite store, real signatures)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from fleetwarden.app import rollout as ro
from fleetwarden.cli import app
from fleetwarden.control.firmware import FirmwareInputError
from fleetwarden.control.rollout import next_window, parse_waves, parse_windows, plan_waves, regression
from fleetwarden.core.findings import Finding
from fleetwarden.store import open_store
from rollout_fleet import NEW, OLD, signed_x200_fleet

runner = CliRunner()
T0 = datetime(2024, 3, 5, 2, 0, tzinfo=UTC).timestamp()  # a Tuesday, 02:00 UTC
HOUR = 3600.0


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ro.db'}"


@pytest.fixture
def store(url, tmp_path):
    """Acme X200 1.0.0 and 1.1.0 signed in the registry; five devices on 1.0.0, d0 the least critical."""
    st = open_store(url)
    signed_x200_fleet(
        st, tmp_path, ["env-sensor", "ip-camera", "ip-camera", "plc", "infusion-pump"], with_ip=False,
        extra=[{"device_id": "z9", "vendor": "Zeta", "model": "Q", "firmware_version": "1.0.0"}],
    )  # fmt: skip
    yield st
    st.close()


def finding(device: str, category: str, ts: float, score: float) -> Finding:
    return Finding(
        entity=device,
        device_id=device,
        category=category,
        detector="test",
        score=score,
        first_seen=ts,
        last_seen=ts + 30,
        evidence=[f"{category} at {ts}"],
    )


def plan(store, **kw):
    return ro.plan_rollout(store, "x200 1.1.0", "Acme", "X200", "1.1.0", soak_hours=1, **kw)


# ---------------------------------------------------------------------------- pure parts


def test_waves_windows_and_regression_rule():
    devs = [
        {"device_id": f"d{i}", "device_class": c}
        for i, c in enumerate(["plc", "env-sensor", "ip-camera", "infusion-pump", "ip-camera"])
    ]
    assert plan_waves(devs, 1, parse_waves("2,100%")) == [["d1"], ["d2", "d4"], ["d0", "d3"]]
    assert plan_waves(devs, 2, parse_waves("20%")) == [["d1", "d2"], ["d4", "d0", "d3"]]
    with pytest.raises(FirmwareInputError, match="wave size"):
        parse_waves("0,50%")
    with pytest.raises(FirmwareInputError, match="percentage up to 100"):
        parse_waves("150%")
    with pytest.raises(FirmwareInputError, match="unknown day"):
        parse_windows(["funday 01-05"])
    with pytest.raises(FirmwareInputError, match="expected 'DAYS HH-HH'"):
        parse_windows(["mon 1am"])
    # over midnight: Saturday 22:00 to Sunday 02:00
    sat = parse_windows(["sat 22-02"])
    assert next_window(T0, sat) == datetime(2024, 3, 9, 22, tzinfo=UTC).timestamp()
    assert (
        next_window(datetime(2024, 3, 9, 23, 30, tzinfo=UTC).timestamp(), sat)
        == datetime(2024, 3, 10, 0, tzinfo=UTC).timestamp()
    )

    low, med, high = (
        {"category": c, "severity": s}
        for c, s in (("scan", "low"), ("scan", "medium"), ("c2-beacon", "high"))
    )
    assert regression([low], [low, low]) == []
    assert regression([med], [low]) == []  # fewer or milder is never a regression
    assert regression([low], [med]) == ["medium finding after the update, worst before was low"]
    assert regression([low], [high]) == [
        "new finding categories after the update: c2-beacon",
        "high finding after the update, worst before was low",
    ]


# ---------------------------------------------------------------------------- advancing


def test_a_rollout_advances_from_canary_to_wave_1(store):
    st = plan(store, canary=1, waves="2,100%")
    assert [
        (d["device_id"], d["wave"], d["previous_version"], d["previous_sha256"]) for d in st["devices"]
    ] == [
        ("d0", 0, "1.0.0", OLD),
        ("d1", 1, "1.0.0", OLD),
        ("d2", 1, "1.0.0", OLD),
        ("d3", 2, "1.0.0", OLD),
        ("d4", 2, "1.0.0", OLD),
    ]  # Zeta's device is not part of it; the least critical devices go first
    assert st["status"] == "planned" and st["target_sha256"] == NEW
    rid = st["id"]

    st = ro.advance(store, rid, now=T0)
    assert st["status"] == "running" and st["plan"]["current_wave"] == 0
    assert st["waves"][0] == {"wave": 0, "updating": 1}
    with pytest.raises(ro.RolloutRefused, match="wave 0 not finished, 1 of 1 device.* \\(d0\\)"):
        ro.advance(store, rid, now=T0 + 60)

    # the canary had a low scan finding before; the same after the update is no regression
    store.record_results(
        "test", [finding("d0", "scan", T0 - 1800, 0.2), finding("d0", "scan", T0 + 1200, 0.2)], []
    )
    assert (
        ro.record_reports(
            store, [("d0", OLD, T0 + 100), ("d0", NEW.upper(), T0 + 300), ("d3", NEW, T0 + 300)]
        )
        == 1
    )
    with pytest.raises(ro.RolloutRefused, match="soaking until 2024-03-05T03:05:00Z"):
        ro.advance(store, rid, now=T0 + 600)
    assert ro.expected_change(store, "d0", T0 + 1200)  # inside its update's soak: expected
    assert not ro.expected_change(store, "d0", T0 - 1800)  # before the update: not
    assert not ro.expected_change(store, "d3", T0 + 1200)  # not started yet

    st = ro.advance(store, rid, now=T0 + 300 + HOUR)
    assert st["plan"]["current_wave"] == 1
    assert [w for w in st["waves"]] == [
        {"wave": 0, "updated": 1},
        {"wave": 1, "updating": 2},
        {"wave": 2, "pending": 2},
    ]
    assert "regressions" not in st
    actions = [e.action for e in store.audit_entries() if e.action.startswith("rollout.")]
    assert actions == ["rollout.plan", "rollout.advance", "rollout.report", "rollout.advance"]
    assert store.audit_verify() == (True, None)


def test_a_regression_halts_the_rollout_and_it_rolls_back(store):
    rid = plan(store, canary=1, waves="100%")["id"]
    ro.advance(store, rid, now=T0)
    ro.record_reports(store, [("d0", NEW, T0 + 300)])
    # after its update the canary beacons (high), which it never did in the hour before
    store.record_results(
        "test", [finding("d0", "scan", T0 - 1000, 0.2), finding("d0", "c2-beacon", T0 + 900, 0.8)], []
    )
    st = ro.advance(store, rid, now=T0 + 300 + HOUR)
    assert st["status"] == "halted"
    assert st["regressions"] == {
        "d0": [
            "new finding categories after the update: c2-beacon",
            "high finding after the update, worst before was low",
        ]
    }
    assert st["waves"] == [{"wave": 0, "regressed": 1}, {"wave": 1, "pending": 4}]
    assert not ro.expected_change(store, "d0", T0 + 900)  # a halted rollout explains nothing
    with pytest.raises(ro.RolloutRefused, match="halted: it cannot advance; `rollout rollback` undoes it"):
        ro.advance(store, rid, now=T0 + 2 * HOUR)

    st = ro.rollback(store, rid)
    assert st["status"] == "rolled-back" and st["waves"] == [
        {"wave": 0, "rolled-back": 1},
        {"wave": 1, "pending": 4},
    ]
    (action,) = store.list_actions(device_id="d0")
    assert (action.kind, action.status, action.details) == (
        "firmware-rollback",
        "proposed",
        {"rollout_id": rid, "to_version": "1.0.0", "to_sha256": OLD},
    )
    assert st["actions"] == [action.id]
    with pytest.raises(ro.RolloutRefused, match="only a running or halted rollout rolls back"):
        ro.rollback(store, rid)
    assert [e.action for e in store.audit_entries() if e.action.startswith("rollout.")][-2:] == [
        "rollout.halt",
        "rollout.rollback",
    ]


def test_outside_a_maintenance_window_advance_refuses_with_the_next_one(store):
    rid = plan(store, canary=1, waves="100%", windows=["mon 01-03", "sat,sun 00-24"])["id"]
    with pytest.raises(ro.RolloutRefused) as exc:
        ro.advance(store, rid, now=T0)  # Tuesday 02:00
    assert str(exc.value) == (
        "outside the maintenance windows (mon 01-03; sat,sun 00-24 UTC); the next window opens at 2024-03-09T00:00:00Z"
    )
    assert ro.rollout_status(store, rid)["status"] == "planned"
    monday = (datetime.fromtimestamp(T0, UTC) + timedelta(days=6)).timestamp()  # Monday 02:00
    assert ro.advance(store, rid, now=monday)["status"] == "running"


def test_the_last_wave_completes_the_rollout(store):
    rid = plan(store, canary=4, waves="100%")["id"]
    ro.advance(store, rid, now=T0)
    ro.record_reports(store, [(f"d{i}", NEW, T0 + 60) for i in range(4)])
    ro.advance(store, rid, now=T0 + 2 * HOUR)
    ro.record_reports(store, [("d4", NEW, T0 + 2 * HOUR + 60)])
    st = ro.advance(store, rid, now=T0 + 4 * HOUR)
    assert st["status"] == "completed" and st["waves"] == [
        {"wave": 0, "updated": 4},
        {"wave": 1, "updated": 1},
    ]
    with pytest.raises(ro.RolloutRefused, match="completed: it cannot advance"):
        ro.advance(store, rid, now=T0 + 5 * HOUR)


def test_plan_refuses_what_it_cannot_roll_out(store):
    with pytest.raises(FirmwareInputError, match="no verified signed image of Acme X200 9.9"):
        ro.plan_rollout(store, "x", "Acme", "X200", "9.9")
    with pytest.raises(FirmwareInputError, match="soak must be"):
        ro.plan_rollout(store, "x", "Acme", "X200", "1.1.0", soak_hours=0)
    with pytest.raises(FirmwareInputError, match="maintenance window"):
        ro.plan_rollout(store, "x", "Acme", "X200", "1.1.0", windows=["whenever"])


def test_rollout_cli(url, store, tmp_path):
    weekday = datetime.now(UTC).weekday()
    elsewhere = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(weekday + 3) % 7]
    res = runner.invoke(
        app,
        [
            "rollout",
            "plan",
            "x200",
            "--vendor",
            "Acme",
            "--model",
            "X200",
            "--version",
            "1.1.0",
            "--window",
            f"{elsewhere} 00-24",
            "--soak",
            "1",
            "--db",
            url,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rid = json.loads(res.stdout)["id"]
    res = runner.invoke(app, ["rollout", "advance", str(rid), "--db", url])
    assert res.exit_code == 2
    assert (
        res.stderr.startswith("fleetwarden: error: outside the maintenance windows")
        and res.stderr.count("\n") == 1
    )
    res = runner.invoke(app, ["rollout", "status", str(rid), "--db", url])
    assert res.exit_code == 0 and "planned" in res.stdout
    events = tmp_path / "fw.jsonl"
    events.write_text(
        json.dumps(
            {"kind": "firmware_report", "ts": T0, "device_id": "d0", "version": "1.1.0", "image_sha256": NEW}
        )
        + "\n"
    )
    res = runner.invoke(app, ["rollout", "report", str(events), "--db", url])
    assert (
        res.exit_code == 0 and "0 device(s) reported the new image" in res.stdout
    )  # nothing is updating yet
    res = runner.invoke(app, ["rollout", "rollback", str(rid), "--db", url])
    assert res.exit_code == 2 and "only a running or halted rollout rolls back" in res.stderr
    res = runner.invoke(app, ["rollout", "status", "999", "--db", url])
    assert res.exit_code == 2 and "unknown rollout 999" in res.stderr
