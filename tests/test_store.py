"""The store against both backends: SQLite (a temporary file) and the local PostgreSQL.

Each PostgreSQL test works in its own schema (``fw_test_<session hex>_<n>``), dropped when
the test ends, so other test runs can share the database.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fleetwarden import config
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.store import MIGRATIONS, TABLES, Store, StoreError, open_store, repository
from fleetwarden.store.models import Base

SESSION_TAG = secrets.token_hex(4)
_schema_counter = itertools.count(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request, tmp_path):
    """Open stores on one fresh database of the requested backend; closes and cleans up."""
    opened: list[Store] = []
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'fw.db'}", None
    else:
        url = request.getfixturevalue("postgres_url")
        schema = f"fw_test_{SESSION_TAG}_{next(_schema_counter)}"

    def factory() -> Store:
        st = open_store(url, schema=schema)
        opened.append(st)
        return st

    factory.backend = request.param  # type: ignore[attr-defined]
    factory.url = url  # type: ignore[attr-defined]
    factory.schema = schema  # type: ignore[attr-defined]
    yield factory
    for st in opened:
        st.close()
    if schema:
        eng = sa.create_engine(url)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


@pytest.fixture
def store(store_factory) -> Store:
    return store_factory()


def _finding(entity: str, i: int, category: str = "scan", **kw) -> Finding:
    return Finding(
        entity=entity,
        category=category,
        detector=kw.pop("detector", "scan-fanout"),
        score=kw.pop("score", 0.5 + i / 100),
        first_seen=1_700_000_000.0 + i,
        last_seen=1_700_000_060.0 + i,
        evidence=[f"{40 + i} distinct hosts on tcp/23 in 60 s vs baseline 1.2"],
        mitre=["T1046"],
        record_ids=[f"C{i}a", f"C{i}b"],
        **kw,
    )


def _incident(entity: str, findings: list[Finding], risk: int = 70, category: str = "scan") -> Incident:
    return Incident(
        entity=entity,
        category=category,
        severity="high",
        risk=risk,
        first_seen=min(f.first_seen for f in findings),
        last_seen=max(f.last_seen for f in findings),
        evidence=[e for f in findings for e in f.evidence],
        mitre=["T1046"],
        ip="10.0.0.7",
        findings=findings,
    )


DEVICES = [
    {
        "device_id": "cam-1",
        "ip": "10.0.0.7",
        "mac": "aa:bb:cc:00:00:01",
        "vendor": "Acme",
        "device_class": "camera",
        "site": "plant-a",
        "first_seen": 100.0,
        "last_seen": 200.0,
        "attributes": {"rack": 3},
    },
    {
        "device_id": "plc-2",
        "ip": "10.0.0.8",
        "vendor": "Siemens",
        "device_class": "plc",
        "lifecycle": "provisioning",
    },
]


# ---------------------------------------------------------------------------- schema


def test_migrations_create_all_tables_matching_the_models(store: Store) -> None:
    insp = sa.inspect(store.engine)
    assert set(insp.get_table_names()) == set(TABLES) | {"alembic_version"}
    with store.engine.connect() as conn:
        # the newest migration: what every store is upgraded to on open
        newest = max(p.name.split("_")[0] for p in (MIGRATIONS / "versions").glob("0*.py"))
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == newest
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        # the comparison is not blind: a model column the migration lacks shows up
        drifted = sa.MetaData()
        for table in Base.metadata.sorted_tables:
            table.to_metadata(drifted)
        drifted.tables["devices"].append_column(sa.Column("hostname", sa.String(100)))
        diff = compare_metadata(ctx, drifted)
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "devices", "hostname")]


def test_reopening_migrates_nothing_and_keeps_data(store_factory) -> None:
    first = store_factory()
    first.upsert_devices(DEVICES)
    second = store_factory()
    assert second.get_device("cam-1") is not None
    assert second.counts()["devices"] == 2


def test_postgres_schema_from_url_options(postgres_url: str) -> None:
    schema = f"fw_test_{SESSION_TAG}_url"
    sep = "&" if "?" in postgres_url else "?"
    st = open_store(f"{postgres_url}{sep}options=-csearch_path%3D{schema}")
    try:
        st.upsert_devices(DEVICES[:1])
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_schema()").scalar() == schema
            n = conn.exec_driver_sql(f'SELECT count(*) FROM "{schema}".devices').scalar()
        assert n == 1
    finally:
        st.close()
        eng = sa.create_engine(postgres_url)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


# ---------------------------------------------------------------------------- inventory


def test_upsert_devices_is_idempotent_and_merges(store: Store) -> None:
    assert store.upsert_devices(DEVICES) == 2
    audit_after_first = store.counts()["audit_entries"]
    before = [d.to_dict() for d in store.list_devices()]
    assert store.upsert_devices(DEVICES) == 0
    assert [d.to_dict() for d in store.list_devices()] == before
    assert store.counts()["audit_entries"] == audit_after_first  # nothing changed, nothing audited

    # a traffic sighting: widens the time span, fills gaps, never erases or demotes
    sighting = {
        "device_id": "cam-1",
        "ip": None,
        "first_seen": 50.0,
        "last_seen": 150.0,
        "discovered": True,
        "firmware_version": "2.1.0",
        "attributes": {"oui": "Acme"},
    }
    assert store.upsert_devices([sighting]) == 1
    cam = store.get_device("cam-1")
    assert cam is not None
    assert (cam.ip, cam.first_seen, cam.last_seen) == ("10.0.0.7", 50.0, 200.0)
    assert cam.discovered is False and cam.firmware_version == "2.1.0"
    assert cam.attributes == {"rack": 3, "oui": "Acme"}
    assert store.get_device("plc-2").lifecycle == "provisioned"  # the pre-0003 name is mapped

    assert store.upsert_devices([{"device_id": "rogue-9", "ip": "10.0.0.99", "discovered": True}]) == 1
    assert [d.device_id for d in store.list_devices(discovered=True)] == ["rogue-9"]
    assert [d.device_id for d in store.list_devices(site="plant-a")] == ["cam-1"]
    # the whole-fleet reads without ORM objects give exactly what to_dict gives, JSON columns included
    for filters in ({}, {"discovered": True}, {"discovered": False}, {"site": "plant-a"}):
        assert store.device_rows(**filters) == [d.to_dict() for d in store.list_devices(**filters)]
    assert store.device_rows(site="plant-a")[0]["attributes"] == {"rack": 3, "oui": "Acme"}

    with pytest.raises(StoreError, match="hostname"):
        store.upsert_devices([{"device_id": "x", "hostname": "cam"}])
    with pytest.raises(StoreError, match="lifecycle"):
        store.upsert_devices([{"device_id": "x", "lifecycle": "broken"}])
    assert store.get_device("x") is None

    q = store.set_device_lifecycle("cam-1", "quarantined", actor="alice", reason="scan incident")
    assert q.lifecycle == "quarantined"
    assert store.audit_entries()[-1].details == {
        "from": "active",
        "to": "quarantined",
        "reason": "scan incident",
    }


# ---------------------------------------------------------------------------- results


def test_record_results_links_and_is_idempotent(store: Store) -> None:
    store.upsert_devices(DEVICES)
    fa = [_finding("cam-1", i) for i in range(3)]
    loose = _finding("10.9.9.9", 7, category="dns-tunnel", detector="dns-entropy", ip="10.9.9.9")
    inc = _incident("cam-1", fa)
    s1 = store.record_results(
        "capture-1.pcap", [*fa, loose], [inc], batches=[("flow", 1200, 1.7e9, 1.7e9 + 90)]
    )
    assert (s1.findings_added, s1.findings_duplicate, s1.incidents_opened) == (4, 0, 1)

    [row] = store.list_incidents()
    assert row.device_id == "cam-1" and row.status == "open" and row.source == "capture-1.pcap"
    assert row.to_contract()["first_seen"] == "2023-11-14T22:13:20Z"
    linked = store.list_findings(incident_id=row.id)
    assert sorted(f.record_ids[0] for f in linked) == ["C0a", "C1a", "C2a"]
    assert all(f.device_id == "cam-1" for f in linked)
    [dns] = store.list_findings(category="dns-tunnel")
    assert dns.device_id is None and dns.incident_id is None and dns.ip == "10.9.9.9"
    [batch] = store.list_ingest_batches()
    assert (batch.kind, batch.records, batch.source) == ("flow", 1200, "capture-1.pcap")

    # the same output again (a replayed message): nothing new but the ingest record
    s2 = store.record_results("capture-1.pcap", [*fa, loose], [inc])
    assert (s2.findings_added, s2.findings_duplicate, s2.incidents_opened, s2.incidents_updated) == (
        0,
        4,
        0,
        0,
    )
    assert s2.incident_ids == [row.id]

    # later evidence for the same open incident extends it instead of opening another
    later = [_finding("cam-1", 50, score=0.95)]
    s3 = store.record_results("capture-2.pcap", [], [_incident("cam-1", later, risk=92)])
    assert (s3.findings_added, s3.incidents_opened, s3.incidents_updated) == (1, 0, 1)
    [row] = store.list_incidents()
    assert row.risk == 92 and row.last_seen == later[0].last_seen and row.first_seen == fa[0].first_seen
    assert len(row.evidence) == 4

    # once closed, new evidence opens a new incident
    store.set_incident_status(row.id, "closed", actor="bob", note="patched")
    store.record_results("capture-3.pcap", [], [_incident("cam-1", [_finding("cam-1", 99)])])
    # highest risk first: the closed one (92) before the new one (70)
    assert [(i.status, i.risk) for i in store.list_incidents(entity="cam-1")] == [
        ("closed", 92),
        ("open", 70),
    ]
    assert len(store.list_incidents(status="open", min_risk=50)) == 1
    assert store.audit_verify() == (True, None)
    actions = [e.action for e in store.audit_entries()]
    assert actions.count("results.record") == 4 and "incident.status" in actions


def test_story_findings_reads_each_incidents_newest_when_bounded(store: Store) -> None:
    """The bounded read of other devices' stories: each open incident's newest N findings, in the
    order they were stored (a window function on SQLite and PostgreSQL alike)."""
    cam, plc = [_finding("cam-1", i) for i in range(6)], [_finding("plc-2", i) for i in range(2)]
    store.record_results("run", [*cam, *plc], [_incident("cam-1", cam), _incident("plc-2", plc)])
    everything = store.story_findings(["cam-1", "plc-2"])
    assert [f.record_ids[0] for f in everything] == [f.record_ids[0] for f in [*cam, *plc]]
    bounded = store.story_findings(["cam-1", "plc-2"], per_incident=3)
    assert [f.record_ids[0] for f in bounded] == [f.record_ids[0] for f in [*cam[-3:], *plc]]


def test_crash_in_database_leaves_nothing(store: Store) -> None:
    store.upsert_devices(DEVICES[:1])
    store.record_results("ok.pcap", [_finding("cam-1", 1)], [])
    before = store.counts()
    good = _incident("cam-1", [_finding("cam-1", 2)])
    bad = _incident("plc-2", [_finding("plc-2", 3)], risk=150)  # violates the risk CHECK constraint
    with pytest.raises(sa.exc.IntegrityError):
        store.record_results(
            "bad.pcap",
            [_finding("10.1.1.1", 4)],
            [good, bad],
            devices=[{"device_id": "new-dev", "discovered": True}, DEVICES[1]],
            batches=[("flow", 10, 1.0, 2.0), ("dns", 5, 1.0, 2.0)],
        )
    assert store.counts() == before
    assert store.get_device("new-dev") is None
    assert store.audit_verify() == (True, None)


def test_crash_half_way_through_findings_leaves_nothing(store: Store, monkeypatch) -> None:
    store.upsert_devices(DEVICES)
    before = store.counts()
    real = repository._finding_row
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("worker killed half-way")
        return real(*args, **kwargs)

    monkeypatch.setattr(repository, "_finding_row", failing)
    findings = [_finding("cam-1", i) for i in range(8)]
    with pytest.raises(RuntimeError, match="half-way"):
        store.record_results(
            "crash.pcap",
            findings,
            [_incident("cam-1", findings[:2])],
            devices=[{"device_id": "seen-1", "discovered": True}],
            batches=[("flow", 99, 0.0, 1.0)],
        )
    assert calls["n"] == 4
    assert store.counts() == before
    monkeypatch.setattr(repository, "_finding_row", real)
    summary = store.record_results("crash.pcap", findings, [_incident("cam-1", findings[:2])])
    assert summary.findings_added == 8 and summary.audit_seq == before["audit_entries"] + 1


# ---------------------------------------------------------------------------- actions and models


def test_action_lifecycle_is_audited(store: Store) -> None:
    store.upsert_devices(DEVICES)
    res = store.record_results("x.pcap", [], [_incident("cam-1", [_finding("cam-1", 1)])])
    act = store.propose_action(
        "quarantine",
        requested_by="policy",
        incident_id=res.incident_ids[0],
        device_id="cam-1",
        details={"vlan": 999},
    )
    assert act.status == "proposed"
    with pytest.raises(StoreError, match="cannot go"):
        store.update_action(act.id, "executed", actor="adapter")
    store.approve_action(act.id, approved_by="alice")
    store.update_action(act.id, "executed", actor="adapter", details={"switch": "sw-1"})
    done = store.update_action(act.id, "reverted", actor="alice")
    assert done.approved_by == "alice" and done.executed_at and done.reverted_at
    assert done.details == {"vlan": 999, "switch": "sw-1"}
    assert [a.id for a in store.list_actions(device_id="cam-1")] == [act.id]
    trail = [e.action for e in store.audit_entries() if e.subject == f"action:{act.id}"]
    assert trail == ["action.propose", "action.approved", "action.executed", "action.reverted"]
    with pytest.raises(StoreError, match="unknown device"):
        store.propose_action("revoke", requested_by="policy", device_id="nope")


def test_record_model(store: Store) -> None:
    store.record_model("flow", "1", "/models/flow-1", {"auc": 0.97, "features": ["bytes", "pkts"]})
    store.record_model("flow", "2", "/models/flow-2", {"auc": 0.98})
    store.record_model("flow", "2", "/models/flow-2b", {"auc": 0.99})
    latest = store.latest_model("flow")
    assert latest is not None and (latest.version, latest.path, latest.meta) == (
        "2",
        "/models/flow-2b",
        {"auc": 0.99},
    )
    assert len(store.list_models()) == 2
    assert store.latest_model("fingerprint") is None


# ---------------------------------------------------------------------------- audit in the database


def _disable_append_only(store: Store, conn) -> None:
    if store.dialect == "postgresql":
        conn.exec_driver_sql("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only")
    else:
        conn.exec_driver_sql("DROP TRIGGER audit_entries_no_update")
        conn.exec_driver_sql("DROP TRIGGER audit_entries_no_delete")


def _audit_five(store: Store) -> None:
    for i in range(5):
        store.audit_append(
            f"user{i}", "test.event", f"thing:{i}", {"i": i, "ratio": i / 3, "tags": ["a", "b"]}
        )
    assert store.audit_verify() == (True, None)


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 3", 3),
        ("DELETE FROM audit_entries WHERE seq = 2", 3),
        # swap the contents of entries 2 and 3, keeping their seq numbers
        (
            "UPDATE audit_entries SET actor = CASE seq WHEN 2 THEN 'user2' ELSE 'user1' END, "
            "subject = CASE seq WHEN 2 THEN 'thing:2' ELSE 'thing:1' END WHERE seq IN (2, 3)",
            2,
        ),
        ("UPDATE audit_entries SET ts = ts + 1 WHERE seq = 5", 5),
    ],
    ids=["edit", "delete", "reorder", "edit-last"],
)
def test_audit_chain_detects_raw_sql_tampering(store: Store, tamper: str, first_bad: int) -> None:
    _audit_five(store)
    head = store.audit_head()
    assert head is not None and head[0] == 5
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 3")
    with store.engine.begin() as conn:
        _disable_append_only(store, conn)
        conn.exec_driver_sql(tamper)
    assert store.audit_verify() == (False, first_bad)


def test_audit_truncation_is_caught_with_an_anchor(store: Store) -> None:
    _audit_five(store)
    head = store.audit_head()
    with store.engine.begin() as conn:
        _disable_append_only(store, conn)
        conn.exec_driver_sql("DELETE FROM audit_entries WHERE seq >= 4")
    assert store.audit_verify() == (True, None)  # the documented blind spot...
    assert store.audit_verify(anchor=head) == (False, 5)  # ...closed by an external anchor


def test_failed_transaction_appends_no_audit_entry(store: Store) -> None:
    _audit_five(store)
    with pytest.raises(StoreError):
        store.set_incident_status(12345, "closed", actor="alice")
    assert store.audit_head()[0] == 5 and store.audit_verify() == (True, None)


# ---------------------------------------------------------------------------- SQLite specifics


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    st = open_store(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        with pytest.raises(sa.exc.IntegrityError), st.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO actions (device_id, kind, status, requested_by, requested_at, updated_at, "
                "details) VALUES ('no-such-device', 'alert', 'proposed', 'x', 0, 0, '{}')"
            )
    finally:
        st.close()
    assert (tmp_path / "wal.db-wal").exists() or (tmp_path / "wal.db").exists()


def test_concurrent_writers_and_reader(store_factory) -> None:
    # three stores = three engines, as three processes would have (SQLite: WAL + BEGIN IMMEDIATE;
    # PostgreSQL: the audit table lock keeps the chain linear)
    stores = [store_factory() for _ in range(3)]
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()
    rounds = 15

    def writer(st: Store, w: int) -> None:
        try:
            for i in range(rounds):
                fs = [_finding(f"10.0.{w}.{i}", i * 10 + k) for k in range(5)]
                st.record_results(
                    f"w{w}-{i}", fs, [_incident(f"10.0.{w}.{i}", fs[:2])], batches=[("flow", 100, 0.0, 1.0)]
                )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def reader(st: Store) -> None:
        try:
            while not done.is_set():
                seen.append(st.counts()["findings"])
                st.list_incidents(limit=5)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(stores[w], w)) for w in range(2)]
    rd = threading.Thread(target=reader, args=(stores[2],))
    rd.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    done.set()
    rd.join(timeout=30)
    assert errors == []
    final = stores[2].counts()
    assert final["findings"] == 2 * rounds * 5
    assert final["incidents"] == 2 * rounds
    assert final["audit_entries"] == 2 * rounds
    assert seen and seen == sorted(seen)  # the reader saw whole transactions, in order
    assert all(n % 5 == 0 for n in seen)  # ...never half of one
    assert stores[0].audit_verify() == (True, None)


# ---------------------------------------------------------------------------- settings


def test_database_url_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETWARDEN_HOME", str(tmp_path / "home"))
    assert config.home() == tmp_path / "home" and (tmp_path / "home").is_dir()
    assert config.database_url() == f"sqlite:///{tmp_path / 'home' / 'fleetwarden.db'}"
    monkeypatch.setenv("FLEETWARDEN_DB", "postgresql://fw@db:5432/fleet")
    assert config.database_url() == "postgresql+psycopg://fw@db:5432/fleet"
    assert config.database_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert config.database_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert config.database_url(str(tmp_path / "f.db")) == f"sqlite:///{tmp_path / 'f.db'}"


def test_default_store_lives_in_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEETWARDEN_HOME", str(tmp_path / "fwhome"))
    st = open_store()
    try:
        st.upsert_devices(DEVICES[:1])
    finally:
        st.close()
    assert (tmp_path / "fwhome" / "fleetwarden.db").exists()


def test_unsupported_database_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="unsupported database"):
        open_store("mysql://u@h/d")
