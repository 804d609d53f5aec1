"""Behaviour change that belongs to a planned rollout is expected, not an incident: a real rollout
(signed images, real SQLite store) and ``analyze --db`` on flows that make a scan finding for the
canary, inside its update window and after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetwarden.app import rollout as ro
from fleetwarden.app.session import mark_expected
from fleetwarden.cli import app
from fleetwarden.core.findings import Finding
from fleetwarden.store import open_store
from rollout_fleet import NEW, scan_flows, signed_x200_fleet

runner = CliRunner()
T0 = 1709604000.0  # 2024-03-05 02:00 UTC
HOUR = 3600.0


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'expected.db'}"


@pytest.fixture
def rollout(url, tmp_path) -> int:
    """Acme X200 1.0.0 -> 1.1.0 on d0 (canary) and d1; d0 updated at T0+300, soak one hour."""
    with open_store(url) as st:
        signed_x200_fleet(st, tmp_path, ["env-sensor", "plc"])
        rid = ro.plan_rollout(
            st, "x200 1.1.0", "Acme", "X200", "1.1.0", canary=1, waves="100%", soak_hours=1
        )["id"]
        ro.advance(st, rid, now=T0)
        assert ro.record_reports(st, [("d0", NEW, T0 + 300)]) == 1
    return rid


def _scan(path: Path, ip: str, start: float) -> Path:
    """40 unanswered telnet probes from ``ip`` in 20 s: a scan finding of its device."""
    path.write_text("".join(json.dumps(row) + "\n" for row in scan_flows(ip, start)))
    return path


def _analyze(url: str, events: Path) -> list[dict]:
    res = runner.invoke(app, ["analyze", str(events), "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_a_finding_inside_the_update_window_is_marked_and_opens_no_incident(url, rollout, tmp_path):
    printed = _analyze(url, _scan(tmp_path / "in.jsonl", "10.0.0.10", T0 + 1200))
    assert printed == []  # analyze --json tells what the store holds: no incident
    with open_store(url) as st:
        assert st.list_incidents(entity="d0") == []
        found = st.list_findings(entity="d0")
        assert found and all(f.category == "scan" and f.incident_id is None for f in found)
        assert {f.attributes["expected"] for f in found} == {f"rollout x200 1.1.0 (#{rollout})"}
        assert all(
            f.evidence[-1]
            == f"expected change: inside the update window of rollout x200 1.1.0 (#{rollout}), no incident"
            for f in found
        )


def test_the_same_behaviour_after_the_window_is_an_incident(url, rollout, tmp_path):
    _analyze(url, _scan(tmp_path / "in.jsonl", "10.0.0.10", T0 + 1200))
    _analyze(url, _scan(tmp_path / "after.jsonl", "10.0.0.10", T0 + 300 + HOUR + 60))
    with open_store(url) as st:
        (inc,) = st.list_incidents(entity="d0")
        assert inc.category == "scan" and inc.status == "open"
        linked = st.list_findings(incident_id=inc.id)
        assert linked and all("expected" not in f.attributes for f in linked)
        assert all(f.first_seen >= T0 + 300 + HOUR for f in linked)  # the expected ones stay out of it
        assert len(st.list_findings(entity="d0")) > len(linked)


def test_a_device_not_yet_updating_is_not_expected(url, rollout, tmp_path):
    _analyze(url, _scan(tmp_path / "d1.jsonl", "10.0.0.11", T0 + 1200))  # d1: wave 1, still pending
    with open_store(url) as st:
        (inc,) = st.list_incidents(entity="d1")
        assert inc.category == "scan"


def test_mark_expected_asks_once_and_spares_identity_findings(url, rollout):
    def finding(dev: str, category: str, ts: float) -> Finding:
        return Finding(dev, category, "test", 0.8, ts, ts + 10, [f"{category} of {dev}"], device_id=dev)

    found = [
        finding("d0", "anomaly", T0 + 600),  # inside d0's window
        finding("d0", "firmware-tamper", T0 + 600),  # an unsigned image is never the rollout
        finding("d0", "anomaly", T0 - 600),  # before the update
        finding("d1", "anomaly", T0 + 600),  # not updating
        finding("10.9.9.9", "scan", T0 + 600),  # not in the inventory
    ]
    with open_store(url) as st:
        windows = ro.expected_changes(st, ["d0", "d1", "nobody"])
        assert list(windows) == ["d0"]
        assert (windows["d0"][0].start, windows["d0"][0].end) == (T0, T0 + 300 + HOUR)
        rest = mark_expected(st, found)
    assert rest == found[1:]
    assert found[0].attributes["expected"] == f"rollout x200 1.1.0 (#{rollout})"
    assert all("expected" not in f.attributes for f in rest)
