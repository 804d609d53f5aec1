"""A state format that cannot run code when read: an object graph as a JSON description plus an
array heap, decodable only into an explicit allow-list of classes.

This replaces pickle for state read back from a database, a file or the network (a checkpoint
of the detection engine, :mod:`fleetwarden.detection.checkpoint`).  A pickle names any callable
and the reader calls it; here the reader only ever

* builds builtin values (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``tuple``,
  ``list``, ``dict``, ``set``, ``frozenset``, ``collections.deque`` / ``Counter`` /
  ``OrderedDict``),
* copies numeric arrays out of the heap (``numpy`` dtypes of kind bool, int, uint, float,
  complex, fixed-width bytes or unicode, and structured dtypes of those; never ``object``),
  and builds ``pyarrow`` arrays, chunked arrays and tables of primitive, string and binary
  types from such arrays (validated in full),
* creates instances of the classes of a :class:`StateClasses` allow-list with ``object.__new__``
  and sets their attributes (no ``__init__``, ``__setstate__`` or ``__reduce__``, no import, no
  ``eval``), plus ``re.Pattern`` (``re.compile``) and ``numpy.random.Generator`` (five named
  bit generators, given their ``state``).

Class names in the data are looked up in the allow-list's table, never imported.

Layout of a blob (little-endian)::

    magic  b"FWSTATE\\n"   8 bytes
    u16    FORMAT_VERSION
    u16    flags          bit 0: body is one zlib stream
    u32    header length  H (bytes of UTF-8 JSON)
    u64    heap length    D
    u32    CRC-32 of the body as stored
    body   header (H bytes) then heap (D bytes), zlib-compressed as one stream when flagged

The header is a JSON object: ``format`` ("fleetwarden-state"), ``version``, ``kind`` (what the
state is, e.g. "engine"), ``writer`` (e.g. "fleetwarden 0.1.0"), ``classes`` (one
``[class name, [attribute names]]`` per layout of instances written), ``arrays`` (one
``[dtype, shape, offset]`` per heap array, a fourth item "F" for Fortran order; ``dtype`` is a
``numpy`` type string such as ``"<f8"`` or a list of ``[name, type string, shape]`` fields)
and ``root``, the object graph as nodes:

* JSON ``null``/``true``/``false``/numbers/strings are themselves (finite floats only);
* ``["f", "nan"|"inf"|"-inf"]`` a non-finite float; ``["t", [items]]`` a tuple;
  ``["z", [items]]`` a frozenset; ``["b", base64]`` bytes; ``["n", slot]`` a numpy scalar;
  ``["re", pattern, flags]`` a compiled regular expression;
* shared objects are numbered 0, 1, 2... in the order their defining node starts (depth
  first), and ``["r", k]`` is object ``k`` again (shared references and cycles survive):
  ``["l", [items]]`` list, ``["s", [items]]`` set, ``["d", {...} | [k, v, k, v...]]`` dict
  (``"C"`` Counter, ``"O"`` OrderedDict), ``["q", maxlen, [items]]`` deque, ``["a", slot]``
  array, ``["o", k, value...]`` instance of ``classes[k]``, one value per attribute name,
  ``["g", bit generator, state]`` numpy Generator, ``["pa", type, length, validity slot,
  [buffer slots]]`` Arrow array, ``["pc", type, [arrays]]`` chunked array,
  ``["pt", [names], [nullable], [columns], metadata]`` Arrow table.

Sets are written sorted when their items sort, so one state always gives the same bytes.
Numbers go to the heap as arrays, never as JSON lists; what stays JSON is the structure and
the strings (addresses, uids), which zlib shrinks about fourfold.

Everything wrong in a blob (magic, version, checksum, truncation, JSON, a node, a class off the
allow-list, an attribute the class does not have, an array's dtype, dimensions or size, a
non-finite number where numbers are plain JSON, a size beyond :data:`MAX_STATE_BYTES`, nesting
beyond :data:`MAX_DEPTH`) raises :class:`StateFormatError`, an
:class:`~fleetwarden.core.errors.InputError` naming what was wrong.

Blind spots: the format checks structure, not meaning.  A writer with access to the store can
still hand a worker state that detects badly (for example huge thresholds, or a string where
an analytic of a class without an example keeps a number), just not state that runs code.
Encoding is a Python walk of the object graph: about twice pickle's time for the engine (see
``bench/bench_checkpoint.py``).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import math
import numbers
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from fleetwarden.core.errors import InputError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_STATE_BYTES",
    "StateClasses",
    "StateFormatError",
    "decode_state",
    "encode_state",
    "pack_frame",
    "unpack_frame",
]

FORMAT = "fleetwarden-state"
FORMAT_VERSION = 1
MAGIC = b"FWSTATE\n"
_PREFIX = struct.Struct("<8sHHIQI")
_COMPRESSED = 1
# A state larger than this (uncompressed) is refused before it is inflated or allocated.
MAX_STATE_BYTES = 4 << 30
# Deepest node nesting accepted (the engine's state nests about ten deep).
MAX_DEPTH = 200
MAX_NDIM = 32

_PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_ARRAY_KINDS = frozenset("biufcSU")
_SIMPLE_DTYPE = re.compile(r"[<>|][biufc][0-9]{1,2}|[<>|]U[0-9]{1,7}|\|S[0-9]{1,8}")
_RE_FLAGS = int(re.IGNORECASE | re.LOCALE | re.MULTILINE | re.DOTALL | re.UNICODE | re.VERBOSE | re.ASCII)
_BIT_GENERATORS: dict[str, type] = {
    cls.__name__: cls
    for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64)
}
_PA_TYPES: dict[str, pa.DataType] = {
    str(t): t
    for t in (
        pa.null(),
        pa.bool_(),
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.int64(),
        pa.uint8(),
        pa.uint16(),
        pa.uint32(),
        pa.uint64(),
        pa.float16(),
        pa.float32(),
        pa.float64(),
        pa.string(),
        pa.large_string(),
        pa.binary(),
        pa.large_binary(),
    )
}
# Arrow types whose values are offsets + data rather than one fixed-width buffer.
_PA_VARWIDTH = {"string": np.int32, "binary": np.int32, "large_string": np.int64, "large_binary": np.int64}
_MISSING = object()
# Values that are the same in JSON and in Python (floats too, when finite).
_PLAIN = frozenset({str, int, bool, type(None)})
_NUMBERS = frozenset({int, float, bool})


class StateFormatError(InputError):
    """A state blob that is not one this code can load: the message names what was wrong."""


# --------------------------------------------------------------------------------------- allow-list
class StateClasses:
    """The classes a state may hold: the allow-list :func:`decode_state` builds instances from.

    ``classes`` must be plain classes (metaclass ``type``, ``object.__new__``, no builtin base
    but ``object``).  ``transient`` names attributes written as ``None`` (caches, references
    the owner re-attaches after loading).  ``examples`` are instances the caller made (the codec
    never calls a constructor): a loaded object of an example's class must have the same
    attribute names, arrays of the same dtype and number of dimensions, and no value of another
    kind (``None`` and numbers of either kind excepted), so state written for another version of
    a class is refused up front.  A dataclass without an example is checked against its fields.
    """

    def __init__(
        self,
        classes: Iterable[type],
        transient: Mapping[type, Iterable[str]] | None = None,
        examples: Iterable[Any] = (),
    ) -> None:
        self.by_name: dict[str, type] = {}
        for cls in classes:
            _check_plain_class(cls)
            self.by_name[class_name(cls)] = cls
        self._members = frozenset(self.by_name.values())
        self.transient: dict[type, frozenset[str]] = {
            cls: frozenset(names) for cls, names in (transient or {}).items()
        }
        self._shapes: dict[type, _Shape] = {}
        for example in examples:
            if type(example) not in self._members:
                raise TypeError(f"example {type(example).__qualname__} is not of an allow-listed class")
            self._shapes[type(example)] = _Shape(type(example), example)

    def __contains__(self, cls: type) -> bool:
        return cls in self._members

    def shape_of(self, cls: type) -> _Shape:
        shape = self._shapes.get(cls)
        if shape is None:
            shape = self._shapes[cls] = _Shape(cls)
        return shape


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_plain_class(cls: type) -> None:
    if not isinstance(cls, type) or type(cls) is not type:
        raise TypeError(f"{cls!r} is not a plain class (metaclass type)")
    if cls.__new__ is not object.__new__:
        raise TypeError(f"{class_name(cls)} defines __new__; it cannot be restored with object.__new__")
    for base in cls.__mro__[1:-1]:
        if base.__module__ == "builtins":
            raise TypeError(f"{class_name(cls)} derives from builtin {base.__name__}")
    if getattr(cls, "_is_protocol", False):
        raise TypeError(f"{class_name(cls)} is a Protocol")


def _slot_names(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            names.append(name)
    return tuple(dict.fromkeys(names))


class _Shape:
    """What the instances of one allow-listed class look like (see :class:`StateClasses`)."""

    def __init__(self, cls: type, example: Any = None) -> None:
        self.cls = cls
        self.slots = frozenset(_slot_names(cls))
        self.has_dict = any("__dict__" in k.__dict__ for k in cls.__mro__[:-1]) or not self.slots
        self.template: dict[str, Any] | None = None
        if example is not None:
            self.template = dict(vars(example)) if hasattr(example, "__dict__") else {}
            for name in self.slots:
                if hasattr(example, name):
                    self.template[name] = getattr(example, name)
        elif dataclasses.is_dataclass(cls):
            self.template = {f.name: None for f in dataclasses.fields(cls)}

    def layout(self, names: Any, writer: str) -> _Layout:
        """Check the attribute names one layout of this class's instances gives values for."""
        cls = class_name(self.cls)
        if type(names) is not list or len(set(map(str, names))) != len(names):
            raise StateFormatError(f"{cls}: attribute names {_short(names)} are malformed")
        for name in names:
            if (
                type(name) is not str
                or not name.isidentifier()
                or (name.startswith("__") and name.endswith("__"))
            ):
                raise StateFormatError(f"{cls}: {_short(name)} is not an attribute name")
            if self.template is not None and name not in self.template:
                raise StateFormatError(
                    f"{cls} has no attribute {name!r}: state written by {writer or 'an unknown writer'} "
                    "for another version of this class"
                )
            if name in self.slots:
                continue
            if not self.has_dict:
                raise StateFormatError(f"{cls} has no slot {name!r}")
            # an instance attribute would hide a method or property of the class
            for klass in self.cls.__mro__[:-1]:
                if name in klass.__dict__ and hasattr(klass.__dict__[name], "__get__"):
                    raise StateFormatError(f"{cls}.{name} is a method or property, not state")
        if self.template is not None and len(names) != len(self.template):
            missing = ", ".join(sorted(set(self.template) - set(names)))
            raise StateFormatError(
                f"{cls} lacks attribute(s) {missing}: state written by {writer or 'an unknown writer'} "
                "for another version of this class"
            )
        checks = []
        if self.template is not None:
            checks = [
                (i, name, ref, type(ref))
                for i, name in enumerate(names)
                if (ref := self.template[name]) is not None
            ]
        return _Layout(self.cls, tuple(names), tuple(n in self.slots for n in names), checks)


class _Layout:
    """One class and the attribute names, in order, an instance node gives values for."""

    def __init__(self, cls: type, names: tuple[str, ...], in_slot: tuple[bool, ...], checks: list) -> None:
        self.cls = cls
        self.names = names
        self.in_slot = in_slot if any(in_slot) else None
        self.checks = checks

    def check(self, values: list) -> None:
        """Values of the kind the class's template holds (see :class:`StateClasses`)."""
        for i, name, ref, ref_type in self.checks:
            value = values[i]
            if (type(value) is ref_type and ref_type is not np.ndarray) or value is None:
                continue
            if ref_type is np.ndarray:
                if type(value) is not np.ndarray or value.dtype != ref.dtype or value.ndim != ref.ndim:
                    got = (
                        f"{value.dtype} array of {value.ndim} dimension(s)"
                        if type(value) is np.ndarray
                        else type(value).__name__
                    )
                    raise StateFormatError(
                        f"{class_name(self.cls)}.{name}: expected a {ref.dtype} array of {ref.ndim} dimension(s), got {got}"
                    )
            elif type(value) is not type(ref) and not (
                isinstance(ref, numbers.Real) and isinstance(value, numbers.Real)
            ):
                raise StateFormatError(
                    f"{class_name(self.cls)}.{name}: expected {type(ref).__name__}, got {type(value).__name__}"
                )


# ------------------------------------------------------------------------------------------ dtypes
def _dtype_descr(dtype: np.dtype) -> Any:
    if dtype.names is None:
        if dtype.kind not in _ARRAY_KINDS or dtype.itemsize == 0 or dtype.subdtype is not None:
            raise TypeError(f"arrays of dtype {dtype} are not part of the state format")
        return dtype.str
    fields = []
    for name in dtype.names:
        sub = dtype.fields[name][0]
        base, shape = (sub.subdtype[0], list(sub.subdtype[1])) if sub.subdtype else (sub, [])
        if base.names is not None:
            raise TypeError(f"nested structured dtype {dtype} is not part of the state format")
        fields.append([name, _dtype_descr(base), shape])
    if _parse_dtype(fields) != dtype:
        raise TypeError(f"structured dtype {dtype} has padding or offsets the state format does not keep")
    return fields


def _parse_dtype(descr: Any) -> np.dtype:
    if type(descr) is str:
        if not _SIMPLE_DTYPE.fullmatch(descr):
            raise StateFormatError(f"array dtype {descr!r} is not allowed")
        try:
            dtype = np.dtype(descr)
        except TypeError:
            raise StateFormatError(f"array dtype {descr!r} is not a numpy dtype") from None
    elif type(descr) is list and descr and len(descr) <= 256:
        fields = []
        for f in descr:
            if not (type(f) is list and len(f) == 3 and type(f[0]) is str and type(f[1]) is str):
                raise StateFormatError(f"structured dtype field {f!r} is malformed")
            fields.append((f[0], _parse_dtype(f[1]), _dims(f[2], "field shape")))
        try:
            dtype = np.dtype(fields)
        except (TypeError, ValueError) as exc:
            raise StateFormatError(f"structured dtype is malformed ({exc})") from None
    else:
        raise StateFormatError(f"array dtype {descr!r} is malformed")
    if dtype.itemsize == 0 or dtype.hasobject:
        raise StateFormatError(f"array dtype {descr!r} is not allowed")
    return dtype


def _dims(shape: Any, what: str) -> tuple[int, ...]:
    if type(shape) is not list or len(shape) > MAX_NDIM or any(type(d) is not int or d < 0 for d in shape):
        raise StateFormatError(f"{what} {shape!r} is not a list of non-negative integers")
    return tuple(shape)


# ---------------------------------------------------------------------------------------- encoding
class _Encoder:
    def __init__(self, classes: StateClasses) -> None:
        self.classes = classes
        self.layouts: dict[tuple[type, tuple[str, ...]], int] = {}
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # every shared object stays alive, so no id() is reused
        self.arrays: list[list[Any]] = []
        self.chunks: list[Any] = []
        self.heap_len = 0
        self.dtypes: dict[np.dtype, Any] = {}
        # type -> writer of a value (written again wherever it occurs)
        self.values: dict[type, Callable[[Any], Any]] = {
            tuple: lambda o: ["t", self.seq(o)],
            frozenset: lambda o: ["z", self.seq(_canonical(o))],
            bytes: lambda o: ["b", base64.b64encode(o).decode("ascii")],
            re.Pattern: lambda o: ["re", self.enc(o.pattern), int(o.flags)],
        }
        # type -> writer of a shared object (numbered, then referred to by number)
        self.shared: dict[type, Callable[[Any], Any]] = {
            list: lambda o: ["l", self.seq(o)],
            set: lambda o: ["s", self.seq(_canonical(o))],
            dict: self.dict_,
            collections.Counter: self.dict_,
            collections.OrderedDict: self.dict_,
            collections.deque: lambda o: ["q", o.maxlen, self.seq(o)],
            np.ndarray: lambda o: ["a", self.heap(o)],
            np.random.Generator: self.generator,
            pa.ChunkedArray: self.chunked,
            pa.Table: self.table,
        }

    def enc(self, o: Any) -> Any:
        t = type(o)
        if t is str or t is int or t is bool or o is None:
            return o
        if t is float:
            return o if math.isfinite(o) else ["f", "nan" if o != o else ("inf" if o > 0 else "-inf")]
        fn = self.shared.get(t)
        if fn is not None:
            k = self.memo.get(id(o))
            if k is not None:
                return ["r", k]
            self.memo[id(o)] = len(self.keep)
            self.keep.append(o)
            return fn(o)
        fn = self.values.get(t)
        if fn is not None:
            return fn(o)
        # first value of this type: find its writer once
        if t in self.classes:
            self.shared[t] = self.instance
        elif isinstance(o, pa.Array):
            self.shared[t] = self.arrow_array
        elif isinstance(o, np.generic):
            self.values[t] = lambda o: ["n", self.heap(np.asarray(o))]
        else:
            raise TypeError(
                f"{t.__module__}.{t.__qualname__} is not part of the state format or its allow-list"
            )
        return self.enc(o)

    def seq(self, items: Iterable[Any]) -> list:
        """The nodes of ``items``; plain JSON values (most lists and sets) are copied in one go."""
        items = items if type(items) is list else list(items)
        types = set(map(type, items))
        if types <= _PLAIN or (types <= _NUMBERS and all(map(math.isfinite, items))):
            return items.copy()
        enc = self.enc
        return [enc(x) for x in items]

    def dict_(self, o: dict) -> list:
        tag = "d" if type(o) is dict else ("C" if type(o) is collections.Counter else "O")
        enc = self.enc
        if set(map(type, o)) <= {str}:
            types = set(map(type, o.values()))
            if types <= _PLAIN or (types <= _NUMBERS and all(map(math.isfinite, o.values()))):
                return [tag, dict(o)]
            return [tag, {k: v if type(v) in _PLAIN else enc(v) for k, v in o.items()}]
        flat = []
        for k, v in o.items():
            flat.append(enc(k))
            flat.append(enc(v))
        return [tag, flat]

    def generator(self, o: np.random.Generator) -> list:
        name = type(o.bit_generator).__name__
        if _BIT_GENERATORS.get(name) is not type(o.bit_generator):
            raise TypeError(f"bit generator {name} is not part of the state format")
        return ["g", name, self.enc(o.bit_generator.state)]

    def arrow_array(self, o: pa.Array) -> list:
        name = str(o.type)
        if _PA_TYPES.get(name) != o.type:
            raise TypeError(f"Arrow arrays of type {o.type} are not part of the state format")
        n = len(o)
        valid = None
        if o.null_count and name != "null":
            valid = self.heap(o.is_valid().to_numpy(zero_copy_only=False))
        if name == "null":
            buffers: list[int] = []
        elif name in _PA_VARWIDTH:
            width = _PA_VARWIDTH[name]
            offsets = np.frombuffer(o.buffers()[1], dtype=width)[o.offset : o.offset + n + 1]
            start, end = (int(offsets[0]), int(offsets[-1])) if n else (0, 0)
            data = (
                np.frombuffer(o.buffers()[2], dtype=np.uint8)[start:end]
                if end > start
                else np.zeros(0, np.uint8)
            )
            buffers = [self.heap(offsets - offsets[0] if n else np.zeros(1, width)), self.heap(data)]
        else:
            filled = o.fill_null(False if name == "bool" else 0) if o.null_count else o
            buffers = [self.heap(filled.to_numpy(zero_copy_only=False))]
        return ["pa", name, n, valid, buffers]

    def chunked(self, o: pa.ChunkedArray) -> list:
        if _PA_TYPES.get(str(o.type)) != o.type:
            raise TypeError(f"Arrow arrays of type {o.type} are not part of the state format")
        return ["pc", str(o.type), [self.enc(c) for c in o.chunks]]

    def table(self, o: pa.Table) -> list:
        schema = o.schema
        if any(f.metadata for f in schema):
            raise TypeError("Arrow field metadata is not part of the state format")
        meta = [[self.enc(k), self.enc(v)] for k, v in schema.metadata.items()] if schema.metadata else None
        return [
            "pt",
            list(schema.names),
            [f.nullable for f in schema],
            [self.enc(c) for c in o.columns],
            meta,
        ]

    def instance(self, o: Any) -> list:
        cls = type(o)
        shape = self.classes.shape_of(cls)
        state = vars(o) if shape.has_dict else {}
        if shape.slots:
            state = dict(state)
            state.update(
                (name, v) for name in shape.slots if (v := getattr(o, name, _MISSING)) is not _MISSING
            )
        transient = self.classes.transient.get(cls)
        if transient:
            state = {name: None if name in transient else v for name, v in state.items()}
        node: list[Any] = ["o", self.layouts.setdefault((cls, tuple(state)), len(self.layouts))]
        enc = self.enc
        try:
            node += [v if type(v) in _PLAIN else enc(v) for v in state.values()]
        except TypeError as exc:
            name = next((n for n, v in state.items() if not _encodes(enc, v)), "?")
            raise TypeError(f"{cls.__qualname__}.{name}: {exc}") from None
        return node

    def heap(self, arr: np.ndarray) -> int:
        descr = self.dtypes.get(arr.dtype)
        if descr is None:
            descr = self.dtypes[arr.dtype] = _dtype_descr(arr.dtype)
        entry: list[Any] = [descr, list(arr.shape), self.heap_len]
        if arr.flags.c_contiguous:
            flat = arr.reshape(-1)
        elif arr.flags.f_contiguous:
            flat = arr.T.reshape(-1)
            entry.append("F")
        else:
            flat = np.ascontiguousarray(arr).reshape(-1)
        raw = flat.view(np.uint8)
        self.chunks.append(raw)
        self.heap_len += raw.nbytes
        self.arrays.append(entry)
        return len(self.arrays) - 1


def _encodes(enc: Callable[[Any], Any], value: Any) -> bool:
    try:
        enc(value)
    except TypeError:
        return False
    return True


def _canonical(items: set | frozenset) -> list:
    """The items of a set in a stable order (sorted when they sort), so one state gives one blob."""
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def encode_state(
    root: Any, classes: StateClasses, *, kind: str, writer: str = "", compress: bool = True, level: int = 1
) -> bytes:
    """The blob of the object graph ``root``.  Raises ``TypeError`` for a value the format does not
    carry (a class off the allow-list, an object array, a function...): a bug, not bad input."""
    enc = _Encoder(classes)
    root_node = enc.enc(root)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "writer": writer,
        "classes": [[class_name(c), list(names)] for c, names in enc.layouts],
        "arrays": enc.arrays,
        "root": root_node,
    }
    text = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return pack_frame(text, enc.chunks, compress=compress, level=level)


def pack_frame(header: bytes, heap: Iterable[Any], *, compress: bool = True, level: int = 1) -> bytes:
    """Frame a header (UTF-8 JSON) and heap chunks (bytes-like) into a blob."""
    heap = list(heap)
    heap_len = sum(memoryview(c).nbytes for c in heap)
    if compress:
        z = zlib.compressobj(level)
        body = b"".join([z.compress(header), *(z.compress(c) for c in heap), z.flush()])
    else:
        body = b"".join([header, *heap])
    prefix = _PREFIX.pack(
        MAGIC, FORMAT_VERSION, _COMPRESSED if compress else 0, len(header), heap_len, zlib.crc32(body)
    )
    return prefix + body


# ---------------------------------------------------------------------------------------- decoding
def unpack_frame(blob: bytes | bytearray | memoryview) -> tuple[dict[str, Any], memoryview]:
    """(header, heap) of a blob: checks the magic, version, lengths and checksum, parses the
    JSON header; builds no object."""
    blob = memoryview(blob).cast("B")
    if len(blob) < _PREFIX.size:
        if bytes(blob[:2]) in _PICKLE_PREFIXES:
            raise StateFormatError("this is a pickle, not a FleetWarden state: pickles are never loaded")
        raise StateFormatError(f"truncated: {len(blob)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, flags, header_len, heap_len, crc = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        if bytes(blob[:2]) in _PICKLE_PREFIXES:
            raise StateFormatError("this is a pickle, not a FleetWarden state: pickles are never loaded")
        raise StateFormatError("not a FleetWarden state (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise StateFormatError(
            f"state format version {version} is not supported (this code reads version {FORMAT_VERSION})"
        )
    if flags & ~_COMPRESSED:
        raise StateFormatError(f"unknown flags {flags:#x}")
    size = header_len + heap_len
    if size > MAX_STATE_BYTES:
        raise StateFormatError(f"declares {size} bytes of state, more than the {MAX_STATE_BYTES} accepted")
    body = blob[_PREFIX.size :]
    if zlib.crc32(body) != crc:
        raise StateFormatError("checksum mismatch: the state is truncated or corrupt")
    if flags & _COMPRESSED:
        z = zlib.decompressobj()
        try:
            raw = z.decompress(body, size + 1)
        except zlib.error as exc:
            raise StateFormatError(f"compressed body is corrupt ({exc})") from None
        if len(raw) != size or not z.eof or z.unconsumed_tail or z.unused_data:
            raise StateFormatError(f"compressed body does not hold the declared {size} bytes")
        data = memoryview(raw)
    else:
        if len(body) != size:
            raise StateFormatError(f"body holds {len(body)} bytes, the prefix declares {size}")
        data = body
    try:
        header = json.loads(str(data[:header_len], "utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise StateFormatError("header is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise StateFormatError(f"header is not valid JSON ({exc.msg} at offset {exc.pos})") from None
    except (RecursionError, ValueError) as exc:
        raise StateFormatError(f"header is not acceptable JSON ({exc})") from None
    if type(header) is not dict:
        raise StateFormatError("header is not a JSON object")
    return header, data[header_len:]


def _refuse_constant(name: str) -> Any:
    raise StateFormatError(f"header holds the non-finite number {name}; the format writes those as nodes")


class _Decoder:
    def __init__(self, header: dict[str, Any], heap: memoryview, classes: StateClasses) -> None:
        self.heap = heap
        self.writer = str(header.get("writer", ""))
        layouts = header.get("classes")
        arrays = header.get("arrays")
        if type(layouts) is not list or type(arrays) is not list:
            raise StateFormatError("header lacks its class or array table")
        self.layouts: list[_Layout] = []
        for entry in layouts:
            if type(entry) is not list or len(entry) != 2:
                raise StateFormatError(f"class table entry {_short(entry)} is malformed")
            cls = classes.by_name.get(entry[0]) if type(entry[0]) is str else None
            if cls is None:
                raise StateFormatError(
                    f"state names class {_short(entry[0])}, which is not on the allow-list"
                )
            self.layouts.append(classes.shape_of(cls).layout(entry[1], self.writer))
        self.arrays = arrays
        self.dtypes: dict[Any, np.dtype] = {}
        self.memo: list[Any] = []
        self.tags = {
            "f": self.nonfinite,
            "t": lambda n, d: tuple(self.items(n, d)),
            "z": lambda n, d: frozenset(self.items(n, d)),
            "b": self.bytes_,
            "n": self.scalar,
            "re": self.pattern,
            "r": self.ref,
            "l": self.list_,
            "s": self.set_,
            "d": self.dict_,
            "C": self.dict_,
            "O": self.dict_,
            "q": self.deque,
            "a": self.ndarray,
            "o": self.instance,
            "g": self.generator,
            "pa": self.arrow_array,
            "pc": self.chunked,
            "pt": self.table,
        }

    def dec(self, node: Any, depth: int) -> Any:
        t = type(node)
        if t is str or t is int or t is bool or node is None:
            return node
        if t is float:
            if not math.isfinite(node):
                raise StateFormatError(f"number {node} out of range (non-finite values are written as nodes)")
            return node
        if t is not list or not node or type(node[0]) is not str:
            raise StateFormatError(f"malformed node {_short(node)}")
        fn = self.tags.get(node[0])
        if fn is None:
            raise StateFormatError(f"unknown node type {node[0]!r}")
        if depth >= MAX_DEPTH:
            raise StateFormatError(f"nodes nested deeper than {MAX_DEPTH}")
        return fn(node, depth + 1)

    def arg(self, node: list, i: int, kind: type | tuple[type, ...], what: str) -> Any:
        """``node[i]``, which must be a ``kind`` (never a bool; integers never negative)."""
        value = node[i] if len(node) > i else _MISSING
        if not isinstance(value, kind) or type(value) is bool or (type(value) is int and value < 0):
            raise StateFormatError(f"{node[0]!r} node: {what} is missing or malformed")
        return value

    def items(self, node: list, depth: int, at: int = 1) -> list:
        """The values of the item nodes ``node[at]`` (a fresh list the caller may keep)."""
        body = node[at] if len(node) > at else None
        if type(body) is not list:
            raise StateFormatError(f"{node[0]!r} node: items are missing or malformed")
        if _plain(body):
            return body  # a list json.loads just made: no node in it defines an object
        dec = self.dec
        return [dec(x, depth) for x in body]

    def define(self, obj: Any) -> Any:
        self.memo.append(obj)
        return obj

    def nonfinite(self, node: list, depth: int) -> float:
        value = _NONFINITE.get(self.arg(node, 1, str, "value"))
        if value is None:
            raise StateFormatError(f"non-finite float {node[1]!r} is not nan, inf or -inf")
        return value

    def bytes_(self, node: list, depth: int) -> bytes:
        try:
            return base64.b64decode(self.arg(node, 1, str, "base64 text"), validate=True)
        except ValueError:
            raise StateFormatError("bytes node is not base64") from None

    def scalar(self, node: list, depth: int) -> np.generic:
        arr = self.array_at(self.arg(node, 1, int, "array slot"))
        if arr.ndim != 0:
            raise StateFormatError("numpy scalar node refers to an array that is not 0-dimensional")
        return arr[()]

    def pattern(self, node: list, depth: int) -> re.Pattern:
        source = self.dec(node[1] if len(node) > 1 else None, depth)
        flags = self.arg(node, 2, int, "flags")
        if type(source) not in (str, bytes) or flags & ~_RE_FLAGS:
            raise StateFormatError("regular expression node is malformed")
        try:
            return re.compile(source, flags)
        except (re.error, ValueError, TypeError) as exc:
            raise StateFormatError(f"regular expression {_short(source)} does not compile ({exc})") from None

    def ref(self, node: list, depth: int) -> Any:
        k = node[1] if len(node) > 1 else None
        if type(k) is not int or not 0 <= k < len(self.memo):
            raise StateFormatError(f"reference to object {_short(k)}, which is not defined before it")
        return self.memo[k]

    def list_(self, node: list, depth: int) -> list:
        body = node[1] if len(node) > 1 else None
        if type(body) is list and _plain(body):
            self.memo.append(body)
            return body
        out: list = []
        self.memo.append(out)
        out += self.items(node, depth)
        return out

    def set_(self, node: list, depth: int) -> set:
        out: set = set()
        self.memo.append(out)
        out.update(self.items(node, depth))
        return out

    def dict_(self, node: list, depth: int) -> dict:
        tag = node[0]
        body = node[1] if len(node) > 1 else None
        if tag == "d" and type(body) is dict and _plain(body.values()):
            self.memo.append(body)  # a dict json.loads just made: no node in it defines an object
            return body
        out = self.define(
            {} if tag == "d" else collections.Counter() if tag == "C" else collections.OrderedDict()
        )
        dec = self.dec
        if type(body) is dict:
            pairs = ((k, v if type(v) in _PLAIN else dec(v, depth)) for k, v in body.items())
            # Counter.update would count the pairs themselves
            (dict.update if tag == "C" else type(out).update)(out, pairs)
        elif type(body) is not list:
            raise StateFormatError(f"{tag!r} node: entries are missing or malformed")
        else:
            if len(body) % 2:
                raise StateFormatError("dict node has a key without a value")
            for i in range(0, len(body), 2):
                key = dec(body[i], depth)
                out[key] = dec(body[i + 1], depth)
        return out

    def deque(self, node: list, depth: int) -> collections.deque:
        maxlen = node[1] if len(node) > 1 else _MISSING
        if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
            raise StateFormatError(f"deque node has maxlen {_short(maxlen)}")
        out = self.define(collections.deque(maxlen=maxlen))
        out.extend(self.items(node, depth, 2))
        return out

    def ndarray(self, node: list, depth: int) -> np.ndarray:
        return self.define(self.array_at(self.arg(node, 1, int, "array slot")))

    def instance(self, node: list, depth: int) -> Any:
        k = node[1] if len(node) > 1 else None
        if type(k) is not int or not 0 <= k < len(self.layouts):
            raise StateFormatError(
                f"instance of class number {_short(k)}, which the class table does not hold"
            )
        layout = self.layouts[k]
        if len(node) != len(layout.names) + 2:
            raise StateFormatError(
                f"instance of {class_name(layout.cls)} has {len(node) - 2} values for {len(layout.names)} attributes"
            )
        obj = object.__new__(layout.cls)
        self.memo.append(obj)
        dec = self.dec
        values = [x if type(x) in _PLAIN else dec(x, depth) for x in node[2:]]
        if layout.checks:
            layout.check(values)
        if layout.in_slot is None:
            obj.__dict__.update(zip(layout.names, values, strict=True))
        else:
            for name, value, in_slot in zip(layout.names, values, layout.in_slot, strict=True):
                if in_slot:
                    object.__setattr__(obj, name, value)
                else:
                    obj.__dict__[name] = value
        return obj

    def generator(self, node: list, depth: int) -> np.random.Generator:
        cls = _BIT_GENERATORS.get(self.arg(node, 1, str, "bit generator"))
        if cls is None:
            raise StateFormatError(f"bit generator {node[1]!r} is not one of {', '.join(_BIT_GENERATORS)}")
        bits = cls(0)
        gen = self.define(np.random.Generator(bits))
        state = self.dec(node[2] if len(node) > 2 else None, depth)
        if type(state) is not dict or state.get("bit_generator") != node[1]:
            raise StateFormatError(f"{node[1]} state is malformed")
        try:
            bits.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise StateFormatError(f"{node[1]} state is malformed ({exc})") from None
        return gen

    def arrow_array(self, node: list, depth: int) -> pa.Array:
        slot = len(self.memo)
        self.memo.append(None)
        name = self.arg(node, 1, str, "type")
        typ = _PA_TYPES.get(name)
        if typ is None:
            raise StateFormatError(f"Arrow type {name!r} is not allowed")
        n = self.arg(node, 2, int, "length")
        valid_slot = node[3] if len(node) > 3 else _MISSING
        buffers = self.arg(node, 4, list, "buffers")
        valid = None
        if valid_slot is not None:
            if type(valid_slot) is not int:
                raise StateFormatError("Arrow array validity is malformed")
            valid = self.array_at(valid_slot, np.dtype(bool), n)
        if n > MAX_STATE_BYTES:
            raise StateFormatError(f"Arrow array of {n} values is longer than any state holds")
        if name == "null":
            arr = pa.nulls(n) if not buffers else None
        elif name in _PA_VARWIDTH and len(buffers) == 2 and all(type(b) is int for b in buffers):
            offsets = self.array_at(buffers[0], np.dtype(_PA_VARWIDTH[name]), n + 1)
            data = self.array_at(buffers[1], np.dtype(np.uint8), None)
            bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
            arr = pa.Array.from_buffers(typ, n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
        elif name not in _PA_VARWIDTH and len(buffers) == 1 and type(buffers[0]) is int:
            values = self.array_at(buffers[0], np.dtype(typ.to_pandas_dtype()), n)
            arr = pa.array(values, type=typ, mask=None if valid is None else ~valid)
        else:
            arr = None
        if arr is None:
            raise StateFormatError(f"Arrow {name} array has malformed buffers")
        try:
            arr.validate(full=True)
        except pa.ArrowException as exc:
            raise StateFormatError(f"Arrow {name} array is invalid ({exc})") from None
        self.memo[slot] = arr
        return arr

    def chunked(self, node: list, depth: int) -> pa.ChunkedArray:
        slot = len(self.memo)
        self.memo.append(None)
        typ = _PA_TYPES.get(self.arg(node, 1, str, "type"))
        chunks = [self.dec(c, depth) for c in self.arg(node, 2, list, "chunks")]
        if typ is None or any(not isinstance(c, pa.Array) or c.type != typ for c in chunks):
            raise StateFormatError("Arrow chunked array has a type or chunks the format does not allow")
        self.memo[slot] = out = pa.chunked_array(chunks, type=typ)
        return out

    def table(self, node: list, depth: int) -> pa.Table:
        slot = len(self.memo)
        self.memo.append(None)
        names = self.arg(node, 1, list, "column names")
        nullable = self.arg(node, 2, list, "nullability")
        columns = [self.dec(c, depth) for c in self.arg(node, 3, list, "columns")]
        meta = node[4] if len(node) > 4 else None
        if not (
            len(names) == len(nullable) == len(columns)
            and all(type(x) is str for x in names)
            and all(type(x) is bool for x in nullable)
            and all(type(c) is pa.ChunkedArray for c in columns)
        ):
            raise StateFormatError("Arrow table node is malformed")
        metadata = None
        if meta is not None:
            if type(meta) is not list or any(type(kv) is not list or len(kv) != 2 for kv in meta):
                raise StateFormatError("Arrow table metadata is malformed")
            metadata = {self.dec(k, depth): self.dec(v, depth) for k, v in meta}
            if any(type(x) is not bytes for kv in metadata.items() for x in kv):
                raise StateFormatError("Arrow table metadata is not bytes")
        fields = [pa.field(n, c.type, nullable=b) for n, c, b in zip(names, columns, nullable, strict=True)]
        try:
            out = pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=metadata))
            out.validate(full=True)
        except pa.ArrowException as exc:
            raise StateFormatError(f"Arrow table is invalid ({exc})") from None
        self.memo[slot] = out
        return out

    def array_at(self, slot: int, dtype: np.dtype | None = None, length: int | None = None) -> np.ndarray:
        """A writable copy of heap array ``slot``, checked against an expected 1-d dtype and length."""
        if type(slot) is not int or not 0 <= slot < len(self.arrays):
            raise StateFormatError(f"array slot {_short(slot)} is not in the array table")
        entry = self.arrays[slot]
        if type(entry) is not list or len(entry) not in (3, 4) or (len(entry) == 4 and entry[3] != "F"):
            raise StateFormatError(f"array {slot}: entry {_short(entry)} is malformed")
        descr, shape, offset = entry[0], _dims(entry[1], f"array {slot}: shape"), entry[2]
        key = descr if type(descr) is str else json.dumps(descr)
        have = self.dtypes.get(key)
        if have is None:
            have = self.dtypes[key] = _parse_dtype(descr)
        if dtype is not None and (
            have != dtype or len(shape) != 1 or (length is not None and shape[0] != length)
        ):
            raise StateFormatError(
                f"array {slot}: expected {dtype} of length {length}, got {have} of shape {shape}"
            )
        count = math.prod(shape)
        nbytes = count * have.itemsize
        if type(offset) is not int or offset < 0 or offset + nbytes > len(self.heap):
            raise StateFormatError(
                f"array {slot}: {nbytes} bytes at offset {offset} lie outside the {len(self.heap)}-byte heap"
            )
        if count == 0:
            return np.zeros(shape, dtype=have)
        flat = np.frombuffer(self.heap, dtype=have, count=count, offset=offset)
        if len(entry) == 4:
            return flat.reshape(shape[::-1]).T.copy(order="F")
        return flat.reshape(shape).copy()


def _plain(values: Any) -> bool:
    """Whether parsed JSON values are all plain (no node, no float that overflowed to infinity)."""
    types = set(map(type, values))
    return types <= _PLAIN or (types <= _NUMBERS and all(map(math.isfinite, values)))


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def decode_state(
    blob: bytes | bytearray | memoryview, classes: StateClasses, *, kind: str
) -> tuple[Any, dict[str, Any]]:
    """(root object, the header's ``format``, ``version``, ``kind`` and ``writer``) of a blob written
    by :func:`encode_state` with the same ``kind``.  Raises :class:`StateFormatError` for anything
    else."""
    header, heap = unpack_frame(blob)
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise StateFormatError(
            f"header says format {_short(header.get('format'))} version {_short(header.get('version'))}, "
            f"expected {FORMAT} version {FORMAT_VERSION}"
        )
    if header.get("kind") != kind:
        raise StateFormatError(f"this is {_short(header.get('kind'))} state, not {kind} state")
    if "root" not in header:
        raise StateFormatError("header holds no object graph")
    try:
        root = _Decoder(header, heap, classes).dec(header["root"], 0)
    except StateFormatError:
        raise
    except RecursionError:
        raise StateFormatError("object graph nested too deeply") from None
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        pa.ArrowException,
    ) as exc:
        # e.g. an unhashable set item or dict key, a value numpy refuses for a dtype
        raise StateFormatError(f"object graph is malformed ({type(exc).__name__}: {exc})") from None
    meta = {k: header[k] for k in ("format", "version", "kind", "writer") if k in header}
    return root, meta
