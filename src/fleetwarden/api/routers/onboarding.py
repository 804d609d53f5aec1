"""``/api/v1/onboarding``: enrolments, nonces for new devices, provisioning requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import store_of
from fleetwarden.app import onboarding, queries

router = APIRouter(prefix="/onboarding", tags=["onboarding"])


@router.get("/enrolments")
def list_enrolments(
    store: Any = Depends(store_of), limit: int = Query(50, ge=1, le=500), _p: Principal = Depends(require("read"))
) -> dict:
    return {"items": onboarding.list_enrolments(store, limit=limit)}


@router.post("/nonce")
def new_nonce(store: Any = Depends(store_of), p: Principal = Depends(require("operator", "service"))) -> dict:
    """A fresh single-use enrolment nonce (only its hash is stored)."""
    return {"nonce": onboarding.issue_nonce(store, actor=p.name)}


@router.post("/requests")
def provisioning_request(
    request: dict[str, Any] = Body(..., max_length=64, description="a signed provisioning request (JSON)"),
    store: Any = Depends(store_of), p: Principal = Depends(require("operator", "service")),
) -> dict:  # fmt: skip
    """Verify a provisioning request; when accepted the device's certificate (PEM) is returned."""
    return queries.enrol_request(store, request, actor=p.name)
