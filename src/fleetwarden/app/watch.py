"""The ``watch`` service: a live event stream through the same session that replays files.

``watch`` pulls batches from a live source (today
:class:`~fleetwarden.sources.mqtt.MqttEventSource`), runs them through a
:class:`~fleetwarden.app.session.DetectionSession` as they arrive, hands every finding to
``on_finding`` at once, and correlates the findings into incidents at the end (and records them,
with a store).  Latency from arrival to finding is the source's flush interval plus the engine's
time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.app.session import DetectionSession
from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding, Incident

__all__ = ["LiveWatchResult", "WatchResult", "watch", "watch_mqtt"]


@dataclass
class WatchResult:
    findings: list[Finding] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    # wall-clock seconds from a batch's hand-over to the engine until its findings were out
    engine_latency: list[float] = field(default_factory=list)
    recorded: Any = None


def watch(
    batches: Iterable[EventBatch],
    *,
    ctx: Context | None = None,
    model: Any = None,
    on_finding: Callable[[Finding], None] | None = None,
    store: Any = None,
    source: str = "live",
) -> WatchResult:
    """Detect on ``batches`` as they come; ``model`` is a model directory or a loaded model."""
    session = DetectionSession(
        ctx=ctx, model=model, on_finding=on_finding, store=store, source=source, warm=True, keep_latency=True
    )
    t0 = time.perf_counter()
    session.run(batches)
    result = WatchResult(
        findings=session.findings,
        incidents=session.incidents(),
        events=session.stats.events,
        batches=session.stats.batches,
        engine_latency=session.stats.engine_latency,
    )
    result.recorded = session.record(final=True)
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class LiveWatchResult(WatchResult):
    stats: Any = None  # the source's ReadStats: records accepted, skipped and why


def watch_mqtt(
    url: str,
    topic: str,
    *,
    duration: float | None = None,
    ctx: Context | None = None,
    model: Any = None,
    on_finding: Callable[[Finding], None] | None = None,
    store: Any = None,
    device_level: int | str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> LiveWatchResult:
    """Subscribe to ``topic`` on the broker at ``url`` and :func:`watch` what arrives, until
    ``duration`` seconds pass or Ctrl-C (which ends the stream cleanly: pending findings are
    flushed and incidents correlated).  The inventory comes from ``store`` when ``ctx`` is None.
    ``device_level`` says which topic level names the device of a record without ``device_id``
    (see :class:`~fleetwarden.sources.mqtt.MqttEventSource`).  ``tls_ca``,
    ``tls_cert`` and ``tls_key`` (files: the CA of the broker's certificate, this client's certificate
    and key) switch on (mutual) TLS, for a broker that requires it."""
    import signal
    import threading

    from fleetwarden.app.inventory import context_from_store
    from fleetwarden.core.text import redact_url
    from fleetwarden.sources import ReadStats
    from fleetwarden.sources.mqtt import MqttEventSource

    if ctx is None and store is not None:
        from fleetwarden.app.firmware import with_registry

        ctx = with_registry(context_from_store(store), store)  # + the signed firmware registry
    stats = ReadStats()
    source = MqttEventSource(url, topic, stats=stats, device_level=device_level, tls=_tls(tls_ca, tls_cert, tls_key))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: source.stop())
    try:
        with source:
            base = watch(
                source.batches(duration),
                ctx=ctx,
                model=model,
                on_finding=on_finding,
                store=store,
                source=f"mqtt:{redact_url(url)}",
            )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return LiveWatchResult(**vars(base), stats=stats)


def _tls(ca: str | None, cert: str | None, key: str | None):
    """The MQTT TLS settings of three optional files (None when none is given)."""
    if ca is None and cert is None and key is None:
        return None
    from fleetwarden.sources.mqtt import MqttTls

    return MqttTls(ca=ca and str(ca), cert=cert and str(cert), key=key and str(key))
