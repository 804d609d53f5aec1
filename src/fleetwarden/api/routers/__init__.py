"""The API's routers, one per resource; :data:`ALL_ROUTERS` go under ``/api/v1``."""

from __future__ import annotations

from fleetwarden.api.routers import (
    actions,
    audit,
    certificates,
    devices,
    events,
    findings,
    firmware,
    incidents,
    metrics,
    onboarding,
    policies,
    session,
    suppressions,
    vendors,
)

prometheus_router = metrics.prometheus_router

ALL_ROUTERS = [
    session.router,
    devices.router,
    incidents.router,
    findings.router,
    actions.router,
    audit.router,
    metrics.router,
    events.router,
    vendors.router,
    certificates.router,
    onboarding.router,
    firmware.router,
    policies.router,
    suppressions.router,
]

__all__ = ["ALL_ROUTERS", "prometheus_router"]
