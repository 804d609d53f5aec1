"""Thin read and write services for the API and the dashboard: pages of devices, incidents, findings,
actions and audit entries; one device saved or moved along its lifecycle; operators by id.

Contract: every function takes the open store first and returns plain JSON-ready values; every write
takes ``actor`` (the authenticated user) and is audited by the store.  Pages are ``offset``/``limit``
windows (``limit`` 1..:data:`MAX_PAGE`) with ``next_offset`` (None on the last page).

Blind spot: lists the store cannot page (devices, actions, certificates) are read whole and sliced
here; fine for fleets of tens of thousands of devices, not for millions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetwarden.app import identity as identity_svc
from fleetwarden.app import inventory as inventory_svc
from fleetwarden.control import inventory as inv
from fleetwarden.core.errors import InputError

__all__ = [
    "MAX_PAGE",
    "device_page",
    "finding_page",
    "get_device",
    "incident_page",
    "page",
    "save_device",
    "set_lifecycle",
]

MAX_PAGE = 500


def _check_window(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise InputError(f"offset must be >= 0, got {offset}")


def page(rows: Sequence[dict[str, Any]], *, limit: int, offset: int) -> dict[str, Any]:
    """One window of ``rows`` with the total and the next offset."""
    _check_window(limit, offset)
    items = list(rows[offset : offset + limit])
    nxt = offset + limit if offset + limit < len(rows) else None
    return {"items": items, "total": len(rows), "limit": limit, "offset": offset, "next_offset": nxt}


def _fetched_page(rows: list[dict[str, Any]], *, limit: int, offset: int) -> dict[str, Any]:
    """A page read with ``limit + 1`` rows from the store (one extra tells whether more follow)."""
    more = len(rows) > limit
    nxt = offset + limit if more else None
    return {"items": rows[:limit], "total": None, "limit": limit, "offset": offset, "next_offset": nxt}


# ---------------------------------------------------------------------------- devices


def device_page(
    store: Any, *, limit: int = 50, offset: int = 0, lifecycle: str | None = None, site: str | None = None,
    device_class: str | None = None, vendor: str | None = None, discovered: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Devices (with vendor risk, :func:`fleetwarden.app.inventory.list_devices`), filtered, paged."""
    _check_window(limit, offset)
    wanted = {"lifecycle": lifecycle, "site": site, "device_class": device_class, "discovered": discovered}
    rows = [
        d for d in inventory_svc.list_devices(store)
        if all(v is None or d.get(k) == v for k, v in wanted.items())
        and (vendor is None or (d.get("vendor") or "").lower() == vendor.lower())
    ]  # fmt: skip
    return page(rows, limit=limit, offset=offset)


def get_device(store: Any, device_id: str) -> dict[str, Any]:
    dev = store.get_device(device_id)
    if dev is None:
        raise InputError(f"no such device {device_id[:200]!r}")
    return dev.to_dict()


def save_device(store: Any, row: dict[str, Any], *, actor: str) -> dict[str, Any]:
    """Create or update one device from an inventory row (the import's cleaning rules); returns it."""
    cleaned, problems = inv.clean_device(row)
    if problems:
        raise InputError("bad device: " + "; ".join(problems[:10]))
    store.upsert_devices([cleaned], actor=actor)
    return get_device(store, cleaned["device_id"])


def set_lifecycle(store: Any, device_id: str, lifecycle: str, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Move a device to ``lifecycle`` (audited with ``actor`` and ``reason``)."""
    return store.set_device_lifecycle(device_id, lifecycle, actor=actor, reason=reason).to_dict()


# ---------------------------------------------------------------------------- incidents, findings


def incident_row(rec: Any) -> dict[str, Any]:
    return {**rec.to_contract(), "id": rec.id, "status": rec.status, "campaign": rec.campaign}


def incident_page(
    store: Any, *, limit: int = 50, offset: int = 0, status: str | None = None, entity: str | None = None,
    category: str | None = None, min_risk: int | None = None, since: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Incidents, highest risk first, filtered and paged in the database."""
    _check_window(limit, offset)
    rows = store.list_incidents(
        status=status, entity=entity, category=category, min_risk=min_risk, since=since,
        limit=limit + 1, offset=offset,
    )  # fmt: skip
    return _fetched_page([incident_row(r) for r in rows], limit=limit, offset=offset)


def finding_row(rec: Any) -> dict[str, Any]:
    return rec.to_dict()


def finding_page(
    store: Any, *, limit: int = 50, offset: int = 0, entity: str | None = None, category: str | None = None,
    detector: str | None = None, incident_id: int | None = None, since: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Findings, newest first, filtered and paged in the database."""
    _check_window(limit, offset)
    rows = store.list_findings(
        entity=entity, category=category, detector=detector, incident_id=incident_id, since=since,
        limit=limit + 1, offset=offset,
    )  # fmt: skip
    return _fetched_page([finding_row(r) for r in rows], limit=limit, offset=offset)


def set_incident_status(store: Any, incident_id: int, status: str, *, actor: str, note: str = "") -> dict[str, Any]:
    """Acknowledge, close or reopen an incident (audited)."""
    return incident_row(store.set_incident_status(incident_id, status, actor=actor, note=note))


# ---------------------------------------------------------------------------- response policy, onboarding


def policy_view() -> dict[str, Any]:
    """The response policy in force (packaged, with ``FLEETWARDEN_HOME``'s override) as plain data."""
    import dataclasses

    from fleetwarden.app.response import load_policy

    policy = load_policy()
    return {**dataclasses.asdict(policy), "approval_ttl_seconds": policy.approval_ttl_seconds}


def enrol_request(store: Any, request: dict[str, Any], *, actor: str) -> dict[str, Any]:
    """Verify one provisioning request and act on its verdict with the CA on this host (its
    passphrase from ``FLEETWARDEN_CA_PASSPHRASE`` or the generated file); the certificate PEM
    (public) is returned when accepted."""
    from fleetwarden.app import onboarding

    result = onboarding.enrol(store, request, authority=identity_svc.load_authority(), actor=actor)
    out = result.to_dict()
    out.pop("certificate_path", None)  # a server path means nothing to the caller
    out["certificate_pem"] = result.certificate_pem.decode() if result.certificate_pem else None
    return out
