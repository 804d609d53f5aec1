"""The web console through HTTP (FastAPI's TestClient over a real SQLite store): login, every
page, escaping of hostile values, role-aware buttons, the 403 for a viewer, CSRF, the live
fragments, and an operator's approval executing a quarantine in enforce mode."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from tests.console_fleet import HOSTILE, seed_console_fleet  # noqa: E402

from fleetwarden.app import console  # noqa: E402
from fleetwarden.app.stores import store_at  # noqa: E402

PAGES = ["/console/", "/console/devices", "/console/devices/cam-01", "/console/incidents",
         "/console/approvals", "/console/metrics", "/console/audit"]  # fmt: skip


@pytest.fixture
def fleet(tmp_path):
    from fleetwarden.web import create_console_app

    console.forget_cache()
    url = f"sqlite:///{tmp_path}/console.db"
    with store_at(url) as store:
        seeded = seed_console_fleet(store)
    app = create_console_app(url)
    with TestClient(app) as client:
        yield client, app.state.store, seeded
    console.forget_cache()


def _login(client, token: str) -> None:
    r = client.post("/console/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert "fw_console=" in r.headers["set-cookie"] and "httponly" in r.headers["set-cookie"].lower()
    assert token not in r.headers["set-cookie"]


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_pages_need_a_login_and_a_good_token(fleet):
    client, _store, _seeded = fleet
    r = client.get("/console/incidents", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert client.get("/console/live/badge", headers={"HX-Request": "true"}).status_code == 401
    r = client.post("/console/login", data={"token": "fwt_not-a-token"})
    assert r.status_code == 401 and "Unknown or disabled token" in r.text


def test_every_page_renders_for_a_viewer(fleet):
    client, _store, seeded = fleet
    _login(client, seeded["tokens"]["viewer"])
    for path in [*PAGES, f"/console/incidents/{seeded['incidents']['cam-01']}"]:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "cdn" not in r.text.lower()
    overview = client.get("/console/").text
    assert 'hx-trigger="every 5s"' in overview and "10.0.0.99" in overview  # live list, unknown device


def test_hostile_values_are_escaped(fleet):
    client, _store, seeded = fleet
    _login(client, seeded["tokens"]["operator"])
    pages = [
        client.get(p).text
        for p in ("/console/", "/console/devices", "/console/incidents", "/console/approvals")
    ]
    pages.append(client.get("/console/devices/" + quote(HOSTILE, safe="")).text)
    pages.append(client.get(f"/console/incidents/{seeded['incidents'][HOSTILE]}").text)
    for html in pages:
        assert "<script>alert" not in html and "<b>evil" not in html
        assert "\u202e" not in html  # the bidi override is shown as an escape, never applied
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\u202egpj.exe" in pages[-1]


def test_viewer_sees_no_button_and_is_refused(fleet):
    client, store, seeded = fleet
    _login(client, seeded["tokens"]["viewer"])
    html = client.get(f"/console/incidents/{seeded['incidents']['cam-01']}").text
    assert 'data-move="approve"' not in html and "may read but not decide" in html
    quarantine = next(
        a for a in store.list_actions(incident_id=seeded["incidents"]["cam-01"]) if a.kind == "quarantine"
    )
    r = client.post(f"/console/actions/{quarantine.id}/approve", data={"csrf": _csrf(html)})
    assert r.status_code == 403
    api = client.post(f"/api/v1/actions/{quarantine.id}/approve",
                      headers={"Authorization": f"Bearer {seeded['tokens']['viewer']}"})  # fmt: skip
    assert api.status_code == 403
    assert store.list_actions(incident_id=seeded["incidents"]["cam-01"])[1].status == "proposed"


def test_a_decision_needs_the_csrf_token(fleet):
    client, store, seeded = fleet
    _login(client, seeded["tokens"]["operator"])
    action = store.list_actions()[0]
    assert client.post(f"/console/actions/{action.id}/deny", data={"csrf": "forged"}).status_code == 403
    assert store.list_actions()[0].status == "proposed"


def test_operator_approval_in_enforce_mode_quarantines(fleet, _isolated_home):
    client, store, seeded = fleet
    (_isolated_home / "response_policy.toml").write_text('mode = "enforce"\n')
    _login(client, seeded["tokens"]["operator"])
    incident = seeded["incidents"]["cam-01"]
    html = client.get(f"/console/incidents/{incident}").text
    quarantine = next(a for a in store.list_actions(incident_id=incident) if a.kind == "quarantine")
    assert f'data-action="{quarantine.id}" data-move="approve"' in html
    r = client.post(f"/console/actions/{quarantine.id}/approve",
                    data={"csrf": _csrf(html), "back": f"/console/incidents/{incident}"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == f"/console/incidents/{incident}"
    done = next(a for a in store.list_actions(incident_id=incident) if a.kind == "quarantine")
    assert (done.status, done.approved_by) == ("executed", "operator")
    assert "10.0.0.11" in (_isolated_home / "nftables" / "fleetwarden.nft").read_text()
    page = client.get("/console/devices/cam-01").text
    assert 'id="containment">quarantined' in page and 'data-move="rollback"' in page


def test_observe_mode_approval_does_not_execute_and_back_is_checked(fleet):
    client, store, seeded = fleet
    _login(client, seeded["tokens"]["admin"])
    html = client.get("/console/approvals").text
    action = store.list_actions()[0]
    r = client.post(f"/console/actions/{action.id}/approve",
                    data={"csrf": _csrf(html), "back": "https://evil.example/"}, follow_redirects=False)  # fmt: skip
    assert r.headers["location"] == "/console/approvals"
    assert store.list_actions()[0].status == "approved"


def test_live_fragments_show_new_items_without_a_reload(fleet):
    from fleetwarden.app.response import load_policy, propose

    client, store, seeded = fleet
    _login(client, seeded["tokens"]["viewer"])
    plug = seeded["incidents"]["plug-02"]
    for a in store.list_actions(incident_id=plug):
        store.update_action(a.id, "rejected", actor="test")
    before = client.get("/console/live/approvals").text
    assert f"/console/incidents/{plug}" not in before
    new = propose(store, plug, policy=load_policy(), actor="policy")
    after = client.get("/console/live/approvals").text
    assert new and f"<tr><td>{new[0]['id']}</td>" in after and f"/console/incidents/{plug}" in after
    badge = client.get("/console/live/badge").text
    assert re.search(r'id="pending-count">\d+ to decide', badge)


def test_bad_requests_are_refused_plainly(fleet):
    client, _store, seeded = fleet
    _login(client, seeded["tokens"]["viewer"])
    assert client.get("/console/incidents/999999").status_code == 404
    assert client.get("/console/devices/nope").status_code == 404
    assert client.get("/console/devices?page=0").status_code == 422
    assert client.get("/console/devices?q=" + "x" * 300).status_code == 422
    r = client.get("/console/devices?q=" + quote("%_"))
    assert r.status_code == 200 and "No devices." in r.text  # LIKE wildcards are literal


def test_console_metrics_equal_the_metrics_service(fleet):
    from fleetwarden.app.metrics import security_metrics
    from fleetwarden.store.verdicts import add_verdict

    _client, store, seeded = fleet
    add_verdict(store, seeded["incidents"]["cam-01"], "true-positive", reason="seen", analyst="test")
    add_verdict(store, seeded["incidents"]["plug-02"], "false-positive", reason="printer", analyst="test")
    console.forget_cache()
    mine, theirs = console.metrics_page(store), security_metrics(store)
    assert mine["overall"] == theirs["overall"] and mine["overall"]["mttd"]["count"] == 1
    assert mine["drift"] == theirs["drift"]
    days = sorted(theirs["daily"])
    assert mine["daily"]["incidents"] == [theirs["daily"][d]["incidents"] for d in days]
