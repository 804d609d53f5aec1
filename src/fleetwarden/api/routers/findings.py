"""``/api/v1/findings``: stored findings, newest first, filtered and paged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import queries

router = APIRouter(prefix="/findings", tags=["findings"])


@router.get("")
def list_findings(
    store: Any = Depends(store_of), page: Paging = Depends(paging),
    entity: str | None = Query(None, max_length=200), category: str | None = Query(None, max_length=50),
    detector: str | None = Query(None, max_length=100), incident_id: int | None = Query(None, ge=1, le=2**62),
    since: float | None = Query(None, ge=0, le=1e11), _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    return queries.finding_page(
        store, limit=page.limit, offset=page.offset, entity=entity, category=category, detector=detector,
        incident_id=incident_id, since=since,
    )  # fmt: skip
