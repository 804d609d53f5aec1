"""``/api/v1/firmware`` and ``/api/v1/rollouts``: the image registry, compliance, staged rollouts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import firmware, queries, rollout

router = APIRouter(tags=["firmware"])

RolloutId = Path(ge=1, le=2**62)


@router.get("/firmware/images")
def list_images(store: Any = Depends(store_of), page: Paging = Depends(paging), _p: Principal = Depends(require("read"))) -> dict:
    return queries.page(firmware.list_images(store), limit=page.limit, offset=page.offset)


@router.get("/firmware/compliance")
def compliance(
    store: Any = Depends(store_of), by: Literal["class", "site", "vendor"] = "class",
    _p: Principal = Depends(require("read")),
) -> list[dict]:  # fmt: skip
    return firmware.compliance_report(store, by=by)


@router.get("/firmware/priority")
def priority(store: Any = Depends(store_of), page: Paging = Depends(paging), _p: Principal = Depends(require("read"))) -> dict:
    return queries.page(firmware.priority_report(store), limit=page.limit, offset=page.offset)


@router.get("/rollouts")
def list_rollouts(store: Any = Depends(store_of), _p: Principal = Depends(require("read"))) -> list[dict]:
    return rollout.list_rollouts(store)


@router.get("/rollouts/{rollout_id}")
def rollout_status(rollout_id: int = RolloutId, store: Any = Depends(store_of), _p: Principal = Depends(require("read"))) -> dict:
    return rollout.rollout_status(store, rollout_id)


@router.post("/rollouts/{rollout_id}/advance")
def advance(rollout_id: int = RolloutId, store: Any = Depends(store_of), p: Principal = Depends(require("operator"))) -> dict:
    """Start the next wave when the current one is healthy and the window is open (else 400 saying why)."""
    return rollout.advance(store, rollout_id, actor=p.name)
