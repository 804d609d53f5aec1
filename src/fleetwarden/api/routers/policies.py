"""``/api/v1/policies`` and ``/api/v1/playbooks``: the response policy (read, dry run) and playbooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import store_of
from fleetwarden.app import queries, response

router = APIRouter(tags=["policies"])


@router.get("/policies/response")
def get_policy(_p: Principal = Depends(require("read"))) -> dict:
    return queries.policy_view()


@router.get("/policies/response/dry-run")
def dry_run(
    store: Any = Depends(store_of), since: datetime | None = Query(None, description="ISO 8601; UTC without an offset"),
    _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    """What the policy would propose for every stored incident (``last_seen >= since``); changes nothing."""
    return response.dry_run_policy(store, since=since.isoformat() if since else None)


@router.get("/playbooks")
def playbooks(_p: Principal = Depends(require("read"))) -> dict:
    return response.load_playbooks()
