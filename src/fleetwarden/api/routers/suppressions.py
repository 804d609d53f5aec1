"""``/api/v1/suppressions``: maintenance windows and analyst-approved exceptions: list, add, lift.

Adding and lifting need the analyst role (or admin) and are audited under the calling user; each
re-evaluates the open incidents at once and the response says which were closed, reopened, updated
or opened (:mod:`fleetwarden.app.suppression`).  The body mirrors ``fleetwarden suppress add``;
times are ISO 8601 (``2026-12-24T08:00Z``), relative to now (``+2h``, ``30d``) or epoch seconds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import store_of
from fleetwarden.app import suppression

router = APIRouter(prefix="/suppressions", tags=["suppressions"])

RuleId = Path(ge=1, le=2**62)
When = Annotated[float, Field(ge=0, le=1e11)] | Annotated[str, Field(min_length=1, max_length=40)]


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["maintenance", "exception"]
    reason: str = Field(min_length=1, max_length=1000)
    expires: When
    starts: When | None = None
    device_id: str | None = Field(None, max_length=200)
    site: str | None = Field(None, max_length=200)
    device_class: str | None = Field(None, max_length=100)
    category: str | None = Field(None, max_length=50)
    destination: str | None = Field(None, max_length=253)


def _result(row: Any, done: dict[str, list[int]]) -> dict:
    return {"suppression": row.to_dict(), "incidents": done}


@router.get("")
def list_suppressions(
    store: Any = Depends(store_of), include_removed: bool = False, _p: Principal = Depends(require("read"))
) -> list[dict]:
    """The rules, oldest first, each with its ``state`` (in force, expired, removed)."""
    return suppression.list_rules(store, include_removed=include_removed)


@router.post("")
def add_suppression(
    body: SuppressionIn, store: Any = Depends(store_of), p: Principal = Depends(require("analyst"))
) -> dict:
    """Add a rule as the calling user, then re-evaluate the open incidents."""
    fields = {"kind": body.kind, "reason": body.reason, "expires_at": body.expires, "starts_at": body.starts,
              "device_id": body.device_id, "site": body.site, "device_class": body.device_class,
              "category": body.category, "destination": body.destination}  # fmt: skip
    return _result(*suppression.add(store, fields, actor=p.name))


@router.delete("/{rule_id}")
def remove_suppression(
    rule_id: int = RuleId, store: Any = Depends(store_of), p: Principal = Depends(require("analyst"))
) -> dict:
    """Lift a rule now as the calling user; what it closed reopens unless another rule explains it."""
    return _result(*suppression.remove(store, rule_id, actor=p.name))
