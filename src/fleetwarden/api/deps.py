"""Shared route helpers: the store of the app, its ingestion session, pagination parameters, the actor name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Query, Request

from fleetwarden.app.queries import MAX_PAGE

__all__ = ["Paging", "ingestion_of", "paging", "store_of"]


def store_of(request: Request) -> Any:
    """The app's open store (services take it as their first argument)."""
    return request.app.state.store


def ingestion_of(request: Request) -> Any:
    """The app's long-lived ingestion session (:class:`fleetwarden.app.ingest.IngestSession`)."""
    return request.app.state.ingestion


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(
    limit: int = Query(50, ge=1, le=MAX_PAGE, description=f"rows per page, 1..{MAX_PAGE}"),
    offset: int = Query(0, ge=0, le=10_000_000, description="rows to skip (next_offset of the previous page)"),
) -> Paging:
    return Paging(limit, offset)
