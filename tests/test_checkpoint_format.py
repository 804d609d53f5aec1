"""Engine checkpoints in the explicit state format: exact resumption, identical bytes, and refusal
(an InputError, nothing executed) of everything that is not such a checkpoint.

The engine is the one the worker runs: every analytic, over four hours of a simulated 60-device
fleet with all attack scenarios, checkpointed half-way.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import pickle
import re
import struct
import sys
import zlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwarden.control.inventory import context_from_fleet
from fleetwarden.core.context import Context
from fleetwarden.core.errors import InputError
from fleetwarden.core.statecodec import (
    FORMAT_VERSION,
    StateClasses,
    decode_state,
    encode_state,
    pack_frame,
    unpack_frame,
)
from fleetwarden.detection.analytics.beacon import BeaconDetector
from fleetwarden.detection.analytics.exfil import ExfilDetector
from fleetwarden.detection.analytics.netcommon import Prevalence
from fleetwarden.detection.analytics.retry import C2RetryDetector
from fleetwarden.detection.analytics.telemetry import TelemetryRange
from fleetwarden.detection.checkpoint import TRANSIENT, decode_engine, encode_engine, engine_state_classes
from fleetwarden.detection.engine import Engine
from fleetwarden.simulate import simulate_fleet

PREFIX = struct.Struct("<8sHHIQI")  # magic, version, flags, header length, heap length, CRC-32


# ------------------------------------------------------------------------------------ the engine
@functools.cache
def _fleet() -> tuple:
    """(fleet, its context, its one-minute batches); cached, not only a fixture, for the property tests."""
    fleet = simulate_fleet(devices=60, hours=4, seed=3)
    return fleet, context_from_fleet(fleet), list(fleet.iter_batches(seconds=60))


@pytest.fixture(scope="module")
def fleet():
    return _fleet()


def _key(f) -> tuple:
    return (
        f.detector,
        f.entity,
        f.category,
        f.score,
        f.first_seen,
        f.last_seen,
        tuple(f.evidence),
        f.to_dict(),
    )


@dataclasses.dataclass
class Halfway:
    found: list  # findings of an uninterrupted engine
    first: list  # findings of the first half
    engine: Engine  # the engine at half-way (test_encoding_leaves_the_engine_untouched runs it on)
    blob: bytes  # its checkpoint
    rng_state: dict  # its telemetry reservoirs' generator state


@pytest.fixture(scope="module")
def halfway(fleet) -> Halfway:
    _, ctx, batches = fleet
    reference = Engine(ctx=ctx)
    found = [f for b in batches for f in reference.process(b)] + reference.flush()
    engine = Engine(ctx=ctx)
    half = len(batches) // 2
    first = [f for b in batches[:half] for f in engine.process(b)]
    rng = next(a for a in engine.analytics if isinstance(a, TelemetryRange)).own_.rng
    return Halfway(found, first, engine, encode_engine(engine), rng.bit_generator.state)


def _finish(engine: Engine, batches) -> list:
    return [f for b in batches for f in engine.process(b)] + engine.flush()


def test_resumed_engine_finds_exactly_what_an_uninterrupted_one_finds(fleet, halfway):
    _, ctx, batches = fleet
    found, first, blob = halfway.found, halfway.first, halfway.blob
    assert found and len(first) < len(found)
    resumed = decode_engine(blob, ctx)
    assert resumed.ctx is ctx and resumed.flow_model is None
    rest = _finish(resumed, batches[len(batches) // 2 :])
    assert [_key(f) for f in first + rest] == [_key(f) for f in found]
    assert {f.category for f in found} >= {"scan", "c2-beacon", "ddos"}


def test_encoding_leaves_the_engine_untouched(fleet, halfway):
    _, ctx, batches = fleet
    found, first, engine, blob = halfway.found, halfway.first, halfway.engine, halfway.blob
    assert engine.ctx is ctx  # the context and model are left out of the blob, not taken from the engine
    assert encode_engine(engine) == blob
    rest = _finish(engine, batches[len(batches) // 2 :])
    assert [_key(f) for f in first + rest] == [_key(f) for f in found]


def test_decoded_state_encodes_to_identical_bytes(fleet, halfway):
    _, ctx, _ = fleet
    blob = halfway.blob
    assert encode_engine(decode_engine(blob, ctx)) == blob
    raw = encode_engine(decode_engine(blob, ctx), compress=False)
    assert len(raw) > len(blob)
    assert encode_engine(decode_engine(raw, ctx), compress=False) == raw
    assert encode_engine(decode_engine(memoryview(raw), Context())) == blob


def test_shared_objects_stay_shared(fleet, halfway):
    resumed = decode_engine(halfway.blob, fleet[1])
    by_type = {type(a): a for a in resumed.analytics}
    prevalence = by_type[BeaconDetector].prevalence
    assert isinstance(prevalence, Prevalence) and prevalence.by_key
    assert by_type[ExfilDetector].prevalence is prevalence
    assert by_type[C2RetryDetector].prevalence is prevalence
    telemetry = by_type[TelemetryRange]
    assert telemetry.own_.rng is telemetry.cohort_.rng
    # the analytics the engine dispatches to are the ones it lists, not copies
    assert all(any(a is b for b in resumed.analytics) for group in resumed._by_kind.values() for a in group)


def test_random_generators_continue_where_they_stopped(fleet, halfway):
    resumed = decode_engine(halfway.blob, fleet[1])
    again = next(a for a in resumed.analytics if isinstance(a, TelemetryRange)).own_.rng
    assert again.bit_generator.state == halfway.rng_state
    expected = np.random.Generator(np.random.PCG64())
    expected.bit_generator.state = halfway.rng_state
    assert np.array_equal(again.random(8), expected.random(8))


def test_the_blob_describes_itself_and_omits_context_and_model(halfway):
    header, heap = unpack_frame(halfway.blob)
    assert header["format"] == "fleetwarden-state" and header["version"] == FORMAT_VERSION
    assert header["kind"] == "engine" and header["writer"].startswith("fleetwarden ")
    names = [name for name, _ in header["classes"]]
    assert names[0] == "fleetwarden.detection.engine.Engine"
    assert all(name.startswith("fleetwarden.detection.") for name in names)
    engine_attrs = dict(zip(header["classes"][0][1], header["root"][2:], strict=True))
    assert engine_attrs["ctx"] is None and engine_attrs["flow_model"] is None
    # numeric state lives in the heap as arrays, not as JSON lists
    assert len(heap) > 100_000 and all(isinstance(a[0], (str, list)) for a in header["arrays"])


def test_transient_attributes_are_real_attributes():
    for cls, names in TRANSIENT.items():
        inst = cls()
        assert all(hasattr(inst, n) for n in names), cls


def test_the_allow_list_is_the_engines_own_classes():
    allowed = engine_state_classes().by_name
    assert "fleetwarden.detection.analytics.flood._Episode" in allowed
    assert "fleetwarden.detection.analytics.exfil._Slow" in allowed  # a slots dataclass
    assert "fleetwarden.detection.engine.Engine" in allowed
    assert all(name.startswith("fleetwarden.detection.") for name in allowed)
    for outside in (
        "fleetwarden.detection.flowmodel.FlowModel",
        "fleetwarden.core.findings.Finding",
        "os.system",
    ):
        assert outside not in allowed


def test_a_value_the_format_does_not_carry_is_a_type_error_naming_it():
    engine = Engine()
    next(a for a in engine.analytics if isinstance(a, BeaconDetector)).hook = lambda: None
    with pytest.raises(TypeError, match=r"BeaconDetector\.hook.*function"):
        encode_engine(engine)
    engine = Engine()
    engine.events = np.array([object()])
    with pytest.raises(TypeError, match="object"):
        encode_engine(engine)


# ------------------------------------------------------------------------------------- refusals
def _edit(blob: bytes, change) -> bytes:
    """The blob with its JSON header changed by ``change(header)`` and a valid checksum."""
    header, heap = unpack_frame(blob)
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    return pack_frame(text, [bytes(heap)], compress=False)


class Sentinel:
    """Every hook a loader could call records that it ran."""

    ran: list[str] = []

    def __init__(self) -> None:
        Sentinel.ran.append("__init__")

    def __setstate__(self, state) -> None:
        Sentinel.ran.append("__setstate__")

    def __reduce__(self):
        Sentinel.ran.append("__reduce__")
        return (Sentinel, ())

    def __set_name__(self, owner, name) -> None:
        Sentinel.ran.append("__set_name__")


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "builtins.open",
        f"{Sentinel.__module__}.Sentinel",
        "antigravity.fly",
    ],
)
def test_a_class_off_the_allow_list_is_refused_and_never_imported(halfway, name):
    Sentinel.ran.clear()
    blob = _edit(halfway.blob, lambda h: h["classes"][1].__setitem__(0, name))
    modules = set(sys.modules)
    with pytest.raises(InputError, match=re.escape(name)):
        decode_engine(blob, Context())
    assert set(sys.modules) == modules and Sentinel.ran == []


def test_an_allow_listed_class_is_built_without_running_its_code():
    Sentinel.ran.clear()
    obj = object.__new__(Sentinel)
    obj.x = [1, 2]
    classes = StateClasses([Sentinel])
    back, _ = decode_state(encode_state(obj, classes, kind="t"), classes, kind="t")
    assert type(back) is Sentinel and back.x == [1, 2] and Sentinel.ran == []


def test_a_pickle_is_refused_without_being_loaded(tmp_path, fleet, halfway):
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(target), "w"))

    for blob in (pickle.dumps(Exploit(), protocol=p) for p in (2, 4, 5)):
        with pytest.raises(InputError, match="pickle"):
            decode_engine(blob, Context())
    assert not target.exists()
    engine = halfway.engine
    ctx = engine.ctx
    engine.ctx = None
    try:
        old_checkpoint = pickle.dumps(engine, protocol=5)  # what the worker stored before
    finally:
        engine.ctx = ctx
    with pytest.raises(InputError, match="pickle"):
        decode_engine(old_checkpoint, ctx)


@pytest.mark.parametrize("cut", [0, 1, 8, 27, 28, 100, 0.5, -1])
def test_a_truncated_blob_is_refused(halfway, cut):
    blob = halfway.blob
    n = int(len(blob) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(blob) + cut)
    with pytest.raises(InputError, match="truncated|checksum"):
        decode_engine(blob[:n], Context())


def test_a_wrong_version_is_refused(halfway):
    blob = bytearray(halfway.blob)
    struct.pack_into("<H", blob, 8, FORMAT_VERSION + 1)
    with pytest.raises(InputError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        decode_engine(bytes(blob), Context())
    with pytest.raises(InputError, match="version 99"):
        decode_engine(_edit(halfway.blob, lambda h: h.__setitem__("version", 99)), Context())
    with pytest.raises(InputError, match="not engine state"):
        decode_engine(_edit(halfway.blob, lambda h: h.__setitem__("kind", "model")), Context())


@pytest.mark.parametrize("dtype", ["|O", "|O8", "<M8[s]", "|V8", [["a", "<f8", []], ["b", "|O", []]]])
def test_an_object_or_exotic_dtype_array_is_refused(halfway, dtype):
    blob = _edit(halfway.blob, lambda h: h["arrays"][0].__setitem__(0, dtype))
    with pytest.raises(InputError, match="dtype"):
        decode_engine(blob, Context())


def _array_slot(header: dict, analytic: str, attr: str) -> int:
    """The heap slot of array attribute ``attr`` of the analytic whose class name ends in ``analytic``."""
    layouts = header["classes"]

    def walk(node):
        if isinstance(node, list) and node and node[0] == "o":
            name, names = layouts[node[1]]
            if name.endswith(analytic):
                for n, v in zip(names, node[2:], strict=True):
                    if n == attr:
                        return v
            for v in node[2:]:
                if (hit := walk(v)) is not None:
                    return hit
        elif isinstance(node, list):
            for v in node:
                if (hit := walk(v)) is not None:
                    return hit
        elif isinstance(node, dict):
            for v in node.values():
                if (hit := walk(v)) is not None:
                    return hit
        return None

    node = walk(header["root"])
    assert node[0] == "a"
    return node[1]


def test_wrong_shapes_are_refused(halfway):
    blob = halfway.blob
    header, _ = unpack_frame(blob)
    slot = _array_slot(header, "_Reservoirs", "buf")  # float32, (keys, reservoir size)
    descr, shape, offset = header["arrays"][slot][:3]
    assert descr == "<f4" and len(shape) == 2

    def reshape(new_shape, new_descr=descr):
        return _edit(blob, lambda h: h["arrays"].__setitem__(slot, [new_descr, new_shape, offset]))

    with pytest.raises(InputError, match=r"_Reservoirs\.buf: expected a float32 array of 2 dimension"):
        decode_engine(reshape([shape[0] * shape[1]]), Context())
    with pytest.raises(InputError, match=r"_Reservoirs\.buf: expected a float32"):
        decode_engine(reshape([shape[0], shape[1] // 2], "<f8"), Context())
    with pytest.raises(InputError, match="outside"):
        decode_engine(reshape([shape[0] * 1000, shape[1]]), Context())
    for bad in ([-1, 2], [1.5], "12", [True], [1] * 40):
        with pytest.raises(InputError, match="shape"):
            decode_engine(reshape(bad), Context())


def _with_text(blob: bytes, change, marker: str, text: str) -> bytes:
    """The blob with ``change(header)`` applied, then ``marker`` replaced by ``text`` in the JSON."""
    header, heap = unpack_frame(blob)
    change(header)
    dumped = json.dumps(header, separators=(",", ":"))
    assert dumped.count(marker) == 1
    return pack_frame(dumped.replace(marker, text).encode(), [bytes(heap)], compress=False)


def test_non_finite_numbers_are_refused_where_numbers_are_plain_json(halfway):
    blob = halfway.blob

    def mark_gap(h):
        names = h["classes"][0][1]
        h["root"][2 + names.index("episode_gap")] = 12345.5

    def mark_shape(h):
        h["arrays"][0][1] = [12345.5]

    # non-finite floats are written as ["f", "inf"] nodes: a number that overflows, a NaN literal, are refused
    with pytest.raises(InputError, match="number inf out of range"):
        decode_engine(_with_text(blob, mark_gap, "12345.5", "1e999"), Context())
    with pytest.raises(InputError, match="non-finite number NaN"):
        decode_engine(_with_text(blob, mark_gap, "12345.5", "NaN"), Context())
    with pytest.raises(InputError, match="non-finite number -Infinity"):
        decode_engine(_with_text(blob, mark_shape, "12345.5", "-Infinity"), Context())
    with pytest.raises(InputError, match="shape"):
        decode_engine(_with_text(blob, mark_shape, "12345.5", "1e999"), Context())
    # and a non-finite value written as a node is still the float it was
    ok = _with_text(blob, mark_gap, "12345.5", '["f","inf"]')
    assert decode_engine(ok, Context()).episode_gap == float("inf")


def test_another_versions_classes_are_refused_naming_the_attribute(halfway):
    def drop_attr(h):
        name, names = h["classes"][0]
        i = names.index("episode_gap")
        del names[i]
        del h["root"][2 + i]

    with pytest.raises(InputError, match="Engine lacks attribute.*episode_gap.*fleetwarden"):
        decode_engine(_edit(halfway.blob, drop_attr), Context())

    def add_attr(h):
        h["classes"][0][1].append("process")  # would hide the method
        h["root"].append(1)

    with pytest.raises(InputError, match="Engine has no attribute 'process'"):
        decode_engine(_edit(halfway.blob, add_attr), Context())


def test_malformed_graphs_are_refused(halfway):
    blob = halfway.blob
    for change, message in [
        (lambda h: h.__setitem__("root", ["r", 5]), "not defined before it"),
        (lambda h: h.__setitem__("root", ["x"]), "unknown node type"),
        (lambda h: h.__setitem__("root", {"a": 1}), "malformed node"),
        (lambda h: h.__setitem__("root", ["l", [1, 2]]), "not an Engine"),
        (lambda h: h.__setitem__("root", ["s", [["l", []]]]), "unhashable"),
        (lambda h: h.__setitem__("root", ["f", "zero"]), "not nan, inf or -inf"),
        (lambda h: h.__setitem__("root", ["o", 99]), "class table does not hold"),
        (lambda h: h["root"].pop(), "values for"),
        (lambda h: h.__setitem__("root", _deep(250)), "deeper"),
    ]:
        with pytest.raises(InputError, match=message):
            decode_engine(_edit(blob, change), Context())


def _deep(n: int) -> list:
    node: list = ["l", []]
    for _ in range(n):
        node = ["l", [node]]
    return node


def test_a_decompression_bomb_is_refused():
    text = b'{"format":"fleetwarden-state"}'
    blob = bytearray(pack_frame(text, [bytes(50_000_000)], compress=True))
    assert len(blob) < 1_000_000
    magic, version, flags, hlen, dlen, crc = PREFIX.unpack_from(blob)
    PREFIX.pack_into(blob, 0, magic, version, flags, hlen, 1000, crc)  # declares far less than it inflates to
    with pytest.raises(InputError, match="does not hold the declared"):
        decode_state(bytes(blob), StateClasses([]), kind="engine")
    PREFIX.pack_into(blob, 0, magic, version, flags, hlen, 1 << 40, crc)
    with pytest.raises(InputError, match="more than"):
        decode_state(bytes(blob), StateClasses([]), kind="engine")


# ------------------------------------------------------------------------- the generic codec
@dataclasses.dataclass(slots=True)
class Slotted:
    a: int = 0
    b: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Frozen:
    name: str = ""
    weight: float = 1.0


class Holder:
    pass


def test_every_kind_of_value_round_trips():
    h = Holder()
    loop: list = [1]
    loop.append(loop)
    shared = {"k": [1, 2]}
    strings = pa.array(["a", None, "ccc", "", "dddd"]).slice(1, 3)
    h.values = {
        "none": None,
        "floats": [0.1, -0.0, float("inf"), float("-inf"), 1e308],
        "big": 2**100,
        "bytes": b"\x00\xff",
        "tuple": (1, "a", (2.5, None)),
        "frozen": frozenset({"x", "y"}),
        "mixed_set": {1, "a", (2, 3)},
        "keys": {(1, "a"): 1, 2: "b", None: 3},
        "counter": collections.Counter({"x": 3, "y": 1}),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "deque": collections.deque([1, 2, 3], maxlen=5),
        "loop": loop,
        "shared": [shared, shared],
        "pattern": re.compile(r"^adm(in)?$", re.IGNORECASE),
        "rng": np.random.default_rng(7),
        "f_order": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "strided": np.arange(10, dtype=np.int16)[::3],
        "zero_d": np.array(5, dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "struct": np.zeros(3, dtype=[("key", "<u8"), ("sums", "<f4", (2, 3)), ("tag", "S4")]),
        "unicode": np.array(["ab", "cde"]),
        "scalar": np.float64(0.25),
        "flag": np.bool_(True),
        "slotted": Slotted(3, [Frozen("x", 2.0)]),
        "strings": strings,
        "numbers": pa.array([1, None, 3], type=pa.int32()),
        "bools": pa.array([True, None, False]),
        "chunked": pa.chunked_array([pa.array(["a"]), pa.array(["b", None])]),
        "table": pa.table({"s": strings, "n": pa.array([1.5, 2.5, None])}).replace_schema_metadata(
            {"k": "v"}
        ),
        "large": pa.array(["x", "yy"], type=pa.large_string()),
        "nan": float("nan"),
    }
    h.values["rng"].random(3)
    classes = StateClasses([Holder, Slotted, Frozen])
    blob = encode_state(h, classes, kind="test")
    back, meta = decode_state(blob, classes, kind="test")
    assert meta["kind"] == "test" and encode_state(back, classes, kind="test") == blob
    v, w = h.values, back.values
    for k in v:
        if k in ("loop", "rng", "nan") or isinstance(v[k], (np.ndarray, pa.Table)):
            continue
        assert w[k] == v[k] and type(w[k]) is type(v[k]), k
    assert w["loop"][1] is w["loop"] and w["shared"][0] is w["shared"][1]
    assert w["deque"].maxlen == 5 and list(w["ordered"]) == ["b", "a"]
    assert w["rng"].random() == v["rng"].random()
    assert np.isnan(w["nan"])
    for k in ("f_order", "strided", "zero_d", "empty", "struct", "unicode"):
        assert w[k].dtype == v[k].dtype and np.array_equal(w[k], v[k]) and w[k].flags.writeable, k
    assert w["f_order"].flags.f_contiguous
    assert w["table"].equals(v["table"]) and w["table"].schema.metadata == {b"k": b"v"}
    assert w["strings"].to_pylist() == [None, "ccc", ""]


def test_unsupported_values_are_type_errors():
    classes = StateClasses([Holder])
    for bad in (lambda: 1, object(), np.array([object()]), pa.array([[1]]), bytearray(b"x"), Sentinel()):
        h = Holder()
        h.v = bad
        with pytest.raises(TypeError):
            encode_state(h, classes, kind="t")


def test_only_plain_classes_can_be_allow_listed():
    class WithNew:
        def __new__(cls):
            return super().__new__(cls)

    class Mapping(dict):
        pass

    for cls in (WithNew, Mapping, ValueError, type):
        with pytest.raises(TypeError):
            StateClasses([cls])


# ------------------------------------------------------------------------- property tests
@functools.cache
def _small_blob() -> bytes:
    """An uncompressed checkpoint of an engine that saw the first 20 minutes (every structure kind)."""
    _, ctx, batches = _fleet()
    engine = Engine(ctx=ctx)
    for b in batches[:20]:
        engine.process(b)
    return encode_engine(engine, compress=False)


def _reseal(blob: bytes | bytearray) -> bytes:
    blob = bytearray(blob)
    if len(blob) >= PREFIX.size:
        struct.pack_into("<I", blob, PREFIX.size - 4, zlib.crc32(blob[PREFIX.size :]))
    return bytes(blob)


def _decodes_or_refuses(blob: bytes) -> None:
    with contextlib.suppress(InputError):
        decode_engine(blob, Context())


# bytes that keep a JSON header parseable more often than not, so damage reaches the graph decoder
JSON_BYTES = b'0123456789-.eE[]{}",:nultrfas '
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.data(), reseal=st.booleans(), compressed=st.booleans())
def test_byte_mutations_only_ever_raise_input_error(data, reseal, compressed):
    small = _small_blob()
    blob = bytearray(small)
    if compressed:
        header, heap = unpack_frame(small)
        blob = bytearray(pack_frame(json.dumps(header, separators=(",", ":")).encode(), [bytes(heap)]))
    header_end = min(len(blob), PREFIX.size + PREFIX.unpack_from(blob)[3])
    for _ in range(data.draw(st.integers(1, 8))):
        # mostly in the prefix and the JSON header, where the structure is
        pos = data.draw(st.integers(0, header_end - 1) | st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.sampled_from(JSON_BYTES) | st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    _decodes_or_refuses(_reseal(blob) if reseal else bytes(blob))


NODE_TAGS = [
    "l",
    "s",
    "d",
    "C",
    "O",
    "q",
    "a",
    "o",
    "r",
    "t",
    "z",
    "n",
    "f",
    "b",
    "re",
    "g",
    "pa",
    "pc",
    "pt",
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        | st.tuples(st.sampled_from(NODE_TAGS), inner).map(list)
    ),
    max_leaves=12,
)


def _slots(node, out: list) -> list:
    """(container, key) of every value in the JSON tree ``node``."""
    items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else ()
    for k, v in items:
        out.append((node, k))
        _slots(v, out)
    return out


@FUZZ
@given(data=st.data())
def test_arbitrary_json_in_place_of_any_node_only_ever_raises_input_error(data):
    header, heap = unpack_frame(_small_blob())
    targets = _slots(header, [])
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = targets[data.draw(st.integers(0, len(targets) - 1))]
        container[key] = data.draw(JSON)
    text = json.dumps(header, separators=(",", ":")).encode()  # NaN, Infinity literals included
    _decodes_or_refuses(pack_frame(text, [bytes(heap)], compress=False))


def test_fuzz_sample_is_a_valid_checkpoint():
    assert isinstance(decode_engine(_small_blob(), Context()), Engine)
