"""Property tests: damaged real samples give batches or SourceError, never another exception.

Samples: the first 200 lines of an IoT-23 CSV, a Zeek TSV written by write_tsv from them,
Zeek JSON from the Stratosphere port scan, and a mixed-kind JSON lines file.  Damage:
byte flips, truncation, inserted garbage lines, swapped columns.  With ``skip_bad=True``
damage confined to data lines never raises and every undamaged line's record is delivered.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import need_data

from fleetwarden.core.events import EventBatch
from fleetwarden.sources import ReadStats, SourceError, read_events
from fleetwarden.sources.jsonl import write_jsonl
from fleetwarden.sources.zeek import write_tsv

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@functools.cache
def _samples() -> dict[str, tuple[str, bytes, int]]:
    """name -> (format, file bytes, number of header lines); cached, not a fixture, to keep reprs short."""
    tmp = Path(tempfile.mkdtemp(prefix="fw-fuzz-"))
    csv_path = need_data("iot23", "CTU-Malware-Capture-8-1-labeled.csv")
    csv_bytes = b"".join(csv_path.read_bytes().splitlines(keepends=True)[:200])
    (tmp / "s.csv").write_bytes(csv_bytes)
    flows = EventBatch.concat(read_events(tmp / "s.csv"))
    tsv_bytes = write_tsv([flows], tmp / "s.log").read_bytes()
    zeek_json = need_data("stratosphere", "zeek-port-scans", "vertical.conn.log").read_bytes()
    mixed = []
    for i, rec in enumerate(flows.slice(0, 60).to_pylist()):
        mixed.append(EventBatch.from_columns("flow", {k: [v] for k, v in rec.items()}))
        mixed.append(
            EventBatch.from_columns(
                "auth", {"ts": [rec["ts"]], "user": [f"user{i}"], "success": [i % 3 == 0], "device_id": ["d"]}
            )
        )
        mixed.append(
            EventBatch.from_columns(
                "telemetry", {"ts": [rec["ts"]], "metric": [f"m{i}"], "value": [i * 0.5], "device_id": ["d"]}
            )
        )
    jsonl_bytes = write_jsonl(mixed, tmp / "s.jsonl").read_bytes()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "iot23": ("iot23-csv", csv_bytes, 1),
        "tsv": ("zeek-tsv", tsv_bytes, 8),
        "zeek-json": ("zeek-json", zeek_json, 0),
        "jsonl": ("jsonl", jsonl_bytes, 0),
    }


def _keys(batches: list[EventBatch]) -> set[str]:
    keys: set[str] = set()
    for b in batches:
        if b.kind in ("flow", "dns"):
            keys.update(v for v in b["uid"].to_pylist() if v is not None)
        elif b.kind == "auth":
            keys.update(b["user"].to_pylist())
        elif b.kind == "telemetry":
            keys.update(b["metric"].to_pylist())
    return keys


def _line_key(fmt: str, line: bytes, sep: bytes) -> str | None:
    """The key of the record an undamaged line holds (uid, or user/metric for JSONL)."""
    if fmt in ("zeek-json", "jsonl"):
        obj = json.loads(line)
        return obj.get("uid") or obj.get("user") or obj.get("metric")
    return line.split(sep)[1].decode()


def _read_all(path: Path, fmt: str, skip_bad: bool) -> tuple[list[EventBatch], ReadStats]:
    stats = ReadStats()
    return list(read_events(path, fmt=fmt, skip_bad=skip_bad, stats=stats, batch_size=64)), stats


damage_kinds = st.sampled_from(["flip", "truncate", "garbage", "swap", "drop_cell"])


def _damage_line(line: bytes, how: str, data: st.DataObject, sep: bytes) -> list[bytes]:
    if how == "flip" and line:
        i = data.draw(st.integers(0, len(line) - 1))
        b = data.draw(st.integers(0, 255))
        line = line[:i] + bytes([b]) + line[i + 1 :]
    elif how == "truncate":
        line = line[: data.draw(st.integers(0, max(0, len(line) - 1)))]
    elif how == "garbage":
        return [line, b"x" + data.draw(st.binary(min_size=0, max_size=40)).replace(b"\n", b"")]
    elif how == "swap":
        cells = line.split(sep)
        if len(cells) > 2:
            i, j = data.draw(st.integers(0, len(cells) - 1)), data.draw(st.integers(0, len(cells) - 1))
            cells[i], cells[j] = cells[j], cells[i]
        line = sep.join(cells)
    elif how == "drop_cell":
        cells = line.split(sep)
        del cells[data.draw(st.integers(0, len(cells) - 1))]
        line = sep.join(cells)
    # A line turned into a '#' directive would be a header by definition, not damage to a record.
    return [b"x" + line if line.startswith(b"#") else line]


@pytest.mark.parametrize("name", ["iot23", "tsv", "zeek-json", "jsonl"])
@SETTINGS
@given(data=st.data())
def test_anything_goes_gives_batches_or_source_error(tmp_path: Path, name: str, data) -> None:
    fmt, raw, _ = _samples()[name]
    how = data.draw(st.sampled_from(["flips", "truncate", "insert"]))
    buf = bytearray(raw)
    if how == "flips":
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        del buf[data.draw(st.integers(0, len(buf))) :]
    else:
        at = data.draw(st.integers(0, len(buf)))
        buf[at:at] = data.draw(st.binary(min_size=1, max_size=200))
    path = tmp_path / f"{name}.bin"
    path.write_bytes(bytes(buf))
    for skip_bad in (False, True):
        try:
            batches, stats = _read_all(path, fmt, skip_bad)
        except SourceError:
            continue
        assert stats.records == sum(len(b) for b in batches)


@pytest.mark.parametrize("name", ["iot23", "tsv", "zeek-json", "jsonl"])
@SETTINGS
@given(data=st.data())
def test_line_damage_with_skip_bad_keeps_every_good_record(tmp_path: Path, name: str, data) -> None:
    fmt, raw, n_header = _samples()[name]
    sep = b"," if fmt == "iot23-csv" else b"\t" if fmt == "zeek-tsv" else b","
    lines = raw.split(b"\n")
    tail = lines.pop() if lines[-1] in (b"", b"\r") else None
    # #close at the end of a TSV is a header line too
    n_data_end = len(lines) - (1 if lines[-1].startswith(b"#") else 0)
    damaged = set(data.draw(st.sets(st.integers(n_header, n_data_end - 1), min_size=1, max_size=6)))
    out: list[bytes] = []
    expect: set[str] = set()
    for i, line in enumerate(lines):
        if i in damaged:
            out.extend(_damage_line(line, data.draw(damage_kinds), data, sep))
        else:
            out.append(line)
            if n_header <= i < n_data_end:
                expect.add(_line_key(fmt, line.rstrip(b"\r"), sep))
    if tail is not None:
        out.append(tail)
    path = tmp_path / f"{name}.damaged"
    path.write_bytes(b"\n".join(out))
    batches, stats = _read_all(path, fmt, skip_bad=True)
    assert expect <= _keys(batches)
    assert stats.records == sum(len(b) for b in batches)
    assert stats.records + stats.skipped >= len(expect)
