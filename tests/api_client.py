"""The API test client the REST API tests share (the ``api`` fixture in conftest): an app on a real
SQLite store, one user (and bearer token) per role, and a seeded incident."""

from __future__ import annotations

from fastapi.testclient import TestClient

from fleetwarden.api import create_app
from fleetwarden.app import identity
from fleetwarden.core.findings import Finding, Incident

T0 = 1_780_000_000.0
ROLES = ("admin", "operator", "analyst", "viewer", "service")


def make_api(tmp_path):
    """A TestClient with ``tokens`` (role -> bearer token) and ``store``; close with ``close_app``."""
    app = create_app(f"sqlite:///{tmp_path / 'api.db'}", max_batch=50)
    store = app.state.store
    client = TestClient(app)
    client.tokens = {role: identity.add_user(store, f"{role}-user", role)[1] for role in ROLES}
    client.store = store
    return client


def auth(client, role: str) -> dict:
    return {"Authorization": f"Bearer {client.tokens[role]}"}


def seed_incident(store, device_id: str = "cam-1", risk: int = 92, t0: float = T0) -> int:
    """A device with one finding and incident (what a detection run records)."""
    store.upsert_devices([{"device_id": device_id, "criticality": "low", "device_class": "camera",
                           "ip": "10.9.0.5", "ips": ["10.9.0.5"]}])  # fmt: skip
    f = Finding(device_id, "c2-beacon", "beacon", 0.97, t0, t0 + 600, ["beacon every 60 s"], device_id=device_id)
    inc = Incident(device_id, "c2-beacon", "critical", risk, t0, t0 + 600, ["beacon"], findings=[f])
    store.record_results("test", [f], [inc])
    return next(i.id for i in store.list_incidents(entity=device_id))
