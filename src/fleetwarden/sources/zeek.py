"""Zeek logs: ASCII (TSV) ``conn.log``/``dns.log`` and Zeek JSON lines, to flow and dns batches.

Reading is columnar.  The file is decompressed (gzip, several members allowed) into blocks
of a few megabytes cut at line ends; each block's data lines go to ``pyarrow.csv`` (TSV)
or ``pyarrow.json`` (JSON) with the kind's column types, which is the fast path and runs
at several million rows per second.  When Arrow rejects a block (a damaged line somewhere
in it) the block is re-read line by line in Python, which finds every bad line with its
real 1-based line number and a reason; good lines of that block are still delivered.

TSV details handled: ``#separator`` (escaped, e.g. ``\\x09``), ``#set_separator``,
``#empty_field`` (``(empty)`` becomes ``''``), ``#unset_field`` (``-`` becomes null),
``#path`` (``conn`` -> flow, ``dns`` -> dns; else decided from the field names),
``#fields`` (known names are mapped to :mod:`fleetwarden.core.events`, unknown ones dropped),
several header blocks in one file (rotated logs joined with ``cat``), ``\\xHH`` escapes in
strings, and IoT-23's ``conn.log.labeled`` whose last column packs
``tunnel_parents label detailed-label`` separated by spaces.

The reading machinery (:class:`Plan`, :class:`BlockReader`, :class:`Batcher`,
:func:`convert_json_record`) is shared with :mod:`fleetwarden.sources.iot23` and
:mod:`fleetwarden.sources.jsonl`.

:func:`write_tsv` writes batches back as a valid Zeek TSV log; ``read(write_tsv(x))``
gives ``x`` back.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from fleetwarden.core.events import EventBatch, required_fields, schema_for
from fleetwarden.sources import DEFAULT_BATCH, ReadStats, SourceError, drop_overlong

__all__ = ["read", "read_json", "read_tsv", "write_tsv"]

BLOCK_BYTES = 8 << 20
_GZIP_MAGIC = b"\x1f\x8b"

# Names used by Zeek (or by IoT-23) that differ from the events.py field names.
RENAME = {"detailed-label": "detailed_label"}

_INT_RE = re.compile(r"[+-]?[0-9]{1,18}\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\Z")
_ESCAPE_RE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_TRUE = frozenset({"T", "true", "True", "TRUE"})
_FALSE = frozenset({"F", "false", "False", "FALSE"})
_INT_RANGE = {pa.int32(): (-(2**31), 2**31 - 1), pa.int64(): (-(2**63), 2**63 - 1)}


# What the Arrow fast paths may raise on damaged input; they then fall back to Python.
FAST_PATH_ERRORS = (pa.ArrowException, UnicodeError, ValueError, TypeError, KeyError, IndexError)


class RecordError(ValueError):
    """One record is bad; the message says which field and why (the caller adds file and line)."""


# --------------------------------------------------------------------------- bytes in


class BlockReader:
    """Iterate over a file (gzip is decompressed) in blocks of whole lines.

    Consumers advance :attr:`line` by the number of lines of each block they handled, so
    the reader itself never has to count newlines (that scan costs as much as a tenth of
    the Arrow parse).  A truncated or corrupt gzip stream yields everything up to the
    last complete line, then raises SourceError naming the line where the damage starts.
    """

    def __init__(self, path: Path, block_bytes: int = BLOCK_BYTES) -> None:
        self.path = path
        self.block_bytes = block_bytes
        self.line = 1  # number of the first line of the next block

    def __iter__(self) -> Iterator[bytes]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed in finally, generator lifetime
        except OSError as exc:
            raise SourceError(self.path, None, f"cannot open: {exc.strerror or exc}") from None
        try:
            parts: list[bytes] = []  # joined once per block: += would copy quadratically
            size = 0
            pending = b""
            first = True
            try:
                for chunk in _decompressed(fh):
                    if first:
                        first = False
                        if chunk.startswith(b"\xef\xbb\xbf"):
                            chunk = chunk[3:]
                    parts.append(chunk)
                    size += len(chunk)
                    if size < self.block_bytes:
                        continue
                    pending = b"".join(parts)
                    cut = pending.rfind(b"\n") + 1
                    if cut == 0:
                        parts, size = [pending], len(pending)
                        continue
                    yield pending[:cut]
                    pending = pending[cut:]
                    parts, size = [pending], len(pending)
                pending = b"".join(parts)
            except _StreamDamage as exc:
                pending = b"".join(parts)
                cut = pending.rfind(b"\n") + 1
                if cut:
                    yield pending[:cut]
                raise SourceError(
                    self.path, f"line {self.line}", f"{exc}; the rest of the file is lost"
                ) from None
            if pending:
                yield pending
        finally:
            fh.close()


def count_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


class _StreamDamage(Exception):
    pass


def _decompressed(fh: Any) -> Iterator[bytes]:
    head = fh.read(2)
    fh.seek(0)
    if head != _GZIP_MAGIC:
        while chunk := fh.read(BLOCK_BYTES):
            yield chunk
        return
    # zlib directly (not gzip.open) so a truncated stream keeps all it could decompress;
    # several gzip members one after the other (rotated logs joined with cat) are allowed.
    dec = zlib.decompressobj(wbits=31)
    total = 0
    data = fh.read(1 << 20)
    while data:
        try:
            out = dec.decompress(data)
        except zlib.error as exc:
            raise _StreamDamage(f"gzip stream is corrupt after {total} bytes ({exc})") from None
        if out:
            total += len(out)
            yield out
        if not dec.eof:
            data = fh.read(1 << 20)
            continue
        rest = dec.unused_data
        if len(rest) < 2:
            rest += fh.read(1 << 20)
        if not rest:
            return
        if not rest.startswith(_GZIP_MAGIC):
            if rest.strip(b"\x00") or fh.read(1 << 20).strip(b"\x00"):
                raise _StreamDamage(f"garbage after the gzip stream at {total} bytes")
            return
        dec = zlib.decompressobj(wbits=31)
        data = rest
    raise _StreamDamage(f"gzip stream is truncated after {total} bytes")


# --------------------------------------------------------------------------- batching


class Batcher:
    """Turns typed columns of one kind into EventBatches of at most ``batch_size`` rows.

    Blocks are sliced, never concatenated: a batch is a zero-copy view of one parsed
    block, so batches at block ends may be shorter than ``batch_size``.
    """

    def __init__(self, batch_size: int, stats: ReadStats) -> None:
        self.batch_size = max(1, int(batch_size))
        self.stats = stats

    def add(self, kind: str, columns: dict[str, pa.Array], length: int) -> Iterator[EventBatch]:
        if length == 0:
            return
        table = EventBatch.from_columns(kind, columns, length).table
        for off in range(0, length, self.batch_size):
            batch = EventBatch(kind, table.slice(off, self.batch_size))
            self.stats.records += len(batch)
            yield batch

    def flush(self) -> Iterator[EventBatch]:
        """Nothing is held back; kept so readers say where a batch boundary must fall."""
        return iter(())


@dataclass
class Parsed:
    """Good rows of one block (typed columns, line number per row) and its bad lines."""

    columns: dict[str, pa.Array]
    length: int
    lines: np.ndarray
    errors: list[tuple[int, str]]
    n_lines: int  # lines of the block, blank and bad ones included

    def take_before(self, line: int) -> tuple[dict[str, pa.Array], int]:
        n = int(np.searchsorted(self.lines, line))
        return {k: v.slice(0, n) for k, v in self.columns.items()}, n


def deliver(
    parsed: Parsed,
    kind: str,
    batcher: Batcher,
    path: Path,
    skip_bad: bool,
    stats: ReadStats,
) -> Iterator[EventBatch]:
    """Hand a block's good rows to the batcher; raise at its first bad line unless skipping.

    Rows holding an over-long string (:func:`~fleetwarden.sources.drop_overlong`) are bad lines too."""
    parsed = _within_limits(parsed, kind)
    if parsed.errors and not skip_bad:
        line, what = min(parsed.errors)
        cols, n = parsed.take_before(line)
        yield from batcher.add(kind, cols, n)
        yield from batcher.flush()
        raise SourceError(path, f"line {line}", what)
    for line, what in parsed.errors:
        stats.skip(SourceError(path, f"line {line}", what))
    yield from batcher.add(kind, parsed.columns, parsed.length)


def _within_limits(parsed: Parsed, kind: str) -> Parsed:
    """``parsed`` without its rows that hold an over-long string, those added to its bad lines."""
    columns, length, lines, bad = drop_overlong(kind, parsed.columns, parsed.length, parsed.lines)
    if not bad:
        return parsed
    return Parsed(columns, length, lines, sorted([*parsed.errors, *bad]), parsed.n_lines)


# --------------------------------------------------------------------------- delimited text


@dataclass
class Column:
    """One raw column of a delimited line: the event fields it holds (several for IoT-23's packed one)."""

    raw_name: str
    targets: list[str | None]  # event field per packed part; None = dropped


@dataclass
class Plan:
    """How to read the data lines that follow one header (TSV ``#fields`` or a CSV header row)."""

    kind: str
    sep: str
    columns: list[Column]
    nulls: tuple[str, ...] = ("-",)
    empty: str | None = "(empty)"
    set_sep: str = ","
    escapes: bool = True  # Zeek's \xHH escapes in strings
    quoting: bool = False
    schema: pa.Schema = field(init=False)

    def __post_init__(self) -> None:
        self.schema = schema_for(self.kind)

    @property
    def fields(self) -> list[str]:
        return [t for c in self.columns for t in c.targets if t is not None]


def make_columns(raw_names: list[str], kind: str) -> list[Column]:
    names = set(schema_for(kind).names)
    cols = []
    for raw in raw_names:
        parts = raw.split() if raw.strip() else [raw]
        targets = [p if p in names else RENAME.get(p) if RENAME.get(p) in names else None for p in parts]
        cols.append(Column(raw, targets))
    return cols


def parse_delimited(data: bytes, first_line: int, plan: Plan) -> Parsed:
    """Parse a block of data lines; Arrow first, Python line by line if Arrow rejects it."""
    try:
        fast = _fast_delimited(data, first_line, plan)
    except FAST_PATH_ERRORS:  # anything Arrow trips on: the line-by-line pass names the culprit
        fast = None
    if fast is not None:
        return fast
    return _slow_delimited(data, first_line, plan)


def _fast_delimited(data: bytes, first_line: int, plan: Plan) -> Parsed | None:
    read_types: dict[str, pa.DataType] = {}
    include = []
    for i, col in enumerate(plan.columns):
        if not any(t is not None for t in col.targets):
            continue
        name = f"c{i}"
        include.append(name)
        packed = len(col.targets) > 1
        read_types[name] = pa.string() if packed else plan.schema.field(col.targets[0]).type
    if not include:
        return None
    try:
        table = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=[f"c{i}" for i in range(len(plan.columns))]),
            parse_options=pcsv.ParseOptions(
                delimiter=plan.sep,
                quote_char='"' if plan.quoting else False,
                escape_char=False,
                ignore_empty_lines=False,
                newlines_in_values=False,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=read_types,
                include_columns=include,
                null_values=list(plan.nulls),
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=sorted(_TRUE),
                false_values=sorted(_FALSE),
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeError):
        return None
    # Quoting off and empty lines kept: every line is a row (or an error), so the row
    # count is the line count and no newline scan is needed.
    n = table.num_rows
    # One-byte scans of the raw block (memchr speed) spare a per-column search when, as
    # almost always, there is no escape and no empty-field marker in it.
    marks = _StringMarks(
        empty=plan.empty is not None and plan.empty[:1].encode() in data,
        escapes=plan.escapes and b"\\" in data,
        set_sep=plan.set_sep != "," and plan.set_sep.encode() in data,
    )
    columns: dict[str, pa.Array] = {}
    for i, col in enumerate(plan.columns):
        if f"c{i}" not in read_types:
            continue
        arr = table.column(f"c{i}").combine_chunks()
        if len(col.targets) == 1:
            target = col.targets[0]
            assert target is not None
            if pa.types.is_string(arr.type):
                arr = _fix_strings(arr, plan, marks)
            columns[target] = arr
            continue
        parts = pc.split_pattern_regex(pc.utf8_trim_whitespace(arr), r"\s+")
        if pc.any(pc.not_equal(pc.list_value_length(parts), len(col.targets))).as_py():
            return None
        for j, target in enumerate(col.targets):
            if target is None:
                continue
            part = pc.list_element(parts, j)
            part = pc.if_else(pc.is_in(part, pa.array(plan.nulls)), pa.scalar(None, pa.string()), part)
            part = _fix_strings(part, plan, marks)
            want = plan.schema.field(target).type
            if not pa.types.is_string(want):
                try:
                    part = pc.cast(part, want)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return None
            columns[target] = part
    required = _required(plan.kind)
    if not set(required) <= set(columns) or any(columns[f].null_count for f in required):
        return None
    lines = np.arange(first_line, first_line + n, dtype=np.int64)
    return Parsed(columns, n, lines, [], n)


@dataclass
class _StringMarks:
    empty: bool
    escapes: bool
    set_sep: bool


def _fix_strings(arr: pa.Array, plan: Plan, marks: _StringMarks) -> pa.Array:
    if marks.empty and arr.null_count < len(arr):
        is_empty = pc.equal(arr, plan.empty)
        if pc.any(is_empty).as_py():
            arr = pc.if_else(is_empty, "", arr)
    if marks.escapes and pc.any(pc.match_substring(arr, "\\x")).as_py():
        arr = pa.array([_unescape(v) if v is not None else None for v in arr.to_pylist()], pa.string())
    if marks.set_sep and pc.any(pc.match_substring(arr, plan.set_sep)).as_py():
        arr = pc.replace_substring(arr, plan.set_sep, ",")
    return arr


def _unescape(value: str) -> str:
    if "\\x" not in value:
        return value
    raw = _ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8"))
    return raw.decode("utf-8", errors="replace")


def _required(kind: str) -> list[str]:
    return required_fields(kind)


def _slow_delimited(data: bytes, first_line: int, plan: Plan) -> Parsed:
    fields = plan.fields
    converters = [(_converter(plan.schema.field(f).type, f, plan)) for f in fields]
    required = set(_required(plan.kind))
    missing_required = required - set(fields)
    values: list[list[Any]] = [[] for _ in fields]
    lines: list[int] = []
    errors: list[tuple[int, str]] = []
    ncols = len(plan.columns)
    packed = [len(c.targets) for c in plan.columns]
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for idx, raw in enumerate(raw_lines):
        line_no = first_line + idx
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append((line_no, f"not UTF-8 text (bad byte at column {exc.start + 1})"))
            continue
        try:
            cells = _split(text, plan)
            if len(cells) != ncols:
                raise RecordError(f"expected {ncols} columns, found {len(cells)}")
            flat: list[tuple[str, str]] = []
            for cell, col, n_parts in zip(cells, plan.columns, packed, strict=True):
                if n_parts == 1:
                    if col.targets[0] is not None:
                        flat.append((col.targets[0], cell))
                    continue
                parts = cell.split()
                if len(parts) != n_parts:
                    raise RecordError(
                        f"column {col.raw_name!r} should hold {n_parts} space-separated values, "
                        f"found {len(parts)}"
                    )
                flat.extend((t, p) for t, p in zip(col.targets, parts, strict=True) if t is not None)
            row = [conv(cell) for conv, (_, cell) in zip(converters, flat, strict=True)]
            if missing_required:
                raise RecordError(f"missing required field(s): {', '.join(sorted(missing_required))}")
            for name, value in zip(fields, row, strict=True):
                if value is None and name in required:
                    raise RecordError(f"required field {name!r} is unset")
        except RecordError as exc:
            errors.append((line_no, str(exc)))
            continue
        for col_values, value in zip(values, row, strict=True):
            col_values.append(value)
        lines.append(line_no)
    columns = {f: pa.array(v, type=plan.schema.field(f).type) for f, v in zip(fields, values, strict=True)}
    return Parsed(columns, len(lines), np.asarray(lines, dtype=np.int64), errors, count_lines(data))


def _split(text: str, plan: Plan) -> list[str]:
    if not plan.quoting or '"' not in text:
        return text.split(plan.sep)
    try:
        return next(csv.reader([text], delimiter=plan.sep, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise RecordError(f"bad CSV quoting: {exc}") from None


def _converter(type_: pa.DataType, name: str, plan: Plan) -> Callable[[str], Any]:
    nulls = frozenset(plan.nulls)

    if pa.types.is_string(type_):

        def conv_str(cell: str) -> str | None:
            if cell in nulls:
                return None
            if cell == plan.empty:
                return ""
            if plan.escapes:
                cell = _unescape(cell)
            if plan.set_sep != ",":
                cell = cell.replace(plan.set_sep, ",")
            return cell

        return conv_str
    if pa.types.is_floating(type_):
        what = "timestamp" if name == "ts" else "number"

        def conv_float(cell: str) -> float | None:
            if cell in nulls:
                return None
            if not _FLOAT_RE.match(cell):
                raise RecordError(f"field {name!r}: bad {what} {cell[:40]!r}")
            return float(cell)

        return conv_float
    if pa.types.is_integer(type_):
        lo, hi = _INT_RANGE[type_]
        what = "port" if name.endswith("_p") else "integer"

        def conv_int(cell: str) -> int | None:
            if cell in nulls:
                return None
            if not _INT_RE.match(cell):
                raise RecordError(f"field {name!r}: bad {what} {cell[:40]!r}")
            value = int(cell)
            if not lo <= value <= hi:
                raise RecordError(f"field {name!r}: {what} {cell!r} out of range")
            return value

        return conv_int
    if pa.types.is_boolean(type_):

        def conv_bool(cell: str) -> bool | None:
            if cell in nulls:
                return None
            if cell in _TRUE:
                return True
            if cell in _FALSE:
                return False
            raise RecordError(f"field {name!r}: bad boolean {cell[:40]!r} (expected T or F)")

        return conv_bool
    raise TypeError(f"no converter for {type_}")  # pragma: no cover - schema types are fixed


# --------------------------------------------------------------------------- Zeek TSV


# Fields only a dns.log or only a conn.log has: they name the log even when a required field
# (query, id.orig_h) is missing, so that the reader says which field instead of "unsupported".
_DNS_ONLY = frozenset({"query", "qtype_name", "rcode_name", "answers", "qclass_name", "qtype", "rcode"})
_CONN_ONLY = frozenset(
    {
        "conn_state",
        "history",
        "orig_bytes",
        "resp_bytes",
        "orig_pkts",
        "resp_pkts",
        "orig_ip_bytes",
        "resp_ip_bytes",
    }
)


def zeek_kind(path_name: str | None, names: list[str]) -> str | None:
    """The event kind of a Zeek log from its ``#path`` or, without one, its field names: ``flow``
    (conn), ``dns``, or None (a log FleetWarden does not read, such as http or files)."""
    if path_name:
        if path_name.startswith("conn"):
            return "flow"
        if path_name.startswith("dns"):
            return "dns"
    flat = {p for n in names for p in n.split()}
    if flat & _DNS_ONLY:
        return "dns"
    if {"id.orig_h", "id.resp_h"} <= flat and ("proto" in flat or "conn_state" in flat):
        return "flow"
    if flat & _CONN_ONLY:
        return "flow"
    return None


def _unescape_header(value: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


@dataclass
class _Header:
    sep: str = "\t"
    set_sep: str = ","
    empty: str = "(empty)"
    unset: str = "-"
    path_name: str | None = None
    plan: Plan | None = None
    problem: str | None = None  # why the current block's lines cannot be read

    def directive(self, text: str, line_no: int) -> None:
        if text.startswith("#separator"):
            value = text[len("#separator") :].strip()
            sep = _unescape_header(value)
            if len(sep) != 1:
                self.problem = f"unsupported #separator {value!r} (line {line_no}): must be one character"
            else:
                self.sep, self.problem = sep, None
            return
        name, _, value = text.partition(self.sep)
        if name == "#set_separator":
            self.set_sep = _unescape_header(value) or ","
        elif name == "#empty_field":
            self.empty = value
        elif name == "#unset_field":
            self.unset = value
        elif name == "#path":
            self.path_name = value.strip()
        elif name == "#fields":
            self._fields(value.split(self.sep), line_no)

    def _fields(self, names: list[str], line_no: int) -> None:
        if self.problem and self.problem.startswith("unsupported #separator"):
            return
        kind = zeek_kind(self.path_name, names)
        if kind is None:
            what = f"#path {self.path_name!r}" if self.path_name else "these #fields"
            self.plan = None
            self.problem = f"unsupported Zeek log ({what}, #fields at line {line_no}): only conn and dns logs"
            return
        cols = make_columns(names, kind)
        present = {t for c in cols for t in c.targets}
        missing = [f for f in required_fields(kind) if f not in present and f != "device_id"]
        if missing:
            self.plan = None
            self.problem = f"#fields at line {line_no} lacks required field(s): {', '.join(missing)}"
            return
        self.problem = None
        self.plan = Plan(
            kind=kind,
            sep=self.sep,
            columns=cols,
            nulls=(self.unset,),
            empty=self.empty,
            set_sep=self.set_sep,
        )


def read(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Iterator[EventBatch]:
    """Yield flow/dns batches from a Zeek log (TSV or JSON lines, gzip or not)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    reader = BlockReader(path)
    blocks = iter(reader)
    try:
        first = next(blocks, None)
    except SourceError as exc:
        if not skip_bad:
            raise
        stats.skip(exc)
        return
    if first is None:
        return
    source = (reader, chain_first(first, blocks))
    if _looks_json(first):
        yield from read_json(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size, source=source)
    else:
        yield from read_tsv(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size, source=source)


def _looks_json(data: bytes) -> bool:
    """The first line starting with '#' or '{' decides (a damaged first line must not)."""
    for raw in data[:65536].split(b"\n")[:50]:
        start = raw.lstrip()[:1]
        if start in (b"#", b"{"):
            return start == b"{"
    return False


def chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


Source = tuple[BlockReader, Iterator[bytes]]


def _open(path: Path, source: Source | None) -> Source:
    if source is not None:
        return source
    reader = BlockReader(path)
    return reader, iter(reader)


def read_tsv(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
    source: Source | None = None,
) -> Iterator[EventBatch]:
    """Yield batches from a Zeek ASCII log (one or several header blocks)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    batcher = Batcher(batch_size, stats)
    header = _Header()
    reader, blocks = _open(path, source)
    try:
        for data in blocks:
            pos, end = 0, len(data)
            while pos < end:
                if data[pos] == 0x23:  # '#': a header line
                    nl = data.find(b"\n", pos)
                    stop = end if nl == -1 else nl + 1
                    header.directive(_header_text(data[pos:stop]), reader.line)
                    reader.line += 1
                else:
                    stop = _next_header(data, pos)
                    segment = data if pos == 0 and stop == end else data[pos:stop]
                    yield from _tsv_segment(segment, reader, header, batcher, path, skip_bad, stats)
                pos = stop
    except SourceError as exc:
        yield from batcher.flush()
        if not skip_bad:
            raise
        stats.skip(exc)
        return
    yield from batcher.flush()


def _header_text(segment: bytes) -> str:
    return segment.rstrip(b"\r\n").decode("utf-8", errors="replace")


def _next_header(data: bytes, pos: int) -> int:
    """Offset of the next line starting with '#' (or the end); one-byte find is the fast one."""
    i = data.find(b"#", pos)
    while i != -1 and data[i - 1] != 0x0A:
        i = data.find(b"#", i + 1)
    return len(data) if i == -1 else i


def _tsv_segment(
    segment: bytes,
    reader: BlockReader,
    header: _Header,
    batcher: Batcher,
    path: Path,
    skip_bad: bool,
    stats: ReadStats,
) -> Iterator[EventBatch]:
    plan = header.plan
    line = reader.line
    if plan is None or header.problem:
        reader.line += count_lines(segment)
        rows = [i for i, raw in enumerate(segment.split(b"\n")) if raw.strip()]
        if not rows:
            return
        what = header.problem or "data line before any #fields header"
        if not skip_bad:
            yield from batcher.flush()
            raise SourceError(path, f"line {line + rows[0]}", what)
        stats.skip(SourceError(path, f"lines {line + rows[0]}-{line + rows[-1]}", what), count=len(rows))
        return
    if plan.sep != header.sep:
        plan.sep = header.sep
    parsed = parse_delimited(segment, line, plan)
    reader.line += parsed.n_lines
    yield from deliver(parsed, plan.kind, batcher, path, skip_bad, stats)


# --------------------------------------------------------------------------- Zeek JSON


def _json_schema(kind: str) -> pa.Schema:
    fields = []
    for f in schema_for(kind):
        type_ = pa.list_(pa.string()) if f.name == "answers" else f.type
        fields.append(pa.field(f.name, type_))
    fields.append(pa.field("detailed-label", pa.string()))
    return pa.schema(fields)


def ts_to_seconds(arr: pa.Array) -> pa.Array:
    """Arrow timestamps (naive = UTC) to float seconds since the epoch."""
    micros = pc.cast(pc.cast(arr, pa.timestamp("us", tz=arr.type.tz)), pa.int64())
    return pc.divide(pc.cast(micros, pa.float64()), 1e6)


def fast_json(data: bytes, schema: pa.Schema, expected: int, unexpected: str = "ignore") -> pa.Table | None:
    try:
        return _fast_json(data, schema, expected, unexpected)
    except FAST_PATH_ERRORS:
        return None


def _fast_json(data: bytes, schema: pa.Schema, expected: int, unexpected: str) -> pa.Table | None:
    """``pyarrow.json`` on a block, conformed to ``schema``; None when Arrow or the types disagree.

    Types are inferred (several times faster than an explicit schema of many absent
    fields) and then checked: only lossless casts of the same JSON type are allowed, so a
    number written as text is rejected here just as the line-by-line path rejects it.
    ``ts`` may be a number or ISO-8601 text; ``unexpected="error"`` rejects unknown keys.
    """
    # pyarrow.json does not validate UTF-8 inside string values: a damaged byte would
    # reach the tables as an invalid string, so such blocks take the line-by-line path.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        table = pjson.read_json(
            io.BytesIO(data),
            read_options=pjson.ReadOptions(block_size=1 << 20),
            parse_options=pjson.ParseOptions(newlines_in_values=False),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeError):
        return None
    # pyarrow.json drops blank lines: then rows no longer map to lines, so go slow.
    if table.num_rows != expected:
        return None
    names, arrays = [], []
    for name in table.column_names:
        if name not in schema.names:
            if unexpected == "error":
                return None
            continue
        arr = _conform_json(table.column(name), name, schema.field(name).type)
        if arr is None:
            return None
        names.append(name)
        arrays.append(arr)
    return pa.table(arrays, names=names) if names else None


def _conform_json(col: pa.ChunkedArray, name: str, want: pa.DataType) -> pa.Array | None:
    arr = col.combine_chunks()
    have = arr.type
    try:
        if pa.types.is_null(have):
            return pa.nulls(len(arr), want)
        if name == "ts" and pa.types.is_string(have):
            try:  # ISO-8601 without zone (taken as UTC), else with one (converted to UTC)
                stamps = pc.cast(arr, pa.timestamp("us"))
            except pa.ArrowInvalid:
                stamps = pc.cast(arr, pa.timestamp("us", tz="UTC"))
            return ts_to_seconds(stamps)
        if have == want:
            return arr
        if pa.types.is_integer(have) and (pa.types.is_integer(want) or pa.types.is_floating(want)):
            return pc.cast(arr, want)  # safe cast: overflow raises
        if pa.types.is_floating(have) and pa.types.is_floating(want):
            return arr
        if pa.types.is_list(have) and pa.types.is_list(want):
            if pa.types.is_null(have.value_type):
                return pc.cast(arr, want)
            return arr if have.value_type == want.value_type else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return None


def _zeek_json_kind(obj: dict[str, Any]) -> str | None:
    path_name = obj.get("_path")
    if isinstance(path_name, str) and zeek_kind(path_name, []) is not None:
        return zeek_kind(path_name, [])
    return zeek_kind(None, list(obj))


def convert_json_record(obj: dict[str, Any], kind: str, strict: bool) -> dict[str, Any]:
    """Check one decoded JSON object against ``kind``'s schema and return typed values.

    ``strict``: unknown fields are an error (generic JSON lines); Zeek JSON drops them.
    """
    schema = schema_for(kind)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = RENAME.get(key, key)
        if name not in schema.names:
            if strict:
                raise RecordError(f"unknown field {key!r} for kind {kind!r}")
            continue
        if value is None:
            out[name] = None
            continue
        type_ = schema.field(name).type
        out[name] = _json_value(name, value, type_)
    for name in required_fields(kind):
        if out.get(name) is None:
            problem = "is null" if name in out else "is missing"
            raise RecordError(f"required field {name!r} {problem}")
    return out


def _json_value(name: str, value: Any, type_: pa.DataType) -> Any:
    if name == "ts":
        return _json_ts(value)
    if pa.types.is_string(type_):
        if isinstance(value, str):
            if not value.isascii():
                _check_unicode(name, value)
            return value
        if name == "answers" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            joined = ",".join(value)
            if not joined.isascii():
                _check_unicode(name, joined)
            return joined
        raise RecordError(f"field {name!r}: expected a string, got {_jtype(value)}")
    if pa.types.is_boolean(type_):
        if isinstance(value, bool):
            return value
        raise RecordError(f"field {name!r}: expected true/false, got {_jtype(value)}")
    if pa.types.is_integer(type_):
        if isinstance(value, int) and not isinstance(value, bool):
            lo, hi = _INT_RANGE[type_]
            if lo <= value <= hi:
                return value
            raise RecordError(f"field {name!r}: {value} out of range")
        raise RecordError(f"field {name!r}: expected an integer, got {_jtype(value)}")
    if pa.types.is_floating(type_):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise RecordError(f"field {name!r}: expected a number, got {_jtype(value)}")
    raise RecordError(f"field {name!r}: unsupported type {type_}")  # pragma: no cover


def _check_unicode(name: str, value: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 column can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError(
            f"field {name!r}: not valid Unicode (lone surrogate {value[exc.start]!r} at character {exc.start + 1})"
        ) from None


def _json_ts(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        raise RecordError(f"field 'ts': bad timestamp {value!r}")
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RecordError(
                f"field 'ts': bad timestamp {value[:40]!r} (want epoch seconds or ISO-8601)"
            ) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    raise RecordError(f"field 'ts': bad timestamp, got {_jtype(value)}")


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def decode_json_lines(data: bytes, first_line: int) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Per-line JSON decoding for the slow path: ``(line, object)`` or ``(line, problem)``."""
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for idx, raw in enumerate(raw_lines):
        line_no = first_line + idx
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError:
            yield line_no, "not UTF-8 text"
            continue
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield line_no, f"not valid JSON ({reason})"
            continue
        if not isinstance(obj, dict):
            yield line_no, f"expected a JSON object, got {_jtype(obj)}"
            continue
        yield line_no, obj


def columns_from_records(kind: str, records: list[dict[str, Any]]) -> dict[str, pa.Array]:
    schema = schema_for(kind)
    names = {k for r in records for k in r}
    return {
        f.name: pa.array([r.get(f.name) for r in records], type=f.type) for f in schema if f.name in names
    }


def _json_table_columns(table: pa.Table, kind: str) -> dict[str, pa.Array] | None:
    schema = schema_for(kind)
    cols: dict[str, pa.Array] = {}
    for name in table.column_names:
        arr = table.column(name).combine_chunks()
        if name == "answers":
            arr = pc.binary_join(arr, ",")
        target = RENAME.get(name, name)
        if target in cols and name != target:
            arr = pc.coalesce(cols[target], arr)
        cols[target] = arr
    for name in required_fields(kind):
        if name not in cols or cols[name].null_count:
            return None
    return {k: v for k, v in cols.items() if k in schema.names}


def read_json(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
    source: Source | None = None,
) -> Iterator[EventBatch]:
    """Yield flow/dns batches from Zeek JSON lines (``ts`` as epoch seconds or ISO-8601)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    batcher = Batcher(batch_size, stats)
    try:
        reader, blocks = _open(path, source)
        for data in blocks:
            first_line, n_lines = reader.line, count_lines(data)
            reader.line += n_lines
            kind = _first_kind(data)
            table = fast_json(data, _json_schema(kind), n_lines) if kind else None
            try:
                cols = _json_table_columns(table, kind) if table is not None and kind else None
            except FAST_PATH_ERRORS:
                cols = None
            if cols is not None and kind:
                n = table.num_rows
                parsed = Parsed(cols, n, np.arange(first_line, first_line + n), [], n_lines)
                yield from deliver(parsed, kind, batcher, path, skip_bad, stats)
                continue
            yield from _slow_zeek_json(data, first_line, batcher, path, skip_bad, stats)
    except SourceError as exc:
        yield from batcher.flush()
        if not skip_bad:
            raise
        stats.skip(exc)
        return
    yield from batcher.flush()


def _first_kind(data: bytes) -> str | None:
    for raw in data.split(b"\n", 20)[:20]:
        if raw.strip():
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                return None
            return _zeek_json_kind(obj) if isinstance(obj, dict) else None
    return None


def _slow_zeek_json(
    data: bytes, first_line: int, batcher: Batcher, path: Path, skip_bad: bool, stats: ReadStats
) -> Iterator[EventBatch]:
    # Lines are grouped into runs of one kind so file order is kept across kinds.
    run_kind: str | None = None
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    errors: list[tuple[int, str]] = []

    def flush_run() -> Iterator[EventBatch]:
        if run_kind is None:
            return
        parsed = Parsed(
            columns_from_records(run_kind, records), len(records), np.asarray(lines), errors[:], 0
        )
        yield from deliver(parsed, run_kind, batcher, path, skip_bad, stats)

    for line_no, obj in decode_json_lines(data, first_line):
        try:
            if isinstance(obj, str):
                raise RecordError(obj)
            kind = _zeek_json_kind(obj)
            if kind is None:
                raise RecordError(
                    "not a Zeek conn or dns record (no id.orig_h/id.resp_h or query field), "
                    "nor a FleetWarden event (no 'kind' field)"
                )
            record = convert_json_record(obj, kind, strict=False)
        except RecordError as exc:
            errors.append((line_no, str(exc)))
            continue
        if kind != run_kind:
            yield from flush_run()
            run_kind, records, lines, errors = kind, [], [], []
        records.append(record)
        lines.append(line_no)
    if run_kind is None and errors:
        run_kind = "flow"
    yield from flush_run()


# --------------------------------------------------------------------------- writing

_ZEEK_TYPES = {
    "ts": "time",
    "id.orig_h": "addr",
    "id.resp_h": "addr",
    "id.orig_p": "port",
    "id.resp_p": "port",
    "proto": "enum",
    "duration": "interval",
    "answers": "vector[string]",
    "qtype_name": "string",
}
_PATHS = {"flow": "conn", "dns": "dns"}


def _zeek_type(f: pa.Field) -> str:
    if f.name in _ZEEK_TYPES:
        return _ZEEK_TYPES[f.name]
    if pa.types.is_integer(f.type):
        return "count"
    if pa.types.is_floating(f.type):
        return "double"
    if pa.types.is_boolean(f.type):
        return "bool"
    return "string"


def _format_column(arr: pa.Array, name: str) -> pa.Array:
    type_ = arr.type
    if pa.types.is_boolean(type_):
        text = pc.if_else(arr, "T", "F")
    elif pa.types.is_string(type_):
        text = arr
        if pc.any(pc.match_substring_regex(text, r"[\\\t\n\r]|^-$|^\(empty\)$")).as_py():
            text = pa.array([_escape(v) if v is not None else None for v in text.to_pylist()], pa.string())
        text = pc.if_else(pc.equal(text, ""), "(empty)", text)
    else:
        text = pc.cast(arr, pa.string())
    return pc.fill_null(text, "-")


def _escape(value: str) -> str:
    if value in ("-", "(empty)"):
        return "\\x" + format(ord(value[0]), "02x") + value[1:]
    return value.replace("\\", "\\x5c").replace("\t", "\\x09").replace("\n", "\\x0a").replace("\r", "\\x0d")


def write_tsv(batches: Iterable[EventBatch], path: str | Path) -> Path:
    """Write flow or dns batches as a Zeek ASCII log (``.gz`` suffix: gzip-compressed).

    Every field of the kind's schema is written (label columns too, as extra Zeek fields);
    a change of kind starts a new header block, as in rotated logs joined with ``cat``.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    kind: str | None = None
    with opener(path, "wb") as fh:
        for batch in batches:
            if batch.kind not in _PATHS:
                raise ValueError(f"write_tsv writes flow and dns batches, not {batch.kind!r}")
            if batch.kind != kind:
                if kind is not None:
                    fh.write(_close_line())
                kind = batch.kind
                fh.write(_header_lines(kind))
            if not len(batch):
                continue
            cols = [_format_column(batch[f.name].combine_chunks(), f.name) for f in batch.table.schema]
            rows = pc.binary_join_element_wise(*cols, "\t")
            fh.write("\n".join(rows.to_pylist()).encode("utf-8"))
            fh.write(b"\n")
        if kind is not None:
            fh.write(_close_line())
    return path


def _header_lines(kind: str) -> bytes:
    schema = schema_for(kind)
    now = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
    lines = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        f"#path\t{_PATHS[kind]}",
        f"#open\t{now}",
        "#fields\t" + "\t".join(schema.names),
        "#types\t" + "\t".join(_zeek_type(f) for f in schema),
    ]
    return ("\n".join(lines) + "\n").encode()


def _close_line() -> bytes:
    return f"#close\t{time.strftime('%Y-%m-%d-%H-%M-%S', time.gmtime())}\n".encode()
