"""The command-line contract: exit codes, one-line errors, every shared input accepted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import need_data
from typer.testing import CliRunner

from fleetwarden.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_the_commands():
    res = _run("--help")
    assert res.exit_code == 0
    for cmd in ("demo", "train", "score", "analyze", "evaluate", "inspect"):
        assert cmd in res.output


def test_python_dash_m_entry_point_works():
    res = subprocess.run(
        [sys.executable, "-m", "fleetwarden", "--version"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("fleetwarden ")


def test_missing_file_is_exit_2_with_one_line(tmp_path):
    res = _run("analyze", str(tmp_path / "nope.pcap"))
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope.pcap" in lines[0] and "no such file" in lines[0]


def test_garbage_file_is_refused_clearly(tmp_path):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(bytes(range(256)) * 20)
    res = _run("inspect", str(bad))
    assert res.exit_code == 2
    assert "garbage.bin" in res.stderr and "Traceback" not in res.stderr


def test_truncated_pcap_refused_then_skipped(tmp_path):
    src = need_data("stratosphere", "ssh-bruteforce.test19.pcap")
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    res = _run("inspect", str(cut))
    assert res.exit_code == 2
    assert "cut.pcap" in res.stderr and "packet" in res.stderr
    res = _run("inspect", "--skip-bad", str(cut))
    assert res.exit_code == 0, res.stderr
    assert "skipped" in res.stderr
    assert "flow" in res.stdout


def test_csv_missing_required_column_named(tmp_path):
    src = need_data("iot23", "CTU-Honeypot-Capture-4-1-labeled.csv")
    lines = src.read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("id.resp_h")
    rows = [",".join(c for k, c in enumerate(ln.split(",")) if k != drop) for ln in lines[:50]]
    bad = tmp_path / "nocol.csv"
    bad.write_text("\n".join(rows) + "\n")
    res = _run("inspect", str(bad))
    assert res.exit_code == 2
    assert "id.resp_h" in res.stderr


def _shared_inputs() -> list[Path]:
    root = need_data()
    keep = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix in (".pcap", ".pcapng", ".log", ".csv") and "ton-iot" not in p.parts:
            keep.append(p)
    return keep


@pytest.mark.slow
def test_analyze_accepts_every_shared_capture_and_log():
    files = _shared_inputs()
    assert len(files) > 400  # iot-sentinel alone has 386 captures
    res = _run("analyze", "--json", *map(str, files))
    assert res.exit_code == 0, res.stderr[-2000:]
    incidents = json.loads(res.stdout)
    assert isinstance(incidents, list)
    for inc in incidents:
        assert {"entity", "category", "severity", "risk", "first_seen", "last_seen", "evidence", "mitre"} <= set(inc)


def test_demo_runs_end_to_end(tmp_path):
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    res = _run("demo", "--devices", "60", "--hours", "12", "--seed", "3", "--db", db)
    assert res.exit_code == 0, res.output[-3000:]
    out = res.output
    assert "Tabletop scenarios" in out and "Summary" in out
    assert "mirai-camera" in out and "benign-rollout" in out
    assert "events processed" in out


def test_inventory_import_then_analyze_names_devices(tmp_path):
    """Simulated fleet files -> inventory import -> analyze --db: incidents carry device ids."""
    db = f"sqlite:///{tmp_path / 'fw.db'}"
    out_dir = tmp_path / "sim"
    res = _run("simulate", "--out", str(out_dir), "--devices", "40", "--hours", "3", "--seed", "2")
    assert res.exit_code == 0, res.output
    res = _run("inventory", "import", str(out_dir / "inventory.json"), "--db", db)
    assert res.exit_code == 0, res.output
    assert "40 devices read, 40 added" in res.output
    res = _run("inventory", "list", "--json", "--db", db)
    devices = json.loads(res.stdout)
    assert len(devices) == 40 and all(d["device_id"] and d["ip"] for d in devices)
    res = _run("analyze", "--json", "--db", db, str(out_dir / "conn.log"), str(out_dir / "dns.log"))
    assert res.exit_code == 0, res.stderr
    incidents = json.loads(res.stdout)
    truth = json.loads((out_dir / "scenarios.json").read_text())
    camera = next(s for s in truth if s["name"] == "mirai-camera")["device_ids"][0]
    assert any(i["entity"] == camera and i["category"] == "scan" for i in incidents)


def test_inventory_import_refuses_rows_without_device_id(tmp_path):
    bad = tmp_path / "inv.csv"
    bad.write_text("device_id,ip\ncam-1,10.0.0.5\n,10.0.0.6\n")
    res = _run("inventory", "import", str(bad), "--db", f"sqlite:///{tmp_path / 'fw.db'}")
    assert res.exit_code == 2
    assert "device 2 has no device_id" in res.stderr


def test_analyze_skip_bad_reports_what_was_skipped(tmp_path):
    src = need_data("stratosphere", "ssh-bruteforce.test19.pcap")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(src.read_bytes()[:30000])
    res = _run("analyze", "--skip-bad", "--json", str(cut))
    assert res.exit_code == 0, res.stderr
    assert "cut.pcap: skipped 1 bad record(s)" in res.stderr
    assert "truncated" in res.stderr
    json.loads(res.stdout)
