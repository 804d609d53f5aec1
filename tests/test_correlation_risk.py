"""The correlator's risk formula (decay, weighting, independence vs repetition), campaigns across
devices on the simulated fleet, ATT&CK ids, and the story with its raw record ids."""

from __future__ import annotations

import pytest

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.findings import Finding
from fleetwarden.detection.correlation import (
    ATTACK_CATEGORIES,
    HALF_LIFE,
    correlate,
    decayed,
    device_risk,
    find_campaigns,
    risk_for,
    weight_for,
)

DAY = 86400.0


def f(entity, category, score, detector="d", t=0.0, **attrs):
    return Finding(entity, category, detector, score, t, t + 1, [f"{category} {score}"], [], ip=entity,
                   record_ids=[f"uid-{entity}-{category}-{t}"], attributes=attrs)  # fmt: skip


def test_decay_halves_a_finding_every_half_life():
    old = f("a", "scan", 0.8, t=0.0)
    assert decayed(old, old.last_seen) == 0.8
    assert decayed(old, old.last_seen + HALF_LIFE) == pytest.approx(0.4)
    assert decayed(old, old.last_seen + 2 * HALF_LIFE) == pytest.approx(0.2)
    assert risk_for([old], now=old.last_seen + HALF_LIFE) == 40  # 0.8 * 0.5: by the formula
    # correlation time defaults to the device's newest finding: an old story told alone is not decayed ...
    assert correlate([old])[0].risk == 80
    # ... but next to a finding of the same device three days newer, the old scan has lost half its weight
    incs = {i.category: i for i in correlate([old, f("a", "anomaly", 0.3, t=HALF_LIFE)])}
    assert incs["scan"].risk == 40
    # another device's newer findings do not age it (a stored story equals one run's)
    assert correlate([old, f("b", "anomaly", 0.3, t=HALF_LIFE)])[0].risk == 80
    # an explicit clock
    assert correlate([old], now=old.last_seen + HALF_LIFE)[0].risk == 40


def test_weight_by_criticality_and_data_class():
    def info(**extra):
        return DeviceInfo("x", device_class=extra.pop("cls", None), extra=extra)

    assert weight_for(None) == 1.0 and weight_for(info()) == 1.0
    assert weight_for(info(criticality="low")) == 0.9
    assert weight_for(info(criticality="high", data_class="regulated")) == pytest.approx(1.21)
    assert weight_for(info(criticality="critical", data_class="regulated")) == 1.3  # capped
    assert weight_for(info(cls="infusion-pump")) == 1.2  # no criticality: the class decides
    assert weight_for(info(cls="infusion-pump", criticality="low")) == 0.9  # the inventory wins

    ctx = Context()
    ctx.add_device(
        DeviceInfo("pump", ip="10.0.0.2", extra={"criticality": "critical", "data_class": "regulated"})
    )
    ctx.add_device(DeviceInfo("lamp", ip="10.0.0.3", extra={"criticality": "low", "data_class": "public"}))
    pump = Finding("pump", "exfiltration", "exfil", 0.6, 0, 1, ["x"], device_id="pump")
    lamp = Finding("lamp", "exfiltration", "exfil", 0.6, 0, 1, ["x"], device_id="lamp")
    risks = {i.entity: i.risk for i in correlate([pump, lamp], ctx)}
    assert risks == {"pump": 78, "lamp": 54}  # 0.6 * 1.3 and 0.6 * 0.9
    # weak stays weak, whatever is at stake
    weak = Finding("pump", "anomaly", "novelty", 0.35, 0, 1, ["x"], device_id="pump")
    assert correlate([weak] * 5, ctx)[0].severity == "low"


def test_independent_signals_raise_device_risk_more_than_one_repeated():
    spike = [f("cam", "anomaly", 0.5, "telemetry", t) for t in range(8)]
    independent = [
        f("cam", "anomaly", 0.5, "telemetry"),
        f("cam", "credential-misuse", 0.5, "auth"),
        f("cam", "firmware-tamper", 0.5, "firmware"),
    ]
    repeated = device_risk(spike)
    three = device_risk(independent)
    assert repeated == 56  # 0.5 + min(0.06, 0.02 * log2 8): repetition saturates
    assert three == 88  # 1 - 0.5 ** 3: noisy-OR over three families
    assert three > repeated and device_risk(spike * 10) == repeated
    incs = correlate(independent)
    assert {i.device_risk for i in incs} == {88}
    # context signals alone (policy, novelty) stay below medium when each is weak
    assert device_risk([f("x", "anomaly", 0.3), f("x", "policy-violation", 0.3)]) == 39


def test_mitre_on_every_incident_and_ics_for_ics_devices():
    ctx = Context()
    ctx.add_device(DeviceInfo("plc-1", ip="10.0.0.9", device_class="plc"))
    no_ids = Finding("plc-1", "policy-violation", "novelty", 0.3, 0, 1, ["telnet"], device_id="plc-1")
    it = Finding("10.0.0.50", "policy-violation", "novelty", 0.3, 0, 1, ["telnet"])
    incs = {i.entity: i for i in correlate([no_ids, it], ctx)}
    assert incs["plc-1"].mitre == ["T1021", "T0886"] and incs["10.0.0.50"].mitre == ["T1021"]
    for category in ATTACK_CATEGORIES:
        assert correlate([f("h", category, 0.5)])[0].mitre


def test_campaigns_by_shared_c2_and_by_victims():
    c2 = "185.244.25.235"  # global (documentation ranges are not "external")
    found = [
        f("10.0.0.1", "c2-beacon", 0.7, destination=c2),
        f("10.0.0.2", "c2-beacon", 0.7, destination=c2),
        f("10.0.0.3", "c2-beacon", 0.7, destination="45.33.32.156"),  # another C2: not linked
        f("10.0.0.4", "scan", 0.9, t=10),
        f("10.0.0.5", "policy-violation", 0.3, t=20, peer="10.0.0.4"),  # a victim of the scanner
        f("10.0.0.6", "policy-violation", 0.3, t=30, peer="10.0.0.200"),  # nobody's victim
    ]
    incs = {i.entity: i for i in correlate(found)}
    assert incs["10.0.0.1"].campaign == incs["10.0.0.2"].campaign is not None
    assert incs["10.0.0.3"].campaign is None and incs["10.0.0.6"].campaign is None
    assert incs["10.0.0.5"].campaign == incs["10.0.0.4"].campaign not in (None, incs["10.0.0.1"].campaign)
    assert c2 in incs["10.0.0.1"].story[-1]
    assert "10.0.0.4 is the subject of attack incident(s) on 10.0.0.4" in incs["10.0.0.5"].story[-1]
    assert not any("campaign" in e for i in incs.values() for e in i.evidence)  # evidence: the device's own
    camps = find_campaigns(correlate(found))
    scanner = next(c for c in camps if c.attackers == ["10.0.0.4"])
    assert scanner.members == ["10.0.0.4", "10.0.0.5"]
    assert [step[1:3] for step in scanner.timeline] == [
        ("10.0.0.4", "scan"),
        ("10.0.0.5", "policy-violation"),
    ]
    # victims alone (no attack incident) make no campaign
    assert all(i.campaign is None for i in correlate(found[4:]))


def test_story_in_time_order_with_record_ids():
    ctx = Context()
    ctx.add_device(DeviceInfo("cam-7", ip="10.0.0.7", device_class="ip-camera", site="lyon"))
    a = Finding("cam-7", "scan", "scan", 0.9, 200, 230, ["probed 40 hosts"], ["T1046"], ip="10.0.0.7",
                device_id="cam-7", record_ids=["Cb", "Cc"])  # fmt: skip
    b = Finding("cam-7", "scan", "flowmodel", 0.6, 100, 130, ["odd flows"], [], ip="10.0.0.7",
                device_id="cam-7", record_ids=["Ca"])  # fmt: skip
    story = correlate([a, b], ctx)[0].story
    assert story[0].startswith("cam-7 (ip-camera, at 10.0.0.7, site lyon) scanned other hosts from "
                               "1970-01-01 00:01:40Z to 1970-01-01 00:03:50Z (2 min): 2 finding(s) from 2 detector(s), risk ")  # fmt: skip
    assert story[1] == "1970-01-01 00:01:40Z: flowmodel (confidence 0.60): odd flows; records Ca"
    assert story[2] == "1970-01-01 00:03:20Z: scan (confidence 0.90): probed 40 hosts; records Cb, Cc"


@pytest.fixture(scope="module")
def simulated():
    from fleetwarden.app.session import DetectionSession
    from fleetwarden.control.inventory import context_from_rows
    from fleetwarden.simulate import simulate_fleet

    fleet = simulate_fleet(devices=60, hours=12, seed=3)
    session = DetectionSession(ctx=context_from_rows(fleet.inventory))
    session.run(fleet.iter_batches(seconds=600))
    return fleet, session.incidents()


def test_the_simulated_botnet_is_one_campaign_with_its_victims(simulated):
    """The infected camera of the mirai scenario: its scan, C2 and flood and the hosts that accepted
    its telnet sessions are one campaign; no other attack device joins it."""
    fleet, incidents = simulated
    mirai = next(sc for sc in fleet.scenarios if sc.name == "mirai-camera")
    cam = set(mirai.device_ids)
    attack = [i for i in incidents if i.entity in cam and i.category in ATTACK_CATEGORIES]
    assert {i.category for i in attack} >= {"scan", "c2-beacon", "ddos"}
    (campaign,) = {i.campaign for i in attack}
    assert campaign is not None
    members = [i for i in incidents if i.campaign == campaign]
    victims = [i for i in members if i.entity not in cam]
    assert victims and all(i.category not in ATTACK_CATEGORIES for i in victims)
    cam_ips = {i.ip for i in attack}
    assert all(any(ip in i.story[-1] for ip in cam_ips) for i in victims)
    for inc in members:
        assert inc.mitre and any(line.startswith(f"Part of campaign {campaign}") for line in inc.story)
        assert any("; records " in line for line in inc.story[1:])  # the raw records behind the steps


def test_the_store_keeps_the_campaign_of_the_camera_and_its_victims(simulated, tmp_path):
    """``analyze --db``'s path (a session recording to a real SQLite store): the campaign id the
    correlator gave the mirai camera's attack incidents is stored on them and on its victims',
    shown by the API's incident rows but not in the analyze --json contract nor the evidence."""
    from fleetwarden.app.queries import incident_row
    from fleetwarden.app.session import DetectionSession
    from fleetwarden.control.inventory import context_from_rows
    from fleetwarden.store import open_store

    fleet, _ = simulated
    store = open_store(f"sqlite:///{tmp_path / 'fw.db'}")
    session = DetectionSession(ctx=context_from_rows(fleet.inventory), store=store, source="sim")
    session.run(fleet.iter_batches(seconds=600))
    session.record()
    cam = set(next(sc for sc in fleet.scenarios if sc.name == "mirai-camera").device_ids)
    rows = store.list_incidents()
    attack = [r for r in rows if r.entity in cam and r.category in ATTACK_CATEGORIES]
    (campaign,) = {r.campaign for r in attack}
    assert campaign is not None and campaign.startswith("C-")
    victims = [r for r in rows if r.campaign == campaign and r.entity not in cam]
    assert victims and all(r.category not in ATTACK_CATEGORIES for r in victims)
    assert incident_row(attack[0])["campaign"] == campaign
    assert "campaign" not in attack[0].to_contract()
    assert not any("campaign" in e for r in rows for e in r.evidence)
    store.close()
