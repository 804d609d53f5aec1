"""The tabletop exercise end to end: every scenario detected, the benign rollout quiet."""

from __future__ import annotations

import json

import pytest

from fleetwarden.app.demo import run_demo
from fleetwarden.store import open_store


@pytest.mark.parametrize(("devices", "hours", "seed"), [(60, 12, 3), (80, 12, 11)])
def test_every_scenario_detected_and_nothing_serious_unexplained(tmp_path, devices, hours, seed):
    with open_store(f"sqlite:///{tmp_path / 'd.db'}") as store:
        report = run_demo(devices=devices, hours=hours, seed=seed, store=store)
    outcomes = {o.name: o for o in report.outcomes}
    assert set(outcomes) == {
        "mirai-camera",
        "tampered-controller",
        "remote-access-misuse",
        "cloned-device",
        "slow-exfiltration",
        "dns-tunnel",
        "benign-rollout",
    }
    for o in report.outcomes:
        if o.benign:
            assert not o.detected, f"{o.name} raised {o.detected}"
        else:
            assert not o.missed, f"{o.name} missed {o.missed}"
            assert o.time_to_detect is not None
    serious = [i for i in report.unexplained if i.severity != "low"]
    assert not serious, [(i.entity, i.category, i.severity, i.evidence[:1]) for i in serious]
    # the incidents of an attack name the device and explain themselves
    mirai = [i for i in report.incidents if i.entity in outcomes["mirai-camera"].devices]
    assert all(i.evidence and i.mitre for i in mirai)


SCENARIO_KEYS = {"name", "detected", "mttd_s", "incident_category", "actions"}
ACTION_KEYS = {"kind", "target", "requires_approval", "executed"}


def check_demo_json(doc: dict, *, all_detected: bool) -> None:
    """The ``demo --json`` contract: exact keys and types (outside scripts rely on them)."""
    from fleetwarden.store.models import ACTION_KINDS

    assert set(doc) == {"scenarios", "false_incidents", "metrics"}
    assert type(doc["false_incidents"]) is int and doc["false_incidents"] >= 0
    assert isinstance(doc["metrics"], dict)
    assert doc["scenarios"] and "benign-rollout" not in {s["name"] for s in doc["scenarios"]}
    for s in doc["scenarios"]:
        assert set(s) == SCENARIO_KEYS, s
        assert isinstance(s["name"], str) and type(s["detected"]) is bool
        assert s["mttd_s"] is None or type(s["mttd_s"]) in (int, float)
        assert s["incident_category"] is None or isinstance(s["incident_category"], str)
        for a in s["actions"]:
            assert set(a) == ACTION_KEYS, a
            assert a["kind"] in ACTION_KINDS and isinstance(a["target"], str)
            assert type(a["requires_approval"]) is bool and a["executed"] is False  # observe mode
        if all_detected:
            assert s["detected"] is True, s
            assert type(s["mttd_s"]) is float and s["mttd_s"] >= 0, s
            assert s["incident_category"] and s["actions"], s


def test_demo_json_contract_and_metrics(tmp_path):
    from fleetwarden.app.demo import demo_json

    with open_store(f"sqlite:///{tmp_path / 'd.db'}") as store:
        report = run_demo(devices=60, hours=12, seed=3, store=store)
    doc = json.loads(json.dumps(demo_json(report)))  # what the CLI prints
    check_demo_json(doc, all_detected=True)
    assert doc["false_incidents"] == len(report.unexplained)
    met = doc["metrics"]
    assert met["detected"] == met["scenarios"] == len(doc["scenarios"])
    assert met["mttd"]["count"] == met["scenarios"] and met["benign_quiet"] is True
    assert met["actions_executed"] == 0
    assert met["patch_compliance"]["devices"] > 0 and set(met["identity_posture"]) == {
        "critical", "high", "medium", "low"
    }  # fmt: skip
    # disruptive actions on a controller (critical class) wait for a human; alerts never do
    acts = {s["name"]: s["actions"] for s in doc["scenarios"]}
    assert any(a["kind"] == "quarantine" and a["requires_approval"] for a in acts["tampered-controller"])
    assert all(not a["requires_approval"] for s in acts.values() for a in s if a["kind"] == "alert")


def test_demo_cli_json_prints_one_object(tmp_path):
    from typer.testing import CliRunner

    from fleetwarden.cli import app

    db = f"sqlite:///{tmp_path / 'c.db'}"
    res = CliRunner().invoke(app, ["demo", "--json", "--devices", "24", "--hours", "2", "--db", db])
    assert res.exit_code == 0, res.output
    check_demo_json(json.loads(res.stdout), all_detected=False)
