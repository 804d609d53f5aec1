"""The live pipeline inside ``fleetwarden serve``: detection on an MQTT stream or the bus, in the
same process as the API and the console (the single-node case of issue 11).

:class:`LivePipeline` runs in one background thread.  With ``mqtt`` it subscribes to ``topic``
(:class:`~fleetwarden.sources.mqtt.MqttEventSource`, as ``fleetwarden watch``) and runs what
arrives through a :class:`~fleetwarden.app.session.DetectionSession`, recording the findings
made so far to the store every ``record_every`` seconds (joined to the stored stories, as the
worker's checkpoints are), so that incidents show in the console while the stream runs (the
console polls).  With ``bus`` it runs a :class:`~fleetwarden.app.worker.Worker` owning every
partition of the stream (as ``fleetwarden worker --db``), checkpointing and recording every
``record_every`` seconds.  Both read the store's inventory and signed firmware registry as their
context, like ``watch`` and ``worker``.

Errors never stop the API: an attempt that fails (broker unreachable, database busy, a bug) is
reported as one line through ``on_error`` (default: standard error) and retried after a back-off
(``retry_after`` seconds, doubling up to a minute) until :meth:`LivePipeline.stop`.  Options that
can never work (a bad URL, a missing TLS file, both sources) raise :class:`LiveError` at
construction, before anything is served.

Blind spots: the context is read when an attempt starts (devices registered later are named by
their address until the next restart); an MQTT attempt that fails loses the engine's in-memory
state and the findings not yet recorded (the bus resumes from its last checkpoint); at most one
source per process (several workers and brokers: run ``fleetwarden worker``/``watch`` beside it).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetwarden.core.errors import InputError
from fleetwarden.core.text import one_line, redact_url

__all__ = ["LiveError", "LivePipeline"]

MAX_BACKOFF_S = 60.0
MAX_TOPIC = 1024
MAX_NAME = 255


class LiveError(InputError):
    """Live-pipeline options that cannot work (checked before the server starts)."""


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class LivePipeline:
    """Detection on ``mqtt`` (``mqtt://host:port``) or ``bus`` (``nats://host:port``), recorded to
    the store at ``store_url``, in a background thread: :meth:`start`, then :meth:`stop`.

    MQTT options: ``topic`` (a filter; ``{device}`` marks the device level), ``device_level``
    (as ``watch --device-level``), ``tls_ca``/``tls_cert``/``tls_key`` (files).  Bus options:
    ``stream``, ``partitions`` (the publisher's), ``subjects`` (the subject prefix).  ``model``: a
    flow-model directory (optional).  ``on_error`` and ``on_status`` get one line each (a failed
    attempt; the MQTT subscription made), standard error by default.  Counters: :attr:`events`, :attr:`findings`,
    :attr:`records` (store writes that wrote something), :attr:`errors`.
    """

    def __init__(
        self, store_url: str | None, *, mqtt: str | None = None, bus: str | None = None,
        topic: str = "fleetwarden/events/#", device_level: int | str | None = None,
        tls_ca: str | Path | None = None, tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
        stream: str = "FLEETWARDEN", partitions: int = 8, subjects: str = "fleetwarden.events",
        model: Any = None, record_every: float = 5.0, retry_after: float = 2.0,
        on_error: Callable[[str], Any] | None = None, on_status: Callable[[str], Any] | None = None,
    ) -> None:  # fmt: skip
        self.store_url = store_url
        self.mqtt, self.bus = mqtt, bus
        self.topic, self.device_level = topic, device_level
        self.tls = (_opt(tls_ca), _opt(tls_cert), _opt(tls_key))
        self.stream, self.partitions, self.subjects = stream, partitions, subjects
        self.model = model
        self.record_every = record_every
        self.retry_after = retry_after
        self.on_error = on_error or _stderr
        self.on_status = on_status or _stderr
        self._check()
        self.events = self.findings = self.records = self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Any = None

    # ---- options --------------------------------------------------------------------------------
    def _check(self) -> None:
        if (self.mqtt is None) == (self.bus is None):
            raise LiveError("give one live source: --mqtt URL or --bus URL")
        if not 0.1 <= self.record_every <= 3600:
            raise LiveError(f"--record-every {self.record_every}: expected 0.1-3600 seconds")
        if self.mqtt is not None:
            self._check_mqtt()
        else:
            self._check_bus()

    def _check_mqtt(self) -> None:
        if not self.topic or len(self.topic) > MAX_TOPIC:
            raise LiveError(f"--topic: expected 1-{MAX_TOPIC} characters")
        for flag, path in zip(("--mqtt-tls-ca", "--mqtt-tls-cert", "--mqtt-tls-key"), self.tls, strict=True):
            if path is not None and not Path(path).is_file():
                raise LiveError(f"{flag} {one_line(path, 200)}: no such file")
        if (self.tls[1] is None) != (self.tls[2] is None):
            raise LiveError("--mqtt-tls-cert and --mqtt-tls-key go together")
        self._mqtt_source()  # parses the URL and the device level (no connection yet)

    def _check_bus(self) -> None:
        from fleetwarden.bus.jetstream import parse_bus_url

        parse_bus_url(self.bus)
        if not 1 <= self.partitions <= 4096:
            raise LiveError(f"--partitions {self.partitions}: expected 1-4096")
        for flag, name in (("--stream", self.stream), ("--subjects", self.subjects)):
            if not name or len(name) > MAX_NAME or any(c.isspace() for c in name):
                raise LiveError(f"{flag}: expected 1-{MAX_NAME} characters without spaces")

    @property
    def source(self) -> str:
        """What the pipeline reads, password masked (for a banner)."""
        if self.mqtt is not None:
            return f"mqtt {redact_url(self.mqtt)} {one_line(self.topic, 200)}"
        return f"bus {redact_url(self.bus or '')} stream {one_line(self.stream, 200)}"

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LivePipeline:
        """Start the background thread (returns at once; the first connection happens there)."""
        if self._thread is not None:
            raise RuntimeError("LivePipeline already started")
        self._thread = threading.Thread(target=self._loop, name="fleetwarden-live", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to finish (pending findings flushed and recorded) and wait for it."""
        self._stop.set()
        if self._worker is not None:
            self._worker.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        """Attempts until stopped: each failure reported, then a growing pause."""
        backoff = self.retry_after
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._attempt()
            except Exception as exc:  # noqa: BLE001 - reported, never kills the API
                self._report(exc)
            else:
                return
            if time.monotonic() - started > MAX_BACKOFF_S:
                backoff = self.retry_after  # it ran a while: a fresh failure, not the same one
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _report(self, exc: BaseException) -> None:
        self.errors += 1
        kind = "" if isinstance(exc, InputError) else f"{type(exc).__name__}: "
        self.on_error(f"live pipeline ({self.source}): {kind}{one_line(exc, 500)}; retrying")

    def _attempt(self) -> None:
        from fleetwarden.app.stores import store_at

        with store_at(self.store_url) as store:
            if self.mqtt is not None:
                self._run_mqtt(store)
            else:
                self._run_bus(store)

    # ---- MQTT -----------------------------------------------------------------------------------
    def _mqtt_source(self) -> Any:
        from fleetwarden.sources.mqtt import MqttEventSource, MqttTls

        tls = MqttTls(*self.tls) if any(self.tls) else None
        return MqttEventSource(self.mqtt, self.topic, device_level=self.device_level, tls=tls)

    def _run_mqtt(self, store: Any) -> None:
        """Drain the subscription every flush interval; record every ``record_every`` seconds and
        at the end (after a flush of the findings still pending)."""
        from fleetwarden.app.session import DetectionSession

        session = DetectionSession(
            ctx=_context(store), model=self.model, store=store, source=f"mqtt:{redact_url(self.mqtt)}",
            warm=True, keep_findings=False,
        )  # fmt: skip
        with self._mqtt_source() as source:
            if source.subscribed.wait(10):
                self.on_status(f"live pipeline: subscribed ({self.source})")
            last = time.monotonic()
            while not self._stop.wait(source.flush_interval):
                self._process(session, source.drain())
                if time.monotonic() - last >= self.record_every:
                    self._record(session)
                    last = time.monotonic()
            self._process(session, source.drain())
        self.findings += len(session.flush())
        self._record(session, final=True)

    def _process(self, session: Any, batches: list) -> None:
        for batch in batches:
            self.findings += len(session.process(batch))
            self.events += len(batch)

    def _record(self, session: Any, final: bool = False) -> None:
        if session.record(final=final) is not None:
            self.records += 1

    # ---- the bus --------------------------------------------------------------------------------
    def _run_bus(self, store: Any) -> None:
        """One worker owning every partition, recording at each checkpoint; resumes from the last."""
        import asyncio

        from fleetwarden.app.worker import Worker

        worker = Worker(
            self.bus, store, partitions=self.partitions, stream=self.stream, prefix=self.subjects,
            record=True, ctx=_context(store), flow_model=self.model, checkpoint_every=self.record_every,
        )  # fmt: skip
        self._worker = worker
        if self._stop.is_set():
            return
        try:
            result = asyncio.run(worker.run())
        finally:
            self._worker = None
        self.events += result.events
        self.findings += result.findings
        self.records += result.checkpoints


def _opt(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _context(store: Any) -> Any:
    """The store's inventory and signed firmware registry: the context ``watch`` and ``worker`` read."""
    from fleetwarden.app.firmware import with_registry
    from fleetwarden.app.inventory import context_from_store

    return with_registry(context_from_store(store), store)
