"""The detection context: what the inventory and the operator's settings tell the analytics.

Built by the control plane (:mod:`fleetwarden.control.inventory`) from the store, an inventory
file or the simulator, and handed to every analytic and to the correlator.  Plain data: no
analytic keeps a reference to anything it could write back through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeviceInfo:
    """What the inventory knows about a device, as the detectors need it."""

    device_id: str
    ip: str | None = None
    mac: str | None = None
    device_class: str | None = None
    vendor: str | None = None
    model: str | None = None
    site: str | None = None
    country: str | None = None
    firmware: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """Inventory and settings shared by all analytics during one run."""

    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    # ip -> device_id, for flows and DNS records that carry only addresses
    ip_to_device: dict[str, str] = field(default_factory=dict)
    # operating hours (local to the fleet), used for off-hours checks
    working_hours: tuple[int, int] = (7, 19)
    # known-good firmware images: (vendor, model, version) -> SHA-256 hex digests
    firmware_catalog: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    # plaintext-protocol policy for novelty.py (a novelty.PlaintextPolicy; None: its default),
    # and a switch for the whole policy (None: the policy's own setting)
    plaintext_policy: Any = None
    require_encryption: bool | None = None

    def add_device(self, info: DeviceInfo) -> None:
        self.devices[info.device_id] = info
        if info.ip:
            self.ip_to_device[info.ip] = info.device_id

    def entity_for_ip(self, ip: str) -> str:
        return self.ip_to_device.get(ip, ip)
