"""The attacker's property tests: hostile text in every text field of every event kind.

Devices, logs and brokers are attacker-controlled, so every string field of every event kind
(:data:`fleetwarden.core.events.KINDS`) is filled with what an attacker would send: Rich markup
(``[bold red]``, ``[link=file:///etc/passwd]``), terminal escape sequences (CSI, OSC 8
hyperlinks, the 8-bit CSI ``\\x9b``), NUL bytes, bidirectional overrides, invisible tag
characters, lone surrogates, invalid UTF-8, a megabyte-long value and credentials.  The records
(a simulated fleet, so that the analytics fire and quote the fields in their evidence) go
through the JSON-lines reader into :func:`fleetwarden.app.analyze.analyze` with a store, and
through the command line (``analyze``, ``analyze --json``, ``inspect``).  Asserted:

* nothing crashes: refused input is an :class:`~fleetwarden.core.errors.InputError` (exit 2);
* what reaches a terminal holds no raw control, C1, NUL, bidi or invisible character, and no
  markup from the input is interpreted (no hyperlink, blink or reverse video appears);
* a megabyte-long device id costs at most a few tens of megabytes;
* no credential (``s3cret``) reaches an output or a stored row, whatever field carries it.

The MQTT and NATS path (:func:`fleetwarden.sources.jsonl.decode_events`) is in
``test_hostile_mqtt.py``.
"""

from __future__ import annotations

import functools
import io
import json
import re
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from fleetwarden.app.analyze import analyze
from fleetwarden.core.errors import InputError
from fleetwarden.core.events import KINDS, EventBatch, max_lengths
from fleetwarden.core.hashing import stable_hash
from fleetwarden.sources import ReadStats, SourceError, read_events

SECRET = "s3cret"
HOSTILE = {
    "markup": "[bold red]MARKUP[/]",
    "link": "[link=file:///etc/passwd]HREFTOKEN[/link]",
    "blink": "[blink]FLASH[/blink][reverse]REV[/reverse]",
    "clear": "\x1b[2J\x1b[H",
    "osc8": "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "c1-csi": "\x9b31mC1",
    "nul-bell": "a\x00b\x07c",
    "bidi": "abc\u202edcba\u2066x\u2069",
    "invisible": "\u200b\ufeff\U000e0041\U000e0042",
    "newline": "one\r\nfleetwarden: error: forged",
    "secret-url": f"mqtt://user:{SECRET}@host",
    "secret-pair": f"password={SECRET}",
    "secret-json": f'{{"password": "{SECRET}"}}',
    "surrogate": "\ud800x",
    "empty": "",
    "zeek-null": "-",
}
HUGE = "H" * (1 << 20)
# written into the file as raw bytes that are not UTF-8
INVALID_UTF8 = "\x00INVALID-UTF8\x00"
TEXT_FIELDS = [(kind, name) for kind in KINDS for name in max_lengths(kind)]

# what may reach a terminal once our own styles (SGR sequences) are taken out: nothing invisible
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff"
    "\U000e0000-\U000e007f]"
)


# ------------------------------------------------------------------------------------ inputs


@functools.cache
def _fleet() -> tuple[dict, ...]:
    """A simulated fleet's records (every kind, attacks included), 250 at most per kind."""
    from fleetwarden.simulate import simulate_fleet
    from fleetwarden.sources.jsonl import write_jsonl

    fleet = simulate_fleet(devices=24, hours=0.5, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(fleet.iter_batches(seconds=600), Path(tmp) / "events.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines()]
    seen: dict[str, int] = {}
    out = []
    for r in records:
        seen[r["kind"]] = seen.get(r["kind"], 0) + 1
        if seen[r["kind"]] <= 250:
            out.append(r)
    return tuple(out)


def _poison(kind: str, field: str, text: str, mode: str) -> list[dict]:
    """The fleet with ``text`` in ``field`` of ``kind``'s records: before every value ("prefix",
    so distinct values stay distinct and the analytics still fire), instead of every value
    ("replace"), or in the first record only ("one")."""
    out, done = [], False
    for r in _fleet():
        if r["kind"] == kind and (mode != "one" or not done) and (field in r or mode == "one"):
            r = {**r, field: (text + str(r.get(field, ""))) if mode == "prefix" else text}
            done = True
        out.append(r)
    return out


def _write(path: Path, records: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    raw = text.encode("utf-8", "surrogatepass")  # json.dumps escaped them: nothing to pass
    raw = raw.replace(json.dumps(INVALID_UTF8)[1:-1].encode(), b"\xff\xfe\xc0\xaf")
    path.write_bytes(raw)
    return path


hostile_text = st.one_of(
    st.sampled_from(sorted(HOSTILE.values())),
    st.lists(
        st.one_of(st.sampled_from(sorted(HOSTILE.values())), st.text(max_size=8)), min_size=2, max_size=4
    ).map("".join),
    st.just(INVALID_UTF8),
    st.just(HUGE),  # in one record only (see _poison's callers)
)


# ------------------------------------------------------------------------------------ outputs


def _terminal(renderable) -> str:
    """What a colour terminal receives for ``renderable`` (our styles as SGR sequences)."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", width=4000, highlight=False)
    console.print(renderable)
    return buf.getvalue()


def assert_terminal_safe(rendered: str) -> None:
    """No raw control/invisible character and no markup from the input came through."""
    for seq in _SGR.findall(rendered):
        params = seq[2:-1].split(";")
        assert "5" not in params and "7" not in params, f"blink/reverse video from input markup: {seq!r}"
    rest = _SGR.sub("", rendered)
    bad = sorted(set(_UNSAFE.findall(rest)))
    assert not bad, f"raw characters reached the terminal: {bad!r}"
    for token, markup in (
        ("MARKUP", "[bold red]MARKUP"),
        ("HREFTOKEN", "[link=file:///etc/passwd]HREFTOKEN"),
    ):
        if token in rest.upper():  # a field may be shown upper-cased (a country code): tag and all
            assert markup.upper() in rest.upper(), f"markup interpreted: {token} shown without its tag"


def _store_rows(store) -> str:
    """Every row of every table of the store, as text."""
    import sqlalchemy as sa

    rows = []
    with store.engine.connect() as conn:
        for table in sa.inspect(store.engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                rows.append(f"{table}: {tuple(row)!r}")
    return "\n".join(rows)


def _outputs(result) -> str:
    """Everything a face shows of ``result``: the incident table, live finding lines, the JSON."""
    from fleetwarden.report import finding_line, incident_table

    parts = [_terminal(incident_table(result.incidents, limit=None))]
    parts += [_terminal(finding_line(f)) for f in result.findings]
    for part in parts:
        assert_terminal_safe(part)
    text = json.dumps([i.to_dict() for i in result.incidents], indent=2)
    assert not _UNSAFE.findall(text), "raw characters in the JSON output"
    return "\n".join([*parts, text])


# ------------------------------------------------------------------------------------ tests

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(
    target=st.sampled_from(TEXT_FIELDS),
    text=hostile_text,
    mode=st.sampled_from(["prefix", "replace", "one"]),
    skip_bad=st.booleans(),
)
def test_hostile_text_in_any_field_through_analyze_and_store(
    tmp_path: Path, target, text, mode, skip_bad
) -> None:
    from fleetwarden.store import open_store

    kind, field = target
    if field == "proto" and "/" in text and mode != "one":
        text = text.replace("/", "|")  # a '/' in proto crashes scan.py: test_slash_in_proto below
    mode = "one" if len(text) > 100_000 else mode  # a megabyte in every record is a 250 MB file
    path = _write(tmp_path / "hostile.jsonl", _poison(kind, field, text, mode))
    db = tmp_path / f"fw-{abs(hash((kind, field, text, mode, skip_bad)))}.db"
    store = open_store(f"sqlite:///{db}")
    try:
        try:
            result = analyze([path], store=store, skip_bad=skip_bad)
        except InputError as exc:
            assert not skip_bad or isinstance(exc, SourceError), exc
            assert "\n" not in str(exc) and not _UNSAFE.findall(str(exc)), repr(str(exc))
            return
        _outputs(result)
        for problems in (f["problems"] for f in result.stats["files"].values()):
            for p in problems:
                assert "\n" not in p and not _UNSAFE.findall(p), repr(p)
        _store_rows(store)
    finally:
        store.close()


@pytest.mark.parametrize("fmt", ["jsonl", "iot23-csv", "zeek-tsv"])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_megabyte_value_costs_bounded_memory(tmp_path: Path, fmt: str, skip_bad: bool) -> None:
    """One record with a megabyte-long value is refused (or skipped and counted), and reading and
    analysing the file costs no more than a few tens of megabytes beyond the same file without it."""
    base, huge = _format_pair(tmp_path, fmt)
    peaks = []
    for path in (base, huge):
        tracemalloc.start()
        try:
            try:
                result = analyze([path], skip_bad=skip_bad)
            except SourceError as exc:
                assert not skip_bad
                assert "is 1048576 characters, at most" in str(exc)
                result = None
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        if path == huge and result is not None:
            (figures,) = result.stats["files"].values()
            assert figures["skipped"] == 1 and "1048576 characters" in figures["problems"][0]
    assert peaks[1] - peaks[0] < 32 << 20, (
        f"a 1 MB value raised peak memory by {(peaks[1] - peaks[0]) >> 20} MB"
    )


def _format_pair(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """A small file of ``fmt`` and the same with one record holding a 1 MB value."""
    from tests.conftest import need_data

    if fmt == "jsonl":
        records = list(_fleet())
        long = [*records[:100], {**records[100], "device_id": HUGE}, *records[101:]]
        return _write(tmp_path / "base.jsonl", records), _write(tmp_path / "huge.jsonl", long)
    if fmt == "iot23-csv":
        lines = need_data("iot23", "CTU-Malware-Capture-8-1-labeled.csv").read_text().splitlines()[:400]
        cells = lines[100].split(",")
        cells[1] = HUGE  # uid
        (tmp_path / "base.csv").write_text("\n".join(lines) + "\n")
        (tmp_path / "huge.csv").write_text("\n".join([*lines[:100], ",".join(cells), *lines[101:]]) + "\n")
        return tmp_path / "base.csv", tmp_path / "huge.csv"
    lines = need_data("stratosphere", "zeek-port-scans", "horizontal.conn.log").read_text().splitlines()
    data = [i for i, ln in enumerate(lines) if not ln.startswith("#")]
    cells = lines[data[10]].split("\t")
    cells[15] = HUGE  # history
    long = [*lines[: data[10]], "\t".join(cells), *lines[data[10] + 1 :]]
    (tmp_path / "base.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "huge.log").write_text("\n".join(long) + "\n")
    return tmp_path / "base.log", tmp_path / "huge.log"


def test_megabyte_device_id_in_a_batch_hashes_in_bounded_memory() -> None:
    """Defence in depth behind the readers: hashing 10,000 devices, one of them named by a megabyte,
    allocates megabytes (the distinct values x longest string matrix would be 10 GB)."""
    ids = pa.array([f"dev-{i:05d}" for i in range(10_000)] + [HUGE, HUGE + "x"])
    tracemalloc.start()
    try:
        h = stable_hash(ids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak >> 20} MB"
    assert len(np.unique(h)) == len(ids)
    # ordinary strings keep their hashes whatever sits beside them in the batch
    alone = stable_hash(pa.array([f"dev-{i:05d}" for i in range(10_000)]))
    assert (h[:10_000] == alone).all()


def test_engine_survives_a_megabyte_device_id_that_bypassed_the_readers() -> None:
    """A batch built in code (not read) with a megabyte-long device id: the engine copes in bounded memory."""
    from fleetwarden.app.session import DetectionSession

    records = [r for r in _fleet() if r["kind"] == "flow"]
    cols = {
        k: [r.get(k) for r in records]
        for k in (
            "ts",
            "id.orig_h",
            "id.resp_h",
            "id.resp_p",
            "proto",
            "orig_bytes",
            "resp_bytes",
            "conn_state",
            "device_id",
        )
    }
    cols["device_id"][0] = HUGE
    batch = EventBatch.from_columns("flow", cols)
    tracemalloc.start()
    try:
        DetectionSession().run([batch])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak >> 20} MB"


def test_overlong_values_are_refused_with_file_line_field_and_length(tmp_path: Path) -> None:
    records = list(_fleet())[:20]
    long = [*records[:11], {**records[11], "device_id": HUGE}, *records[12:]]
    path = _write(tmp_path / "long.jsonl", long)
    with pytest.raises(SourceError) as err:
        list(read_events(path))
    assert str(err.value) == f"{path}: line 12: field device_id is 1048576 characters, at most 128"
    stats = ReadStats()
    got = sum(len(b) for b in read_events(path, skip_bad=True, stats=stats))
    assert (got, stats.records, stats.skipped) == (19, 19, 1)
    # without skip_bad, the records before the bad line were delivered before the error
    delivered = []
    with pytest.raises(SourceError):
        for b in read_events(path):
            delivered.append(len(b))
    assert sum(delivered) == 11


# ----------------------------------------------------------------------------- credentials

@pytest.mark.parametrize(("kind", "field"), TEXT_FIELDS)
def test_no_credential_reaches_an_output_or_a_stored_row(tmp_path: Path, kind: str, field: str) -> None:
    from fleetwarden.store import open_store

    # half the records carry a URL with a password, half a password=… pair (no '/': see proto)
    records = []
    for i, r in enumerate(_poison(kind, field, "\0", "prefix")):
        if r["kind"] == kind and isinstance(r.get(field), str) and r[field].startswith("\0"):
            secret = f"a://u:{SECRET}@h|" if i % 2 and field != "proto" else f"password={SECRET};"
            r = {**r, field: secret + r[field][1:]}
        records.append(r)
    path = _write(tmp_path / "secret.jsonl", records)
    store = open_store(f"sqlite:///{tmp_path / 'fw.db'}")
    try:
        try:
            result = analyze([path], store=store, skip_bad=True)
        except InputError as exc:
            assert SECRET not in str(exc)
            return
        shown = _outputs(result)
        assert SECRET not in shown, "credential in the terminal or JSON output"
        problems = json.dumps(result.stats)
        assert SECRET not in problems, "credential in a read problem"
        assert SECRET not in _store_rows(store), "credential in a stored row"
    finally:
        store.close()


def test_slash_in_proto_does_not_crash_scan(tmp_path: Path) -> None:
    """A flow whose proto holds a '/' (a hostile Zeek or JSON log) crashes the vertical-scan
    evidence (scan.py, ``int(s.split("/")[1])``: ``rsplit("/", 1)`` is the fix)."""
    probes = [
        {"kind": "flow", "ts": 1.7e9 + i / 10, "id.orig_h": "10.0.0.5", "id.resp_h": "10.0.0.9", "id.resp_p": 1 + i,
         "proto": "x/tcp", "conn_state": "REJ", "orig_pkts": 1, "resp_pkts": 1}
        for i in range(200)
    ]  # fmt: skip
    analyze([_write(tmp_path / "proto.jsonl", probes)])


# ------------------------------------------------------------------------------------ the CLI


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=st.sampled_from(TEXT_FIELDS), text=hostile_text, mode=st.sampled_from(["prefix", "one"]))
def test_hostile_text_through_the_cli(tmp_path: Path, monkeypatch, target, text, mode) -> None:
    from typer.testing import CliRunner

    from fleetwarden import cli
    from fleetwarden.cli import _common as cli_common

    kind, field = target
    if field == "proto":
        text = text.replace("/", "|")  # see test_slash_in_proto_does_not_crash_scan
    mode = "one" if len(text) > 100_000 else mode  # a megabyte in every record is a 250 MB file
    path = _write(tmp_path / "hostile.jsonl", _poison(kind, field, text, mode))
    runner = CliRunner()
    for args in (
        ["analyze", str(path)],
        ["analyze", "--json", str(path)],
        ["inspect", str(path)],
        ["inspect", "--skip-bad", str(path)],
    ):
        out, err = io.StringIO(), io.StringIO()
        for name, buf in (("out", out), ("err", err)):
            console = Console(
                file=buf, force_terminal=True, color_system="standard", width=4000, highlight=False
            )
            monkeypatch.setattr(cli, name, console)
            monkeypatch.setattr(cli_common, name, console)  # where _fail writes
        result = runner.invoke(cli.app, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code in (0, 2), (args, result.exit_code)
        for shown in (out.getvalue(), err.getvalue(), result.output):
            assert_terminal_safe(shown)
        if args[1] == "--json" and result.exit_code == 0:
            json.loads(result.output)
        if result.exit_code == 2:
            assert err.getvalue().count("\n") == 1, err.getvalue()


def test_printable_escapes_every_invisible_character() -> None:
    """core.text.printable leaves no Unicode control, format (Cf) or surrogate character raw."""
    import sys
    import unicodedata

    from fleetwarden.core.text import one_line, printable

    raw = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]
    raw = [c for c in raw if c not in "\n\t"]
    shown = printable("".join(raw))
    assert not [c for c in shown if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert "\n" not in one_line("a\nb") and "\t" not in one_line("a\tb")
    shown.encode("utf-8")  # lone surrogates are escaped: printing cannot fail


# ------------------------------------------------------------------------------------ captures


def _dns_bomb_pcap(path: Path) -> Path:
    """A capture with a normal DNS exchange, then a response whose 300 CNAME answers each point
    (name compression) at a 253-character name: 4 KB on the wire, 76 K characters of answers."""
    import struct

    import dpkt

    client, server = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 53])

    def frame(payload: bytes, sport: int, dport: int) -> bytes:
        udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        udp.ulen = 8 + len(payload)
        src, dst = (server, client) if sport == 53 else (client, server)
        ip = dpkt.ip.IP(src=src, dst=dst, p=17, data=udp)
        ip.len = 20 + udp.ulen
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))

    name = b"".join(bytes([n]) + b"a" * n for n in (63, 63, 63, 61)) + b"\x00"
    question = name + struct.pack(">HH", 1, 1)
    query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + question
    answer = struct.pack(">HHHHHH", 7, 0x8180, 1, 1, 0, 0) + question
    answer += struct.pack(">HHHIH4s", 0xC00C, 1, 1, 60, 4, bytes([93, 184, 216, 34]))
    bomb = struct.pack(">HHHHHH", 9, 0x8180, 1, 300, 0, 0) + question
    bomb += struct.pack(">HHHIHH", 0xC00C, 5, 1, 60, 2, 0xC00C) * 300
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        writer.writepkt(frame(query, 5000, 53), ts=1_700_000_000.0)
        writer.writepkt(frame(answer, 53, 5000), ts=1_700_000_000.1)
        writer.writepkt(frame(bomb, 53, 5001), ts=1_700_000_001.0)
    return path


def test_pcap_dns_answers_past_the_limit_are_refused(tmp_path: Path) -> None:
    path = _dns_bomb_pcap(tmp_path / "bomb.pcap")
    got: dict[str, int] = {}
    with pytest.raises(SourceError) as err:
        for batch in read_events(path):
            got[batch.kind] = got.get(batch.kind, 0) + len(batch)
    assert "packet 3 (byte offset" in str(err.value)
    assert "field answers is 76199 characters, at most 65536" in str(err.value)
    assert got == {"flow": 2, "dns": 1}  # the flows, and the DNS exchange before the bomb
    stats = ReadStats()
    batches = list(read_events(path, skip_bad=True, stats=stats))
    assert {b.kind: len(b) for b in batches} == {"flow": 2, "dns": 1}
    assert stats.skipped == 1 and "field answers" in stats.problems[0]
