"""The stories an analyst reads, pinned on real captures: the first evidence line says what happened,
to what, how much and since when, and what it usually means (issue 8).

The flow model used here is trained without the capture it tells about (leave-one-capture-out), so
no story leans on a model that saw its own capture.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import need_data

from fleetwarden.app import modeling
from fleetwarden.app.analyze import analyze
from fleetwarden.app.models import load_flow_model

IOT23 = ("4-1", "5-1", "8-1", "20-1", "34-1")


def _capture(key: str) -> Path:
    folder = need_data("iot23")
    return next(folder.glob(f"*-{key}-labeled.csv"))


@pytest.fixture(scope="module")
def model_without(tmp_path_factory):
    made: dict[str, object] = {}

    def get(left_out: str):
        if left_out not in made:
            d = tmp_path_factory.mktemp(f"without-{left_out}")
            modeling.train([_capture(k) for k in IOT23 if k != left_out], d)
            made[left_out] = load_flow_model(d)
        return made[left_out]

    return get


def _incident(result, category: str):
    return next(i for i in result.incidents if i.category == category)


def test_hakai_c2_retry_names_the_service_how_often_how_long_and_what_it_means():
    inc = _incident(analyze([_capture("8-1")]), "c2-beacon")
    assert inc.entity == "192.168.100.113" and inc.severity == "critical"
    assert inc.evidence[0] == (
        "4112 unanswered connection attempts to 178.128.185.250 tcp/50 over 22.8 h, one every 20.0 s on "
        "average (latest gaps: median 8.6 s, 90th percentile 48 s); never answered: the device keeps calling "
        "one external service that does not answer, as a bot does when its command-and-control server is "
        "down or blocked (C2 retry)"
    )
    assert "T1008" in inc.mitre


def test_hakai_flow_model_story_is_a_c2_retry_with_the_services_to_block(model_without):
    import re

    result = analyze([_capture("8-1")], model=model_without("8-1"))
    stories = [f for f in result.findings if f.detector == "flowmodel"]
    retries = [f for f in stories if f.category == "c2-beacon"]
    assert retries, [f.evidence[0] for f in stories]
    last = retries[-1]  # the episode told whole
    first_line = last.evidence[0]
    m = re.match(r"(\d+) attempts to 178\.128\.185\.250 tcp/50 over 22\.8 h \(one every 20 s\), 100% unanswered; "
                 r"also (\d+) attempts to 128\.185\.250\.50 tcp/50: ", first_line)  # fmt: skip
    assert m and int(m[1]) > 4000 and int(m[2]) > 4000, first_line
    assert first_line.endswith("(C2 retry)")
    assert last.attributes["block"] == ["178.128.185.250 tcp/50", "128.185.250.50 tcp/50"]
    assert last.evidence[1] == "block 178.128.185.250 tcp/50, 128.185.250.50 tcp/50"
    # the model's feature names come last, for whoever wants them
    assert last.evidence[-1].startswith("flow model: ")


def test_mirai_story_floods_then_calls_its_irc_c2():
    result = analyze([_capture("34-1")])
    assert {i.category for i in result.incidents[:2]} == {"ddos", "c2-beacon"}
    assert _incident(result, "ddos").evidence[0] == (
        "sent 400 flows / 400 packets (0.00 MB) to 123.59.209.185 within 0.5 s (745 packets/s), 100% "
        "unanswered (thresholds 200 unanswered flows or 5000 packets per 10 s): flood participation"
    )
    c2 = _incident(result, "c2-beacon")
    assert c2.evidence[0].startswith("5065 unanswered connection attempts to 185.244.25.235 tcp/6667 over 23.9 h")
    assert c2.evidence[0].endswith("(C2 retry)")
    # the flood and the C2 are one device's story: each raises the other's risk
    assert "same entity also shows: c2-beacon" in _incident(result, "ddos").evidence


def test_iot_sentinel_set_up_traffic_raises_nothing_above_low(model_without):
    """27 consumer device types being set up, none in IoT-23: nothing an analyst must look at, with
    or without the IoT-23 flow model (a device polling its hub, a 2 s cloud keep-alive for 90 s, a
    device retrying every address its cloud's name resolved to are low notes at most)."""
    captures = sorted(need_data("iot-sentinel").glob("*/*.pcap"))
    assert len(captures) > 300
    model = model_without("none")
    serious = []
    for path in captures:
        for m in (None, model):
            for inc in analyze([path], skip_bad=True, model=m).incidents:
                if inc.severity != "low":
                    serious.append((path.parent.name, path.name, inc.category, inc.severity, inc.evidence[0]))
    assert not serious, serious[:5]


def test_set_up_keep_alive_and_hub_polling_say_why_they_stay_low():
    bridge = analyze([need_data("iot-sentinel", "HueBridge", "Setup-A-1-STA.pcap")])
    beacon = _incident(bridge, "c2-beacon")
    assert beacon.severity == "low"
    assert beacon.evidence[0].startswith("45 connections to 130.211.93.93 tcp/80 every 2.0 s")
    assert any(e.startswith("periodic for only 96 s: a device being set up polls like this too") for e in
               beacon.findings[0].evidence)  # fmt: skip
    switch = analyze([need_data("iot-sentinel", "HueSwitch", "Setup-A-1-STA.pcap")])
    polling = _incident(switch, "brute-force")
    assert polling.severity == "low"
    # the incident's first line is its fullest finding: the whole minute of polling
    assert polling.evidence[0].startswith("132 short sessions to 10.10.10.6 tcp/80 (http) in 60 s")


def test_one_loaded_model_serves_many_runs_without_mixing_them(model_without):
    """Each engine scores through a stream of its own: the same capture analysed twice with one loaded
    model tells the same story (the model's per-device context used to carry over between runs)."""
    model = model_without("none")
    path = need_data("iot-sentinel", "HueSwitch", "Setup-A-1-STA.pcap")

    def told():
        return [(f.category, f.first_seen, tuple(f.evidence)) for f in analyze([path], model=model).findings]

    assert told() == told()
