"""Suppression and allowlists: maintenance windows and approved exceptions re-evaluate the open
incidents both ways (close, reopen), expire, refuse bad input, and are audited; on SQLite and
PostgreSQL."""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

from fleetwarden.app import suppression
from fleetwarden.app.inventory import context_from_store
from fleetwarden.app.session import join_stories
from fleetwarden.control.suppression import Rule, SuppressionError, matches, parse_time
from fleetwarden.core.context import DeviceInfo
from fleetwarden.core.findings import Finding
from fleetwarden.store import open_store

T0 = 1_790_000_000.0
C2 = "203.0.113.7"
DEVICES = [
    {"device_id": "cam-1", "ip": "10.0.0.5", "device_class": "ip-camera", "site": "plant-a"},
    {"device_id": "cam-2", "ip": "10.0.0.6", "device_class": "ip-camera", "site": "plant-a"},
    {"device_id": "plc-1", "ip": "10.0.1.9", "device_class": "plc", "site": "plant-b"},
]
_n = itertools.count()


def finding(device, category="c2-beacon", score=0.8, t=T0, detector="beacon", **attrs):
    return Finding(
        entity=device,
        category=category,
        detector=detector,
        score=score,
        first_seen=t,
        last_seen=t + 60,
        evidence=[f"{category} on {device} #{next(_n)}"],
        device_id=device,
        record_ids=[f"C{next(_n)}"],
        attributes=attrs,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        with open_store(f"sqlite:///{tmp_path / 's.db'}") as st:
            st.upsert_devices(DEVICES)
            yield st
        return
    import sqlalchemy as sa

    url = request.getfixturevalue("postgres_url")
    schema = f"fw_supp_{uuid.uuid4().hex[:8]}"
    st = open_store(url, schema=schema)
    try:
        st.upsert_devices(DEVICES)
        yield st
    finally:
        st.close()
        eng = sa.create_engine(url)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


def record(store, found):
    """What DetectionSession.record does: join the stored stories (suppressions applied), save."""
    ctx = context_from_store(store)
    incidents = join_stories(store, found, ctx)
    return store.record_results("test", found, incidents, replace_stories=True)


def open_incidents(store):
    return {(i.entity, i.category): i for i in store.list_incidents(status=("open", "acknowledged"))}


def test_exception_closes_then_lifting_reopens_with_what_came_meanwhile(store):
    record(store, [finding("cam-1", destination=C2), finding("cam-2", destination=C2),
                   finding("cam-1", "scan", 0.5, detector="scan")])  # fmt: skip
    before = open_incidents(store)
    assert set(before) == {("cam-1", "c2-beacon"), ("cam-2", "c2-beacon"), ("cam-1", "scan")}
    c2_id = before[("cam-1", "c2-beacon")].id

    rule, done = suppression.add(
        store,
        {
            "kind": "exception",
            "device_id": "cam-1",
            "category": "c2-beacon",
            "destination": C2,
            "expires_at": "+7d",
            "reason": "vendor cloud, ticket 42",
        },  # fmt: skip
        actor="alice",
    )
    assert done["closed"] == [c2_id]
    closed = store.get_incident(c2_id)
    assert closed.status == "closed"
    assert (
        closed.evidence[-1] == f"closed: suppressed by rule #{rule.id} (exception: vendor cloud, ticket 42)"
    )
    after = open_incidents(store)
    # the other device's C2 is not this exception's; the scan on cam-1 loses its linked C2 step
    assert set(after) == {("cam-2", "c2-beacon"), ("cam-1", "scan")}
    assert after[("cam-1", "scan")].risk < before[("cam-1", "scan")].risk

    # while the exception holds, a new matching finding is stored, marked, and opens nothing
    late = finding("cam-1", destination=C2, t=T0 + 3600, score=0.9)
    summary = record(store, [late])
    assert summary.incidents_opened == 0 and summary.findings_added == 1
    assert late.attributes["suppressed"] == f"rule #{rule.id} (exception: vendor cloud, ticket 42)"
    assert ("cam-1", "c2-beacon") not in open_incidents(store)

    _, done = suppression.remove(store, rule.id, actor="bob")
    assert done["reopened"] == [c2_id]
    reopened = store.get_incident(c2_id)
    assert reopened.status == "open" and reopened.risk >= 90  # the 0.9 finding that came meanwhile counts
    assert len(store.list_findings(incident_id=c2_id)) == 2
    assert {r["state"] for r in suppression.list_rules(store, include_removed=True)} == {"removed"}

    actions = [(e.actor, e.action) for e in store.audit_entries()]
    assert ("alice", "suppression.add") in actions and ("bob", "suppression.remove") in actions
    assert ("suppression", "incident.status") in actions
    assert store.audit_verify()[0]


def test_expiry_reopens_when_the_rules_are_next_read(store):
    record(store, [finding("cam-2", "policy-violation", 0.3, detector="novelty", peer="10.0.0.9")])
    (inc,) = open_incidents(store).values()
    now = time.time()
    rule, done = suppression.add(
        store,
        {
            "kind": "exception",
            "device_class": "IP-Camera",
            "category": "policy-violation",
            "destination": "10.0.0.0/24",
            "expires_at": now + 100,
            "reason": "telnet until the migration",
        },  # fmt: skip
        actor="alice",
        now=now,
    )
    assert done["closed"] == [inc.id]
    assert suppression.list_rules(store, now=now + 50)[0]["state"] == "in force"
    assert store.get_incident(inc.id).status == "closed"
    rows = suppression.list_rules(store, now=now + 200)  # expired: the list applies it first
    assert rows[0]["state"] == "expired"
    assert store.get_incident(inc.id).status == "open"


def test_maintenance_window_per_site_never_hides_tampering(store):
    start = T0 - 600
    record(store, [finding("plc-1", "anomaly", 0.6, detector="telemetry"),
                   finding("plc-1", "firmware-tamper", 0.9, detector="firmware"),
                   finding("plc-1", "anomaly", 0.6, t=T0 + 7200, detector="flowmodel")])  # fmt: skip
    rule, done = suppression.add(
        store,
        {
            "kind": "maintenance",
            "site": "plant-b",
            "starts_at": start,
            "expires_at": T0 + 3600,
            "reason": "PLC reprogramming, change CHG-7",
        },  # fmt: skip
        actor="ops",
        now=T0 + 8000,
    )
    assert done["closed"] == []  # the anomaly after the window still counts; the tampering always does
    opened = open_incidents(store)
    assert set(opened) == {("plc-1", "anomaly"), ("plc-1", "firmware-tamper")}
    assert len(store.list_findings(incident_id=opened[("plc-1", "anomaly")].id)) == 2
    assert "1 findings" not in " ".join(opened[("plc-1", "anomaly")].evidence)
    assert opened[("plc-1", "anomaly")].first_seen == T0 + 7200  # only the finding after the window


def test_matching_is_exact_and_pure():
    f = finding("cam-1", destination="cdn.example.com")
    info = DeviceInfo("cam-1", site="plant-a", device_class="ip-camera")
    rule = Rule(
        1, "exception", expires_at=T0 + 10, reason="r", destination="example.com", category="c2-beacon"
    )
    assert matches(rule, f, info, T0, ["cdn.example.com"])  # a subdomain of the allowed domain
    assert not matches(rule, f, info, T0 + 10, ["cdn.example.com"])  # expired
    assert not matches(rule, f, info, T0, ["cdn.example.org"])
    assert not matches(Rule(2, "exception", T0 + 10, site="plant-b"), f, info, T0)
    assert matches(Rule(3, "exception", T0 + 10, device_class="IP-CAMERA"), f, info, T0)
    assert parse_time("2026-12-24T08:00Z", 0) == 1798099200.0 and parse_time("+2h", 100) == 7300


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "exception", "expires_at": "+1d", "reason": "x"}, "must name a device"),
        ({"kind": "exception", "device_id": "cam-1", "expires_at": "+1d"}, "reason"),
        ({"kind": "exception", "device_id": "cam-1", "reason": "x"}, "expiry"),
        (
            {"kind": "exception", "device_id": "cam-1", "reason": "x", "expires_at": "1999-01-01"},
            "in the past",
        ),
        (
            {"kind": "exception", "destination": "not a host!", "reason": "x", "expires_at": "+1d"},
            "destination",
        ),
        (
            {"kind": "exception", "device_id": "c", "category": "boom", "reason": "x", "expires_at": "+1d"},
            "category",
        ),
        ({"kind": "mute", "device_id": "c", "reason": "x", "expires_at": "+1d"}, "kind"),
        ({"kind": "maintenance", "device_id": "c", "reason": "x", "expires_at": "+1d"}, "start"),
        ({"kind": "exception", "device_id": "c" * 201, "reason": "x", "expires_at": "+1d"}, "at most 200"),
        ({"kind": "exception", "device_id": "c", "reason": "x", "expires_at": "+900d"}, "at most 366 days"),
        ({"kind": "exception", "device_id": "c", "reason": "x", "expires_at": "tomorrow"}, "not a time"),
    ],
)
def test_bad_rules_are_refused_by_name_and_nothing_is_written(store, fields, message):
    with pytest.raises(SuppressionError, match=message):
        suppression.add(store, fields, actor="alice")
    assert suppression.list_rules(store, include_removed=True) == []


def test_cli_add_list_remove(tmp_path):
    from typer.testing import CliRunner

    from fleetwarden.cli import app

    db = f"sqlite:///{tmp_path / 'c.db'}"
    with open_store(db) as st:
        st.upsert_devices(DEVICES)
        record(st, [finding("cam-1", destination=C2)])
    run = CliRunner().invoke
    res = run(app, ["suppress", "add", "exception", "--device", "cam-1", "--destination", C2,
                    "--expires", "+30d", "--reason", "vendor cloud", "--actor", "alice", "--db", db])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "suppression 1 added; 1 closed, 0 reopened, 0 updated, 0 opened incident(s)"
    res = run(app, ["suppress", "list", "--db", db])
    assert res.exit_code == 0 and res.stdout.startswith(
        f"#1  exception  in force  device_id=cam-1 destination={C2}  until 20"
    )
    res = run(app, ["suppress", "remove", "1", "--db", db])
    assert res.exit_code == 0 and "1 reopened" in res.stdout
    bad = run(app, ["suppress", "add", "exception", "--expires", "+1d", "--reason", "x", "--db", db])
    assert (
        bad.exit_code == 2
        and "must name a device" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
    bad = run(app, ["suppress", "remove", "99", "--db", db])
    assert bad.exit_code == 2 and "unknown suppression 99" in bad.stderr
