"""API operators: `fleetwarden users add/list/disable` and `authenticate(token)`.

The token is printed once, alone on the last line; the store keeps only its SHA-256; a disabled
operator's token stops working; names and roles are checked, each refusal one line and exit 2.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from typer.testing import CliRunner

from fleetwarden.app import identity
from fleetwarden.cli import app
from fleetwarden.store import open_store

runner = CliRunner()


@pytest.fixture
def db(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("FLEETWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLEETWARDEN_DB", raising=False)
    return str(tmp_path / "fw.db")


def fw(db: str, *args: str):
    return runner.invoke(app, [*args, "--db", db], catch_exceptions=False)


def exit_2(res, needle: str) -> None:
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def add(db: str, name: str, role: str) -> str:
    res = fw(db, "users", "add", name, "--role", role)
    assert res.exit_code == 0, res.stderr
    return res.stdout.rstrip("\n").splitlines()[-1]


def test_token_is_the_last_line_and_only_its_hash_is_stored(db):
    token = add(db, "alice", "admin")
    assert token.startswith("fwt_") and " " not in token and len(token) >= 40
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT name, role, token_hash FROM operators").fetchall()
        dump = "\n".join(conn.iterdump())
    assert stored == [("alice", "admin", hashlib.sha256(token.encode()).hexdigest())]
    assert token not in dump and token[4:] not in dump
    listing = fw(db, "users", "list", "--json")
    assert "alice" in listing.stdout and "token" not in listing.stdout
    assert token != add(db, "bob", "viewer")  # a fresh random token each time


def test_authenticate_follows_the_token_and_the_disabled_flag(db):
    token = add(db, "svc-ingest", "service")
    with open_store(db) as store:
        who = identity.authenticate(store, token)
        assert who is not None and (who.name, who.role) == ("svc-ingest", "service")
        assert identity.list_users(store)[0]["last_used_at"] is not None
        for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), "", "fwt_", "x" * 10_000, token + " "):
            assert identity.authenticate(store, wrong) is None
    assert fw(db, "users", "disable", "svc-ingest").exit_code == 0
    with open_store(db) as store:
        assert identity.authenticate(store, token) is None
        actions = [(e.action, e.subject) for e in store.audit_entries()]
        assert ("operator.add", "operator:svc-ingest") in actions
        assert ("operator.disable", "operator:svc-ingest") in actions
        details = " ".join(str(e.details) for e in store.audit_entries())
        assert token not in details and hashlib.sha256(token.encode()).hexdigest() not in details
        assert store.audit_verify() == (True, None)


def test_bad_names_roles_and_duplicates_are_one_line(db):
    add(db, "carol", "analyst")
    exit_2(fw(db, "users", "add", "carol", "--role", "viewer"), "already exists")
    exit_2(fw(db, "users", "add", "dave", "--role", "root"), "unknown role")
    exit_2(fw(db, "users", "add", "bad name\x1b[31m", "--role", "viewer"), "invalid user name")
    exit_2(fw(db, "users", "add", "x" * 101, "--role", "viewer"), "invalid user name")
    exit_2(fw(db, "users", "disable", "nobody"), "no operator named")
    with open_store(db) as store:
        assert [u["name"] for u in identity.list_users(store)] == ["carol"]
