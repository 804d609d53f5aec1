"""The REST API against a real SQLite store: roles matrix, sessions and CSRF, validation, pagination,
the response workflow, ingestion, and that no response leaks a secret."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from api_client import T0, auth, seed_incident
from fleetwarden.api import close_app, create_app
from fleetwarden.app import identity

# ---------------------------------------------------------------------------------- authentication


def test_unauthenticated_and_bad_tokens_are_401_with_a_reason(api):
    for path in ("/api/v1/devices", "/api/v1/incidents", "/api/v1/audit", "/metrics"):
        r = api.get(path)
        assert r.status_code == 401 and "authentication required" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    assert api.get("/api/v1/devices", headers={"Authorization": "Bearer fwt_nope"}).status_code == 401
    assert api.get("/api/v1/devices", headers={"Authorization": "Basic abc"}).status_code == 401
    assert api.post("/api/v1/events", json={"events": []}).status_code == 401


def test_disabled_user_is_refused(api):
    identity.disable_user(api.store, "viewer-user")
    r = api.get("/api/v1/devices", headers=auth(api, "viewer"))
    assert r.status_code == 401 and "disabled" in r.json()["detail"]


def test_roles_matrix(api):
    inc = seed_incident(api.store)
    act = api.post(f"/api/v1/incidents/{inc}/actions", headers=auth(api, "operator")).json()
    assert act, "the policy proposes at least one action for a critical beacon"
    aid = act[0]["id"]
    reads = ["/api/v1/devices", "/api/v1/incidents", f"/api/v1/incidents/{inc}", "/api/v1/findings",
             "/api/v1/actions", "/api/v1/audit", "/api/v1/audit/verify", "/api/v1/metrics", "/metrics"]  # fmt: skip
    for role in ("admin", "operator", "analyst", "viewer"):
        for path in reads:
            assert api.get(path, headers=auth(api, role)).status_code == 200, (role, path)
    for path in reads:  # service: ingestion only
        r = api.get(path, headers=auth(api, "service"))
        assert r.status_code == 403 and "service" in r.json()["detail"], path
    for role in ("viewer", "analyst", "service"):
        r = api.post(f"/api/v1/actions/{aid}/approve", headers=auth(api, role))
        assert r.status_code == 403 and role in r.json()["detail"]
        r = api.put("/api/v1/devices/x-1", json={"device_id": "x-1"}, headers=auth(api, role))
        assert r.status_code == 403
    for role in ("viewer", "operator", "service"):
        r = api.post(f"/api/v1/incidents/{inc}/verdict", json={"verdict": "true-positive", "reason": "seen"},
                     headers=auth(api, role))  # fmt: skip
        assert r.status_code == 403, role
    for role in ("viewer", "analyst", "operator"):
        r = api.post("/api/v1/events", json={"events": []}, headers=auth(api, role))
        assert r.status_code == 403, role
    assert api.post("/api/v1/events", json={"events": []}, headers=auth(api, "service")).status_code == 200


# ---------------------------------------------------------------------------------- devices


def test_device_create_update_filter_page_and_lifecycle_are_audited(api):
    op = auth(api, "operator")
    for i in range(7):
        site = "north" if i % 2 else "south"
        r = api.put(f"/api/v1/devices/dev-{i}", json={"device_id": f"dev-{i}", "site": site, "ip": f"10.0.0.{i + 1}"},
                    headers=op)  # fmt: skip
        assert r.status_code == 200 and r.json()["site"] == site
    r = api.get("/api/v1/devices", params={"site": "north", "limit": 2}, headers=auth(api, "viewer")).json()
    assert [d["device_id"] for d in r["items"]] == ["dev-1", "dev-3"] and r["total"] == 3 and r["next_offset"] == 2
    r = api.get("/api/v1/devices", params={"site": "north", "limit": 2, "offset": 2}, headers=auth(api, "viewer"))
    assert [d["device_id"] for d in r.json()["items"]] == ["dev-5"] and r.json()["next_offset"] is None
    r = api.post("/api/v1/devices/dev-1/lifecycle", json={"lifecycle": "retired", "reason": "replaced"}, headers=op)
    assert r.status_code == 200 and r.json()["lifecycle"] == "retired"
    assert api.get("/api/v1/devices/dev-1", headers=op).json()["lifecycle"] == "retired"
    entries = api.get("/api/v1/audit", params={"limit": 500}, headers=op).json()["items"]
    life = [e for e in entries if e["action"] == "device.lifecycle"]
    assert life and life[-1]["actor"] == "operator-user" and life[-1]["details"]["reason"] == "replaced"
    assert any(e["action"] == "devices.upsert" and e["actor"] == "operator-user" for e in entries)


def test_validation_errors_are_clear_4xx(api):
    op = auth(api, "operator")
    r = api.get("/api/v1/devices", params={"limit": 501}, headers=op)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    r = api.put("/api/v1/devices/d1", json={"device_id": "d1", "ip": "not-an-ip"}, headers=op)
    assert r.status_code == 400 and "ip" in r.json()["detail"]
    r = api.put("/api/v1/devices/d1", json={"device_id": "d1", "password": "x"}, headers=op)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "password"]
    r = api.put("/api/v1/devices/d1", json={"device_id": "d2"}, headers=op)
    assert r.status_code == 422 and "differs" in r.json()["detail"]
    r = api.get("/api/v1/devices/nope", headers=op)
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = api.post("/api/v1/devices/nope/lifecycle", json={"lifecycle": "retired"}, headers=op)
    assert r.status_code == 404
    assert api.get("/api/v1/incidents/0", headers=op).status_code == 422
    assert api.get("/api/v1/incidents/999", headers=op).status_code == 404


# ---------------------------------------------------------------------------------- incidents and actions


def test_incident_list_view_verdict_and_status(api):
    a = seed_incident(api.store, "cam-1", risk=92)
    b = seed_incident(api.store, "cam-2", risk=40)
    v = auth(api, "viewer")
    r = api.get("/api/v1/incidents", params={"limit": 1}, headers=v).json()
    assert [i["id"] for i in r["items"]] == [a] and r["next_offset"] == 1
    r = api.get("/api/v1/incidents", params={"min_risk": 50}, headers=v).json()
    assert [i["id"] for i in r["items"]] == [a] and r["next_offset"] is None
    view = api.get(f"/api/v1/incidents/{b}", headers=v).json()
    assert view["incident"]["id"] == b and view["story"][0]["detector"] == "beacon"
    assert view["playbook"] and view["device"]["device_id"] == "cam-2"
    r = api.post(f"/api/v1/incidents/{a}/verdict", json={"verdict": "false-positive", "reason": "lab test"},
                 headers=auth(api, "analyst"))  # fmt: skip
    assert r.status_code == 200 and r.json()["analyst"] == "analyst-user"
    r = api.post(f"/api/v1/incidents/{a}/verdict", json={"verdict": "maybe", "reason": "x"}, headers=auth(api, "analyst"))
    assert r.status_code == 422
    r = api.post(f"/api/v1/incidents/{a}/status", json={"status": "closed"}, headers=auth(api, "analyst"))
    assert r.status_code == 200 and r.json()["status"] == "closed"
    findings = api.get("/api/v1/findings", params={"incident_id": b}, headers=v).json()["items"]
    assert [f["entity"] for f in findings] == ["cam-2"]


def test_action_workflow_approve_deny_execute_rollback(api):
    inc = seed_incident(api.store)
    rows = api.post(f"/api/v1/incidents/{inc}/actions", headers=auth(api, "admin")).json()
    ids = [r["id"] for r in rows]
    listed = api.get("/api/v1/actions", params={"status": "proposed"}, headers=auth(api, "viewer")).json()
    assert sorted(a["id"] for a in listed["items"]) == sorted(ids)
    r = api.post(f"/api/v1/actions/{ids[0]}/approve", headers=auth(api, "operator"))
    assert r.status_code == 200 and r.json()["approved_by"] == "operator-user"
    if len(ids) > 1:
        r = api.post(f"/api/v1/actions/{ids[1]}/deny", json={"note": "not now"}, headers=auth(api, "operator"))
        assert r.status_code == 200 and r.json()["status"] == "rejected"
    r = api.post(f"/api/v1/actions/{ids[0]}/rollback", headers=auth(api, "operator"))
    assert r.status_code == 400 and "only executed actions roll back" in r.json()["detail"]
    r = api.post("/api/v1/actions/999/approve", headers=auth(api, "operator"))
    assert r.status_code == 404 and "unknown action" in r.json()["detail"]
    audit = api.get("/api/v1/audit", params={"limit": 500}, headers=auth(api, "admin")).json()["items"]
    assert any(e["actor"] == "operator-user" and "approve" in e["action"] for e in audit)


# ---------------------------------------------------------------------------------- sessions and CSRF


def test_cookie_session_flags_csrf_and_sign_out(api):
    r = api.post("/api/v1/session", json={"token": api.tokens["operator"]})
    assert r.status_code == 200 and r.json()["role"] == "operator"
    csrf = r.json()["csrf_token"]
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("fw_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Secure" not in session
    assert api.tokens["operator"] not in " ".join(cookies)
    assert api.get("/api/v1/devices").status_code == 200  # the cookie authenticates reads
    body = {"device_id": "c-1"}
    r = api.put("/api/v1/devices/c-1", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = api.put("/api/v1/devices/c-1", json=body, headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403
    r = api.put("/api/v1/devices/c-1", json=body, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    r = api.put("/api/v1/devices/c-1", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    stolen = api.cookies.get("fw_session")
    assert api.request("DELETE", "/api/v1/session", headers={"X-CSRF-Token": csrf}).status_code == 200
    api.cookies.clear()
    r = api.get("/api/v1/devices", cookies={"fw_session": stolen})
    assert r.status_code == 401  # a signed-out session stays dead
    tampered = ("B" if stolen[0] == "A" else "A") + stolen[1:]
    assert api.get("/api/v1/devices", cookies={"fw_session": tampered}).status_code == 401
    assert api.post("/api/v1/session", json={"token": "fwt_wrong"}).status_code == 401


def test_session_cookie_is_secure_over_https(tmp_path):
    app = create_app(f"sqlite:///{tmp_path / 's.db'}")
    token = identity.add_user(app.state.store, "v", "viewer")[1]
    client = TestClient(app, base_url="https://testserver")
    r = client.post("/api/v1/session", json={"token": token})
    assert "Secure" in next(c for c in r.headers.get_list("set-cookie") if c.startswith("fw_session="))
    close_app(app)


# ---------------------------------------------------------------------------------- secrets


def test_no_response_or_log_leaks_a_secret(api, caplog):
    seed_incident(api.store)
    secrets = list(api.tokens.values())
    caplog.set_level("DEBUG")
    bodies = []
    for path in ("/api/v1/devices", "/api/v1/incidents", "/api/v1/audit", "/api/v1/findings", "/api/v1/actions",
                 "/api/v1/metrics", "/metrics", "/openapi.json"):  # fmt: skip
        bodies.append(api.get(path, headers=auth(api, "admin")).text)
    bodies.append(api.post("/api/v1/session", json={"token": api.tokens["viewer"]}).text)
    text = "\n".join(bodies) + caplog.text
    for token in secrets:
        assert token not in text
        assert identity._token_hash(token) not in text
    assert "token_hash" not in text and "PRIVATE KEY" not in text


def test_openapi_lists_every_router(api):
    paths = api.get("/openapi.json").json()["paths"]
    for p in ("/api/v1/devices", "/api/v1/incidents/{incident_id}", "/api/v1/actions/{action_id}/approve",
              "/api/v1/actions/{action_id}/deny", "/api/v1/actions/{action_id}/execute",
              "/api/v1/actions/{action_id}/rollback", "/api/v1/findings", "/api/v1/audit/verify",
              "/api/v1/metrics", "/metrics", "/api/v1/session"):  # fmt: skip
        assert p in paths, p
    assert json.dumps(paths)


# ---------------------------------------------------------------------------------- ingestion


def _telemetry(n: int, device: str = "gw-dev") -> list[dict]:
    return [{"kind": "telemetry", "ts": T0 + i, "metric": "temperature", "value": 20.0 + i, "device_id": device}
            for i in range(n)]  # fmt: skip


def test_ingest_counts_records_and_validates(api):
    svc = auth(api, "service")
    flows = [{"kind": "flow", "ts": T0 + i, "id.orig_h": "10.9.0.5", "id.resp_h": "198.51.100.9",
              "id.orig_p": 40000 + i, "id.resp_p": 443, "proto": "tcp", "duration": 0.2, "orig_bytes": 300, "resp_bytes": 200,
              "orig_pkts": 3, "resp_pkts": 2} for i in range(0, 1200, 60)]  # fmt: skip
    r = api.post("/api/v1/events", json={"events": _telemetry(3) + flows}, headers=svc)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 23 and body["by_kind"] == {"telemetry": 3, "flow": 20}
    assert isinstance(body["findings"], list) and isinstance(body["incidents"], int)
    recorded = {b.kind: b.records for b in api.store.list_ingest_batches()}
    assert recorded == {"telemetry": 3, "flow": 20}
    # a bad event refuses the whole batch and names it
    bad = _telemetry(2) + [{"kind": "telemetry", "ts": "yesterday", "metric": "t", "value": 1}]
    r = api.post("/api/v1/events", json={"events": bad}, headers=svc)
    assert r.status_code == 400 and "event 2" in r.json()["detail"] and "ts" in r.json()["detail"]
    r = api.post("/api/v1/events", json={"events": [{"kind": "nonsense", "ts": T0}]}, headers=svc)
    assert r.status_code == 400 and "unknown kind" in r.json()["detail"]
    assert sum(b.records for b in api.store.list_ingest_batches()) == 23  # nothing of the refused ones
    # bounded batch size (the app was made with max_batch=50)
    r = api.post("/api/v1/events", json={"events": _telemetry(51)}, headers=svc)
    assert r.status_code == 400 and "at most 50" in r.json()["detail"]
    r = api.post("/api/v1/events", json={"events": "nope"}, headers=svc)
    assert r.status_code == 422


# ---------------------------------------------------------------------------------- the other routers


def test_other_routers_read_and_certificate_revocation(api, tmp_path):
    seed_incident(api.store)
    identity.ca_init(api.store)
    identity.issue(api.store, "cam-1", out_dir=tmp_path / "certs")
    v = auth(api, "viewer")
    for path in ("/api/v1/vendors", "/api/v1/certificates", "/api/v1/onboarding/enrolments", "/api/v1/firmware/images",
                 "/api/v1/firmware/compliance", "/api/v1/firmware/priority", "/api/v1/rollouts",
                 "/api/v1/policies/response", "/api/v1/policies/response/dry-run", "/api/v1/playbooks"):  # fmt: skip
        assert api.get(path, headers=v).status_code == 200, path
    certs = api.get("/api/v1/certificates", params={"device_id": "cam-1"}, headers=v).json()["items"]
    assert [c["status"] for c in certs] == ["active"] and "pem" not in certs[0]
    dry = api.get("/api/v1/policies/response/dry-run", headers=v).json()
    assert dry["incidents"] and dry["incidents"][0]["device"] == "cam-1"
    assert api.get("/api/v1/policies/response", headers=v).json()["rules"]
    assert api.get("/api/v1/rollouts/5", headers=v).status_code in (400, 404)
    assert api.post("/api/v1/certificates/cam-1/revoke", headers=v).status_code == 403
    r = api.post("/api/v1/certificates/cam-1/revoke", json={"reason": "key-compromise"}, headers=auth(api, "operator"))
    assert r.status_code == 200 and r.json()["revoked"] == [certs[0]["serial"]]
    assert api.get("/api/v1/certificates", params={"status": "revoked"}, headers=v).json()["total"] == 1
    r = api.post("/api/v1/certificates/cam-1/revoke", headers=auth(api, "operator"))
    assert r.status_code == 400 and "no active certificate" in r.json()["detail"]
    r = api.post("/api/v1/onboarding/nonce", headers=auth(api, "service"))
    assert r.status_code == 200 and len(r.json()["nonce"]) >= 16
    r = api.post("/api/v1/onboarding/requests", json={"device_id": "x"}, headers=auth(api, "service"))
    assert 400 <= r.status_code < 500
    text = api.get("/api/v1/certificates", headers=v).text + api.get("/api/v1/audit", headers=v).text
    assert "PRIVATE KEY" not in text and "passphrase" not in text.lower().replace("ca-passphrase", "")
