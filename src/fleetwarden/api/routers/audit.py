"""``/api/v1/audit``: the hash-chained audit log (newest entries, verification)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import store_of
from fleetwarden.app import audit

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_entries(
    store: Any = Depends(store_of), limit: int = Query(50, ge=1, le=500),
    _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    """The newest ``limit`` entries (oldest of them first) and the chain's head."""
    return {"head": audit.audit_head(store), "items": audit.list_entries(store, limit=limit)}


@router.get("/verify")
def verify(store: Any = Depends(store_of), _p: Principal = Depends(require("read"))) -> dict:
    """Walk the chain and hold it against the head record and the anchor file (read only: the
    anchor file is not moved; ``fleetwarden audit verify`` does that)."""
    return audit.verify_audit(store, save=False).to_dict()
