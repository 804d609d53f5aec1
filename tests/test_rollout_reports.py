"""Rollout progress follows the devices' own firmware reports: every detecting path runs a
DetectionSession, whose record() applies the firmware_report events it saw to the running rollouts
(real SQLite store, signed images, real lock contention for the failure case)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import event
from typer.testing import CliRunner

from conftest import sqlite_held
from fleetwarden.app import rollout as ro
from fleetwarden.app.session import DetectionSession
from fleetwarden.cli import app
from fleetwarden.core.events import EventBatch
from fleetwarden.store import open_store
from rollout_fleet import NEW, OLD, scan_flows, signed_x200_fleet

runner = CliRunner()
T0 = 1709604000.0  # 2024-03-05 02:00 UTC, a Tuesday
HOUR = 3600.0


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'reports.db'}"


@pytest.fixture
def store(url, tmp_path):
    """Acme X200 1.0.0 and 1.1.0 signed in the registry; d0 (env-sensor), d1 (ip-camera) and d2
    (plc) on 1.0.0, in that order of criticality; z9 of another model."""
    st = open_store(url)
    signed_x200_fleet(
        st, tmp_path, ["env-sensor", "ip-camera", "plc"],
        extra=[{"device_id": "z9", "vendor": "Zeta", "model": "Q", "firmware_version": "1.0.0"}],
    )  # fmt: skip
    yield st
    st.close()


def running(store, canary: int = 2) -> int:
    """A rollout of 1.1.0, canary ``canary`` devices then the rest, soak one hour, started at T0."""
    rid = ro.plan_rollout(
        store, "x200 1.1.0", "Acme", "X200", "1.1.0", canary=canary, waves="100%", soak_hours=1
    )["id"]
    ro.advance(store, rid, now=T0)
    return rid


def reports(*rows: tuple[float, str, str | None]) -> EventBatch:
    """firmware_report events ``(ts, device_id, image_sha256)``, each with its image's version."""
    ts, dev, sha = zip(*rows, strict=True)
    version = ["1.0.0" if h == OLD else "1.1.0" for h in sha]
    return EventBatch.from_columns(
        "firmware_report",
        {"ts": list(ts), "device_id": list(dev), "version": version, "image_sha256": list(sha)},
    )


def devices(store, rid: int) -> dict[str, tuple[str, str | None, float | None]]:
    """device -> (status, reported_sha256, updated_at if updated)."""
    return {
        d["device_id"]: (
            d["status"],
            d["reported_sha256"],
            d["updated_at"] if d["status"] == "updated" else None,
        )
        for d in ro.rollout_status(store, rid)["devices"]
    }


def report_entries(store) -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in store.audit_entries() if e.action == "rollout.report"]


# ---------------------------------------------------------------------------- progress


def test_a_running_rollout_follows_the_reports_a_session_sees(store):
    rid = running(store)
    assert devices(store, rid) == {
        "d0": ("updating", None, None),
        "d1": ("updating", None, None),
        "d2": ("pending", None, None),
    }
    session = DetectionSession(store=store, source="mqtt:broker")
    session.process(
        reports(
            (T0 + 60, "d0", OLD),  # still the old image at first
            (T0 + 300, "d0", NEW),  # updated: its first report of the target
            (T0 + 600, "d0", NEW.upper()),  # the next check-ins repeat it
            (T0 + 300, "d1", OLD),  # the other canary has not updated yet
            (T0 + 300, "d2", NEW),  # wave 1 has not started: its report counts for nothing
            (T0 + 300, "z9", NEW),  # not in the rollout
            (T0 + 300, "d1", None),  # no hash: says nothing
        )
    )
    session.process(reports((T0 + 900, "d0", NEW)))  # another batch, another check-in
    assert session.record() is None  # no findings to store: the reports alone were applied
    assert session.stats.rollout_updates == 1
    assert devices(store, rid) == {
        "d0": ("updated", NEW, T0 + 300),  # as of the report, not of the record
        "d1": ("updating", OLD, None),
        "d2": ("pending", None, None),
    }
    assert report_entries(store) == [("mqtt:broker", "rollout.report")]
    with pytest.raises(ro.RolloutRefused, match=r"wave 0 not finished, 1 of 2 device\(s\) .*\(d1\)"):
        ro.advance(store, rid, now=T0 + 2 * HOUR)

    # the same reports again (a redelivered stream, a re-analysed file) change nothing, not even the log
    again = DetectionSession(store=store, source="replay")
    again.process(reports((T0 + 300, "d0", NEW), (T0 + 300, "d1", OLD)))
    again.record()
    assert again.stats.rollout_updates == 0 and len(report_entries(store)) == 1

    session.process(reports((T0 + 1200, "d1", "sha256:" + NEW)))  # the prefixed form counts too
    session.record()
    assert devices(store, rid)["d1"] == ("updated", NEW, T0 + 1200)
    with pytest.raises(ro.RolloutRefused, match="soaking until 2024-03-05T03:20:00Z"):
        ro.advance(store, rid, now=T0 + 1200 + HOUR - 60)
    st = ro.advance(store, rid, now=T0 + 1200 + HOUR)  # soaked, no regression: wave 1 starts
    assert st["plan"]["current_wave"] == 1
    assert st["waves"] == [{"wave": 0, "updated": 2}, {"wave": 1, "updating": 1}]


def test_analyze_db_applies_the_reports_before_judging_the_findings(url, store, tmp_path):
    """One file with the canary's report and, after its soak, a scan from it: the report closes the
    update window first, so the scan is no longer "the update" and opens an incident."""
    rid = running(store, canary=1)
    events = tmp_path / "events.jsonl"
    rows = [
        {
            "kind": "firmware_report",
            "ts": T0 + 300,
            "device_id": "d0",
            "version": "1.1.0",
            "image_sha256": NEW,
        }
    ]
    start = T0 + 300 + HOUR + 60
    rows += scan_flows("10.0.0.10", start)
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["analyze", str(events), "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    assert devices(store, rid)["d0"] == ("updated", NEW, T0 + 300)
    (inc,) = store.list_incidents(entity="d0")
    assert inc.category == "scan"
    assert all("expected" not in f.attributes for f in store.list_findings(entity="d0"))


def test_a_report_older_than_the_wave_start_counts_from_the_start(store):
    rid = running(store)
    session = DetectionSession(store=store, source="test")
    session.process(reports((T0 - 600, "d0", NEW)))  # updated out of band before its wave began
    session.record()
    assert devices(store, rid)["d0"] == ("updated", NEW, T0)


# ---------------------------------------------------------------------------- no rollout running


def test_without_a_running_rollout_reports_change_nothing_for_one_query(store):
    def rollout_queries(fn) -> list[str]:
        seen: list[str] = []

        def count(conn, cursor, statement, *args) -> None:
            if "rollout" in statement:
                seen.append(statement)

        event.listen(store.engine, "before_cursor_execute", count)
        try:
            fn()
        finally:
            event.remove(store.engine, "before_cursor_execute", count)
        return seen

    session = DetectionSession(store=store, source="test")
    session.process(reports((T0, "d0", NEW)))
    assert len(rollout_queries(session.record)) == 1  # no rollout at all

    rid = ro.plan_rollout(store, "x200 1.1.0", "Acme", "X200", "1.1.0", canary=1, soak_hours=1)["id"]
    session.process(reports((T0, "d0", NEW), (T0, "d1", OLD)))
    assert len(rollout_queries(session.record)) == 1  # planned, not running
    assert len(rollout_queries(session.record)) == 0  # nothing reported since: nothing asked
    assert set(devices(store, rid).values()) == {("pending", None, None)}
    assert report_entries(store) == [] and session.stats.rollout_updates == 0


# ---------------------------------------------------------------------------- failure and bounds


def test_a_failed_record_keeps_the_reports_for_the_next(store, url, monkeypatch):
    import fleetwarden.store as fw_store

    rid = running(store)
    path = Path(url.removeprefix("sqlite:///"))
    monkeypatch.setattr(fw_store, "SQLITE_BUSY_TIMEOUT_S", 0.2)  # fail fast while the lock is held
    busy = open_store(url)
    try:
        session = DetectionSession(store=busy, source="worker")
        session.process(reports((T0 + 300, "d0", NEW), (T0 + 300, "d1", OLD)))

        with sqlite_held(path), pytest.raises(Exception, match="locked"):  # another process holds the database
            session.record()
        assert devices(store, rid)["d0"] == ("updating", None, None)
        assert report_entries(store) == []

        session.process(reports((T0 + 900, "d0", NEW)))  # a later check-in meanwhile
        session.record()  # the database is back: applied once, as of the first report
        assert devices(store, rid) == {
            "d0": ("updated", NEW, T0 + 300),
            "d1": ("updating", OLD, None),
            "d2": ("pending", None, None),
        }
        assert len(report_entries(store)) == 1
        session.record()
        assert len(report_entries(store)) == 1
    finally:
        busy.close()


def test_the_reports_held_between_records_are_bounded(store):
    rid = running(store)
    session = DetectionSession(store=store, source="test")
    session.max_report_devices = 2
    session.process(reports((T0 + 300, "d0", OLD), (T0 + 300, "d1", NEW), (T0 + 300, "d2", NEW)))
    assert session.stats.reports_dropped == 1  # d2, the third device (device order within a batch)
    session.process(reports((T0 + 400, "d0", NEW)))  # a device already held still moves on
    session.record()
    assert devices(store, rid)["d0"] == ("updated", NEW, T0 + 400)
    assert devices(store, rid)["d1"] == ("updated", NEW, T0 + 300)


def test_held_reports_do_not_depend_on_batching(tmp_path):
    """A device reporting images A, B, A (a rollback, then the update again) is held as of its
    second A whether the reports come in one batch or one by one: the update window starts there."""
    import pyarrow as pa

    def table(rows):
        return pa.table({"device_id": [r[0] for r in rows], "image_sha256": [r[1] for r in rows],
                         "ts": pa.array([r[2] for r in rows], pa.float64())})  # fmt: skip

    reports = [("d0", NEW, T0 + 1), ("d1", OLD, T0 + 1), ("d0", OLD, T0 + 2), ("d0", NEW, T0 + 3),
               ("d1", OLD, T0 + 4)]  # fmt: skip
    st = open_store(f"sqlite:///{tmp_path / 'aba.db'}")
    one, many = DetectionSession(store=st), DetectionSession(store=st)
    one._hold_reports(table(reports))
    for r in reports:
        many._hold_reports(table([r]))
    assert one._reports == many._reports
    assert one._reports["d0"][:2] == (NEW, T0 + 3) and one._reports["d1"][:2] == (OLD, T0 + 1)
    st.close()
