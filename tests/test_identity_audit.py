"""Identity audit: the pure checks on rows, and ``fleetwarden identity audit`` on a real store
with certificates issued by ``fleetwarden ca`` and operators added by ``fleetwarden users``."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fleetwarden.control.identity_audit import audit_identity

DAY = 86_400.0
NOW = 1_800_000_000.0
runner = CliRunner()


def _cert(device, fp, *, status="active", key_type="ecdsa-p256", size=256, age=10, left=300, revoked_at=None):
    return {
        "device_id": device, "fingerprint": fp, "status": status, "key_type": key_type, "key_size": size,
        "not_before": NOW - age * DAY, "not_after": NOW + left * DAY, "revoked_at": revoked_at,
    }  # fmt: skip


def _login(user, ip, cid, ts):
    return {"action": "login", "success": True, "user": user, "src_ip": ip, "client_id": cid, "ts": ts}


def _by_check(checks):
    return {c.check: c for c in checks}


def test_each_check_finds_what_it_names_and_nothing_on_a_clean_fleet():
    clean = audit_identity([_cert("d1", "a"), _cert("d2", "b")], [{"device_id": "d1"}], [], [], now=NOW)
    assert clean == []
    certs = [
        _cert("d1", "same"), _cert("d2", "same"),
        _cert("d3", "c", left=10), _cert("d4", "d", age=400), _cert("d5", "e", key_type="rsa", size=1024),
        _cert("d6", "f", status="revoked", revoked_at=NOW - 100),
    ]  # fmt: skip
    devices = [
        {"device_id": "d7", "attributes": {"default_credentials": True}},
        {"device_id": "d8", "attributes": {"credential_id": "k1"}},
        {"device_id": "d9", "attributes": {"credential_id": "k1"}},
    ]
    operators = [
        {"name": "alice", "role": "admin", "created_at": NOW - 200 * DAY, "last_used_at": NOW - DAY},
        {"name": "bob", "role": "admin", "created_at": NOW - 200 * DAY, "last_used_at": None},
        {"name": "carol", "role": "admin", "created_at": NOW - 5 * DAY, "last_used_at": NOW},
        {"name": "svc-export", "role": "operator", "created_at": NOW},
        {"name": "old", "role": "admin", "disabled": True, "created_at": 0},
    ]
    connections = [
        _login("d1", "10.0.0.1", "d1-a", NOW - 50), _login("d1", "10.0.0.2", "d1-b", NOW - 40),
        _login("d6", "10.0.0.6", "d6", NOW - 10),
        _login("d2", "10.0.0.3", "shared-id", NOW - 30), _login("d4", "10.0.0.4", "shared-id", NOW - 20),
        _login("admin", "10.0.0.9", "x", NOW - 5),
    ]  # fmt: skip
    got = _by_check(audit_identity(certs, devices, operators, connections, now=NOW))
    assert set(got["CERTIFICATE_SHARED"].entities) == {"d1", "d2"}
    assert got["CERTIFICATE_SEEN_TWICE"].entities == ["d1"]
    assert got["CONFLICTING_CLIENT_IDS"].entities == ["shared-id"]
    assert got["REVOKED_STILL_CONNECTING"].entities == ["d6"]
    assert got["CERTIFICATE_EXPIRING"].entities == ["d3"]
    assert got["CERTIFICATE_AGED"].entities == ["d4"]
    assert got["WEAK_KEY"].entities == ["d5"]
    assert set(got["DEFAULT_CREDENTIALS"].entities) == {"d7", "admin@10.0.0.9"}
    assert set(got["SHARED_CREDENTIALS"].entities) == {"d8", "d9"}
    assert set(got["OPERATOR_TOO_MANY_ADMINS"].entities) == {"alice", "bob", "carol"}
    assert got["OPERATOR_ADMIN_UNUSED"].entities == ["bob"]
    assert got["OPERATOR_SERVICE_PRIVILEGED"].entities == ["svc-export"]
    for c in got.values():
        assert c.severity in ("critical", "high", "medium", "low") and c.fix and c.found


def test_sequential_sessions_from_two_addresses_are_not_a_clone():
    conns = [
        _login("d1", "10.0.0.1", "d1", 100),
        {"action": "disconnect", "success": True, "user": "d1", "client_id": "d1", "ts": 200},
        _login("d1", "10.0.0.2", "d1", 300),
    ]
    assert "CERTIFICATE_SEEN_TWICE" not in _by_check(audit_identity([], [], [], conns, now=NOW))


def test_cli_audit_on_a_real_store(tmp_path, monkeypatch):
    from fleetwarden.cli import app

    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", "correct horse battery staple")
    for args in (["ca", "init"], ["ca", "issue", "dev-1", "--out-dir", str(tmp_path)],
                 ["users", "add", "svc-sync", "--role", "admin"]):  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["identity", "audit", "--json"])
    assert r.exit_code == 0, r.output
    checks = {c["check"]: c for c in json.loads(r.output)["checks"]}
    assert checks["OPERATOR_SERVICE_PRIVILEGED"]["entities"] == ["svc-sync"]
    assert "token" not in r.output.lower() or "fwt_" not in r.output
    r = runner.invoke(app, ["identity", "audit"])
    assert r.exit_code == 0 and "OPERATOR_SERVICE_PRIVILEGED" in r.output
    r = runner.invoke(app, ["identity", "audit", "--broker-log", str(tmp_path / "missing.log")])
    assert r.exit_code == 2


def test_audit_findings_map_each_device_check_to_one_finding():
    from fleetwarden.app.identity_audit import audit_findings

    certs = [_cert("d1", "same"), _cert("d2", "same"), _cert("d5", "e", key_type="rsa", size=1024)]
    operators = [{"name": "svc-x", "role": "admin", "created_at": NOW}]
    conns = [_login("admin", "10.0.0.9", "x", NOW - 5)]
    checks = audit_identity(certs, [], operators, conns, now=NOW)
    found = audit_findings(checks, [], [c["device_id"] for c in certs], now=NOW)
    got = {(f.entity, f.detector): f for f in found}
    assert set(got) == {
        ("d1", "identity.audit.CERTIFICATE_SHARED"),
        ("d2", "identity.audit.CERTIFICATE_SHARED"),
        ("d5", "identity.audit.WEAK_KEY"),
    }  # fmt: skip  (the operator and the default login "admin@10.0.0.9" name no device)
    shared = got[("d1", "identity.audit.CERTIFICATE_SHARED")]
    assert shared.category == "cloned-device" and shared.score == 0.95 and shared.device_id == "d1"
    assert shared.evidence[0].startswith("one certificate") and "revoke" in shared.evidence[1]
    weak = got[("d5", "identity.audit.WEAK_KEY")]
    assert weak.category == "policy-violation" and weak.score == 0.8


def test_cli_audit_record_opens_an_incident_per_device_once(tmp_path):
    from fleetwarden.cli import app
    from fleetwarden.store import open_store

    db = f"sqlite:///{tmp_path / 'fw.db'}"
    store = open_store(db)
    # one credential (a client certificate and key copied between devices) on two devices
    store.upsert_devices(
        [{"device_id": d, "ip": ip, "attributes": {"credential_id": "cert-7f3a"}}
         for d, ip in (("cam-1", "10.1.0.1"), ("cam-2", "10.1.0.2"))]
        + [{"device_id": "plc-1", "ip": "10.1.0.3"}],
        actor="test",
    )  # fmt: skip
    r = runner.invoke(app, ["identity", "audit", "--record", "--json", "--db", db])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["recorded"]["findings_added"] == 2
    incidents = {i.entity: i for i in store.list_incidents()}
    assert set(incidents) == {"cam-1", "cam-2"}
    for inc in incidents.values():
        assert inc.category == "credential-misuse" and inc.risk > 0 and inc.source == "identity-audit"
        assert any("one credential configured on several devices" in e for e in inc.evidence)
    before = (len(store.list_incidents()), len(store.list_findings()))
    r = runner.invoke(app, ["identity", "audit", "--record", "--db", db])
    assert r.exit_code == 0 and "Recorded 0 findings" in r.output, r.output
    assert (len(store.list_incidents()), len(store.list_findings())) == before
    assert {i.entity: i.risk for i in store.list_incidents()} == {e: i.risk for e, i in incidents.items()}
    store.close()
