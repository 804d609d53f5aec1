"""Alembic environment for FleetWarden's store.

``fleetwarden.store.open_store`` runs migrations programmatically and hands over its own
connection in ``config.attributes["connection"]`` (so SQLite pragmas and a PostgreSQL
schema apply); the ``sqlalchemy.url`` option is the fallback for the ``alembic`` command.

A new revision, after changing the models (no alembic.ini needed)::

    from alembic import command; from alembic.config import Config
    cfg = Config(); cfg.set_main_option("script_location", "src/fleetwarden/store/migrations")
    cfg.set_main_option("sqlalchemy.url", "sqlite:////tmp/fw-at-head.db")  # a database at head
    command.revision(cfg, message="what changed", autogenerate=True, rev_id="0002")
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from fleetwarden.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:
    # batch mode lets later migrations alter SQLite tables (copy-and-move)
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
