"""``/api/v1/devices``: the inventory (list with filters and pages, one device, create/update, lifecycle)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.api.auth import Principal, require
from fleetwarden.api.deps import Paging, paging, store_of
from fleetwarden.app import queries

router = APIRouter(prefix="/devices", tags=["devices"])

Lifecycle = Literal["ordered", "provisioned", "active", "quarantined", "retired"]
DeviceId = Path(min_length=1, max_length=200)
_S = {"max_length": 200}


class DeviceIn(BaseModel):
    """A device to register or update (the inventory file's columns; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(min_length=1, max_length=200)
    name: str | None = Field(None, **_S)
    ip: str | None = Field(None, max_length=64)
    ips: list[str] | None = Field(None, max_length=64)
    mac: str | None = Field(None, max_length=32)
    serial: str | None = Field(None, **_S)
    vendor: str | None = Field(None, **_S)
    model: str | None = Field(None, **_S)
    device_class: str | None = Field(None, max_length=100)
    firmware_version: str | None = Field(None, max_length=100)
    owner: str | None = Field(None, **_S)
    site: str | None = Field(None, **_S)
    zone: str | None = Field(None, max_length=100)
    network_role: str | None = Field(None, max_length=100)
    data_class: str | None = Field(None, max_length=100)
    criticality: Literal["low", "medium", "high", "critical"] | None = None
    end_of_support: date | None = None
    lifecycle: Lifecycle | None = None
    attributes: dict[str, Any] | None = Field(None, max_length=100)


class LifecycleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lifecycle: Lifecycle
    reason: str = Field("", max_length=500)


@router.get("")
def list_devices(
    store: Any = Depends(store_of), page: Paging = Depends(paging),
    lifecycle: Lifecycle | None = None, site: str | None = Query(None, max_length=200),
    device_class: str | None = Query(None, max_length=100), vendor: str | None = Query(None, max_length=200),
    discovered: bool | None = None, _p: Principal = Depends(require("read")),
) -> dict:  # fmt: skip
    """Devices by id, with vendor risk; filters combine with AND."""
    return queries.device_page(
        store, limit=page.limit, offset=page.offset, lifecycle=lifecycle, site=site,
        device_class=device_class, vendor=vendor, discovered=discovered,
    )  # fmt: skip


@router.get("/{device_id}")
def get_device(device_id: str = DeviceId, store: Any = Depends(store_of), _p: Principal = Depends(require("read"))) -> dict:
    return queries.get_device(store, device_id)


@router.put("/{device_id}")
def put_device(
    body: DeviceIn, device_id: str = DeviceId, store: Any = Depends(store_of),
    p: Principal = Depends(require("operator")),
) -> dict:  # fmt: skip
    """Create or update a device (fields left out or null keep their stored value)."""
    if body.device_id != device_id:
        raise HTTPException(status_code=422, detail="device_id in the body differs from the path")
    row = body.model_dump(exclude_none=True)
    if "end_of_support" in row:
        row["end_of_support"] = row["end_of_support"].isoformat()
    return queries.save_device(store, row, actor=p.name)


@router.post("/{device_id}/lifecycle")
def set_lifecycle(
    body: LifecycleIn, device_id: str = DeviceId, store: Any = Depends(store_of),
    p: Principal = Depends(require("operator")),
) -> dict:  # fmt: skip
    """Move a device to another lifecycle state (audited with the user and the reason)."""
    return queries.set_lifecycle(store, device_id, body.lifecycle, actor=p.name, reason=body.reason)
