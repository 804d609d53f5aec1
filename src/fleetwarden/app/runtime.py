"""Process-level settings a detection run needs and the pure core must not touch: the
garbage-collector policy and the warm-up of first-use costs.

Garbage collection: the analytics' state is millions of long-lived dict and list entries, and
CPython's full (generation 2) collections traverse all of them, a pause that grows with the
fleet (measured by bench/bench_streaming.py: 0.4 s to 1.2 s every few seconds at 10,000
events/s, the p99 of a 100 ms batch 355 ms).  After each batch :class:`GcPolicy` collects the
young generations and freezes the survivors (:func:`gc.freeze`), so state is never traversed
again: batch p99 45 ms, a third less CPU in all.  State is freed by reference counting when
analytics drop it (they build no reference cycles); once an hour a full collection still runs,
for cycles left by other code in the process.
"""

from __future__ import annotations

import gc
import threading
import time

__all__ = ["GcPolicy", "warm_up"]

FULL_GC_EVERY = 3600.0  # wall seconds between full collections of everything, frozen state included
SETTLE_EVERY = 0.05  # wall seconds: at most 20 settles a second


class GcPolicy:
    """Keep long-lived detection state out of full collections (see the module docstring).

    One instance per session; the collector itself is process-wide, so two sessions in one
    process simply settle more often, never less."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._last_full = time.monotonic()
        self._last_settle = -1.0

    def settle(self) -> None:
        """Collect the young generations, then move the survivors out of the collector's reach;
        once an hour unfreeze and collect everything.  Throttled: many small batches in a row (a
        worker's partitions, a replay) settle once."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_settle < SETTLE_EVERY:
            return
        if now - self._last_full > FULL_GC_EVERY:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
        else:
            gc.collect(1)
        gc.freeze()
        self._last_settle = time.monotonic()


_warm = False
_warm_lock = threading.Lock()


def warm_up() -> None:
    """Pay the analytics' first-use costs now, once per process: the bundled GeoIP and public-suffix
    data, lazily imported modules, first calls of the Arrow kernels (about 0.3 s in all, measured by
    bench/bench_mqtt_stream.py as the latency of the first findings of a live stream).  Runs half an
    hour of a small simulated fleet through a throwaway engine; a live watcher and a worker call it
    before their first event."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        from fleetwarden.detection.engine import Engine
        from fleetwarden.simulate import simulate_fleet

        fleet = simulate_fleet(devices=24, hours=0.5, seed=0, scenarios=[])
        engine = Engine()
        for batch in fleet.iter_batches(seconds=600):
            engine.process(batch)
        engine.flush()
        _warm = True
