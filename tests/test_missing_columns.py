"""Inputs with columns missing: refused with one line naming the field, or analysed normally.

A new user's export often lacks a column: an IoT-23 CSV without ``id.resp_p``, a Zeek log cut
down to a few fields, JSON lines from another tool.  Every column of real samples of each
text format is dropped in turn (and random subsets of them), and the result goes through the
whole ``analyze`` service: either an :class:`~fleetwarden.core.errors.InputError` that names a
missing field, or a normal result; never another exception.  A required field (marked in
:mod:`fleetwarden.core.events`) missing must be refused; an optional one must not be.

Samples: 300 lines of an IoT-23 CSV, the Stratosphere port-scan ``conn.log`` in Zeek TSV and in
Zeek JSON, and a simulated fleet's events as JSON lines (every event kind).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import need_data

from fleetwarden.app.analyze import analyze
from fleetwarden.core.errors import InputError
from fleetwarden.core.events import KINDS, required_fields
from fleetwarden.sources import detect_format

FORMATS = ("iot23-csv", "zeek-tsv", "zeek-json", "jsonl")


@functools.cache
def _samples() -> dict[str, tuple[bytes, list[str], frozenset[str]]]:
    """format -> (file bytes, its column names, the names a reader must refuse to be without)."""
    csv = need_data("iot23", "CTU-Malware-Capture-8-1-labeled.csv").read_bytes().splitlines()[:300]
    tsv = need_data("stratosphere", "zeek-port-scans", "horizontal.conn.log").read_bytes()
    zjson = need_data("stratosphere", "zeek-port-scans", "vertical.conn.log").read_bytes()
    from fleetwarden.simulate import simulate_fleet
    from fleetwarden.sources.jsonl import write_jsonl

    fleet = simulate_fleet(devices=24, hours=0.5, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = write_jsonl(fleet.iter_batches(seconds=600), Path(tmp) / "events.jsonl").read_bytes()
    jsonl = _per_kind(jsonl, 250)  # every kind, a slice of the big ones: the test runs analyze ~150 times
    flow_required = frozenset(required_fields("flow"))
    every_required = frozenset(f for k in KINDS for f in required_fields(k)) | {"kind"}
    tsv_fields = next(ln for ln in tsv.splitlines() if ln.startswith(b"#fields")).decode().split("\t")[1:]
    return {
        "iot23-csv": (b"\n".join(csv) + b"\n", csv[0].decode().split(","), flow_required),
        "zeek-tsv": (tsv, tsv_fields, flow_required),
        "zeek-json": (zjson, _json_keys(zjson), flow_required),
        "jsonl": (jsonl, _json_keys(jsonl), every_required),
    }


def _per_kind(data: bytes, most: int) -> bytes:
    """The first ``most`` lines of each event kind, in file order."""
    seen: dict[str, int] = {}
    out = []
    for line in data.splitlines(keepends=True):
        kind = json.loads(line)["kind"]
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] <= most:
            out.append(line)
    return b"".join(out)


def _json_keys(data: bytes) -> list[str]:
    keys: dict[str, None] = {}
    for line in data.splitlines():
        keys.update(dict.fromkeys(json.loads(line)))
    return list(keys)


def _drop(fmt: str, data: bytes, names: set[str]) -> bytes:
    """``data`` without the columns ``names`` (header and every row; JSON: the keys)."""
    if fmt in ("zeek-json", "jsonl"):
        objs = _objects(data)
        return "".join(
            json.dumps({k: v for k, v in o.items() if k not in names}) + "\n" for o in objs
        ).encode()
    lines = data.decode().splitlines()
    if fmt == "iot23-csv":
        header = lines[0].split(",")
        keep = [i for i, n in enumerate(header) if n not in names]
        return "".join(",".join(ln.split(",")[i] for i in keep) + "\n" for ln in lines).encode()
    fields = next(ln for ln in lines if ln.startswith("#fields")).split("\t")[1:]
    keep = [i for i, n in enumerate(fields) if n not in names]
    out = []
    for ln in lines:
        cells = ln.split("\t")
        if ln.startswith(("#fields", "#types")):
            out.append("\t".join([cells[0], *(cells[1 + i] for i in keep)]))
        elif ln.startswith("#"):
            out.append(ln)
        else:
            out.append("\t".join(cells[i] for i in keep))
    return ("\n".join(out) + "\n").encode()


@functools.cache
def _objects(data: bytes) -> list[dict]:
    return [json.loads(ln) for ln in data.splitlines()]


def _analyze_or_refuse(path: Path, dropped: set[str], skip_bad: bool) -> str | None:
    """Run ``analyze``: None when it gave a result, else the refusal's message (which must name a
    dropped field, or say that what is left is no longer a recognisable record)."""
    try:
        result = analyze([path], skip_bad=skip_bad)
    except InputError as exc:
        message = str(exc)
        assert "\n" not in message
        named = any(name in message for name in dropped)
        assert named or "unrecognised format" in message or "'kind'" in message, message
        return message
    assert result.stats["records"] >= 0
    return None


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_column_dropped_in_turn(tmp_path: Path, fmt: str) -> None:
    data, columns, required = _samples()[fmt]
    for name in columns:
        path = tmp_path / f"{fmt}-{name}.log"
        path.write_bytes(_drop(fmt, data, {name}))
        refused = _analyze_or_refuse(path, {name}, skip_bad=False)
        if name in required:
            assert refused is not None and name in refused, f"{fmt} without {name}: {refused}"
        else:
            assert refused is None, f"{fmt} without optional {name} was refused: {refused}"
        _analyze_or_refuse(path, {name}, skip_bad=True)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_column_subsets_dropped(tmp_path: Path, fmt: str, data) -> None:
    raw, columns, _ = _samples()[fmt]
    dropped = data.draw(st.sets(st.sampled_from(columns), min_size=1, max_size=len(columns)))
    path = tmp_path / f"{fmt}.log"
    path.write_bytes(_drop(fmt, raw, dropped))
    for skip_bad in (False, True):
        _analyze_or_refuse(path, dropped, skip_bad)


def test_csv_without_orig_h_is_recognised_and_refused(tmp_path: Path) -> None:
    data, _, _ = _samples()["iot23-csv"]
    path = tmp_path / "no-orig-h.csv"
    path.write_bytes(_drop("iot23-csv", data, {"id.orig_h"}))
    assert detect_format(path) == "iot23-csv"
    message = _analyze_or_refuse(path, {"id.orig_h"}, skip_bad=True)
    assert message is not None and "lacks required column(s): id.orig_h" in message


def test_zeek_logs_without_orig_h_name_it(tmp_path: Path) -> None:
    for fmt in ("zeek-tsv", "zeek-json"):
        raw, _, _ = _samples()[fmt]
        path = tmp_path / f"{fmt}.log"
        path.write_bytes(_drop(fmt, raw, {"id.orig_h"}))
        assert detect_format(path) == fmt
        message = _analyze_or_refuse(path, {"id.orig_h"}, skip_bad=False)
        assert message is not None and "id.orig_h" in message


def test_no_responder_port_is_analysed(tmp_path: Path) -> None:
    """The case that crashed ``analyze`` (beacon's pair keys were all null)."""
    for fmt in ("iot23-csv", "zeek-tsv", "zeek-json"):
        raw, _, _ = _samples()[fmt]
        path = tmp_path / f"{fmt}.log"
        path.write_bytes(_drop(fmt, raw, {"id.resp_p"}))
        result = analyze([path])
        assert result.stats["records"] > 0
