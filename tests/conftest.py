"""Shared fixtures: paths to the shared data and the services tests may need.

A test that needs a service asks for its fixture.  On a laptop without the service the
test is skipped with the reason; in CI (``CI=true``) a missing service is a failure,
because there the service must be running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT.parent / "shared" / "data").resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# pytest-xdist hands its workers COLUMNS=80; the CLI's consoles (made when fleetwarden.cli is first
# imported) would then wrap tables at 80 columns where a plain run prints 200 when piped.  Tests read
# the CLI's output as a pipe would give it, so the workers do without that setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

# Property tests explore new inputs on every developer run; CI replays a fixed, derandomised
# sequence so that a submission's verdict does not depend on the draw.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if IN_CI else "dev")


def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need(found: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) when ``found`` is false, saying ``what`` is missing."""
    if found:
        return
    if IN_CI:
        pytest.fail(f"{what} (CI=true: these tests must run)")
    pytest.skip(what)


def program(name: str) -> str | None:
    """Path of a program on PATH or in /usr/sbin (Debian puts servers there, off a user's PATH)."""
    sbin = f"/usr/sbin/{name}"
    return shutil.which(name) or (sbin if os.path.exists(sbin) else None)


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sqlite_held(path: Path):
    """Another process holding the SQLite database at ``path`` (an exclusive transaction) for the
    ``with`` block: a write by the code under test fails with a real "database is locked" once the
    store's busy timeout passes (tests shorten ``fleetwarden.store.SQLITE_BUSY_TIMEOUT_S``)."""
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


def need_service(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI) when a service is not listening."""
    if _reachable(host, port):
        return
    reason = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service-backed tests must run in CI)")
    pytest.skip(reason)


def need_data(*parts: str) -> Path:
    """Path under ../shared/data; skip (laptop) or fail (CI) when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        reason = f"shared data not found at {path}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return need_data()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a scratch database on the local PostgreSQL (trust auth, database ``test``)."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    return os.environ.get("FLEETWARDEN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    need_service("Mosquitto MQTT", "127.0.0.1", 1883)
    return ("127.0.0.1", 1883)


@pytest.fixture(scope="session")
def nats_url() -> str:
    need_service("NATS", "127.0.0.1", 4222)
    return "nats://127.0.0.1:4222"


@pytest.fixture
def api(tmp_path):
    """The REST API on a real SQLite store, a bearer token per role (:mod:`api_client`)."""
    from api_client import make_api
    from fleetwarden.api import close_app

    client = make_api(tmp_path)
    yield client
    close_app(client.app)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep every test's FleetWarden state (SQLite file, CA, models) out of the real home."""
    home = tmp_path_factory.mktemp("fwhome")
    monkeypatch.setenv("FLEETWARDEN_HOME", str(home))
    monkeypatch.delenv("FLEETWARDEN_DB", raising=False)
    yield home


def replay_batches(*parts: dict, seconds: float = 600.0) -> list:
    """Flow column dicts merged, sorted by time and cut into batches of ``seconds`` of event time, as
    a replay hands them to an analytic."""
    import numpy as np

    from fleetwarden.core.events import EventBatch

    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["ts"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    window = ((cols["ts"] - cols["ts"][0]) // seconds).astype(np.int64)
    cuts = np.flatnonzero(np.diff(window)) + 1
    return [
        EventBatch.from_columns("flow", {k: v[a:b] for k, v in cols.items()}, int(b - a))
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(window)], strict=True)
    ]
