"""SIEM, SOAR and threat-intel export: CEF and OCSF formatting (hostile values escaped), syslog to a
real local UDP and TCP server, signed webhooks to a real local HTTP server, STIX 2.1 bundles
validated with the ``stix2`` library; the real data is an IoT-23 Mirai capture analysed into a
SQLite store."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time

import pytest
from tests.conftest import IN_CI, need_data
from typer.testing import CliRunner

from fleetwarden.app.export import export_stix, parse_since, parse_target, send_syslog
from fleetwarden.app.stores import store_at
from fleetwarden.app.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookError,
    load_secret,
    post_signed,
    sign,
    verify_signature,
)
from fleetwarden.control.siem import (
    cef_escape_header,
    cef_escape_value,
    cef_severity,
    octet_counted,
    syslog_frame,
    to_cef,
    to_ocsf,
)
from fleetwarden.control.stix import indicators_from, stix_bundle
from fleetwarden.core.errors import InputError

runner = CliRunner()
SECRET = b"s3cret-for-tests-0123456789abcdef"
MIRAI = ("iot23", "CTU-Malware-Capture-34-1-labeled.csv")
C2 = "185.244.25.235"  # the capture's Mirai C2 server (IRC, tcp/6667), per IoT-23's labels


def _cli(*args: str, env: dict | None = None, code: int = 0):
    from fleetwarden.cli import app

    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result


# ------------------------------------------------------------------------------------ a CEF parser


def _split_unescaped(s: str, sep: str, limit: int) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c == sep and len(parts) < limit:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), s)


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Header fields (unescaped) and extension pairs, as a SIEM reads them."""
    assert "\n" not in line and "\r" not in line
    parts = _split_unescaped(line, "|", 7)
    assert len(parts) == 8 and parts[0] == "CEF:0", line
    header = [_unescape(p) for p in parts[:7]]
    # a key starts after a space and ends at an unescaped "="
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=(?<!\\=)", parts[7]))
    ext = {}
    for k, nxt in zip(keys, [*keys[1:], None], strict=True):
        end = nxt.start() if nxt else len(parts[7])
        ext[k[1]] = _unescape(parts[7][k.end() : end])
    return header, ext


HOSTILE = {
    "id": 7,
    "entity": "cam|01\\x\nCEF:0|Evil|Evil|1|x|forged|10|src=6.6.6.6",
    "device_id": "cam|01=\u001b[31mred\u001b[0m",
    "ip": "10.0.0.5 act=blocked",
    "mac": "aa:bb:cc:dd:ee:ff",
    "category": "c2-beacon",
    "detector": "beacon",
    "severity": "high",
    "score": 0.75,
    "first_seen": 1_700_000_000.0,
    "last_seen": 1_700_000_100.5,
    "evidence": ["calls a=b c=d\\ every 60 s\r\nsrc=6.6.6.6 act=allow", "\u202eevil"],
    "mitre": ["T1071"],
}


# ------------------------------------------------------------------------------------ CEF


def test_cef_escapes_header_and_extension_rules():
    assert cef_escape_header("a|b\\c") == "a\\|b\\\\c"
    assert cef_escape_header("two\nlines") == "two lines"
    assert cef_escape_value("a=b\\c|d\ne\rf") == "a\\=b\\\\c|d\\ne\\rf"
    assert cef_escape_value("\u001b[2J") == "\\\\x1b[2J"  # ANSI escape: visible text, not a control
    assert cef_escape_value("x" * 5000, 100).startswith("x") and len(cef_escape_value("x" * 5000, 100)) == 100


def test_cef_line_of_hostile_finding_cannot_inject():
    line = to_cef(HOSTILE, version="1.2|3")
    header, ext = parse_cef(line)
    assert header[1:4] == ["FleetWarden", "FleetWarden", "1.2|3"]
    assert header[4] == "finding:c2-beacon"
    assert header[5].startswith("c2-beacon on cam|01\\x CEF:0|Evil")  # the pipe stays inside the name
    assert header[6] == "8"
    # only our keys: the forged src= and act= stayed inside the values
    assert set(ext) == {
        "externalId", "rt", "start", "end", "cat", "cs1Label", "cs1", "cs2Label", "cs2", "msg",
        "cs3Label", "cs3", "cs4Label", "cs4", "smac",
    }  # fmt: skip
    assert "src" not in ext and "act" not in ext  # "10.0.0.5 act=blocked" is no address
    assert ext["cs1"] == HOSTILE["entity"]  # round trip through the SIEM's unescaping
    assert ext["cs3"] == "cam|01=\\x1b[31mred\\x1b[0m"
    assert "\u001b" not in line and "\u202e" not in line
    assert ext["msg"] == "calls a=b c=d\\ every 60 s\nsrc=6.6.6.6 act=allow / \\u202eevil"
    assert ext["rt"] == "1700000100500" and ext["smac"] == "aa:bb:cc:dd:ee:ff"


def test_cef_fields_are_bounded():
    huge = dict(HOSTILE, entity="e" * 100_000, evidence=["=" * 100_000] * 50, mitre=["T1"] * 10_000)
    header, ext = parse_cef(to_cef(huge, version="v"))
    assert len(header[5]) <= 512 and len(ext["cs1"]) <= 4000
    assert len(ext["msg"]) <= 1023 and len(to_cef(huge, version="v")) < 20_000


@pytest.mark.parametrize(
    ("severity", "score", "risk", "expected"),
    [("low", 0.0, None, 1), ("low", 0.9, None, 3), ("medium", 0.5, None, 5), ("high", 1.0, None, 8),
     ("critical", 0.2, None, 9), ("critical", None, 100, 10), ("high", None, 89, 8), ("bogus", 1.0, None, 0)],
)  # fmt: skip
def test_cef_severity_in_band(severity, score, risk, expected):
    assert cef_severity(severity, score, risk) == expected


# ------------------------------------------------------------------------------------ OCSF


def test_ocsf_detection_finding_fields():
    incident = dict(HOSTILE, risk=89, ip="192.168.1.195")
    incident.pop("detector")
    event = to_ocsf(incident, version="0.1.0")
    assert (event["class_uid"], event["category_uid"], event["type_uid"]) == (2004, 2, 200401)
    assert event["severity_id"] == 4 and event["time"] == 1_700_000_100_500 and event["risk_score"] == 89
    info = event["finding_info"]
    assert info["uid"] == "fleetwarden-incident-7" and info["types"] == ["c2-beacon"]
    assert (info["first_seen_time"], info["last_seen_time"]) == (1_700_000_000_000, 1_700_000_100_500)
    assert "\u001b" not in json.dumps(event) and "\\x1b" in event["device"]["uid"]
    assert event["src_endpoint"] == {"ip": "192.168.1.195", "mac": "aa:bb:cc:dd:ee:ff"}
    assert event["attacks"] == [{"technique": {"uid": "T1071"}, "version": "14"}]
    assert event["metadata"]["product"]["name"] == "FleetWarden" and event["metadata"]["version"] == "1.1.0"
    finding = to_ocsf(HOSTILE, version="0.1.0")
    assert "ip" not in finding["device"] and finding["confidence_score"] == 75  # hostile "ip" dropped


# ------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def mirai_db(tmp_path_factory) -> str:
    """The IoT-23 Mirai capture 34-1 analysed into a fresh SQLite store."""
    csv = need_data(*MIRAI)
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'fw.db'}"
    _cli("analyze", str(csv), "--db", url)
    return url


def test_cef_and_ocsf_export_of_real_capture(mirai_db, tmp_path):
    out = tmp_path / "events.cef"
    _cli("export", "cef", "--db", mirai_db, "--out", str(out))
    lines = out.read_text().splitlines()
    parsed = [parse_cef(line) for line in lines]
    incidents = [h for h, _ in parsed if h[4].startswith("incident:")]
    assert {h[4] for h in incidents} >= {"incident:c2-beacon", "incident:ddos"}
    c2 = next(e for h, e in parsed if h[4] == "incident:c2-beacon")
    assert C2 in c2["msg"] and int(c2["cn1"]) >= 70 and c2["src"] == "192.168.1.195"
    ocsf = [
        json.loads(x)
        for x in _cli("export", "ocsf", "--db", mirai_db, "--what", "incidents").stdout.splitlines()
    ]
    assert len(ocsf) == len(incidents) and all(e["class_uid"] == 2004 for e in ocsf)
    assert any(a["technique"]["uid"] == "T1071" for e in ocsf for a in e["attacks"])
    later = _cli("export", "cef", "--db", mirai_db, "--since", "2030-01-01").stdout
    assert later == ""  # nothing was seen after 2030


def test_bad_since_and_target_are_one_line_errors(mirai_db):
    result = _cli("export", "cef", "--db", mirai_db, "--since", "yesterday", code=2)
    assert "--since 'yesterday'" in result.output and len(result.output.strip().splitlines()) == 1
    result = _cli("export", "ocsf", "--db", mirai_db, "--syslog", "nohost", code=2)
    assert "HOST:PORT" in result.output
    with pytest.raises(InputError):
        parse_target("host:99999")
    assert parse_target("[::1]:514") == ("::1", 514)
    assert parse_since("2018-12-21T14:50:40Z") == 1545403840.0


# ------------------------------------------------------------------------------------ syslog


_RFC5424 = re.compile(
    rb"^<(\d{1,3})>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [!-~]+ fleetwarden - (incident|finding) - CEF:0\|"
)


def test_syslog_udp_to_a_real_socket(mirai_db):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        with store_at(mirai_db) as store:
            sent = send_syslog(store, "cef", f"127.0.0.1:{port}", protocol="udp", what="incidents")
        got = [server.recvfrom(65535)[0] for _ in range(sent)]
    assert sent >= 2
    for datagram in got:
        m = _RFC5424.match(datagram)
        assert m, datagram[:200]
        assert int(m[1]) // 8 == 16  # local0
    assert any(b"incident:c2-beacon" in d and b"<131>" in d for d in got)  # high: local0.err


def _tcp_frames(server: socket.socket, out: list[bytes]) -> None:
    conn, _ = server.accept()
    data = b""
    with conn:
        while chunk := conn.recv(65536):
            data += chunk
    while data:  # RFC 6587 octet counting
        length, _, rest = data.partition(b" ")
        out.append(rest[: int(length)])
        data = rest[int(length) :]


def test_syslog_tcp_octet_counting_via_cli(mirai_db):
    got: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        reader = threading.Thread(target=_tcp_frames, args=(server, got))
        reader.start()
        result = _cli("export", "cef", "--db", mirai_db, "--syslog", f"127.0.0.1:{port}", "--tcp")
        reader.join(10)
    n = int(re.search(r"sent (\d+) cef", result.output)[1])
    assert n == len(got) > 3 and all(_RFC5424.match(f) for f in got)
    with store_at(mirai_db) as store:
        assert any(
            e.action == "export.syslog" and e.subject == f"tcp://127.0.0.1:{port}"
            for e in store.audit_entries()
        )


def test_syslog_frame_bounds_and_framing():
    frame = syslog_frame("é" * 10_000 + "\nnext", timestamp=0, hostname="host name\n", max_bytes=2048)
    assert (
        len(frame) <= 2048
        and b"\n" not in frame
        and frame.startswith(b"<132>1 1970-01-01T00:00:00.000Z host_name_ ")
    )
    frame.decode("utf-8")  # never cut inside a character
    assert octet_counted(b"abc") == b"3 abc"


def test_syslog_unreachable_tcp_is_bad_input(mirai_db):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        result = _cli("export", "cef", "--db", mirai_db, "--syslog", f"127.0.0.1:{port}", "--tcp", code=2)
    assert "syslog tcp://127.0.0.1" in result.output


# ------------------------------------------------------------------------------------ webhook


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A SOAR endpoint: verifies the signature and the timestamp's freshness like a real one."""

    received: list[dict] = []
    fail_first = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.fail_first > 0:
            _Receiver.fail_first -= 1
            return self._answer(503)
        ok = verify_signature(
            body, SECRET, self.headers[TIMESTAMP_HEADER], self.headers[SIGNATURE_HEADER], now=time.time()
        )
        if ok:
            _Receiver.received.append(json.loads(body))
        self._answer(200 if ok else 401)

    def _answer(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def receiver():
    _Receiver.received, _Receiver.fail_first = [], 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/fleetwarden"
    server.shutdown()
    server.server_close()


def _raw_post(url: str, body: bytes, timestamp: int, signature: str) -> int:
    import urllib.error
    import urllib.request

    headers = {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature,
        "Content-Type": "application/json",
    }
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, body, headers, method="POST"), timeout=5
        ) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_signed_post_is_verified_and_stale_or_forged_rejected(receiver):
    assert post_signed(receiver, {"id": 1, "title": "c2"}, SECRET, timeout=5) == 200
    assert _Receiver.received == [{"id": 1, "title": "c2"}]
    body = b'{"id":2}'
    stale = int(time.time()) - 3600
    assert _raw_post(receiver, body, stale, sign(body, SECRET, stale)) == 401  # a replay an hour later
    now = int(time.time())
    assert _raw_post(receiver, body, now, sign(body, b"wrong-secret-0123456789", now)) == 401
    assert _raw_post(receiver, b'{"id":3}', now, sign(body, SECRET, now)) == 401  # body swapped
    assert _raw_post(receiver, body, now, sign(body, SECRET, now)) == 200
    assert post_signed(receiver, {"id": 4}, b"another-secret-0123456789", timeout=5, retries=0) == 401


def test_retries_with_backoff_then_succeeds(receiver):
    _Receiver.fail_first = 2
    start = time.monotonic()
    assert post_signed(receiver, {"id": 5}, SECRET, timeout=5, retries=3, backoff=0.05) == 200
    assert time.monotonic() - start >= 0.05 + 0.1 and _Receiver.received == [{"id": 5}]
    _Receiver.fail_first = 5
    assert post_signed(receiver, {"id": 6}, SECRET, timeout=5, retries=1, backoff=0.01) == 503


def test_unreachable_and_bad_urls_never_show_the_secret():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://user:pw-xyz@127.0.0.1:{s.getsockname()[1]}/h"
        with pytest.raises(WebhookError) as info:
            post_signed(url, {"a": 1}, SECRET, timeout=1, retries=1, backoff=0.01)
    message = str(info.value)
    assert "after 2 attempts" in message and "pw-xyz" not in message and SECRET.decode() not in message
    for bad in ("ftp://h/x", "http://", "file:///etc/passwd"):
        with pytest.raises(WebhookError):
            post_signed(bad, {}, SECRET)
    with pytest.raises(WebhookError, match="shorter"):
        post_signed("http://127.0.0.1:1/", {}, b"short")


def test_load_secret_from_env_or_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETWARDEN_WEBHOOK_SECRET", raising=False)
    with pytest.raises(WebhookError, match="FLEETWARDEN_WEBHOOK_SECRET"):
        load_secret()
    monkeypatch.setenv("FLEETWARDEN_WEBHOOK_SECRET", "tooshort")
    with pytest.raises(WebhookError) as info:
        load_secret()
    assert "tooshort" not in str(info.value)
    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert load_secret(f) == SECRET


def test_cli_webhook_exports_incidents_signed(mirai_db, receiver):
    env = {"FLEETWARDEN_WEBHOOK_SECRET": SECRET.decode()}
    result = _cli("export", "webhook", receiver, "--db", mirai_db, env=env)
    assert re.search(r": (\d+) sent, 0 refused \(HTTP 200: \1\)", result.output)
    assert {e["finding_info"]["types"][0] for e in _Receiver.received} >= {"c2-beacon", "ddos"}
    bad = _cli(
        "export", "webhook", receiver, "--db", mirai_db, env={"FLEETWARDEN_WEBHOOK_SECRET": "x" * 20}, code=1
    )
    assert "refused (HTTP 401" in bad.output and "x" * 20 not in bad.output
    with store_at(mirai_db) as store:
        entries = [e for e in store.audit_entries() if e.action == "export.webhook"]
    assert entries and SECRET.decode() not in json.dumps([e.details for e in entries])


# ------------------------------------------------------------------------------------ STIX


def _finding(category: str, severity: str = "high", **attrs) -> dict:
    return {"category": category, "severity": severity, "first_seen": 1_700_000_000.25,
            "last_seen": 1_700_000_500.0, "mitre": ["T1071"], "attributes": attrs, "entity": "cam-1"}  # fmt: skip


def test_only_shareable_indicators():
    sha = "ab" * 32
    findings = [
        _finding(
            "c2-beacon", destinations=["8.8.4.4", "10.1.2.3", "192.168.1.1", "100.64.0.1", "203.0.113.9"]
        ),
        _finding("c2-beacon", destination="Evil-C2.example-bad.net."),
        _finding("c2-beacon", destination="printer.local"),
        _finding("c2-beacon", destination="x.com' OR '1'='1"),  # not a domain: dropped, never quoted
        _finding("c2-beacon", severity="low", destination="1.1.1.1"),  # low: not worth sharing
        _finding("ddos", target="9.9.9.9"),  # a victim
        _finding("dns-tunnel", domain="t.tunnel-zone.org"),
        _finding("firmware-tamper", image_sha256=sha.upper()),
        _finding("c2-beacon", destination="4.4.4.4"),  # one of our own devices' addresses
    ]
    obs = indicators_from(findings, own=["4.4.4.4"])
    assert [(o.kind, o.value) for o in obs] == [
        ("domain-name", "evil-c2.example-bad.net"),
        ("domain-name", "t.tunnel-zone.org"),
        ("file-sha256", sha),
        ("ipv4-addr", "8.8.4.4"),
    ]
    assert obs[2].pattern == f"[file:hashes.'SHA-256' = '{sha}']"
    assert obs[0].pattern == "[domain-name:value = 'evil-c2.example-bad.net']"


def _validate_stix(bundle: dict) -> None:
    try:
        import stix2
    except ImportError:
        if IN_CI:
            pytest.fail("stix2 is not installed (pip install -e .[test])")
        pytest.skip("stix2 is not installed (pip install -e .[test])")
    parsed = stix2.parse(json.dumps(bundle), allow_custom=False, version="2.1")
    for obj in parsed.objects:
        if obj.type == "indicator":
            from stix2.pattern_visitor import create_pattern_object

            create_pattern_object(obj.pattern, version="2.1")  # the pattern grammar


def test_stix_bundle_is_valid_and_stable():
    findings = [
        _finding("c2-beacon", destination="8.8.4.4"),
        _finding("firmware-tamper", image_sha256="cd" * 32),
    ]
    bundle = stix_bundle(indicators_from(findings))
    _validate_stix(bundle)
    identity, *indicators = bundle["objects"]
    assert identity["type"] == "identity" and all(i["created_by_ref"] == identity["id"] for i in indicators)
    assert indicators[0]["valid_from"] == "2023-11-14T22:13:20.250Z"
    assert bundle == stix_bundle(indicators_from(list(reversed(findings))))  # same ids, any order
    assert stix_bundle([])["objects"] == [identity]


def test_stix_export_of_real_capture(mirai_db, tmp_path):
    out = tmp_path / "bundle.json"
    _cli("export", "stix", "--db", mirai_db, "--out", str(out))
    first = out.read_bytes()
    bundle = json.loads(first)
    _validate_stix(bundle)
    patterns = [o["pattern"] for o in bundle["objects"] if o["type"] == "indicator"]
    assert f"[ipv4-addr:value = '{C2}']" in patterns
    text = json.dumps(patterns)
    assert "192.168." not in text  # the infected device and its gateway are never shared
    assert "147.231.100.5" not in text  # a low-severity NTP "beacon": not a C2
    assert "123.59.209.185" not in text  # a flood victim
    _cli("export", "stix", "--db", mirai_db, "--out", str(out))
    assert out.read_bytes() == first  # a re-export is byte for byte the same
    with store_at(mirai_db) as store:
        assert export_stix(store)["id"] == bundle["id"]


def test_export_help_lists_commands():
    output = _cli("export", "--help").output
    assert all(cmd in output for cmd in ("cef", "ocsf", "webhook", "stix"))


def test_cef_export_file_is_path_error(mirai_db, tmp_path):
    result = _cli("export", "cef", "--db", mirai_db, "--out", str(tmp_path / "missing" / "x.cef"), code=2)
    assert "No such file" in result.output
