"""Hostile payloads and topics on the live path: MQTT (and NATS, which shares the decoder).

:func:`fleetwarden.sources.jsonl.decode_events` is what the MQTT source and the NATS worker run
on every payload they receive.  Hostile records (markup, escape sequences, NUL, bidi, lone
surrogates, invalid UTF-8, megabyte-long values, credentials) are mixed with good ones: the good
ones are always delivered, the refused ones always counted, never raised, and the batches go
through the live detection session (:func:`fleetwarden.app.watch.watch`) with a store.  Against
the real Mosquitto broker: the same payloads end to end, and ``device_level`` reading the
device id off any topic layout.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.test_hostile_input import HOSTILE, HUGE, _terminal, assert_terminal_safe

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import max_lengths
from fleetwarden.sources import ReadStats
from fleetwarden.sources.jsonl import decode_events
from fleetwarden.sources.mqtt import MqttEventSource, topic_device

GOOD = {"kind": "telemetry", "ts": 1_700_000_000.0, "metric": "temp", "value": 21.5, "device_id": "sensor-1"}
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _hostile_record(field: str, text: str) -> bytes:
    kind = (
        "auth"
        if field in ("user", "reason", "service")
        else "command"
        if field in ("command", "args")
        else "telemetry"
    )
    base = {
        "auth": {"kind": "auth", "ts": 1_700_000_001.0, "user": "u", "success": False, "device_id": "gw-1"},
        "command": {"kind": "command", "ts": 1_700_000_002.0, "command": "reboot", "device_id": "plc-1"},
        "telemetry": GOOD,
    }[kind]
    return json.dumps({**base, field: text}).encode()


payloads = st.lists(
    st.one_of(
        st.just(json.dumps(GOOD).encode()),
        st.builds(
            _hostile_record,
            st.sampled_from(
                ["device_id", "metric", "unit", "user", "reason", "service", "command", "args", "kind"]
            ),
            st.one_of(st.sampled_from(sorted(HOSTILE.values())), st.just(HUGE), st.text(max_size=30)),
        ),
        st.binary(max_size=40),
        st.just(b"\xff\xfe" + json.dumps(GOOD).encode()),
        st.just(json.dumps([GOOD, {**GOOD, "device_id": HUGE}]).encode()),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=payloads)
def test_decode_events_keeps_good_records_and_counts_hostile_ones(payloads) -> None:
    data = b"\n".join(p.replace(b"\n", b" ") for p in payloads) + b"\n"
    groups, errors = decode_events(data)
    delivered = sum(len(b) for b, _lines in groups.values())
    good = sum(1 for p in payloads if p == json.dumps(GOOD).encode())
    assert delivered >= good
    for batch, lines in groups.values():
        assert len(lines) == len(batch)
        for name, limit in max_lengths(batch.kind).items():
            longest = max((len(v) for v in batch[name].to_pylist() if v is not None), default=0)
            assert longest <= limit, (name, longest)
    for _line, problem in errors:
        assert isinstance(problem, str)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payloads=payloads)
def test_live_session_on_hostile_payloads(tmp_path: Path, payloads) -> None:
    """The MQTT source's decode step, then the live session with a store: no crash, problems safe."""
    from fleetwarden.app.watch import watch
    from fleetwarden.report import finding_line, incident_table
    from fleetwarden.store import open_store

    stats = ReadStats()
    src = MqttEventSource("mqtt://127.0.0.1:1883", "site/#", stats=stats, device_level="site/{device}/#")
    batches = src._decode([(f"site/{HOSTILE['osc8']}dev/x", p, 0.0) for p in payloads])
    assert stats.records == sum(len(b) for b in batches)
    for problem in stats.problems:
        assert "\n" not in problem and not _UNSAFE.findall(problem), repr(problem)
    store = open_store(f"sqlite:///{tmp_path / f'fw-{uuid.uuid4().hex}.db'}")
    try:
        result = watch(batches, store=store, source="mqtt:hostile")
    finally:
        store.close()
    assert_terminal_safe(_terminal(incident_table(result.incidents)))
    for f in result.findings:
        assert_terminal_safe(_terminal(finding_line(f)))


# ------------------------------------------------------------------------------ topic layouts


def test_topic_device_layouts() -> None:
    default = topic_device(None)
    assert default("fleetwarden/events/cam-1") == "cam-1"
    assert default("site/a/plc-7/telemetry") is None  # today's layout only
    assert topic_device(2)("site/a/plc-7/telemetry") == "plc-7"
    assert topic_device("-2")("site/a/plc-7/telemetry") == "plc-7"
    assert topic_device(7)("site/a/plc-7/telemetry") is None
    pattern = topic_device("site/+/{device}/telemetry")
    assert pattern("site/a/plc-7/telemetry") == "plc-7"
    assert pattern("site/a/plc-7/status") is None
    assert pattern("site/a/plc-7/telemetry/extra") is None
    assert topic_device("site/{device}/#")("site/plc-7/a/b") == "plc-7"
    assert topic_device("site/+/telemetry")("site/plc-7/telemetry") == "plc-7"  # the one wildcard
    for bad in ("site/a/b", "site/x{device}/t", "site/#/{device}", "{device}/{device}"):
        with pytest.raises(InputError, match="bad device_level"):
            topic_device(bad)


def _url(broker: tuple[str, int]) -> str:
    return f"mqtt://{broker[0]}:{broker[1]}"


def _publish(broker, messages: list[tuple[str, bytes]]) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    c.connect(*broker)
    c.loop_start()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def _collect(source: MqttEventSource, broker, messages, expect: int, seconds: float = 5.0) -> list:
    got = []
    with source:
        assert source.subscribed.wait(5)
        _publish(broker, messages)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and source.stats.records + source.stats.skipped < expect:
            got += source.drain()
            time.sleep(0.05)
        got += source.drain()
    return got


@pytest.mark.mqtt
@pytest.mark.parametrize(
    "topic, device_level",
    [
        ("{root}/site/+/+/telemetry", 3),
        ("{root}/site/+/+/telemetry", -2),
        ("{root}/site/#", "{root}/site/+/{{device}}/telemetry"),
        ("{root}/site/+/{{device}}/telemetry", None),
    ],
)
def test_device_level_names_the_device_on_any_topic_layout(mqtt_broker, topic, device_level) -> None:
    root = f"fwtest-{uuid.uuid4().hex[:8]}"
    topic = topic.format(root=root)
    if isinstance(device_level, str):
        device_level = device_level.format(root=root)
    record = {k: v for k, v in GOOD.items() if k != "device_id"}
    named = {**record, "value": 7.0, "device_id": "explicit-1"}
    src = MqttEventSource(
        _url(mqtt_broker), topic, stats=ReadStats(), flush_interval=0.05, device_level=device_level
    )
    messages = [
        (f"{root}/site/a/plc-7/telemetry", json.dumps(record).encode()),
        (f"{root}/site/b/plc-8/telemetry", json.dumps(named).encode()),
    ]
    rows = [r for b in _collect(src, mqtt_broker, messages, expect=2) for r in b.to_pylist()]
    assert sorted((r["device_id"], r["value"]) for r in rows) == [("explicit-1", 7.0), ("plc-7", 21.5)]


@pytest.mark.mqtt
def test_hostile_payloads_over_the_broker(mqtt_broker, tmp_path: Path) -> None:
    """Hostile records and topics end to end: good records kept, hostile ones counted, nothing raised,
    and the live session over what came through shows nothing raw."""
    from fleetwarden.app.watch import watch
    from fleetwarden.store import open_store

    root = f"fwtest-{uuid.uuid4().hex[:8]}/events"
    good = json.dumps({k: v for k, v in GOOD.items() if k != "device_id"}).encode()
    hostile = [
        json.dumps({**GOOD, "device_id": HUGE}).encode(),  # 1 MB device id
        b'{"kind": "telemetry", "ts": 1, "metric": "\\ud800", "value": 1, "device_id": "d"}',  # lone surrogate
        b'{"kind": "telemetry", "ts": 1, "metric": "\xff\xfe", "value": 1, "device_id": "d"}',  # not UTF-8
        json.dumps({**GOOD, "kind": HOSTILE["osc8"] + HOSTILE["secret-url"]}).encode(),
        json.dumps({**GOOD, "unit": HOSTILE["clear"] + "x" * 100}).encode(),  # over-long unit
    ]
    displayed = [
        json.dumps({**GOOD, f: HOSTILE[h]}).encode()
        for f, h in (("metric", "markup"), ("unit", "bidi"), ("device_id", "c1-csi"))
    ]
    messages = [(f"{root}/dev-{i}", p) for i, p in enumerate([good, *hostile, *displayed, good])]
    messages.append((f"{root}/{'d' * 1000}", good))  # the topic names a 1000-character device
    stats = ReadStats()
    src = MqttEventSource(_url(mqtt_broker), f"{root}/#", stats=stats, flush_interval=0.05)
    batches = _collect(src, mqtt_broker, messages, expect=len(messages))
    assert stats.records == 2 + len(displayed)
    assert stats.skipped == len(hostile) + 1
    assert any("field device_id is 1048576 characters, at most 128" in p for p in stats.problems)
    assert any("field device_id is 1000 characters, at most 128" in p for p in stats.problems)
    for problem in stats.problems:
        assert "\n" not in problem and not _UNSAFE.findall(problem) and "s3cret" not in problem, repr(problem)
    store = open_store(f"sqlite:///{tmp_path / 'fw.db'}")
    try:
        watch(batches, store=store, source=f"mqtt:{root}")
    finally:
        store.close()


def test_an_event_dated_far_ahead_is_refused_and_named() -> None:
    """A device whose clock runs a day ahead (or a hostile one) would move the live session's event
    time and age every device's context out of its windows: its event is skipped like a malformed
    record, named by topic and record; the rest of the message is kept."""
    now = time.time()
    events = [{"kind": "telemetry", "ts": t, "metric": "temp", "value": 21.0} for t in (now - 5, now + 86_400, now + 30)]
    stats = ReadStats()
    src = MqttEventSource("mqtt://127.0.0.1:1883", "site/#", stats=stats, device_level="site/{device}/#")
    (batch,) = src._decode([("site/cam-1/telemetry", json.dumps(events).encode(), now)])
    assert batch.np("ts").tolist() == [now - 5, now + 30]
    assert stats.records == 2 and stats.skipped == 1
    assert "record 2" in stats.problems[0] and "ahead of this clock" in stats.problems[0]
