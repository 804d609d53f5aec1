"""Generic JSON lines: any FleetWarden event kind, one object a line, to event batches.

The integration path for systems that are not Zeek: each line is an object with ``kind``
(or ``event``) naming an event kind of :mod:`fleetwarden.core.events` plus that kind's fields,
for example::

    {"kind": "auth", "ts": 1700000000.5, "user": "maint", "src_ip": "203.0.113.7",
     "success": false, "device_id": "plc-0001"}

``ts`` is epoch seconds or ISO-8601 text (no zone = UTC).  Kinds may be mixed: each block
of the file yields one batch per kind (at most ``batch_size`` rows each), in file order
within a kind.  Blocks are parsed with ``pyarrow.json`` against the union of all kinds'
fields; a block Arrow rejects, or one holding an invalid record, is re-read line by line
to name each bad line and its problem.  Files whose objects carry no kind but look like
Zeek JSON (``id.orig_h`` or ``query``) are handed to :mod:`fleetwarden.sources.zeek`.

:func:`write_jsonl` writes batches in this format; reading them back gives them back.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.events import KINDS, EventBatch, required_fields, schema_for
from fleetwarden.sources import DEFAULT_BATCH, ReadStats, SourceError, drop_overlong
from fleetwarden.sources.zeek import (
    FAST_PATH_ERRORS,
    BlockReader,
    RecordError,
    chain_first,
    columns_from_records,
    convert_json_record,
    count_lines,
    decode_json_lines,
    fast_json,
    read_json,
    zeek_kind,
)

__all__ = ["encode_lines", "read", "write_jsonl"]


def _union_schema() -> pa.Schema:
    fields: dict[str, pa.DataType] = {"kind": pa.string(), "event": pa.string()}
    for kind in KINDS:
        for f in schema_for(kind):
            if fields.setdefault(f.name, f.type) != f.type:  # pragma: no cover - schemas are fixed
                raise TypeError(f"field {f.name!r} has two types across kinds")
    return pa.schema(list(fields.items()))


_UNION = _union_schema()
_KIND_FIELDS = {k: set(schema_for(k).names) for k in KINDS}


def read(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Iterator[EventBatch]:
    """Yield batches of any event kind from JSON lines (see the module doc for the format)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    reader = BlockReader(path)
    blocks = iter(reader)
    try:
        first = next(blocks, None)
        if first is None:
            return
        if _looks_like_zeek(first):
            source = (reader, chain_first(first, blocks))
            yield from read_json(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size, source=source)
            return
        for data in chain_first(first, blocks):
            first_line, n_lines = reader.line, count_lines(data)
            reader.line += n_lines
            yield from _block(data, first_line, n_lines, path, skip_bad, stats, batch_size)
    except SourceError as exc:
        if not skip_bad:  # with skip_bad only a damaged stream (truncated gzip) gets here
            raise
        stats.skip(exc)


def _looks_like_zeek(data: bytes) -> bool:
    for raw in data.split(b"\n", 20)[:20]:
        if raw.strip():
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                return False
            return (
                isinstance(obj, dict)
                and "kind" not in obj
                and "event" not in obj
                and zeek_kind(None, list(obj)) is not None
            )
    return False


# One kind's rows of a block: typed columns, their count, and the line number of each row.
_Rows = tuple[dict[str, pa.Array], int, np.ndarray]


def _block(
    data: bytes,
    first_line: int,
    n_lines: int,
    path: Path,
    skip_bad: bool,
    stats: ReadStats,
    batch_size: int,
) -> Iterator[EventBatch]:
    try:
        groups = _fast_block(data, first_line, n_lines)
    except FAST_PATH_ERRORS:
        groups = None
    errors: list[tuple[int, str]] = []
    if groups is None:
        groups, errors = _slow_block(data, first_line)
    groups = _within_limits(groups, errors)
    stop = min(errors)[0] if errors and not skip_bad else None
    for kind, (cols, n, lines) in groups.items():
        if stop is not None:
            n = int(np.searchsorted(lines, stop))
            cols = {k: v.slice(0, n) for k, v in cols.items()}
        if not n:
            continue
        table = EventBatch.from_columns(kind, cols, n).table
        for off in range(0, n, max(1, batch_size)):
            batch = EventBatch(kind, table.slice(off, batch_size))
            stats.records += len(batch)
            yield batch
    if stop is not None:
        raise SourceError(path, f"line {stop}", min(errors)[1])
    for line, what in errors:
        stats.skip(SourceError(path, f"line {line}", what))


def _within_limits(groups: dict[str, _Rows], errors: list[tuple[int, str]]) -> dict[str, _Rows]:
    """``groups`` without the rows holding an over-long string; those join ``errors`` (in place)."""
    out: dict[str, _Rows] = {}
    for kind, (cols, n, lines) in groups.items():
        cols, n, lines, bad = drop_overlong(kind, cols, n, lines)
        errors += bad
        out[kind] = (cols, n, lines)
    errors.sort()
    return out


def _fast_block(data: bytes, first_line: int, n_lines: int) -> dict[str, _Rows] | None:
    table = fast_json(data, _UNION, n_lines, unexpected="error")
    if table is None:
        return None
    named = [table.column(c).combine_chunks() for c in ("kind", "event") if c in table.column_names]
    if not named:
        return None
    kinds = pc.coalesce(*named) if len(named) > 1 else named[0]
    if kinds.null_count or not pc.all(pc.is_in(kinds, pa.array(KINDS))).as_py():
        return None
    lines = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
    groups: dict[str, _Rows] = {}
    for kind in pc.unique(kinds).to_pylist():  # order of first appearance
        mask = pc.equal(kinds, kind)
        sub = table.filter(mask)
        allowed = _KIND_FIELDS[kind]
        cols: dict[str, pa.Array] = {}
        for name in sub.column_names:
            if name in ("kind", "event"):
                continue
            arr = sub.column(name).combine_chunks()
            if name not in allowed:
                if arr.null_count != len(arr):
                    return None  # a field of another kind: the slow path names the line
                continue
            cols[name] = arr
        if any(cols[name].null_count for name in required_fields(kind)):
            return None
        groups[kind] = (cols, sub.num_rows, lines[np.asarray(mask.to_numpy(zero_copy_only=False))])
    return groups


def _slow_block(data: bytes, first_line: int) -> tuple[dict[str, _Rows], list[tuple[int, str]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    lines: dict[str, list[int]] = {}
    errors: list[tuple[int, str]] = []
    for line_no, obj in decode_json_lines(data, first_line):
        try:
            if isinstance(obj, str):
                raise RecordError(obj)
            kind, record = _record(obj)
        except RecordError as exc:
            errors.append((line_no, str(exc)))
            continue
        records.setdefault(kind, []).append(record)
        lines.setdefault(kind, []).append(line_no)
    groups = {
        kind: (columns_from_records(kind, recs), len(recs), np.asarray(lines[kind], dtype=np.int64))
        for kind, recs in records.items()
    }
    return groups, errors


def _record(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = obj.get("kind", obj.get("event"))
    if kind is None:
        raise RecordError("missing 'kind' (or 'event') naming the event kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise RecordError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    body = {}
    for key, value in obj.items():
        if key in ("kind", "event"):
            continue
        # A null for a field some other kind has is what the columnar path sees too: no value.
        if value is None and key in _UNION.names and key not in _KIND_FIELDS[kind]:
            continue
        body[key] = value
    return kind, convert_json_record(body, kind, strict=True)


def write_jsonl(batches: Iterable[EventBatch], path: str | Path) -> Path:
    """Write batches of any kinds as JSON lines (``kind`` first, nulls left out; ``.gz``: gzip)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for batch in batches:
            prefix = '{"kind": ' + json.dumps(batch.kind)
            for record in batch.to_pylist():
                body = {k: v for k, v in record.items() if v is not None}
                for k, v in body.items():
                    if isinstance(v, float) and not math.isfinite(v):
                        raise ValueError(f"{batch.kind} field {k!r} is {v}: not representable in JSON")
                text = json.dumps(body, separators=(", ", ": "))
                fh.write(prefix + (", " + text[1:] if len(text) > 2 else "}") + "\n")
    return path


def encode_lines(batch: EventBatch) -> list[str]:
    """One compact JSON line per record (``kind`` first, nulls left out): what the live publishers
    (MQTT, NATS) send and :func:`decode_events` reads."""
    kind = batch.kind
    return [
        json.dumps({"kind": kind, **{k: v for k, v in rec.items() if v is not None}}, separators=(",", ":"))
        for rec in batch.to_pylist()
    ]


def decode_events(
    data: bytes, first_line: int = 1
) -> tuple[dict[str, tuple[EventBatch, np.ndarray]], list[tuple[int, str]]]:
    """Decode JSON events held in memory (live transports: MQTT payloads, HTTP bodies).

    ``data`` is JSON lines (a single object is one line).  Returns, per kind, the batch and
    the line number of each of its rows, plus ``(line, problem)`` for every bad line (a record
    holding an over-long string among them); good lines are never lost because of a bad one.
    """
    n_lines = count_lines(data)
    try:
        groups = _fast_block(data, first_line, n_lines)
        errors: list[tuple[int, str]] = []
    except FAST_PATH_ERRORS:
        groups = None
    if groups is None:
        groups, errors = _slow_block(data, first_line)
    groups = _within_limits(groups, errors)
    out = {
        kind: (EventBatch.from_columns(kind, cols, n), lines)
        for kind, (cols, n, lines) in groups.items()
        if n
    }
    return out, errors
