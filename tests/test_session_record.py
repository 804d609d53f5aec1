"""A failed write of a session's results loses nothing: the findings and sightings stay pending and
the next record() stores them once (the database was busy, restarting, briefly unreachable)."""

from __future__ import annotations

import pytest

from conftest import sqlite_held
from fleetwarden.app.session import DetectionSession
from fleetwarden.control.inventory import context_from_rows
from fleetwarden.simulate import simulate_fleet
from fleetwarden.store import open_store


@pytest.fixture(scope="module")
def fleet():
    return simulate_fleet(devices=24, hours=1, seed=4, scenarios=["mirai-camera"])


def _rows(store):
    findings = store.list_findings()
    return (
        sorted((f.entity, f.category, f.detector, f.first_seen, tuple(f.evidence)) for f in findings),
        sorted((i.entity, i.category, i.severity) for i in store.list_incidents()),
        sorted(d.device_id for d in store.list_devices()),
    )


def test_a_record_that_fails_keeps_its_findings_and_sightings_for_the_next(fleet, tmp_path, monkeypatch):
    import fleetwarden.store as fw_store

    # the reference: one session recording once into a store nobody else holds
    ref_store = open_store(f"sqlite:///{tmp_path / 'ref.db'}")
    ref = DetectionSession(ctx=context_from_rows(fleet.inventory), store=ref_store, source="sim")
    ref.run(fleet.iter_batches(seconds=600))
    ref.record()
    expected = _rows(ref_store)
    ref_store.close()
    assert expected[0] and expected[1], "the scenario should give findings and incidents"
    assert expected[2], "the traffic should show devices (passive discovery)"

    path = tmp_path / "busy.db"
    monkeypatch.setattr(fw_store, "SQLITE_BUSY_TIMEOUT_S", 0.2)  # fail fast while the lock is held
    store = open_store(f"sqlite:///{path}")
    session = DetectionSession(ctx=context_from_rows(fleet.inventory), store=store, source="sim")
    session.run(fleet.iter_batches(seconds=600))
    pending = len(session._unrecorded)
    assert pending == len(expected[0])

    # another process holds the database: the write fails, a real "database is locked"
    with sqlite_held(path), pytest.raises(Exception, match="locked"):
        session.record()
    assert len(session._unrecorded) == pending  # nothing lost
    assert _rows(store) == ([], [], [])

    session.record()  # the database is back: everything once, as the uninterrupted run stored it
    assert _rows(store) == expected
    assert session._unrecorded == []
    session.record()  # and nothing again
    assert _rows(store) == expected
    store.close()
