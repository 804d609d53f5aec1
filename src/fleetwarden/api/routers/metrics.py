"""``/api/v1/metrics`` (JSON) and ``/metrics`` (Prometheus text): detection quality and fleet posture."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import store_of
from fleetwarden.app import metrics

router = APIRouter(prefix="/metrics", tags=["metrics"])
prometheus_router = APIRouter(tags=["metrics"])


@router.get("")
def get_metrics(
    store: Any = Depends(store_of), by: Literal["site", "class"] | None = None,
    _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    """Every metric: overall, daily, drift, posture (and groups with ``by``)."""
    return metrics.security_metrics(store, by=by)


@router.get("/posture")
def get_posture(store: Any = Depends(store_of), _p: Principal = Depends(require("read"))) -> dict:
    return metrics.fleet_posture(store)


@prometheus_router.get("/metrics", response_class=PlainTextResponse)
def prometheus(store: Any = Depends(store_of), _p: Principal = Depends(require("read"))) -> str:
    """The Prometheus text exposition (scrape with a viewer token as the bearer)."""
    return metrics.prometheus_text(metrics.security_metrics(store))
