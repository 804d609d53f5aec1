"""``/api/v1/vendors``: the vendor register with each vendor's risk score."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import inventory, queries

router = APIRouter(prefix="/vendors", tags=["vendors"])


@router.get("")
def list_vendors(store: Any = Depends(store_of), page: Paging = Depends(paging), _p: Principal = Depends(require("read"))) -> dict:
    return queries.page(inventory.list_vendors(store), limit=page.limit, offset=page.offset)
