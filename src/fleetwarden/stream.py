"""The live driver: a stream source feeding the same detection engine that replays files.

``watch`` pulls batches from a live source (today :class:`~fleetwarden.sources.mqtt.MqttEventSource`),
runs them through :class:`~fleetwarden.detection.engine.Engine` as they arrive, hands every
finding to ``on_finding`` at once, and correlates the findings into incidents at the end.
Latency from arrival to finding is the source's flush interval plus the engine's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fleetwarden.detection.analytics.base import Context
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding, Incident


@dataclass
class WatchResult:
    findings: list[Finding] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    # wall-clock seconds from a batch's hand-over to the engine until its findings were out
    engine_latency: list[float] = field(default_factory=list)


def watch(
    batches: Iterable[EventBatch],
    *,
    ctx: Context | None = None,
    model_dir: Path | None = None,
    on_finding: Callable[[Finding], None] | None = None,
) -> WatchResult:
    from fleetwarden.correlation import correlate
    from fleetwarden.detection.engine import Engine, warm_up

    flow_model = None
    if model_dir is not None:
        from fleetwarden.detection.flowmodel import load_model

        flow_model = load_model(model_dir)
    ctx = ctx if ctx is not None else Context()
    engine = Engine(ctx=ctx, flow_model=flow_model)
    warm_up()  # before the first event: its findings should not wait for data files to load
    result = WatchResult()
    t0 = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        found = engine.process(batch)
        result.engine_latency.append(time.perf_counter() - t)
        result.events += len(batch)
        result.batches += 1
        _emit(found, result, on_finding)
    _emit(engine.flush(), result, on_finding)
    result.incidents = correlate(result.findings, ctx)
    result.seconds = time.perf_counter() - t0
    return result


def _emit(found: list[Finding], result: WatchResult, on_finding: Callable[[Finding], None] | None) -> None:
    result.findings.extend(found)
    if on_finding is not None:
        for f in found:
            on_finding(f)
