"""Engine checkpoints: an :class:`~fleetwarden.detection.engine.Engine`'s detection state as bytes
that cannot run code when read (:mod:`fleetwarden.core.statecodec`), for the scale-out worker.

:func:`encode_engine` writes everything the engine has learnt (every analytic's tables, windows,
episodes and reservoirs, the pending flow-model alerts, the counters) but not its context
(inventory) or flow model: those come from the store and ``--model`` when a worker starts and
are handed to :func:`decode_engine`.  Objects shared inside the engine stay shared (beacon,
retry and exfiltration keep one :class:`~fleetwarden.detection.analytics.netcommon.Prevalence`).

The allow-list is every plain class defined in the engine's own modules (this package's
``engine`` and ``state``, ``netcommon`` and the analytics modules
:data:`~fleetwarden.detection.engine.ANALYTIC_MODULES` names): a table built from those modules
when first needed, in which class names from the data are looked up, never imported.  With it
goes one example instance per class (built once, whatever the data: without arguments, or by
the factories of :data:`_EXAMPLES`), so a loaded object must have the attributes its class has
now, arrays of the same dtype and dimensions: state written by a version whose classes differ
is refused with a message naming the class and the attribute, not discovered mid-stream as an
``AttributeError``.  A new analytic or state class needs nothing here; one whose constructor
takes arguments (and that is not a dataclass, checked by its fields) is loaded unchecked until
:data:`_EXAMPLES` gets a factory for it.

Measured by ``bench/bench_checkpoint.py`` at half-way through a simulated fleet with every
scenario, collector frozen as in a worker (pickle: what the worker stored before):

=====================  ===========  =====================  =====================
engine                 pickle       state, raw             state, zlib (default)
=====================  ===========  =====================  =====================
60 devices, 4 h        3.6 MB       2.9 MB                 0.8 MB
  encode / decode      49 / 33 ms   93 / 96 ms             116 / 105 ms
300 devices, 6 h       29.3 MB      6.3 MB                 2.2 MB
  encode / decode      82 / 87 ms   186 / 186 ms           235 / 219 ms
=====================  ===========  =====================  =====================

(Pickle's size is mostly whole Arrow buffers behind small table slices; this format writes
only the rows a slice holds and leaves the prevalence's last-batch table out.)

Blind spot: the format proves the bytes build only allow-listed objects of the right shape, not
that the numbers in them are sensible; the store's access control still decides who may write
a worker's state.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from fleetwarden import __version__
from fleetwarden.core.context import Context
from fleetwarden.core.statecodec import StateClasses, StateFormatError, decode_state, encode_state
from fleetwarden.detection.analytics.netcommon import Prevalence
from fleetwarden.detection.engine import ANALYTIC_MODULES, Engine, stream_of

__all__ = ["ENGINE_KIND", "decode_engine", "encode_engine", "engine_state_classes"]

ENGINE_KIND = "engine"
# Written as None: the context and model are re-attached on load; the prevalence's last table only
# serves an identity test against the next batch (which a loaded engine never shares).
TRANSIENT = {Engine: ("ctx", "flow_model"), Prevalence: ("_last_table",)}
_STATE_MODULES = (
    "fleetwarden.detection.engine",
    "fleetwarden.detection.flowstory",
    "fleetwarden.detection.state",
    "fleetwarden.detection.analytics.netcommon",
    *(f"fleetwarden.detection.analytics.{name}" for name in ANALYTIC_MODULES),
)
# Examples of the state classes whose constructor takes arguments ("module.Class" -> factory); the
# others are built without arguments.  Loaded objects are checked against them.
_EXAMPLES: dict[str, Callable[[type], Any]] = {
    "fleetwarden.detection.analytics.telemetry._Reservoirs": lambda cls: cls(4, 4, np.random.default_rng(0)),
    "fleetwarden.detection.analytics.scan._WindowTable": lambda cls: cls(60.0, 16),
    "fleetwarden.detection.analytics.auth.EpisodeBook": lambda cls: cls(60.0, 60.0),
}
_classes: StateClasses | None = None


def engine_state_classes() -> StateClasses:
    """The allow-list of engine state: the plain classes defined in the engine's modules, each with
    an example instance where one can be made (built once, whatever the data)."""
    global _classes
    if _classes is None:
        found, examples = [], []
        for name in _STATE_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                if exc.name == name:  # an analytics module absent from this build
                    continue
                raise
            for obj in vars(module).values():
                if isinstance(obj, type) and obj.__module__ == name and _is_plain(obj):
                    found.append(obj)
                    example = _example(obj)
                    if example is not None:
                        examples.append(example)
        _classes = StateClasses(found, TRANSIENT, examples)
    return _classes


def _example(cls: type) -> Any:
    factory = _EXAMPLES.get(f"{cls.__module__}.{cls.__qualname__}", lambda c: c())
    try:
        return factory(cls)
    except TypeError:  # needs arguments: checked by its dataclass fields, if it has them
        return None


def _is_plain(cls: type) -> bool:
    try:
        StateClasses([cls])
    except TypeError:
        return False  # a Protocol, an enum, a subclass of a builtin: never engine state
    return True


def encode_engine(engine: Engine, *, compress: bool = True) -> bytes:
    """The checkpoint bytes of ``engine``'s detection state (without its context and flow model).

    Raises ``TypeError`` naming the class and attribute when the engine holds a value the
    format does not carry: a bug in a new analytic's state, not bad input.
    """
    return encode_state(
        engine,
        engine_state_classes(),
        kind=ENGINE_KIND,
        writer=f"fleetwarden {__version__}",
        compress=compress,
    )


def decode_engine(blob: bytes | bytearray | memoryview, ctx: Context, flow_model: Any = None) -> Engine:
    """The engine of a checkpoint written by :func:`encode_engine`, with ``ctx`` and ``flow_model``
    attached.  Never runs code from the data; anything wrong raises
    :class:`~fleetwarden.core.statecodec.StateFormatError` (an ``InputError``) saying what."""
    engine, _meta = decode_state(blob, engine_state_classes(), kind=ENGINE_KIND)
    if type(engine) is not Engine:
        raise StateFormatError(f"checkpoint holds a {type(engine).__name__}, not an Engine")
    engine.ctx, engine.flow_model = ctx, stream_of(flow_model)
    return engine
