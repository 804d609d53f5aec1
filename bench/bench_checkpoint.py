"""Engine checkpoints: size and encode/decode time of the state format against pickle.

    .venv/bin/python bench/bench_checkpoint.py [DEVICES:HOURS ...]

For each simulated fleet (default ``60:4`` and ``300:6``, all scenarios) an engine runs half the
events, then its state is written and read back with :func:`fleetwarden.detection.checkpoint.encode_engine`
/ :func:`~fleetwarden.detection.checkpoint.decode_engine` (compressed and not) and with
``pickle.dumps(engine, protocol=5)`` / ``pickle.loads`` (what the worker stored before; context and
model detached as it did).  Times are the best of seven, first with the collector as a plain
process has it, then with the engine's state frozen out of it (:func:`gc.freeze`, what a worker's
:class:`~fleetwarden.app.runtime.GcPolicy` does after every batch).
"""

from __future__ import annotations

import gc
import pickle
import sys
import time
from collections.abc import Callable

from fleetwarden.control.inventory import context_from_fleet
from fleetwarden.detection.checkpoint import decode_engine, encode_engine
from fleetwarden.detection.engine import Engine
from fleetwarden.simulate import simulate_fleet


def best(fn: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def pickle_engine(engine: Engine) -> bytes:
    ctx, model = engine.ctx, engine.flow_model
    engine.ctx, engine.flow_model = None, None
    try:
        return pickle.dumps(engine, protocol=5)
    finally:
        engine.ctx, engine.flow_model = ctx, model


def measure(devices: int, hours: float) -> None:
    fleet = simulate_fleet(devices=devices, hours=hours, seed=3)
    ctx = context_from_fleet(fleet)
    batches = list(fleet.iter_batches(seconds=60))
    engine = Engine(ctx=ctx)
    for b in batches[: len(batches) // 2]:
        engine.process(b)
    print(f"{devices} devices, {hours:g} h, checkpoint after {engine.events} events")
    for frozen in (False, True):
        if frozen:
            gc.collect()
            gc.freeze()
        label = "gc frozen" if frozen else "gc default"
        blob = pickle_engine(engine)
        enc, dec = best(lambda: pickle_engine(engine)), best(lambda b=blob: pickle.loads(b))
        print(
            f"  {label:10s} pickle            {len(blob) / 1e6:7.2f} MB  encode {enc * 1e3:6.1f} ms  decode {dec * 1e3:6.1f} ms"
        )
        for compress in (False, True):
            blob = encode_engine(engine, compress=compress)
            enc = best(lambda c=compress: encode_engine(engine, compress=c))
            dec = best(lambda b=blob: decode_engine(b, ctx))
            name = "state, zlib" if compress else "state, raw"
            print(
                f"  {label:10s} {name:17s} {len(blob) / 1e6:7.2f} MB  encode {enc * 1e3:6.1f} ms  decode {dec * 1e3:6.1f} ms"
            )
        if frozen:
            gc.unfreeze()


def main() -> None:
    specs = sys.argv[1:] or ["60:4", "300:6"]
    for spec in specs:
        devices, hours = spec.split(":")
        measure(int(devices), float(hours))


if __name__ == "__main__":
    main()
