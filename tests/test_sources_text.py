"""Text sources on real data: Zeek TSV and JSON logs, IoT-23 CSVs, generic JSON lines.

Expected values are read from the files independently (csv / json / str.split), never
hard-coded, so these tests hold for any file of the same kind.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
from tests.conftest import need_data

from fleetwarden.core.events import EventBatch
from fleetwarden.sources import ReadStats, SourceError, detect_format, read_events
from fleetwarden.sources.jsonl import write_jsonl
from fleetwarden.sources.zeek import write_tsv

IOT23 = [
    "CTU-Honeypot-Capture-4-1-labeled.csv",
    "CTU-Honeypot-Capture-5-1-labeled.csv",
    "CTU-Malware-Capture-20-1-labeled.csv",
    "CTU-Malware-Capture-34-1-labeled.csv",
    "CTU-Malware-Capture-8-1-labeled.csv",
]


def _read(path: Path, **kw) -> EventBatch:
    batches = list(read_events(path, **kw))
    return EventBatch.concat(batches)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _int_or_none(text: str) -> int | None:
    return None if text in ("", "-") else int(text)


@pytest.fixture(scope="module")
def mirai() -> Path:
    return need_data("iot23", "CTU-Malware-Capture-34-1-labeled.csv")


@pytest.fixture(scope="module")
def mirai_batch(mirai: Path) -> EventBatch:
    return _read(mirai)


# --------------------------------------------------------------------------- IoT-23 CSV


@pytest.mark.parametrize("name", IOT23)
def test_iot23_csv_rows_and_values(name: str) -> None:
    path = need_data("iot23", name)
    assert detect_format(path) == "iot23-csv"
    rows = _csv_rows(path)
    stats = ReadStats()
    batch = _read(path, stats=stats)
    assert batch.kind == "flow"
    assert len(batch) == len(rows) == stats.records
    assert stats.skipped == 0
    for i in (0, len(rows) // 2, len(rows) - 1):
        row, got = rows[i], batch.slice(i, 1).to_pylist()[0]
        assert got["uid"] == row["uid"]
        assert got["ts"] == pytest.approx(float(row["ts"]), abs=1e-6)
        assert got["id.orig_h"] == row["id.orig_h"] and got["id.resp_h"] == row["id.resp_h"]
        assert got["id.resp_p"] == int(row["id.resp_p"])
        assert got["proto"] == row["proto"]
        assert got["orig_bytes"] == _int_or_none(row["orig_bytes"])
        assert got["orig_pkts"] == int(row["orig_pkts"])
        assert got["history"] == (row["history"] or None)
        assert got["label"] == row["label"]
        detailed = row["detailed-label"].strip()
        assert got["detailed_label"] == (None if detailed in ("", "-") else detailed)


def test_iot23_label_counts_match_file(mirai: Path, mirai_batch: EventBatch) -> None:
    rows = _csv_rows(mirai)
    expect = sum(r["label"].lower() == "malicious" for r in rows)
    labels = mirai_batch.np("label")
    assert sum(str(v).lower() == "malicious" for v in labels) == expect > 0
    assert set(mirai_batch["detailed_label"].drop_null().to_pylist()) == {
        r["detailed-label"] for r in rows if r["detailed-label"] not in ("", "-")
    }


def test_iot23_csv_missing_required_column(tmp_path: Path, mirai: Path) -> None:
    lines = mirai.read_text().splitlines()[:20]
    header = lines[0].split(",")
    drop = header.index("id.resp_h")
    bad = [",".join(c for j, c in enumerate(line.split(",")) if j != drop) for line in lines]
    path = tmp_path / "missing.csv"
    path.write_text("\n".join(bad) + "\n")
    for skip in (False, True):
        with pytest.raises(SourceError, match=r"line 1: .*required column\(s\): id\.resp_h"):
            list(read_events(path, fmt="iot23-csv", skip_bad=skip))


def test_iot23_conn_log_labeled(tmp_path: Path, mirai: Path) -> None:
    """The original IoT-23 format: Zeek TSV whose last column packs three space-separated fields."""
    rows = _csv_rows(mirai)[:300]
    conn = [
        "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration",
        "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes", "history",
        "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    ]  # fmt: skip
    out = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        "#path\tconn",
        "#fields\t" + "\t".join(conn) + "\ttunnel_parents   label   detailed-label",
        "#types\t" + "\t".join(["string"] * len(conn)) + "\tset[string]   string   string",
    ]
    for r in rows:
        cells = [r[c] or "-" for c in conn]
        out.append("\t".join(cells) + f"\t(empty)   {r['label']}   {r['detailed-label'] or '-'}")
    path = tmp_path / "conn.log.labeled"
    path.write_text("\n".join(out) + "\n")
    assert detect_format(path) == "zeek-tsv"
    batch = _read(path)
    assert len(batch) == len(rows)
    assert batch["label"].to_pylist() == [r["label"] for r in rows]
    assert batch["uid"].to_pylist() == [r["uid"] for r in rows]
    # the IoT-23 reader takes the same file too
    from fleetwarden.sources import iot23

    again = EventBatch.concat(iot23.read(path, skip_bad=False, stats=ReadStats(), batch_size=100))
    assert again.table.equals(batch.table)


# --------------------------------------------------------------------------- Zeek logs on real data


def test_zeek_json_port_scan() -> None:
    path = need_data("stratosphere", "zeek-port-scans", "vertical.conn.log")
    assert detect_format(path) == "zeek-json"
    objs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    batch = _read(path)
    assert len(batch) == len(objs)
    for i in (0, 7, len(objs) - 1):
        got = batch.slice(i, 1).to_pylist()[0]
        for key in ("ts", "uid", "id.orig_h", "id.resp_p", "conn_state", "local_orig", "orig_l2_addr"):
            assert got[key] == objs[i].get(key), key


def test_zeek_tsv_port_scan() -> None:
    path = need_data("stratosphere", "zeek-port-scans", "horizontal.conn.log")
    lines = path.read_text().splitlines()
    fields = next(line for line in lines if line.startswith("#fields")).split("\t")[1:]
    data = [dict(zip(fields, line.split("\t"), strict=True)) for line in lines if not line.startswith("#")]
    batch = _read(path)
    assert detect_format(path) == "zeek-tsv"
    assert len(batch) == len(data)
    got = batch.to_pylist()
    for i in (0, 3, len(data) - 1):
        assert got[i]["uid"] == data[i]["uid"]
        assert got[i]["ts"] == float(data[i]["ts"])
        assert got[i]["service"] == (None if data[i]["service"] == "-" else data[i]["service"])
        assert got[i]["duration"] == (None if data[i]["duration"] == "-" else float(data[i]["duration"]))
        assert got[i]["local_orig"] is None


def test_write_tsv_round_trip(tmp_path: Path, mirai_batch: EventBatch) -> None:
    for name in ("conn.log", "conn.log.gz"):
        path = write_tsv([mirai_batch.slice(0, 5000), mirai_batch.slice(5000)], tmp_path / name)
        assert detect_format(path) == "zeek-tsv"
        stats = ReadStats()
        back = _read(path, stats=stats, batch_size=4096)
        assert back.table.equals(mirai_batch.table)
        assert stats.records == len(mirai_batch)
    head = (tmp_path / "conn.log").read_text().splitlines()[:8]
    assert head[0] == "#separator \\x09" and head[4] == "#path\tconn"
    assert head[6].startswith("#fields\tts\tuid\tid.orig_h") and head[7].startswith(
        "#types\ttime\tstring\taddr"
    )


def test_write_jsonl_round_trip(tmp_path: Path, mirai_batch: EventBatch) -> None:
    path = write_jsonl([mirai_batch], tmp_path / "flows.jsonl")
    assert detect_format(path) == "jsonl"
    assert _read(path).table.equals(mirai_batch.table)


def _dns_batch() -> EventBatch:
    return EventBatch.from_columns(
        "dns",
        {
            "ts": [1700000000.25, 1700000001.5, 1700000002.125],
            "uid": ["Cabc", "Cdef", None],
            "id.orig_h": ["10.0.0.2", "10.0.0.3", "fe80::1"],
            "id.orig_p": [5353, 40000, 53],
            "id.resp_h": ["10.0.0.1", "8.8.8.8", "ff02::fb"],
            "id.resp_p": [53, 53, 5353],
            "proto": ["udp", "tcp", "udp"],
            "trans_id": [1, 65535, None],
            "query": ["a.example", "tab\there\\back", "-"],
            "qtype_name": ["A", "TXT", "(empty)"],
            "rcode_name": ["NOERROR", None, ""],
            "answers": ["1.2.3.4,5.6.7.8", "", None],
            "rejected": [False, True, None],
            "label": ["benign", None, "dns-tunnel"],
        },
    )


def test_dns_round_trip_with_escapes(tmp_path: Path) -> None:
    batch = _dns_batch()
    for writer, name in ((write_tsv, "dns.log"), (write_jsonl, "dns.jsonl"), (write_tsv, "dns.log.gz")):
        back = _read(writer([batch], tmp_path / name))
        assert back.kind == "dns"
        assert back.table.equals(batch.table), name


def test_zeek_dns_log_by_hand(tmp_path: Path) -> None:
    text = (
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\trtt\tquery\tqclass"
        "\tqtype_name\trcode_name\tAA\tanswers\tTTLs\trejected\n"
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tinterval\tstring\tcount\tstring\tstring"
        "\tbool\tvector[string]\tvector[interval]\tbool\n"
        "1.5\tC1\t10.0.0.2\t3333\t10.0.0.1\t53\tudp\t7\t0.01\tx.example\t1\tA\tNOERROR\tF\t1.1.1.1,2.2.2.2\t60,60\tF\n"
        "2.5\tC2\t10.0.0.2\t3334\t10.0.0.1\t53\tudp\t8\t-\ty.example\t1\tTXT\t-\tT\t(empty)\t(empty)\tT\n"
        "#close\t2024-01-01-00-00-00\n"
    )
    path = tmp_path / "dns.log"
    path.write_text(text)
    rows = _read(path).to_pylist()
    assert [r["query"] for r in rows] == ["x.example", "y.example"]
    assert rows[0]["answers"] == "1.1.1.1,2.2.2.2" and rows[1]["answers"] == ""
    assert [r["rejected"] for r in rows] == [False, True]
    assert rows[1]["rcode_name"] is None and rows[0]["trans_id"] == 7
    assert "rtt" not in _read(path).table.column_names  # unknown Zeek fields are dropped


def test_concatenated_header_blocks_and_set_separator(tmp_path: Path, mirai_batch: EventBatch) -> None:
    first = write_tsv([mirai_batch.slice(0, 100)], tmp_path / "a.log").read_bytes()
    second = write_tsv([_dns_batch()], tmp_path / "b.log").read_bytes()
    third = write_tsv([mirai_batch.slice(100, 50)], tmp_path / "c.log").read_bytes()
    path = tmp_path / "rotated.log"
    path.write_bytes(first + second + third)
    batches = list(read_events(path))
    assert [b.kind for b in batches] == ["flow", "dns", "flow"]
    assert [len(b) for b in batches] == [100, 3, 50]
    # gzip members joined with cat, as logrotate leaves them
    gz = tmp_path / "rotated.log.gz"
    gz.write_bytes(gzip.compress(first) + gzip.compress(second + third))
    assert [len(b) for b in read_events(gz)] == [100, 3, 50]


def test_zeek_json_iso_timestamps_and_dns(tmp_path: Path) -> None:
    lines = [
        {"ts": "2023-11-24T12:16:57.314165Z", "uid": "C1", "id.orig_h": "10.0.0.2", "id.orig_p": 1,
         "id.resp_h": "10.0.0.1", "id.resp_p": 53, "proto": "udp", "query": "a.example",
         "answers": ["1.2.3.4", "5.6.7.8"], "rejected": False, "qclass": 1},
        {"ts": "2023-11-24T13:16:57+01:00", "uid": "C2", "id.orig_h": "10.0.0.2", "id.orig_p": 2,
         "id.resp_h": "10.0.0.1", "id.resp_p": 53, "proto": "udp", "query": "b.example"},
    ]  # fmt: skip
    path = tmp_path / "dns.json"
    path.write_text("".join(json.dumps(o) + "\n" for o in lines))
    assert detect_format(path) == "zeek-json"
    rows = _read(path).to_pylist()
    assert rows[0]["ts"] == pytest.approx(1700828217.314165)
    assert rows[1]["ts"] == pytest.approx(1700828217.0)  # 13:16:57+01:00 is 12:16:57Z
    assert rows[0]["answers"] == "1.2.3.4,5.6.7.8"
    # same ts as a number on one line and text on the other: the line-by-line path agrees
    lines[1]["ts"] = 1700824617.0
    path.write_text("".join(json.dumps(o) + "\n" for o in lines))
    assert [r["ts"] for r in _read(path).to_pylist()] == pytest.approx([1700828217.314165, 1700824617.0])


# --------------------------------------------------------------------------- bad Zeek input


def _damaged_tsv(tmp_path: Path, batch: EventBatch, damage: dict[int, str]) -> tuple[Path, int]:
    """write_tsv then replace lines (1-based) with the given text; returns the path and header size."""
    path = write_tsv([batch], tmp_path / "conn.log")
    lines = path.read_text().split("\n")
    for number, text in damage.items():
        lines[number - 1] = text
    path.write_text("\n".join(lines))
    return path, 8


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda cells: cells[:-1], r"expected 25 columns, found 24"),
        (lambda cells: cells[:5] + ["http"] + cells[6:], r"field 'id.resp_p': bad port 'http'"),
        (lambda cells: ["12:00:01"] + cells[1:], r"field 'ts': bad timestamp '12:00:01'"),
        (lambda cells: cells[:12] + ["yes"] + cells[13:], r"field 'local_orig': bad boolean 'yes'"),
        (lambda cells: cells[:2] + ["-"] + cells[3:], r"required field 'id.orig_h' is unset"),
    ],
)
def test_bad_zeek_line(tmp_path: Path, mirai_batch: EventBatch, mutate, message: str) -> None:
    batch = mirai_batch.slice(0, 2000)
    path = write_tsv([batch], tmp_path / "conn.log")
    lines = path.read_text().split("\n")
    bad_line = 8 + 1234  # 8 header lines: the 1234th record
    lines[bad_line - 1] = "\t".join(mutate(lines[bad_line - 1].split("\t")))
    path.write_text("\n".join(lines))
    got: list[EventBatch] = []
    with pytest.raises(SourceError, match=rf"conn\.log: line {bad_line}: {message}"):
        for b in read_events(path, batch_size=500):
            got.append(b)
    assert sum(len(b) for b in got) == 1233  # everything before the bad line was delivered
    stats = ReadStats()
    back = _read(path, skip_bad=True, stats=stats)
    assert (stats.skipped, stats.records, len(back)) == (1, 1999, 1999)
    assert f"line {bad_line}" in stats.problems[0]
    keep = [i for i in range(2000) if i != 1233]
    assert back["uid"].to_pylist() == [batch["uid"][i].as_py() for i in keep]


def test_garbage_and_data_before_header(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(SourceError, match="unrecognised format"):
        list(read_events(garbage))
    from fleetwarden.sources import zeek

    with pytest.raises(SourceError, match=r"line 1: data line before any #fields header"):
        list(zeek.read(garbage, skip_bad=False, stats=ReadStats(), batch_size=10))
    stats = ReadStats()
    assert list(zeek.read(garbage, skip_bad=True, stats=stats, batch_size=10)) == []
    assert stats.skipped > 0 and stats.records == 0
    # binary garbage in the middle of a log: its lines fail, the others are read
    text = write_tsv([_dns_batch()], tmp_path / "d.log").read_bytes().split(b"\n")
    text.insert(9, b"\x00\xff\xfe garbage \x80\x81")
    path = tmp_path / "mixed.log"
    path.write_bytes(b"\n".join(text))
    with pytest.raises(SourceError, match=r"line 10: not UTF-8 text"):
        list(read_events(path))
    stats = ReadStats()
    assert len(_read(path, skip_bad=True, stats=stats)) == 3 and stats.skipped == 1


def test_truncated_gzip(tmp_path: Path, mirai_batch: EventBatch) -> None:
    full = write_tsv([mirai_batch], tmp_path / "conn.log.gz").read_bytes()
    path = tmp_path / "cut.log.gz"
    path.write_bytes(full[: len(full) // 2])
    got: list[EventBatch] = []
    with pytest.raises(SourceError, match=r"cut\.log\.gz: line \d+: gzip stream is truncated"):
        for b in read_events(path):
            got.append(b)
    delivered = sum(len(b) for b in got)
    assert 0 < delivered < len(mirai_batch)
    stats = ReadStats()
    back = _read(path, skip_bad=True, stats=stats)
    assert len(back) == delivered and stats.skipped == 1
    assert back["uid"].to_pylist() == mirai_batch["uid"].to_pylist()[:delivered]
    path.write_bytes(full[:5])
    with pytest.raises(SourceError):
        list(read_events(path))


def test_unsupported_log_and_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "http.log"
    path.write_text("#separator \\x09\n#path\thttp\n#fields\tts\tuid\thost\n1.0\tC1\texample.com\n")
    with pytest.raises(SourceError, match=r"line 4: unsupported Zeek log \(#path 'http'"):
        list(read_events(path))
    path.write_text("#separator \\x09\n#path\tconn\n#fields\tts\tid.orig_h\tid.resp_h\n1.0\ta\tb\n")
    with pytest.raises(SourceError, match=r"lacks required field\(s\): proto"):
        list(read_events(path))


# --------------------------------------------------------------------------- generic JSON lines


MIXED = [
    {"kind": "auth", "ts": 1700000000.5, "user": "maint", "src_ip": "203.0.113.7", "success": False,
     "device_id": "plc-0001"},
    {"kind": "telemetry", "ts": "2023-11-14T22:13:21Z", "metric": "temperature", "value": 21,
     "unit": "C", "device_id": "th-7"},
    {"event": "auth", "ts": 1700000002, "user": "maint", "success": True, "device_id": "plc-0001"},
    {"kind": "flow", "ts": 1700000003.25, "id.orig_h": "10.0.0.5", "id.resp_h": "10.0.0.9",
     "proto": "tcp", "id.resp_p": 502, "orig_bytes": 12},
    {"kind": "firmware_report", "ts": 1700000004, "version": "1.2.3", "device_id": "plc-0001",
     "signature": "valid"},
]  # fmt: skip


def _write_lines(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def test_jsonl_mixed_kinds(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "events.jsonl", MIXED)
    stats = ReadStats()
    batches = list(read_events(path, stats=stats))
    assert [b.kind for b in batches] == ["auth", "telemetry", "flow", "firmware_report"]
    auth = batches[0].to_pylist()
    assert [a["success"] for a in auth] == [False, True] and auth[1]["ts"] == 1700000002.0
    assert batches[1].to_pylist()[0]["ts"] == pytest.approx(1700000001.0)
    assert batches[1].to_pylist()[0]["value"] == 21.0
    assert batches[2].to_pylist()[0]["id.resp_p"] == 502
    assert stats.records == 5
    # round trip through write_jsonl keeps every kind
    back = list(read_events(write_jsonl(batches, tmp_path / "again.jsonl")))
    assert [(b.kind, b.table) for b in back] == [(b.kind, b.table) for b in batches]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"kind": "weather", "ts": 1.0}, r"unknown kind 'weather'"),
        ({"ts": 1.0, "user": "x", "success": True}, r"missing 'kind'"),
        ({"kind": "auth", "ts": 1.0, "user": "x", "success": True, "colour": "red"},
         r"unknown field 'colour'"),
        ({"kind": "auth", "ts": 1.0, "user": "x"}, r"required field 'success' is missing"),
        ({"kind": "telemetry", "ts": 1.0, "metric": "t", "value": 1},
         r"required field 'device_id' is missing"),
        ({"kind": "auth", "ts": 1.0, "user": "x", "success": "yes"}, r"field 'success': expected true/false"),
        ({"kind": "flow", "ts": 1.0, "id.orig_h": "a", "id.resp_h": "b", "proto": "tcp", "id.resp_p": "80"},
         r"field 'id.resp_p': expected an integer"),
        ({"kind": "auth", "ts": "yesterday", "user": "x", "success": True}, r"field 'ts': bad timestamp"),
        ('{"kind": "auth", "ts": 1.0,', r"not valid JSON"),
        ("[1, 2]", r"expected a JSON object"),
    ],
)  # fmt: skip
def test_jsonl_bad_line(tmp_path: Path, bad, message: str) -> None:
    path = _write_lines(tmp_path / "events.jsonl", [*MIXED[:3], bad, *MIXED[3:]])
    got: list[EventBatch] = []
    with pytest.raises(SourceError, match=rf"events\.jsonl: line 4: {message}"):
        for b in read_events(path, fmt="jsonl"):
            got.append(b)
    assert sum(len(b) for b in got) == 3  # the three lines before the bad one
    stats = ReadStats()
    batches = list(read_events(path, fmt="jsonl", skip_bad=True, stats=stats))
    assert sum(len(b) for b in batches) == 5 and stats.skipped == 1 and stats.records == 5
    assert "line 4" in stats.problems[0]


def test_jsonl_hands_zeek_json_to_zeek(tmp_path: Path) -> None:
    path = need_data("stratosphere", "zeek-port-scans", "vertical.conn.log")
    from fleetwarden.sources import jsonl

    batch = EventBatch.concat(jsonl.read(path, skip_bad=False, stats=ReadStats(), batch_size=7))
    assert batch.table.equals(_read(path).table)


def test_batch_size_is_a_maximum(mirai: Path, mirai_batch: EventBatch) -> None:
    sizes = [len(b) for b in read_events(mirai, batch_size=1000)]
    assert max(sizes) <= 1000 and sum(sizes) == len(mirai_batch)
    assert pa.concat_tables([b.table for b in read_events(mirai, batch_size=1000)]).equals(mirai_batch.table)
