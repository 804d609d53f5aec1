"""``/api/v1/actions``: the graduated response's actions: list, approve, deny, execute, roll back.

Approving, executing and rolling back need the operator role; the adapters' settings (broker,
webhook, nftables folder) come from the server's environment (``FLEETWARDEN_BROKER_URL``, …), the
policy from the packaged one or ``FLEETWARDEN_HOME``'s override."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import queries, response

router = APIRouter(prefix="/actions", tags=["actions"])

ActionId = Path(ge=1, le=2**62)
Status = Literal["proposed", "approved", "executed", "reverted", "rejected", "failed", "expired"]


class DenyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=500)


@router.get("")
def list_actions(
    store: Any = Depends(store_of), page: Paging = Depends(paging), status: Status | None = None,
    _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    return queries.page(response.list_actions(store, status=status), limit=page.limit, offset=page.offset)


@router.post("/{action_id}/approve")
def approve(action_id: int = ActionId, store: Any = Depends(store_of), p: Principal = Depends(require("operator"))) -> dict:
    """Approve as the calling user (who may not approve an action they requested themselves)."""
    return response.approve(store, action_id, approver=p.name)


@router.post("/{action_id}/deny")
def deny(
    body: DenyIn | None = None, action_id: int = ActionId, store: Any = Depends(store_of),
    p: Principal = Depends(require("operator")),
) -> dict:  # fmt: skip
    return response.deny(store, action_id, actor=p.name, note=body.note if body else "")


@router.post("/{action_id}/execute")
def execute(action_id: int = ActionId, store: Any = Depends(store_of), p: Principal = Depends(require("operator"))) -> dict:
    return response.execute_action(store, action_id, actor=p.name)


@router.post("/{action_id}/rollback")
def rollback(action_id: int = ActionId, store: Any = Depends(store_of), p: Principal = Depends(require("operator"))) -> dict:
    return response.rollback_action(store, action_id, actor=p.name)
