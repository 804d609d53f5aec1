"""The suppressions endpoints against a real SQLite store: roles, validation, and that adding and
lifting a rule re-evaluates incidents (closed, then reopened) under the calling user's name."""

from __future__ import annotations

import time

from api_client import auth, seed_incident

URL = "/api/v1/suppressions"


def _seed_incident(store, device_id: str = "cam-1") -> int:
    return seed_incident(store, device_id, t0=time.time() - 3600)


def _status(client, incident_id: int) -> str:
    return client.get(f"/api/v1/incidents/{incident_id}", headers=auth(client, "viewer")).json()["incident"][
        "status"
    ]


def test_analyst_adds_lists_and_removes_and_incidents_follow(api):
    inc = _seed_incident(api.store)
    an = auth(api, "analyst")
    body = {"kind": "exception", "reason": "vendor cloud, approved", "expires": "+2h", "device_id": "cam-1"}
    r = api.post(URL, json=body, headers=an)
    assert r.status_code == 200, r.text
    out = r.json()
    rid = out["suppression"]["id"]
    assert out["incidents"]["closed"] == [inc] and out["suppression"]["created_by"] == "analyst-user"
    assert _status(api, inc) == "closed"
    rows = api.get(URL, headers=auth(api, "viewer")).json()
    assert [(x["id"], x["state"]) for x in rows] == [(rid, "in force")]
    r = api.delete(f"{URL}/{rid}", headers=an)
    assert r.status_code == 200, r.text
    assert (
        r.json()["incidents"]["reopened"] == [inc] and r.json()["suppression"]["removed_by"] == "analyst-user"
    )
    assert _status(api, inc) != "closed"
    assert api.get(URL, headers=an).json() == []
    removed = api.get(URL, params={"include_removed": True}, headers=an).json()
    assert [x["state"] for x in removed] == ["removed"]
    r = api.delete(f"{URL}/{rid}", headers=an)
    assert r.status_code == 400 and "already removed" in r.json()["detail"]
    audit = api.get("/api/v1/audit", params={"limit": 500}, headers=auth(api, "admin")).json()["items"]
    assert {e["action"] for e in audit if e["actor"] == "analyst-user"} >= {
        "suppression.add",
        "suppression.remove",
    }


def test_roles(api):
    body = {"kind": "exception", "reason": "r", "expires": "+2h", "site": "north"}
    for role in ("viewer", "operator", "service"):
        assert api.post(URL, json=body, headers=auth(api, role)).status_code == 403, role
        assert api.delete(f"{URL}/1", headers=auth(api, role)).status_code == 403, role
    assert api.get(URL, headers=auth(api, "service")).status_code == 403
    for role in ("admin", "operator", "analyst", "viewer"):
        assert api.get(URL, headers=auth(api, role)).status_code == 200, role
    assert api.post(URL, json=body, headers=auth(api, "admin")).status_code == 200


def test_unauthenticated_is_401(api):
    for r in (api.get(URL), api.post(URL, json={}), api.delete(f"{URL}/1")):
        assert r.status_code == 401 and "authentication required" in r.json()["detail"]


def test_bad_bodies_are_422_or_400(api):
    an = auth(api, "analyst")
    ok = {"kind": "exception", "reason": "r", "expires": "+2h", "device_id": "cam-1"}
    for bad in ({**ok, "kind": "forever"}, {**ok, "reason": ""}, {**ok, "site": "x" * 201}, {**ok, "extra": 1},
                {k: v for k, v in ok.items() if k != "expires"}):  # fmt: skip
        assert api.post(URL, json=bad, headers=an).status_code == 422, bad
    for bad, says in (({**ok, "device_id": None}, "must name"), ({**ok, "expires": "whenever"}, "expires"),
                      ({**ok, "kind": "maintenance"}, "start"), ({**ok, "destination": "not a host!"}, "destination"),
                      ({**ok, "category": "nope"}, "category")):  # fmt: skip
        r = api.post(URL, json=bad, headers=an)
        assert r.status_code == 400 and says in r.json()["detail"], (bad, r.text)
    assert api.delete(f"{URL}/0", headers=an).status_code == 422
    assert api.delete(f"{URL}/999", headers=an).status_code == 404
    assert api.get(URL, headers=an).json() == []
