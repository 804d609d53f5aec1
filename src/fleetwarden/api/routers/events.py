"""``POST /api/v1/events``: JSON batches of events from gateways (service role, bearer token) or from
a device authenticated by its client certificate over mutual TLS (see :mod:`fleetwarden.api.tls`).
Every batch goes through the app's one long-lived ingestion session
(:class:`fleetwarden.app.ingest.IngestSession`): per-device state carries across requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.api.auth import Principal
from fleetwarden.api.deps import ingestion_of
from fleetwarden.api.tls import ingest_principal

router = APIRouter(tags=["events"])

HARD_MAX = 50_000  # the schema's bound; the app's max_batch (default 5000) is the effective one


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(
        max_length=HARD_MAX,
        description="events as in JSON lines: each with 'kind' (flow, dns, auth, telemetry, firmware_report, "
        "provision, command) and the fields of core/events.py",
    )


@router.post("/events")
def post_events(
    body: EventsIn, request: Request, ingestion: Any = Depends(ingestion_of),
    p: Principal = Depends(ingest_principal),
) -> dict:  # fmt: skip
    """Validate, detect on and record a batch; returns counts, the findings it completed and how
    many incidents they make.  Per-device state carries across batches: a windowed finding (a
    burst, a beacon, a scan) may complete on a later batch, or at shutdown."""
    device = p.name if p.via == "certificate" else None
    return ingestion.ingest(
        body.events, actor=p.name, device_id=device, max_events=request.app.state.settings.max_batch
    )
