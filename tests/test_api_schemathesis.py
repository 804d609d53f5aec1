"""Schemathesis against the API's own /openapi.json, as admin over a seeded SQLite store: whatever
the generated requests hold, no operation answers with a 5xx.  ``max_examples`` keeps the run
under about a minute."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from fleetwarden.api import close_app, create_app
from fleetwarden.app import identity
from fleetwarden.core.findings import Finding, Incident

T0 = 1_780_000_000.0
# Built at import: schemathesis parametrizes from a loaded schema (its from_fixture does not work with
# this pytest).  The database is an explicit SQLite file in a private temporary folder; nothing here
# reads FLEETWARDEN_HOME, and requests run inside the tests, under the isolated home of conftest.py.
_TMP = tempfile.TemporaryDirectory(prefix="fw-schemathesis-")
APP = create_app(f"sqlite:///{Path(_TMP.name) / 'st.db'}", max_batch=200)
TOKEN = identity.add_user(APP.state.store, "admin", "admin")[1]


def _seed(store) -> None:
    store.upsert_devices([{"device_id": "cam-1", "criticality": "low", "device_class": "camera", "ip": "10.0.0.5"}])
    f = Finding("cam-1", "c2-beacon", "beacon", 0.97, T0, T0 + 600, ["beacon"], device_id="cam-1")
    store.record_results("test", [f], [Incident("cam-1", "c2-beacon", "critical", 92, T0, T0 + 600, ["b"], findings=[f])])


_seed(APP.state.store)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _close_app():
    yield
    close_app(APP)
    _TMP.cleanup()


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case):
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
