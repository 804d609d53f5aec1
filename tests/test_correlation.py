"""The correlator: grouping, risk, story links, criticality."""

from __future__ import annotations

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.findings import Finding
from fleetwarden.detection.correlation import correlate, risk_for


def f(entity, category, score, detector="d", t=0.0, mitre=("T1046",), evidence=None):
    return Finding(
        entity=entity,
        category=category,
        detector=detector,
        score=score,
        first_seen=t,
        last_seen=t + 1,
        evidence=[evidence or f"{category} {score:.2f}"],
        mitre=list(mitre),
        ip=entity,
    )


def test_groups_per_entity_and_category():
    incidents = correlate(
        [f("a", "scan", 0.6), f("a", "scan", 0.7, t=5), f("b", "scan", 0.5), f("a", "ddos", 0.8)]
    )
    keys = sorted((i.entity, i.category, len(i.findings)) for i in incidents)
    assert keys == [("a", "ddos", 1), ("a", "scan", 2), ("b", "scan", 1)]
    scan_a = next(i for i in incidents if (i.entity, i.category) == ("a", "scan"))
    assert scan_a.first_seen == 0.0 and scan_a.last_seen == 6.0
    assert scan_a.evidence[0] == "scan 0.70"  # strongest first
    assert incidents == sorted(incidents, key=lambda i: -i.risk)


def test_risk_monotone_in_evidence():
    one = risk_for([f("a", "scan", 0.6)])
    two_detectors = risk_for([f("a", "scan", 0.6), f("a", "scan", 0.6, detector="other")])
    repeated = risk_for([f("a", "scan", 0.6)] * 8)
    assert one == 60 and two_detectors > repeated > one
    assert repeated <= 66  # repetition alone cannot promote a medium to high


def test_story_links_raise_risk_and_are_named():
    alone = correlate([f("bot", "c2-beacon", 0.6)])[0]
    story = correlate([f("bot", "c2-beacon", 0.6), f("bot", "scan", 0.6), f("bot", "ddos", 0.6)])
    beacon = next(i for i in story if i.category == "c2-beacon")
    assert beacon.risk > alone.risk
    assert any("ddos, scan" in e for e in beacon.evidence)
    # Context categories (policy, novelty) do not make a story.
    ctx_only = correlate([f("dev", "anomaly", 0.3), f("dev", "policy-violation", 0.3)])
    assert all(i.risk == 30 for i in ctx_only)


def test_critical_device_class_weighs_more_and_mitre_union():
    ctx = Context()
    ctx.add_device(DeviceInfo(device_id="plc-1", ip="10.0.0.9", device_class="PLC"))
    a = Finding("plc-1", "scan", "scan", 0.6, 0, 1, ["x"], ["T1046"], device_id="plc-1")
    b = Finding("plc-1", "scan", "other", 0.5, 2, 3, ["y"], ["T1018"], device_id="plc-1")
    inc = correlate([a, b], ctx)[0]
    plain = correlate([a, b])[0]
    # the findings' own ids, then ATT&CK for ICS for a PLC (fleetwarden.detection.attack)
    assert inc.risk > plain.risk and inc.mitre == ["T1046", "T1018", "T0846"]
    assert plain.mitre == ["T1046", "T1018"]
    assert inc.severity in ("high", "critical") and plain.severity in ("medium", "high")


def test_weak_signal_stays_low_unless_corroborated_or_linked():
    ctx = Context()
    ctx.add_device(DeviceInfo(device_id="plc-2", ip="10.0.0.8", device_class="plc"))
    weak = [
        Finding("plc-2", "anomaly", "novelty", 0.35, t, t + 1, ["x"], [], device_id="plc-2") for t in range(8)
    ]
    alone = correlate(weak, ctx)[0]
    assert alone.severity == "low"  # repeated and on a critical class, still one weak witness
    second = Finding("plc-2", "anomaly", "flowmodel", 0.35, 9, 10, ["y"], [], device_id="plc-2")
    assert correlate([*weak, second], ctx)[0].severity == "medium"  # a second detector agrees
    beacon = Finding("bot", "c2-beacon", "beacon", 0.3, 0, 1, ["z"], ["T1071"])
    assert correlate([beacon])[0].severity == "low"
    story = correlate([beacon, Finding("bot", "scan", "scan", 0.9, 0, 1, ["s"], ["T1046"])])
    assert next(i for i in story if i.category == "c2-beacon").risk > 30  # linked to the scan
