"""Cookie sessions kept in the store (API ``fw_session`` and console ``fw_console``), against real
stores (SQLite, and PostgreSQL when it runs): a session survives a restart of the app; sign-out,
``users end-sessions`` and disabling the user end it for every app on the store; expiry is
enforced; a forged cookie or one of the other face is refused; the store holds only hashes."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fleetwarden.api import close_app, create_app
from fleetwarden.app import identity
from fleetwarden.app.stores import store_at
from fleetwarden.cli import app as cli
from fleetwarden.store import sessions as stored

SESSION_TAG = secrets.token_hex(4)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path, monkeypatch) -> Iterator[str]:
    """A fresh store URL (a SQLite file, or a scratch PostgreSQL schema dropped afterwards)."""
    monkeypatch.setenv("FLEETWARDEN_HOME", str(tmp_path / "home"))
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sessions.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"fw_test_{SESSION_TAG}_sessions_{secrets.token_hex(3)}"
    yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    eng = sa.create_engine(base)
    with eng.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


@pytest.fixture
def apps(db_url) -> Iterator:
    """``apps()`` opens one more app (a server process, or the same one after a restart) on the store."""
    opened = []

    def open_app(**settings):
        app = create_app(db_url, **settings)
        opened.append(app)
        return TestClient(app)

    open_app.url = db_url  # type: ignore[attr-defined]
    yield open_app
    for app in opened:
        close_app(app)


def _user(client: TestClient, name: str = "ana", role: str = "operator") -> str:
    return identity.add_user(client.app.state.store, name, role)[1]


def _sign_in(client: TestClient, token: str) -> tuple[str, str]:
    r = client.post("/api/v1/session", json={"token": token}, headers={"User-Agent": "pytest-browser/1"})
    assert r.status_code == 200, r.text
    cookie, csrf = client.cookies.get("fw_session"), r.json()["csrf_token"]
    client.cookies.clear()  # every request below names its cookie itself
    return cookie, csrf


def _whoami(client: TestClient, cookie: str, name: str = "fw_session"):
    return client.get("/api/v1/session", headers={"Cookie": f"{name}={cookie}"})


def _rows(store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM console_sessions"))]


def test_a_session_survives_a_restart_and_is_shared(apps):
    first = apps()
    token = _user(first)
    cookie, _csrf = _sign_in(first, token)
    close_app(first.app)  # the process ends
    second, third = apps(), apps()  # restarted, and another process beside it
    for client in (second, third):
        r = _whoami(client, cookie)
        assert r.status_code == 200 and r.json() == {"user": "ana", "role": "operator", "via": "session"}


def test_sign_out_ends_the_session_for_every_process_and_after_a_restart(apps):
    a, b = apps(), apps()
    cookie, csrf = _sign_in(a, _user(a))
    assert _whoami(b, cookie).status_code == 200
    r = a.request("DELETE", "/api/v1/session", headers={"Cookie": f"fw_session={cookie}; fw_csrf={csrf}",
                                                         "X-CSRF-Token": csrf})  # fmt: skip
    assert r.status_code == 200 and r.json() == {"signed_out": "ana"}
    assert _whoami(b, cookie).status_code == 401  # the other process sees it at once
    close_app(a.app)
    assert _whoami(apps(), cookie).status_code == 401  # and a restart does not forget it
    (row,) = _rows(b.app.state.store)
    assert row["ended_at"] is not None


def test_disabling_the_user_ends_its_sessions(apps):
    client = apps()
    cookie, _csrf = _sign_in(client, _user(client))
    other, _ = _sign_in(client, _user(client, "bo", "viewer"))
    identity.disable_user(client.app.state.store, "ana", actor="admin-user")
    assert _whoami(client, cookie).status_code == 401
    assert _whoami(client, other).status_code == 200  # only ana's
    ended = {r["operator_id"]: r["ended_at"] for r in _rows(client.app.state.store)}
    assert sorted(v is not None for v in ended.values()) == [False, True]
    entry = next(e for e in client.app.state.store.audit_entries() if e.action == "operator.disable")
    assert entry.details == {"already_disabled": False, "sessions_ended": 1}
    with client.app.state.store.engine.begin() as conn:  # disabled behind the service's back: still refused
        conn.execute(sa.text("UPDATE operators SET disabled = :d WHERE name = 'bo'"), {"d": True})
    assert _whoami(client, other).status_code == 401


def test_expiry_is_enforced_and_old_rows_are_purged_at_sign_in(apps):
    client = apps(session_ttl_s=600)
    token = _user(client)
    cookie, _ = _sign_in(client, token)
    store = client.app.state.store
    (row,) = _rows(store)
    assert 599 <= row["expires_at"] - row["created_at"] <= 601
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE console_sessions SET expires_at = :t"), {"t": time.time() - 1})
    assert _whoami(client, cookie).status_code == 401
    with store.engine.begin() as conn:  # expired more than a week ago: purged by the next sign-in
        conn.execute(sa.text("UPDATE console_sessions SET expires_at = :t"), {"t": time.time() - 8 * 86400})
    _sign_in(client, token)
    assert [r["secret_sha256"] != row["secret_sha256"] for r in _rows(store)] == [True]


def test_forged_foreign_and_oversized_cookies_are_refused(apps):
    client = apps()
    cookie, _ = _sign_in(client, _user(client))
    forged = cookie[:-1] + ("A" if cookie[-1] != "A" else "B")
    for value in (forged, secrets.token_urlsafe(32), "", "x" * 5000, "a.1.9999999999.deadbeef"):
        r = _whoami(client, value)
        assert r.status_code == 401 and r.json()["detail"], value[:20]
    assert _whoami(client, cookie, name="fw_console").status_code == 401  # no cookie of its face


def test_the_store_keeps_only_the_hash_and_touches_last_seen_once_a_minute(apps):
    client = apps()
    cookie, csrf = _sign_in(client, _user(client))
    store = client.app.state.store
    (row,) = _rows(store)
    assert row["secret_sha256"] == hashlib.sha256(cookie.encode()).hexdigest()
    for value in row.values():
        assert cookie not in str(value) and csrf not in str(value)
    assert row["face"] == "api" and row["user_agent"] == "pytest-browser/1" and row["source"]
    seen = row["last_seen_at"]
    assert _whoami(client, cookie).status_code == 200
    assert _rows(store)[0]["last_seen_at"] == seen  # not a write per request
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE console_sessions SET last_seen_at = :t"), {"t": seen - 120})
    assert _whoami(client, cookie).status_code == 200
    assert _rows(store)[0]["last_seen_at"] > seen - 120


def test_console_sessions_survive_restarts_and_end_at_logout(apps):
    from fleetwarden.web import create_console_app

    url = apps.url
    with TestClient(create_console_app(url)) as first:
        token = _user(first)
        r = first.post("/console/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 303
        cookie = first.cookies.get("fw_console")
    with TestClient(create_console_app(url)) as second:  # after a restart
        page = second.get("/console/", headers={"Cookie": f"fw_console={cookie}"})
        assert page.status_code == 200 and "ana" in page.text
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert csrf not in str(_rows(second.app.state.store))
        assert _whoami(second, cookie).status_code == 401  # a console cookie is not an API one
        r = second.post("/console/logout", data={"csrf": csrf}, headers={"Cookie": f"fw_console={cookie}"},
                        follow_redirects=False)  # fmt: skip
        assert r.status_code == 303
    with TestClient(create_console_app(url)) as third:
        r = third.get("/console/", headers={"Cookie": f"fw_console={cookie}"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/login"


# ---------------------------------------------------------------------------------- the CLI

runner = CliRunner()


def _fw(url: str, *args: str):
    return runner.invoke(cli, [*args, "--db", url], catch_exceptions=False)


def test_users_sessions_lists_and_end_sessions_ends_them_audited(apps):
    client = apps()
    ana, _ = _sign_in(client, _user(client))
    _sign_in(client, identity.add_user(client.app.state.store, "bo", "viewer")[1])
    url = apps.url
    res = _fw(url, "users", "sessions", "--json")
    assert res.exit_code == 0, res.stderr
    listed = json.loads(res.stdout)
    assert sorted(r["operator"] for r in listed) == ["ana", "bo"]
    assert all(r["face"] == "api" and "secret_sha256" not in r for r in listed)
    assert ana not in res.stdout and hashlib.sha256(ana.encode()).hexdigest() not in res.stdout
    assert [r["operator"] for r in json.loads(_fw(url, "users", "sessions", "--user", "ana", "--json").stdout)] == ["ana"]
    table = _fw(url, "users", "sessions")
    assert table.exit_code == 0 and "pytest-browser/1" in table.stdout

    res = _fw(url, "users", "end-sessions", "ana")
    assert res.exit_code == 0 and "1 session(s) of ana ended" in res.stdout
    assert _whoami(client, ana).status_code == 401
    assert [r["operator"] for r in json.loads(_fw(url, "users", "sessions", "--json").stdout)] == ["bo"]
    closed = json.loads(_fw(url, "users", "sessions", "--all", "--json").stdout)
    assert sorted(r["operator"] for r in closed) == ["ana", "bo"]
    with store_at(url) as store:
        entry = store.audit_entries()[-1]
    assert entry.action == "operator.sessions.end" and entry.subject == "operator:ana"
    assert entry.details == {"sessions": 1}
    for args in (("users", "end-sessions", "nobody"), ("users", "sessions", "--user", "nobody")):
        res = _fw(url, *args)
        assert res.exit_code == 2 and "no operator named 'nobody'" in res.stderr


def test_end_sessions_of_counts_only_open_ones(apps):
    client = apps()
    token = _user(client)
    _sign_in(client, token)
    _sign_in(client, token)
    store = client.app.state.store
    assert stored.end_sessions_of(store, "ana", now=time.time(), actor="t") == 2
    assert stored.end_sessions_of(store, "ana", now=time.time(), actor="t") == 0


def test_signing_in_in_a_loop_keeps_a_bounded_table(apps, monkeypatch):
    """One token signing in again and again (a looping script, a gateway): the operator's newest
    sessions stay open up to the cap, older ones end, and its rows stay bounded."""
    from fleetwarden.store import sessions as store_sessions

    monkeypatch.setattr(store_sessions, "MAX_OPEN_PER_OPERATOR", 3)
    monkeypatch.setattr(store_sessions, "MAX_ROWS_PER_OPERATOR", 5)
    client = apps()
    token = _user(client)
    other = _sign_in(client, _user(client, "bea", "viewer"))[0]
    cookies = [_sign_in(client, token)[0] for _ in range(12)]
    ana = next(u["id"] for u in identity.list_users(client.app.state.store) if u["name"] == "ana")
    rows = [r for r in _rows(client.app.state.store) if r["operator_id"] == ana]
    assert len(rows) == 5 and sum(r["ended_at"] is None for r in rows) == 3
    assert [_whoami(client, c).status_code for c in cookies[-4:]] == [401, 200, 200, 200]
    assert _whoami(client, other).status_code == 200  # another operator's session is untouched
