"""The Mosquitto log source: dispatch by content, the records it makes, hostile lines, and the
broker-session findings they feed (the real broker's log is read in tests/test_mtls.py)."""

from __future__ import annotations

import pytest

from fleetwarden.app.analyze import analyze
from fleetwarden.sources import ReadStats, SourceError, detect_format, read_events
from fleetwarden.sources.mosquitto import MAX_LINE

LOG = """\
1796600108: mosquitto version 2.0.11 running
1796600113: New connection from 10.0.0.5:55789 on port 8883.
1796600113: New client connected from 10.0.0.5:55789 as dev-1 (p2, c1, k60, u'dev-1').
1796600114: Sending CONNACK to dev-1 (0, 0)
1796600115: New connection from 10.0.0.9:52937 on port 8883.
1796600115: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed
1796600115: Client <unknown> disconnected: Protocol error.
1796600120: New connection from 10.0.0.7:40000 on port 8883.
1796600120: New client connected from 10.0.0.7:40000 as dev-1-b (p2, c1, k60, u'dev-1').
1796600121: Denied PUBLISH from dev-1-b (d0, q1, r0, m1, 'fleetwarden/events/dev-2', ... (74 bytes))
1796600130: New connection from 10.0.0.8:41000 on port 8883.
1796600130: Client dev-1 already connected, closing old connection.
1796600130: New client connected from 10.0.0.8:41000 as dev-1 (p2, c1, k60, u'dev-1').
1796600140: Client dev-1-b disconnected.
"""


def _records(path, **kw):
    return [r for b in read_events(path, **kw) for r in b.to_pylist()]


def test_detected_by_content_and_read_into_session_records(tmp_path):
    path = tmp_path / "broker.txt"
    path.write_text(LOG)
    assert detect_format(path) == "mosquitto"
    recs = _records(path)
    acts = [(r["action"], r["user"], r["src_ip"], r["success"]) for r in recs]
    assert acts == [
        ("login", "dev-1", "10.0.0.5", True),
        ("login", "<unknown>", "10.0.0.9", False),
        ("login", "dev-1", "10.0.0.7", True),
        ("publish", "dev-1", "10.0.0.7", False),
        ("conflict", "dev-1", "10.0.0.8", True),
        ("login", "dev-1", "10.0.0.8", True),
        ("disconnect", "dev-1", "10.0.0.7", True),
    ]
    assert recs[3]["topic"] == "fleetwarden/events/dev-2" and recs[3]["client_id"] == "dev-1-b"
    assert "certificate verify failed" in recs[1]["reason"]


def test_findings_clone_conflict_and_acl(tmp_path):
    path = tmp_path / "mosquitto.log"
    path.write_text(LOG)
    result = analyze([path])
    by = {(i.entity, i.category) for i in result.incidents}
    assert ("dev-1", "cloned-device") in by
    assert ("dev-1", "credential-misuse") in by
    evidence = " ".join(e for i in result.incidents for e in i.evidence)
    assert "two places at once" in evidence and "the topic of device dev-2" in evidence
    assert "taken over by a connection from 10.0.0.8" in evidence


def test_hostile_lines(tmp_path):
    long_line = b"1796600113: New client connected from 1.2.3.4:1 as " + b"x" * MAX_LINE + b" (p2, c1, k60, u'a').\n"
    control = "1796600114: New client connected from 1.2.3.4:2 as ev\x1b[2Jil (p2, c1, k60, u'dev\x07-9').\n"
    overlong_user = "1796600115: New client connected from 1.2.3.4:3 as c (p2, c1, k60, u'" + "u" * 300 + "').\n"
    truncated = b"1796600116: New client connected from 1.2.3.4:4 as tr"  # cut mid-line, no newline
    garbage = b"\xff\xfe not a log line\n"
    path = tmp_path / "hostile.log"
    path.write_bytes(LOG.encode() + long_line + control.encode() + overlong_user.encode() + garbage + truncated)
    with pytest.raises(SourceError, match="line 15: line is"):
        _records(path)
    stats = ReadStats()
    recs = _records(path, skip_bad=True, stats=stats)
    assert stats.skipped == 3  # the over-long line, the 300-character user, the garbage line
    assert any("at most 256" in p for p in stats.problems)
    evil = [r for r in recs if r["src_port"] == 2]
    assert evil and evil[0]["client_id"] == "ev\x1b[2Jil"  # kept as data; escaped where shown
    assert not any(r["src_port"] == 4 for r in recs)  # the truncated connection line is no record


def test_not_a_mosquitto_log(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("1796600108: hello\n1796600109: world\n")
    with pytest.raises(SourceError, match="unrecognised format"):
        detect_format(path)
