"""The store: FleetWarden's database, SQLite by default and PostgreSQL by URL.

:func:`open_store` builds the engine, brings the schema up to date with Alembic (run in
code from the installed package, so no ``alembic.ini`` is needed on the user's disk) and
returns a :class:`~fleetwarden.store.repository.Store`, the only object the rest of the
application talks to.

SQLite connections run in WAL mode (readers never wait for the writer) with foreign keys
on and a busy timeout; write transactions start with ``BEGIN IMMEDIATE`` so two writers
queue instead of failing half-way.  On PostgreSQL a ``schema`` (or a URL carrying
``?options=-csearch_path%3Dname``) keeps one installation, or one test run, in its own
schema.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError

from fleetwarden.config import database_url
from fleetwarden.core.text import redact, redact_url
from fleetwarden.store.models import TABLES
from fleetwarden.store.repository import RecordSummary, Store, StoreError

__all__ = [
    "MIGRATIONS",
    "TABLES",
    "RecordSummary",
    "Store",
    "StoreError",
    "create_store_engine",
    "open_store",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# any constant works: it only serialises concurrent `open_store` migrations on one database
_MIGRATION_LOCK_KEY = 0x46_57_4D_47  # "FWMG"


def open_store(url: str | None = None, *, schema: str | None = None, migrate: bool = True) -> Store:
    """Open (and by default migrate) the database at ``url``.

    ``url`` defaults to :func:`fleetwarden.config.database_url` (``--db`` >
    ``FLEETWARDEN_DB`` > SQLite file in ``FLEETWARDEN_HOME``).  ``schema`` (PostgreSQL
    only) is created when missing and used as the search path of every connection.
    """
    try:
        engine = create_store_engine(url, schema=schema)
    except (ImportError, ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"cannot use the database {_shown(url)}: {_reason(exc)}") from None
    try:
        if migrate:
            upgrade(engine)
    except (OperationalError, InterfaceError) as exc:
        engine.dispose()
        raise StoreError(f"cannot open the database {_shown(url)}: {_reason(exc)}") from None
    except Exception:
        engine.dispose()
        raise
    return Store(engine)


def _shown(url: str | None) -> str:
    return redact_url(database_url(url))


def _reason(exc: BaseException) -> str:
    """The driver's first line ("connection refused", "password authentication failed"), without
    SQLAlchemy's statement dump and link."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return redact(text[0][:300]) if text else type(inner).__name__


def create_store_engine(url: str | None = None, *, schema: str | None = None) -> Engine:
    """An engine with FleetWarden's connection settings, without migrating."""
    sa_url = make_url(database_url(url))
    backend = sa_url.get_backend_name()
    if backend == "sqlite":
        if schema:
            raise StoreError("a schema is a PostgreSQL setting; SQLite keeps one schema per file")
        return _sqlite_engine(sa_url)
    if backend == "postgresql":
        return _postgres_engine(sa_url, schema)
    raise StoreError(
        f"unsupported database {sa_url.render_as_string(hide_password=True)!r}: use sqlite or postgresql"
    )


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Run ``alembic upgrade`` on ``engine`` in one transaction (DDL is transactional on both backends)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    # keep "Context impl SQLiteImpl" and friends out of a CLI that configured logging
    log = logging.getLogger("alembic")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        _upgrade(engine, cfg, revision)
    finally:
        log.setLevel(level)


def _upgrade(engine: Engine, cfg: Config, revision: str) -> None:
    with engine.connect() as conn:
        conn = conn.execution_options(fleetwarden_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # hand transaction control to SQLAlchemy's "begin" hook below (the pysqlite
        # driver's own implicit BEGIN cannot be made IMMEDIATE)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("fleetwarden_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_engine(url: URL, schema: str | None) -> Engine:
    connect_args: dict[str, Any] = {}
    if schema is None:
        schema = _search_path_from_url(url)
    elif not _SCHEMA_RE.match(schema):
        raise StoreError(f"invalid schema name {schema!r}")
    else:
        connect_args["options"] = f"-csearch_path={schema}"
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if schema:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return engine


def _search_path_from_url(url: URL) -> str | None:
    """The first schema of a ``?options=-csearch_path=...`` URL, so it can be created."""
    options = url.query.get("options")
    if isinstance(options, tuple):
        options = " ".join(options)
    if not options:
        return None
    m = re.search(r"search_path\s*=\s*([^\s,]+)", unquote(options))
    if not m:
        return None
    schema = m.group(1).strip('"')
    if not _SCHEMA_RE.match(schema):
        raise StoreError(f"invalid schema name {schema!r} in the database URL")
    return schema
