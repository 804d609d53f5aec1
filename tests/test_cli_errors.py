"""What a new user runs into, each answered in one line with exit code 2 (never a traceback), and
real bugs still shown as bugs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.conftest import free_port, need_data

BASE = [sys.executable, "-m", "fleetwarden"]


def _fw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*BASE, *args], capture_output=True, text=True, timeout=timeout)


def _one_line_exit_2(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def capture():
    return str(need_data("stratosphere", "arp-scan.test8-malicious.pcap"))


def test_a_bare_word_is_not_silently_made_a_database(tmp_path, capture, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line_exit_2(_fw("analyze", capture, "--db", "nonsense"), "nonsense", "database URL")
    assert "sqlite" in line and not (tmp_path / "nonsense").exists()


def test_an_unreachable_postgres_is_one_line_with_the_password_masked(capture):
    url = f"postgresql+psycopg://fw:hunter2@127.0.0.1:{free_port()}/fleet"
    line = _one_line_exit_2(_fw("analyze", capture, "--db", url), "cannot open the database")
    assert "hunter2" not in line and "***" in line


def test_the_psycopg2_spelling_uses_the_driver_we_ship(capture):
    res = _fw("analyze", capture, "--db", f"postgresql+psycopg2://fw@127.0.0.1:{free_port()}/fleet")
    line = _one_line_exit_2(res, "cannot open the database")
    assert "ModuleNotFoundError" not in line and "psycopg2" not in line


def test_inventory_import_of_a_binary_file_names_the_file(tmp_path):
    blob = tmp_path / "devices.bin"
    blob.write_bytes(bytes(range(256)) * 16)
    _one_line_exit_2(_fw("inventory", "import", str(blob), "--db", f"sqlite:///{tmp_path / 'i.db'}"), "devices.bin")


def test_inventory_import_refuses_an_address_that_is_not_one(tmp_path):
    inv = tmp_path / "devices.json"
    inv.write_text(json.dumps([{"device_id": "cam-1", "ip": "10.0.0.5"}, {"device_id": "cam-2", "ip": "not-an-ip"}]))
    db = f"sqlite:///{tmp_path / 'i.db'}"
    _one_line_exit_2(_fw("inventory", "import", str(inv), "--db", db), "devices.json", "cam-2", "not-an-ip")
    # nothing of the file was written: it is checked whole first
    listed = _fw("inventory", "list", "--json", "--db", db)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("missing", "model.json is missing"),
        ("json", "not valid JSON"),
        ("pickle", "estimators.npz"),
        ("edited", "model"),
    ],
)
def test_a_damaged_model_directory_says_what_is_wrong(tmp_path, capture, damage, needle):
    import numpy as np

    model = tmp_path / "model"
    model.mkdir()
    if damage != "missing":
        (model / "model.json").write_text(
            "{not json" if damage == "json" else json.dumps({"kind": "fleetwarden-flow-model", "features": []})
        )
    if damage == "pickle":
        (model / "model.json").write_text(json.dumps({"kind": "fleetwarden-flow-model"}))
        # an archive whose table is a pickle: reading it would run code
        np.savez(model / "estimators.npz", edges=np.array([object()], dtype=object))
    elif damage == "edited":
        np.savez(model / "estimators.npz", edges=np.zeros(3))
    line = _one_line_exit_2(_fw("analyze", capture, "--model", str(model)), needle)
    assert not line.rstrip().endswith(":"), "the reason must not be empty"


def test_a_bus_that_is_not_there_is_one_line_quickly():
    res = _fw("worker", "--bus", f"nats://u:pw@127.0.0.1:{free_port()}", "--duration", "1", timeout=30)
    line = _one_line_exit_2(res, "cannot connect to NATS")
    assert "pw" not in line


def test_a_real_bug_is_not_passed_off_as_bad_input(tmp_path):
    # an internal error (here: the store's migrations directory made unreadable by a broken
    # install) must surface as a traceback with a non-2 exit code, not as "bad input"
    code = (
        "import sys, fleetwarden.store as st\n"
        "st.upgrade = lambda engine, revision='head': (_ for _ in ()).throw(RuntimeError('bug'))\n"
        "from fleetwarden.cli import main\n"
        f"sys.argv = ['fleetwarden', 'inventory', 'list', '--db', 'sqlite:///{tmp_path / 'x.db'}']\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode not in (0, 2) and "RuntimeError: bug" in res.stderr
