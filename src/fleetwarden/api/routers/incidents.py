"""``/api/v1/incidents``: list (filters, pages), one incident with its story and playbook, verdicts,
status changes."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import queries, response, verdicts

router = APIRouter(prefix="/incidents", tags=["incidents"])

IncidentId = Path(ge=1, le=2**62)


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["true-positive", "false-positive"]
    reason: str = Field(min_length=1, max_length=1000)


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["open", "acknowledged", "closed"]
    note: str = Field("", max_length=500)


@router.get("")
def list_incidents(
    store: Any = Depends(store_of), page: Paging = Depends(paging),
    status: Literal["open", "acknowledged", "closed"] | None = None,
    entity: str | None = Query(None, max_length=200), category: str | None = Query(None, max_length=50),
    min_risk: int | None = Query(None, ge=0, le=100), since: float | None = Query(None, ge=0, le=1e11),
    _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    """Incidents, highest risk first (``since``: last seen at or after, epoch seconds)."""
    return queries.incident_page(
        store, limit=page.limit, offset=page.offset, status=status, entity=entity, category=category,
        min_risk=min_risk, since=since,
    )  # fmt: skip


@router.get("/{incident_id}")
def get_incident(
    incident_id: int = IncidentId, store: Any = Depends(store_of), _p: Principal = Depends(require("read"))
) -> dict:
    """The incident, its story (findings), the device, the playbook, the policy's proposal, actions."""
    return response.show_incident(store, incident_id)


@router.post("/{incident_id}/verdict")
def post_verdict(
    body: VerdictIn, incident_id: int = IncidentId, store: Any = Depends(store_of),
    p: Principal = Depends(require("analyst")),
) -> dict:  # fmt: skip
    """An analyst's verdict (true-/false-positive) with a reason; the newest one counts."""
    return verdicts.record_verdict(store, incident_id, body.verdict, body.reason, analyst=p.name)


@router.post("/{incident_id}/status")
def post_status(
    body: StatusIn, incident_id: int = IncidentId, store: Any = Depends(store_of),
    p: Principal = Depends(require("analyst", "operator")),
) -> dict:  # fmt: skip
    """Acknowledge, close or reopen an incident (audited)."""
    return queries.set_incident_status(store, incident_id, body.status, actor=p.name, note=body.note)


@router.post("/{incident_id}/actions")
def propose_actions(
    incident_id: int = IncidentId, store: Any = Depends(store_of), p: Principal = Depends(require("operator"))
) -> list[dict]:
    """Record what the response policy proposes for this incident (one live action per kind)."""
    return response.propose_for(store, incident_id, actor=p.name)
