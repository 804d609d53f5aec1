"""Opening the store for a service: one place that turns ``--db`` (or ``FLEETWARDEN_DB``) into an
open :class:`~fleetwarden.store.Store` and closes it again, with errors a person can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fleetwarden.config import database_url
from fleetwarden.core.text import redact_url
from fleetwarden.store import Store, open_store

__all__ = ["shown_url", "store_at"]


@contextmanager
def store_at(db: str | None) -> Iterator[Store]:
    """The store at ``db`` (None: ``FLEETWARDEN_DB``, else the SQLite file in ``FLEETWARDEN_HOME``),
    migrated, closed on exit.  A URL that cannot be used raises :class:`~fleetwarden.store.StoreError`
    with the driver's reason and the URL's password masked."""
    store = open_store(database_url(db))
    try:
        yield store
    finally:
        store.close()


def shown_url(db: str | None) -> str:
    """The database URL as it may be printed or stored: password masked."""
    return redact_url(database_url(db))
