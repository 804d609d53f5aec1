"""The tabletop exercise end to end: every scenario detected, the benign rollout quiet."""

from __future__ import annotations

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
