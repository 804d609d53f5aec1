"""``/api/v1/certificates``: the device certificates the CA issued (no PEM in lists) and revocation.

Issuing stays on the command line (``fleetwarden ca issue``) or goes through onboarding: a key the
server generated would have to travel in a response."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import identity, queries

router = APIRouter(prefix="/certificates", tags=["certificates"])

Reason = Literal["unspecified", "key-compromise", "ca-compromise", "affiliation-changed", "cessation-of-operation"]


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason = "unspecified"


@router.get("")
def list_certificates(
    store: Any = Depends(store_of), page: Paging = Depends(paging),
    device_id: str | None = Query(None, min_length=1, max_length=64),
    status: Literal["active", "revoked", "superseded"] | None = None, _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    rows = identity.list_certificates(store, device_id=device_id, status=status)
    return queries.page(rows, limit=page.limit, offset=page.offset)


@router.post("/{device_id}/revoke")
def revoke(
    body: RevokeIn | None = None, device_id: str = Path(min_length=1, max_length=64),
    store: Any = Depends(store_of), p: Principal = Depends(require("operator")),
) -> dict:  # fmt: skip
    """Revoke every active certificate of a device (published by the next CRL; ingestion refuses it at once)."""
    serials = identity.revoke(store, device_id, reason=(body or RevokeIn()).reason, actor=p.name)
    return {"device_id": device_id, "revoked": serials}
