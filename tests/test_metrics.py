"""Security metrics: MTTD, MTTR, false-positive rate from verdicts, drift (PSI), Prometheus text,
and the analyst's verdict and labels commands, over a real SQLite store."""

from __future__ import annotations

import json
import random
import uuid

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from fleetwarden.app.metrics import MetricsInputError, prometheus_text, security_metrics
from fleetwarden.app.verdicts import export_labels, record_verdict
from fleetwarden.cli import app
from fleetwarden.control import metrics as m
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.store import open_store
from fleetwarden.store.repository import StoreError

runner = CliRunner()
T0 = 1_780_000_000.0  # 2026-05-28 UTC


# ---------------------------------------------------------------------------- pure


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = random.Random(1)
    ref = [rng.gauss(0.3, 0.1) for _ in range(5000)]
    same = [rng.gauss(0.3, 0.1) for _ in range(5000)]
    shifted = [rng.gauss(0.6, 0.1) for _ in range(5000)]
    assert m.psi(ref, same) < 0.02
    assert m.psi(ref, shifted) > 1.0
    assert m.drift_level(m.psi(ref, same)) == "stable"
    assert m.drift_level(m.psi(ref, shifted)) == "significant"
    assert m.psi([], same) is None and m.drift_level(None) is None
    assert m.psi(ref, [float("nan"), float("inf")]) is None  # nothing finite to compare


def test_delays_response_times_and_fp_rate_follow_their_definitions():
    incidents = [
        {"id": 1, "created_at": 100.0, "status": "open", "updated_at": 100.0},
        {"id": 2, "created_at": 200.0, "status": "closed", "updated_at": 500.0},
        {"id": 3, "created_at": 300.0, "status": "open", "updated_at": 300.0},
    ]
    findings = [
        {"incident_id": 1, "first_seen": 10.0, "last_seen": 70.0},
        {"incident_id": 1, "first_seen": 30.0, "last_seen": 40.0},  # the first finding complete: 40
        {"incident_id": 2, "first_seen": 0.0, "last_seen": 5.0},
    ]
    assert m.detection_delays(incidents[:1], findings) == {1: 30.0}
    actions = [
        {"incident_id": 1, "kind": "alert", "executed_at": 110.0},  # not containment
        {"incident_id": 1, "kind": "quarantine", "executed_at": 160.0},
        {"incident_id": 3, "kind": "restrict", "executed_at": None},  # proposed only
    ]
    times, uncontained = m.response_times(incidents, actions)
    assert times == {1: 60.0, 2: 300.0} and uncontained == 1
    fp = m.false_positive_rate(["true-positive", "false-positive", "false-positive"], incidents=5)
    assert fp == {"true_positive": 1, "false_positive": 2, "rate": 0.6667, "unjudged": 2}
    assert m.false_positive_rate([])["rate"] is None
    latest = m.latest_verdicts(
        [
            {"id": 1, "incident_id": 7, "verdict": "true-positive", "created_at": 1.0},
            {"id": 2, "incident_id": 7, "verdict": "false-positive", "created_at": 2.0},
        ]
    )
    assert latest[7]["verdict"] == "false-positive"


# ---------------------------------------------------------------------------- store


def _finding(entity: str, category: str, first: float, last: float, score: float, uids: list[str]) -> Finding:
    return Finding(entity, category, "test", score, first, last, [f"{category} on {entity}"], ["T1046"],
                   device_id=entity, record_ids=uids)  # fmt: skip


def _seed(store) -> dict[str, int]:
    """Two devices (sites north/south, classes camera/plc), one incident each; their ids."""
    store.upsert_devices(
        [
            {"device_id": "cam-1", "site": "north", "device_class": "camera", "criticality": "low"},
            {"device_id": "plc-1", "site": "south", "device_class": "plc", "criticality": "critical"},
        ]
    )
    f1 = _finding("cam-1", "scan", T0, T0 + 120, 0.9, ["C1", "C2"])
    f2 = _finding("plc-1", "c2-beacon", T0 + 50, T0 + 400, 0.5, ["P1"])
    incidents = [
        Incident("cam-1", "scan", "high", 80, T0, T0 + 120, ["scan"], ["T1046"], findings=[f1]),
        Incident("plc-1", "c2-beacon", "medium", 50, T0 + 50, T0 + 400, ["beacon"], ["T1071"], findings=[f2]),
    ]
    store.record_results("test", [f1, f2], incidents)
    return {i.entity: i.id for i in store.list_incidents()}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """(url, store, incident ids) on SQLite, and on PostgreSQL in a scratch schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
        with open_store(url) as store:
            yield url, store, _seed(store)
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"fw_test_metrics_{uuid.uuid4().hex[:12]}"
    store = open_store(url, schema=schema)
    try:
        yield url, store, _seed(store)
    finally:
        store.close()
        eng = sa.create_engine(url)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


@pytest.fixture
def sqlite_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with open_store(url) as store:
        yield url, store, _seed(store)


def test_verdicts_feed_fp_rate_mttd_mttr_groups_and_prometheus(db):
    _url, store, ids = db
    record_verdict(store, ids["cam-1"], "true-positive", "confirmed Mirai", analyst="ana")
    record_verdict(store, ids["plc-1"], "true-positive", "first look", analyst="ana")
    record_verdict(store, ids["plc-1"], "false-positive", "vendor update server", analyst="bo")
    act = store.propose_action("quarantine", requested_by="test", incident_id=ids["cam-1"], device_id="cam-1")
    store.approve_action(act.id, approved_by="ana")
    store.update_action(act.id, "executed", actor="adapter")

    res = security_metrics(store, by="site")
    overall = res["overall"]
    assert overall["incidents"] == 2
    assert overall["false_positive"] == {"true_positive": 1, "false_positive": 1, "rate": 0.5, "unjudged": 0}
    assert overall["mttd"]["count"] == 1 and overall["mttd"]["mean_s"] == 120.0  # cam-1 only: TP
    assert overall["mttr"]["count"] == 1 and overall["mttr"]["uncontained"] == 1
    assert set(res["groups"]) == {"north", "south"}
    assert res["groups"]["south"]["false_positive"]["rate"] == 1.0
    assert list(res["daily"]) == ["2026-05-28"]
    assert res["drift"]["recent"] == 2 and res["drift"]["reference"] == 0 and res["drift"]["psi"] is None
    assert set(res["posture"]) == {"patch_compliance", "inventory_accuracy", "identity_posture"}
    assert security_metrics(store, by="class")["groups"].keys() == {"camera", "plc"}

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(prometheus_text(res))
        for s in fam.samples
    }
    assert samples[("fleetwarden_false_positive_rate", (("by", "all"), ("group", "all")))] == 0.5
    assert samples[("fleetwarden_mttd_seconds", (("by", "all"), ("group", "all")))] == 120.0
    assert samples[("fleetwarden_incidents", (("by", "site"), ("group", "north")))] == 1.0
    # nothing to measure is absent, not a 0 that looks like a perfect score
    assert ("fleetwarden_model_drift_psi", ()) not in samples
    audit = [e for e in store.audit_entries() if e.action == "incident.verdict"]
    assert [e.actor for e in audit] == ["ana", "ana", "bo"]


def test_bad_verdicts_are_refused(db):
    _url, store, ids = db
    with pytest.raises(StoreError, match="expected one of"):
        record_verdict(store, ids["cam-1"], "maybe", "hmm", analyst="ana")
    with pytest.raises(StoreError, match="at most 1000"):
        record_verdict(store, ids["cam-1"], "true-positive", "x" * 1001, analyst="ana")
    with pytest.raises(StoreError, match="needs a reason"):
        record_verdict(store, ids["cam-1"], "true-positive", "  ", analyst="ana")
    with pytest.raises(StoreError, match="unknown incident"):
        record_verdict(store, 9999, "true-positive", "ok", analyst="ana")
    with pytest.raises(MetricsInputError):
        security_metrics(store, by="vendor")


def test_labels_export_the_records_behind_judged_incidents(db, tmp_path):
    _url, store, ids = db
    record_verdict(store, ids["cam-1"], "true-positive", "confirmed", analyst="ana")
    record_verdict(store, ids["plc-1"], "false-positive", "benign", analyst="ana")
    counts = export_labels(store, tmp_path / "labels.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert counts["rows"] == 3 and counts["malicious"] == 2 and counts["benign"] == 1
    assert {(r["uid"], r["label"], r["detailed_label"]) for r in rows} == {
        ("C1", "Malicious", "scan"),
        ("C2", "Malicious", "scan"),
        ("P1", "Benign", "c2-beacon"),
    }


# ---------------------------------------------------------------------------- CLI


def test_cli_verdict_metrics_and_labels(sqlite_db, tmp_path):
    url, _store, ids = sqlite_db
    ok = runner.invoke(
        app, ["incident", "verdict", str(ids["cam-1"]), "true-positive", "--reason", "seen", "--as", "ana", "--db", url]
    )
    assert ok.exit_code == 0, ok.output
    assert "true-positive" in ok.stdout
    bad = runner.invoke(
        app, ["incident", "verdict", str(ids["cam-1"]), "nope", "--reason", "x", "--as", "ana", "--db", url]
    )
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "expected one of" in bad.stderr
    as_json = json.loads(runner.invoke(app, ["metrics", "--json", "--by", "class", "--db", url]).stdout)
    assert as_json["overall"]["false_positive"]["true_positive"] == 1 and as_json["by"] == "class"
    prom = runner.invoke(app, ["metrics", "--prometheus", "--db", url]).stdout
    names = {f.name for f in text_string_to_metric_families(prom)}
    assert {"fleetwarden_incidents", "fleetwarden_identity_audit_checks"} <= names
    table = runner.invoke(app, ["metrics", "--db", url])
    assert table.exit_code == 0 and "Security metrics" in table.stdout
    assert runner.invoke(app, ["metrics", "--by", "zone", "--db", url]).exit_code == 2
    labels = runner.invoke(app, ["incident", "labels", "--out", str(tmp_path / "l.jsonl"), "--db", url])
    assert labels.exit_code == 0 and json.loads(labels.stdout)["rows"] == 2
