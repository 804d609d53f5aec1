"""Screenshots of every console page on the demo data, for the README (docs/screenshots/).

Runs the demo (``--devices``, ``--hours``) into a scratch SQLite store, serves the console on a
spare port, logs in as the demo operator in headless Chromium (Debian's ``/usr/bin/chromium``
through Playwright; never ``playwright install``) and saves one PNG per page.

    .venv/bin/python bench/screenshots.py [--out docs/screenshots] [--devices 60] [--hours 6]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(url: str):
    import uvicorn

    from fleetwarden.web import create_console_app

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_console_app(url), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def _pages(store) -> list[tuple[str, str]]:
    """(file name, path) of every page, with the riskiest incident and its device."""
    top = store.list_incidents(status=["open"], limit=1)
    pages = [("overview", "/console/"), ("devices", "/console/devices"), ("incidents", "/console/incidents")]
    if top:
        pages.append(("incident", f"/console/incidents/{top[0].id}"))
        pages.append(("device", f"/console/devices/{quote(top[0].entity, safe='')}"))
    pages += [
        ("approvals", "/console/approvals"),
        ("metrics", "/console/metrics"),
        ("audit", "/console/audit"),
    ]
    return [("login", "/console/login"), *pages]


def _settle(page, timeout: float = 120) -> None:
    """Wait until the page shows its figures, not "computing" (slow aggregates run in the background)."""
    deadline = time.monotonic() + timeout
    while page.locator("#posture-computing").count() and time.monotonic() < deadline:
        time.sleep(2)
        page.reload()
    page.wait_for_load_state("networkidle")


def main() -> None:
    from playwright.sync_api import sync_playwright

    from fleetwarden.app.console import prepare_demo
    from fleetwarden.app.stores import store_at

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--devices", type=int, default=60)
    ap.add_argument("--hours", type=float, default=48)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fw-shots-") as tmp:
        os.environ["FLEETWARDEN_HOME"] = tmp
        url = f"sqlite:///{tmp}/demo.db"
        with store_at(url) as store:
            ready = prepare_demo(store, devices=args.devices, hours=args.hours)
            pages = _pages(store)
        server, base = _serve(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1360, "height": 1100})
            page.goto(f"{base}/console/login")
            page.screenshot(path=str(args.out / "login.png"))
            page.fill("input[name=token]", ready["tokens"]["operator"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/console/")
            for name, path in pages[1:]:
                page.goto(base + path)
                _settle(page)
                page.screenshot(path=str(args.out / f"{name}.png"))
                print(f"{name:<10} {path}")
            browser.close()
        server.should_exit = True


if __name__ == "__main__":
    main()
