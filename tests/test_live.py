"""The live path over a real Mosquitto broker: publish, subscribe, decode, detect."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from fleetwarden.app.watch import watch
from fleetwarden.core.errors import InputError
from fleetwarden.core.events import EventBatch
from fleetwarden.sources import ReadStats, SourceError
from fleetwarden.sources.mqtt import MqttEventSource, parse_mqtt_url, publish_batches


def _url(broker: tuple[str, int]) -> str:
    return f"mqtt://{broker[0]}:{broker[1]}"


def _prefix() -> str:
    # a topic tree of our own, so parallel runs on one broker do not see each other
    return f"fwtest-{uuid.uuid4().hex[:8]}/events"


def test_parse_mqtt_url():
    assert parse_mqtt_url("mqtt://10.0.0.1").port == 1883
    t = parse_mqtt_url("mqtts://user:pw@broker.example:9999")
    assert (t.host, t.port, t.tls, t.username) == ("broker.example", 9999, True, "user")
    with pytest.raises(InputError, match="bad MQTT URL"):
        parse_mqtt_url("http://x")


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot connect"):
        MqttEventSource("mqtt://127.0.0.1:1").start()


def _publish_raw(broker, topic: str, payloads: list[bytes]) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    c.connect(*broker)
    c.loop_start()
    for p in payloads:
        c.publish(topic, p, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def _collect(source: MqttEventSource, seconds: float, until=None) -> list[EventBatch]:
    got: list[EventBatch] = []
    deadline = time.monotonic() + seconds
    with source:
        source.subscribed.wait(5)
        if until is not None:
            until()
        while time.monotonic() < deadline:
            got += source.drain()
            time.sleep(0.05)
        got += source.drain()
    return got


@pytest.mark.mqtt
def test_bad_payloads_are_counted_and_good_ones_kept(mqtt_broker):
    prefix = _prefix()
    stats = ReadStats()
    src = MqttEventSource(_url(mqtt_broker), f"{prefix}/#", stats=stats, flush_interval=0.05)
    good = {"kind": "telemetry", "ts": 1700000000.0, "metric": "temp", "value": 21.5}
    payloads = [
        json.dumps(good).encode(),
        b"{not json",
        b"\xff\xfe garbage",
        json.dumps({"kind": "nope", "ts": 1}).encode(),
        json.dumps([good, {**good, "value": 22.0}]).encode(),
        (json.dumps(good) + "\n" + json.dumps({**good, "value": 23.0})).encode(),
    ]
    got = _collect(src, 2.0, until=lambda: _publish_raw(mqtt_broker, f"{prefix}/sensor-7", payloads))
    rows = [r for b in got for r in b.to_pylist()]
    assert sorted(r["value"] for r in rows) == [21.5, 21.5, 21.5, 22.0, 23.0]
    # the device id came from the topic, since the records did not carry one
    assert {r["device_id"] for r in rows} == {"sensor-7"}
    assert stats.skipped == 3
    assert all("sensor-7" in p for p in stats.problems)
    assert any("unknown kind" in p for p in stats.problems)


@pytest.mark.mqtt
def test_simulated_mirai_camera_detected_live_over_the_broker(mqtt_broker):
    from fleetwarden.control.inventory import context_from_fleet
    from fleetwarden.simulate import simulate_fleet

    fleet = simulate_fleet(devices=30, hours=2, seed=5, scenarios=["mirai-camera"])
    camera = fleet.truth("mirai-camera").device_ids[0]
    prefix = _prefix()
    stats = ReadStats()
    src = MqttEventSource(_url(mqtt_broker), f"{prefix}/#", stats=stats, flush_interval=0.1)
    src.start()
    src.subscribed.wait(5)
    sent = {}

    def publish():
        sent["n"] = publish_batches(
            fleet.iter_batches(seconds=120), _url(mqtt_broker), prefix=prefix, per_message=50, rate=5000
        )
        # the broker has acknowledged every message; stop once the subscriber has them all
        deadline = time.monotonic() + 60
        while stats.records + stats.skipped < sent["n"] and time.monotonic() < deadline:
            time.sleep(0.05)
        src.stop()

    t = threading.Thread(target=publish)
    t.start()
    try:
        result = watch(src.batches(60), ctx=context_from_fleet(fleet))
    finally:
        t.join()
        src.close()
    assert stats.skipped == 0
    assert result.events == sent["n"] == fleet.event_count()
    cats = {i.category for i in result.incidents if i.entity == camera}
    assert {"scan", "c2-beacon"} <= cats, cats


def test_mqtt_decode_never_raises_on_damaged_payloads():
    """Any payload bytes: good records delivered, bad ones counted, nothing raised (no broker needed)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    good = json.dumps({"kind": "telemetry", "ts": 1.0, "metric": "m", "value": 1.0}).encode()

    @settings(max_examples=40, deadline=None, database=None)
    @given(st.lists(st.one_of(st.binary(max_size=80), st.just(good)), min_size=1, max_size=8))
    def check(payloads):
        stats = ReadStats()
        src = MqttEventSource("mqtt://127.0.0.1:1883", stats=stats)
        got = src._decode([("site/events/dev-1", p, 0.0) for p in payloads])
        n_good = sum(1 for p in payloads if p == good)
        assert sum(len(b) for b in got) >= n_good
        assert stats.records == sum(len(b) for b in got)

    check()
