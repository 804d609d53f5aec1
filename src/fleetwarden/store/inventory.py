"""Inventory writes that :class:`~fleetwarden.store.repository.Store` does not have as methods:
the vendor register imported as a whole (one transaction, one audit entry)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select

from fleetwarden.store import audit
from fleetwarden.store.models import Vendor
from fleetwarden.store.repository import Store, StoreError, _audit

# Vendor columns a caller may set: all but the ones the store keeps itself.
VENDOR_FIELDS = frozenset(Vendor.__table__.columns.keys()) - {"id", "created_at"}


def upsert_vendors(store: Store, rows: Sequence[Mapping[str, Any]], *, actor: str = "system") -> int:
    """Create or update vendors by ``name`` in ONE transaction (all or none); returns how many
    changed.  ``None`` never erases a known value; ``attributes`` merge.  Audited as one
    ``vendors.upsert`` entry naming the vendors that changed."""
    for r in rows:
        unknown = set(r) - VENDOR_FIELDS
        if unknown:
            raise StoreError(f"unknown vendor field(s) {', '.join(sorted(unknown))}; put extras in 'attributes'")
        if not r.get("name"):
            raise StoreError("a vendor needs a name")
    with store._write() as s:
        existing = {v.name: v for v in s.scalars(select(Vendor).where(Vendor.name.in_([r["name"] for r in rows])))}
        changed = [r["name"] for r in rows if _merge_vendor(s, existing, r)]
        if changed:
            s.flush()
            _audit(s, actor, "vendors.upsert", "vendors", {"changed": len(changed), "names": changed[:50]})
        return len(changed)


def _merge_vendor(s: Any, existing: dict[str, Vendor], r: Mapping[str, Any]) -> bool:
    v = existing.get(r["name"])
    if v is None:
        v = existing[r["name"]] = Vendor(name=r["name"], attributes={}, auth_support=[], created_at=time.time())
        s.add(v)
        changed = True
    else:
        changed = False
    for key, value in r.items():
        if value is None or key == "name":
            continue
        if key == "attributes":
            value = {**(v.attributes or {}), **audit.normalize_details(value)}
        if getattr(v, key) != value:
            setattr(v, key, value)
            changed = True
    return changed
