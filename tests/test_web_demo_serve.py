"""``fleetwarden demo --serve``: the one command that fills a store with a (small) demo fleet,
prints the demo users' tokens and serves the console; checked over HTTP against the running
process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
from tests.conftest import free_port


def _wait_for_console(proc: subprocess.Popen, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Console:"):
            return lines
    raise AssertionError("the console did not start:\n" + "".join(lines))


def _up(base: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/console/login", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("nothing listens")


def test_demo_serve_fills_the_store_and_serves_the_console(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "fleetwarden", "demo", "--serve", "--port", str(port),
           "--devices", "24", "--hours", "2", "--db", f"sqlite:///{tmp_path}/demo.db"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = _wait_for_console(proc, timeout=240)
        tokens = dict(re.findall(r"^(admin|operator|viewer)\s+demo-\S+\s+(fwt_\S+)$", "".join(lines), re.M))
        assert set(tokens) == {"admin", "operator", "viewer"}, lines
        base = f"http://127.0.0.1:{port}"
        _up(base)
        with httpx.Client(base_url=base) as client:
            r = client.post("/console/login", data={"token": tokens["operator"]})
            assert r.status_code == 303
            inbox = client.get("/console/approvals")
            assert inbox.status_code == 200
            assert len(re.findall(r'data-move="approve"', inbox.text)) > 0  # the inbox has entries
            overview = client.get("/console/")
            assert overview.status_code == 200 and "open incidents" in overview.text
    finally:
        proc.terminate()
        proc.wait(20)
