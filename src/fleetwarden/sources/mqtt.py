"""Live events over MQTT: the streaming driver's source, and a publisher for simulated fleets.

Devices and gateways publish FleetWarden events as JSON (the JSON-lines format of
:mod:`fleetwarden.sources.jsonl`: one object with ``kind`` per line; a payload may hold
one object or many lines) to ``fleetwarden/events/<device_id>`` (any ``…/events/<device_id>``).
When a record has no ``device_id`` the topic supplies it, so a device need not repeat its
name.  Which topic level names the device is the source's ``device_level``: by default the
level after ``events`` (the layout above); an index (``2``: the third level, ``-1``: the last)
or a pattern marking the level with ``{device}`` (``site/+/{device}/telemetry``: other levels
literal, ``+`` or a final ``#``) serves any other layout.  A topic pattern given as the
subscription itself may carry ``{device}`` (it subscribes with ``+`` there).

:class:`MqttEventSource` subscribes (paho-mqtt), gathers payloads for ``flush_interval``
seconds and decodes them together into columnar batches: one Python call per flush, not
per message.  A bad payload is counted in the :class:`~fleetwarden.sources.ReadStats`
with its topic and problem and never stops the stream.  :func:`publish_fleet` drives a
broker with a simulated fleet (``fleetwarden simulate --mqtt URL``).

Blind spots: QoS 1 is at-least-once, so a reconnect can deliver a message twice; the
engine's findings are idempotent in the store, but counters may see the duplicate.  A
broker drops messages for a subscriber that falls behind once its queue is full
(Mosquitto: ``max_queued_messages``, 1000 by default): size that queue for bursts, or
let gateways pack many events into one message (``per_message``).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import MAX_AHEAD_S, EventBatch
from fleetwarden.core.text import redact_url
from fleetwarden.sources import ReadStats, SourceError

__all__ = ["DEFAULT_TOPIC", "MqttEventSource", "MqttTls", "parse_mqtt_url", "publish_batches", "topic_device"]

DEFAULT_TOPIC = "fleetwarden/events/#"
TOPIC_PREFIX = "fleetwarden/events"


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    files: MqttTls | None = None


@dataclass(frozen=True)
class MqttTls:
    """Mutual TLS settings (paho ``tls_set``): the CA that signed the broker's certificate (None: the
    system's), and this client's certificate and key (None: no client certificate).  Given, they
    switch TLS on whatever the URL's scheme."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def check(self) -> MqttTls:
        from pathlib import Path

        for what, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{what} {path}: no such file")
        if (self.cert is None) != (self.key is None):
            raise InputError("--tls-cert and --tls-key go together")
        return self


def with_tls(target: MqttTarget, tls: MqttTls | None) -> MqttTarget:
    """``target`` with mutual TLS ``tls`` (None: unchanged)."""
    if tls is None:
        return target
    from dataclasses import replace

    return replace(target, tls=True, files=tls.check())


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://[user[:pass]@]host[:port]`` (1883) or ``mqtts://…`` (8883, TLS)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parsed.hostname:
        raise InputError(f"bad MQTT URL {redact_url(url)!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    tls = parsed.scheme in ("mqtts", "ssl")
    return MqttTarget(
        host=parsed.hostname,
        port=parsed.port or (8883 if tls else 1883),
        tls=tls,
        username=parsed.username,
        password=parsed.password,
    )


def _client(target: MqttTarget, client_id: str = ""):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        files = target.files or MqttTls()
        client.tls_set(ca_certs=files.ca, certfile=files.cert, keyfile=files.key)
    return client


def _connect(client, target: MqttTarget, timeout: float = 5.0) -> None:
    try:
        client.connect(target.host, target.port, keepalive=30)
    except OSError as exc:
        raise SourceError(f"mqtt://{target.host}:{target.port}", None, f"cannot connect: {exc}") from None
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not client.is_connected():
        if time.monotonic() > deadline:
            client.loop_stop()
            raise SourceError(
                f"mqtt://{target.host}:{target.port}", None, "broker did not accept the connection"
            )
        time.sleep(0.01)


class MqttEventSource:
    """Subscribe to JSON events and yield :class:`EventBatch` objects as they arrive.

    ``batches(duration)`` yields every ``flush_interval`` seconds (when something came),
    until ``duration`` seconds passed or :meth:`stop` was called.  ``device_level`` says which
    topic level names the device of records without a ``device_id`` (see the module doc; None:
    ``…/events/<device_id>``, or the ``{device}`` level of ``topic`` when it has one).  Records
    the decoder refuses (bad JSON, an unknown kind, an over-long value) are counted in
    ``stats`` and skipped: a live stream never stops for one bad message.
    """

    def __init__(
        self,
        url: str,
        topic: str = DEFAULT_TOPIC,
        *,
        qos: int = 1,
        flush_interval: float = 0.1,
        stats: ReadStats | None = None,
        client_id: str = "",
        device_level: int | str | None = None,
        tls: MqttTls | None = None,
    ) -> None:
        self.target = with_tls(parse_mqtt_url(url), tls)
        if device_level is None and "{device}" in topic:
            device_level = topic
        self.device_of = topic_device(device_level)
        self.topic = topic.replace("{device}", "+")
        self.qos = qos
        self.flush_interval = flush_interval
        self.stats = stats if stats is not None else ReadStats()
        self.client_id = client_id
        self.messages = 0
        self._inbox: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._client = None
        self.subscribed = threading.Event()

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> MqttEventSource:
        client = _client(self.target, self.client_id)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a, **_k: self.subscribed.set()
        _connect(client, self.target)
        self._client = client
        return self

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    def __enter__(self) -> MqttEventSource:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_connect(self, client, _userdata, _flags, reason_code, _props=None) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=self.qos)

    def _on_message(self, _client, _userdata, msg) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), time.monotonic()))

    # consumption --------------------------------------------------------------------------
    def batches(self, duration: float | None = None) -> Iterator[EventBatch]:
        """Yield batches until ``duration`` seconds pass or :meth:`stop` is called."""
        if self._client is None:
            self.start()
        end = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                break
            wait = self.flush_interval if end is None else min(self.flush_interval, end - now)
            time.sleep(max(0.0, wait))
            yield from self.drain()
        yield from self.drain()

    def drain(self) -> list[EventBatch]:
        """Decode everything received so far into batches (one per kind)."""
        items: list[tuple[str, bytes, float]] = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if not items:
            return []
        self.messages += len(items)
        return self._decode(items)

    def _decode(self, items: list[tuple[str, bytes, float]]) -> list[EventBatch]:
        from fleetwarden.sources.jsonl import decode_events

        chunks: list[bytes] = []
        starts: list[int] = []
        topics: list[str] = []
        line = 1
        for topic, payload, _t in items:
            payload = payload.strip()
            if payload.startswith(b"["):
                payload = self._array_to_lines(topic, payload)
                if payload is None:
                    continue
            if not payload:
                self.stats.skip(SourceError(f"mqtt:{topic}", None, "empty payload"))
                continue
            payload = _with_device(payload.replace(b"\r\n", b"\n"), self.device_of(topic))
            starts.append(line)
            topics.append(topic)
            chunks.append(payload)
            line += payload.count(b"\n") + 1
        if not chunks:
            return []
        groups, errors = decode_events(b"\n".join(chunks) + b"\n")
        starts_arr = np.asarray(starts)
        for bad_line, problem in errors:
            k = int(np.searchsorted(starts_arr, bad_line, side="right") - 1)
            self.stats.skip(SourceError(f"mqtt:{topics[k]}", f"record {bad_line - starts[k] + 1}", problem))
        out = []
        ahead_of = time.time() + MAX_AHEAD_S
        for batch, lines in groups.values():
            ahead = batch.np("ts") > ahead_of
            for bad_line in lines[ahead].tolist():  # refused, named like a malformed record
                k = int(np.searchsorted(starts_arr, bad_line, side="right") - 1)
                where = f"record {bad_line - starts[k] + 1}"
                self.stats.skip(SourceError(f"mqtt:{topics[k]}", where, f"dated more than {MAX_AHEAD_S:.0f} s ahead of this clock"))
            if ahead.any():
                batch = batch.filter(~ahead)
            if len(batch):
                self.stats.records += len(batch)
                out.append(batch)
        return out

    def _array_to_lines(self, topic: str, payload: bytes) -> bytes | None:
        try:
            objs = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            self.stats.skip(SourceError(f"mqtt:{topic}", None, f"not valid JSON ({exc})"))
            return None
        if not isinstance(objs, list):
            self.stats.skip(SourceError(f"mqtt:{topic}", None, "expected a JSON object or array of objects"))
            return None
        return b"\n".join(json.dumps(o).encode() for o in objs)


def _with_device(payload: bytes, device: str | None) -> bytes:
    """Give records without a ``device_id`` the one their topic names (before validation)."""
    if device is None:
        return payload
    field = b'{"device_id":' + json.dumps(device).encode() + b","
    lines = payload.split(b"\n")
    for k, raw in enumerate(lines):
        stripped = raw.lstrip()
        if stripped.startswith(b"{") and b'"device_id"' not in stripped:
            lines[k] = field + stripped[1:]
    return b"\n".join(lines)


def _topic_device(topic: str) -> str | None:
    """``…/events/<device_id>`` names the device; other topics name none."""
    parts = topic.split("/")
    if len(parts) >= 2 and parts[-2] == "events" and parts[-1]:
        return parts[-1]
    return None


def topic_device(device_level: int | str | None) -> Callable[[str], str | None]:
    """The function that reads the device id off a topic, for a ``device_level`` of
    :class:`MqttEventSource`: None (``…/events/<device_id>``), an index of the level (an int, or
    a string holding one: ``2``, ``-1``), or a pattern with one ``{device}`` level (other levels
    literal, ``+``, or a final ``#``).  A topic that does not fit names no device (None).
    Raises ValueError for a pattern that cannot name one."""
    if device_level is None:
        return _topic_device
    if isinstance(device_level, str) and device_level.strip().lstrip("+-").isdigit():
        device_level = int(device_level)
    if isinstance(device_level, int):
        index = device_level

        def by_index(topic: str) -> str | None:
            parts = topic.split("/")
            return (parts[index] or None) if -len(parts) <= index < len(parts) else None

        return by_index
    levels = device_level.split("/")
    marked = [i for i, lv in enumerate(levels) if lv == "{device}"]
    if not marked and levels.count("+") == 1:
        marked = [levels.index("+")]  # the one wildcard level is the device's
    problem = None
    if any("{device}" in lv and lv != "{device}" for lv in levels):
        problem = "{device} must be a whole level"
    elif len(marked) != 1:
        problem = "mark exactly one level with {device}"
    elif "#" in levels[:-1] or any("#" in lv and lv != "#" for lv in levels):
        problem = "# may only be the last level"
    if problem:
        raise InputError(f"bad device_level topic pattern {device_level!r}: {problem}")
    at = marked[0]
    rest = "#" in levels
    fixed = [(i, lv) for i, lv in enumerate(levels) if lv not in ("+", "#", "{device}")]
    n = len(levels) - rest

    def by_pattern(topic: str) -> str | None:
        parts = topic.split("/")
        if len(parts) < n or (not rest and len(parts) != n):
            return None
        if any(parts[i] != lv for i, lv in fixed):
            return None
        return parts[at] or None

    return by_pattern


def publish_batches(
    batches: Iterable[EventBatch],
    url: str,
    *,
    prefix: str = TOPIC_PREFIX,
    per_message: int = 1,
    rate: float | None = None,
    qos: int = 1,
    on_sent: Callable[[int, float], None] | None = None,
    tls: MqttTls | None = None,
) -> int:
    """Publish events as JSON; returns the number of events sent.

    With ``per_message`` 1 each event goes to ``prefix/<device_id>``, as devices publish.
    With more, consecutive events (in time order, any device) are packed that many to a
    JSON-lines message on ``prefix/_gateway/batch``, as a gateway forwarding its devices
    does: far fewer messages for the broker to queue.  ``rate`` caps events per second;
    ``on_sent(events_so_far, monotonic_time)`` is called after each message is handed over.
    Messages are pipelined (paho keeps them in flight); the call returns once the broker
    acknowledged the last one.
    """
    from fleetwarden.sources.jsonl import encode_lines

    target = with_tls(parse_mqtt_url(url), tls)
    client = _client(target)
    client.max_queued_messages_set(0)
    _connect(client, target)
    sent = 0
    last = None
    lines: list[str] = []
    t0 = time.monotonic()

    def flush(topic: str) -> None:
        nonlocal last
        last = client.publish(topic, "\n".join(lines).encode(), qos=qos)
        lines.clear()
        if on_sent is not None:
            on_sent(sent, time.monotonic())

    try:
        for batch in batches:
            devices = batch.np("device_id", fill="")
            for line, device in zip(encode_lines(batch), devices, strict=True):
                lines.append(line)
                sent += 1
                if per_message <= 1:
                    flush(f"{prefix}/{device or 'unknown'}")
                elif len(lines) >= per_message:
                    flush(f"{prefix}/_gateway/batch")
                if rate and sent % 50 == 0:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        if lines:
            flush(f"{prefix}/_gateway/batch")
        if last is not None and qos:
            last.wait_for_publish(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()
    return sent
