"""The console end to end in headless Chromium (Playwright for Python, Debian's chromium; never
``playwright install``): a real uvicorn server on a spare port over a real SQLite store.

An operator logs in, opens an incident, approves its quarantine and sees the device quarantined:
the policy is set to ``enforce`` for the test (FLEETWARDEN_HOME/response_policy.toml), so the
console executes the approved action at once through the real nftables adapter (the rule file is
written and checked).  A viewer sees no decision button and is refused (403) by the console and by
the REST API when it tries anyway.  A newly proposed action appears in the open approvals inbox
without a reload (htmx polling)."""

from __future__ import annotations

import shutil
import threading
import time
from urllib.parse import quote

import pytest
from tests.conftest import IN_CI, free_port

CHROMIUM = "/usr/bin/chromium"

if not shutil.which(CHROMIUM):
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing (CI=true: apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    if IN_CI:
        raise
    pytest.skip("playwright is not installed: pip install -e .[test]", allow_module_level=True)

from tests.console_fleet import HOSTILE, seed_console_fleet  # noqa: E402

from fleetwarden.app import console  # noqa: E402
from fleetwarden.app.stores import store_at  # noqa: E402


@pytest.fixture
def server(tmp_path, _isolated_home):
    import uvicorn

    from fleetwarden.web import create_console_app

    (_isolated_home / "response_policy.toml").write_text('mode = "enforce"\n')
    console.forget_cache()
    url = f"sqlite:///{tmp_path}/e2e.db"
    with store_at(url) as store:
        seeded = seed_console_fleet(store)
    app = create_console_app(url)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", app.state.store, seeded
    srv.should_exit = True
    thread.join(10)
    console.forget_cache()


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _login(browser, base: str, token: str):
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/console/")
    expect(page).to_have_url(f"{base}/console/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}/console/")
    page.errors = errors
    return page


def test_operator_approves_a_quarantine_and_the_device_is_quarantined(server, browser, _isolated_home):
    base, store, seeded = server
    page = _login(browser, base, seeded["tokens"]["operator"])
    page.click("nav >> text=Incidents")
    incident = seeded["incidents"]["cam-01"]
    page.click(f"a[href='/console/incidents/{incident}']")
    row = page.locator("tr[data-kind=quarantine]")
    expect(row.locator(".status")).to_have_text("proposed")
    row.locator("button[data-move=approve]").click()
    expect(page).to_have_url(f"{base}/console/incidents/{incident}")
    expect(row.locator(".status")).to_have_text("executed")
    expect(row.locator("button[data-move=rollback]")).to_be_visible()
    page.click("h1 >> a[href='/console/devices/cam-01']")
    expect(page.locator("#containment")).to_have_text("quarantined")
    assert "10.0.0.11" in (_isolated_home / "nftables" / "fleetwarden.nft").read_text()
    quarantine = next(a for a in store.list_actions(incident_id=incident) if a.kind == "quarantine")
    assert (quarantine.status, quarantine.approved_by) == ("executed", "operator")
    page.goto(f"{base}/console/metrics")
    expect(page.locator("[data-chart] canvas").first).to_be_visible()  # uPlot drew from the vendored file
    assert not page.errors, page.errors


def test_viewer_has_no_button_and_is_refused(server, browser):
    base, store, seeded = server
    page = _login(browser, base, seeded["tokens"]["viewer"])
    incident = seeded["incidents"][HOSTILE]
    page.goto(f"{base}/console/incidents/{incident}")
    expect(page.locator("tr[data-kind=quarantine] .status")).to_have_text("proposed")
    assert page.locator("button[data-move]").count() == 0
    expect(page.locator("text=may read but not decide")).to_be_visible()
    expect(page.locator("h1")).to_contain_text("<script>alert(1)</script>\\u202egpj.exe")  # shown, not run
    action = next(a for a in store.list_actions(incident_id=incident) if a.kind == "quarantine")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = page.request.post(f"{base}/console/actions/{action.id}/approve", form={"csrf": csrf})
    assert refused.status == 403
    api = page.request.post(
        f"{base}/api/v1/actions/{action.id}/approve",
        headers={"Authorization": f"Bearer {seeded['tokens']['viewer']}"},
    )
    assert api.status == 403
    assert (
        next(a for a in store.list_actions(incident_id=incident) if a.kind == "quarantine").status
        == "proposed"
    )
    page.goto(f"{base}/console/devices/{quote(HOSTILE, safe='')}")
    expect(page.locator("#device-id")).to_have_text("<script>alert(1)</script>\\u202egpj.exe")
    assert not page.errors, page.errors


def test_new_approvals_appear_without_a_reload(server, browser):
    from fleetwarden.app.response import load_policy, propose

    base, store, seeded = server
    page = _login(browser, base, seeded["tokens"]["admin"])
    page.goto(f"{base}/console/approvals")
    plug = seeded["incidents"]["plug-02"]
    for a in store.list_actions(incident_id=plug):
        store.update_action(a.id, "rejected", actor="test")
    page.reload()
    assert page.locator(f"#inbox a[href='/console/incidents/{plug}']").count() == 0
    propose(store, plug, policy=load_policy(), actor="policy")
    expect(page.locator(f"#inbox a[href='/console/incidents/{plug}']").first).to_be_visible(timeout=15_000)
    assert not page.errors, page.errors
