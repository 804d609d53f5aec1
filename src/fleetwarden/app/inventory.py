"""The inventory services: import devices from a file into the store, list them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetwarden.control.inventory import read_inventory, store_row

__all__ = ["import_inventory", "list_devices"]


def import_inventory(path: str | Path, store: Any, *, actor: str = "cli") -> tuple[int, int]:
    """Register the devices of an inventory file; returns (devices read, devices added or changed).
    The file is checked whole before anything is written."""
    rows = read_inventory(path)
    return len(rows), store.upsert_devices([store_row(r) for r in rows], actor=actor)


def list_devices(store: Any) -> list[dict[str, Any]]:
    return [d.to_dict() for d in store.list_devices()]
