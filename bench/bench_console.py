"""Console page render times on a large store: 10,000 devices and 100,000 findings.

    .venv/bin/python bench/bench_console.py [--devices 10000] [--findings 100000] [--db URL]

The store (a scratch SQLite file unless ``--db``) is seeded in bulk through the store's own
functions (``upsert_devices``, ``record_results``: 50 findings per incident), actions are proposed
for 100 incidents, then every console page is requested through FastAPI's TestClient as a logged-in
operator: the time is the whole request (query, aggregation, template).  Each page is timed cold
(the console's posture/metrics cache dropped first) and warm (best of three); target: under a
second per page.  The fleet posture (the overview's gauges) is computed in the background and
cached (a page waits for it at most 0.3 s); its own time is printed last.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from urllib.parse import quote

T0 = 1_790_000_000.0
CLASSES = ("camera", "plug", "thermostat", "gateway", "sensor", "controller")
CATEGORIES = ("c2-beacon", "scan", "brute-force", "exfiltration", "dns-tunnel", "ddos")


def seed(store, devices: int, findings: int, per_incident: int = 50) -> None:
    from fleetwarden.core.findings import Finding, Incident

    rnd = random.Random(7)
    rows = [
        {"device_id": f"dev-{i:05d}", "ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "vendor": f"vendor{i % 40}",
         "device_class": CLASSES[i % len(CLASSES)], "site": f"site{i % 25}", "criticality": ("low", "medium", "high", "critical")[i % 4],
         "firmware_version": f"1.{i % 9}"}
        for i in range(devices)
    ]  # fmt: skip
    for k in range(0, devices, 2000):
        store.upsert_devices(rows[k : k + 2000], actor="bench")
    incidents = []
    for n in range(findings // per_incident):
        entity, category = f"dev-{rnd.randrange(devices):05d}", CATEGORIES[n % len(CATEGORIES)]
        start = T0 + rnd.uniform(0, 14 * 86400)
        fs = [
            Finding(entity=entity, category=category, detector="bench", score=rnd.random(),
                    first_seen=start + j * 600, last_seen=start + j * 600 + 60,
                    evidence=[f"bench finding {n}/{j}"], device_id=entity)
            for j in range(per_incident)
        ]  # fmt: skip
        risk = rnd.randrange(10, 100)
        incidents.append(Incident(entity=entity, category=category, severity="critical" if risk >= 85 else "medium",
                                  risk=risk, first_seen=fs[0].first_seen, last_seen=fs[-1].last_seen,
                                  evidence=["bench"], findings=fs))  # fmt: skip
        if len(incidents) == 100:
            store.record_results("bench", [], incidents, actor="bench")
            incidents = []
    if incidents:
        store.record_results("bench", [], incidents, actor="bench")


def propose_some(store, n: int = 100) -> None:
    from fleetwarden.app.response import load_policy, propose

    policy = load_policy()
    for inc in store.list_incidents(limit=n):
        propose(store, inc.id, policy=policy, actor="bench-policy")


def timed(client, path: str, forget) -> tuple[float, float]:
    forget()
    t = time.perf_counter()
    r = client.get(path)
    cold = time.perf_counter() - t
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        client.get(path)
        warm.append(time.perf_counter() - t)
    return cold, min(warm)


def main() -> None:
    from fastapi.testclient import TestClient

    from fleetwarden.app import console
    from fleetwarden.app.identity import add_user
    from fleetwarden.app.metrics import fleet_posture
    from fleetwarden.app.stores import store_at
    from fleetwarden.web import create_console_app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--findings", type=int, default=100_000)
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-bench-console-") as tmp:
        os.environ["FLEETWARDEN_HOME"] = tmp
        url = args.db or f"sqlite:///{tmp}/bench.db"
        t = time.perf_counter()
        with store_at(url) as store:
            seed(store, args.devices, args.findings)
            propose_some(store)
            token = add_user(store, "bench-operator", "operator", actor="bench")[1]
            counts = store.counts()
            top = store.list_incidents(limit=1)[0]
        print(f"seeded {counts.get('devices')} devices, {counts.get('findings')} findings, "
              f"{counts.get('incidents')} incidents, {counts.get('actions')} actions in {time.perf_counter() - t:.1f} s")  # fmt: skip
        with TestClient(create_console_app(url)) as client:
            client.post("/console/login", data={"token": token})
            pages = ["/console/", "/console/devices", "/console/devices?page=150", "/console/devices?q=site7",
                     f"/console/devices/{quote(top.entity, safe='')}", "/console/incidents", "/console/incidents?page=30",
                     f"/console/incidents/{top.id}", "/console/approvals", "/console/metrics", "/console/audit",
                     "/console/live/badge", "/console/live/latest", "/console/live/approvals"]  # fmt: skip
            print(f"{'page':<40} {'cold s':>8} {'warm s':>8}")
            for path in pages:
                cold, warm = timed(client, path, console.forget_cache)
                flag = "" if cold < 1 else "  > 1 s"
                print(f"{path:<40} {cold:8.3f} {warm:8.3f}{flag}")
        with store_at(url) as store:
            t = time.perf_counter()
            fleet_posture(store)
            print(f"background: the fleet posture (overview gauges) takes {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
