"""The identity audit service: the store's certificates, devices and operators, and the connections
of broker logs, through the pure checks of :mod:`fleetwarden.control.identity_audit`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fleetwarden.control.identity_audit import audit_identity

__all__ = ["identity_audit"]

MAX_CONNECTIONS = 1_000_000  # records read from broker logs, in all


def identity_audit(store: Any, *, broker_logs: Iterable[Path] = (), now: float | None = None) -> dict[str, Any]:
    """Run every identity check; returns ``{"checks": [...], "counts": {...}, "skipped": N}``."""
    from fleetwarden.app.identity import list_certificates, list_users
    from fleetwarden.app.inventory import list_devices

    certificates = list_certificates(store)
    devices = list_devices(store)
    operators = list_users(store)
    connections, skipped = _connections(broker_logs)
    checks = audit_identity(certificates, devices, operators, connections, now=now or time.time())
    counts = {
        "certificates": len(certificates), "devices": len(devices), "operators": len(operators),
        "connections": len(connections),
    }  # fmt: skip
    return {"checks": [c.to_dict() for c in checks], "counts": counts, "skipped": skipped}


def _connections(paths: Iterable[Path]) -> tuple[list[dict], int]:
    from fleetwarden.sources import ReadStats, read_events

    rows: list[dict] = []
    stats = ReadStats()
    for path in paths:
        for batch in read_events(path, skip_bad=True, stats=stats, fmt="mosquitto"):
            rows += batch.to_pylist()[: MAX_CONNECTIONS - len(rows)]
    return rows, stats.skipped
