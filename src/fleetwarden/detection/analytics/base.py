"""The contract every behaviour analytic keeps, and the context it is given.

An analytic consumes event batches of the kinds it names, in time order, and returns
findings as soon as its evidence is complete.  It keeps its own bounded state between
batches, so the same object serves file replay (one call per file chunk) and live
streams (one call per bus message batch).  ``flush`` is called at the end of a replay
(or when a stream window closes) to emit what is still pending.

Discovery convention: each analytics module exposes a module-level ``ANALYTICS`` list of
its analytic classes, each constructible without arguments (defaults are the production
thresholds).  :func:`fleetwarden.detection.engine.default_analytics` imports the modules
it knows by name and instantiates every class listed; a module that is absent is skipped.
An analytic that also takes ARP records (``ts, src_mac, src_ip, dst_ip, op``) offers
``update_arp(table, ctx) -> list[Finding]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding


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


class Analytic(Protocol):
    """A behaviour analytic: scan, beacon, flood, DNS abuse, exfiltration, auth…"""

    name: str
    kinds: tuple[str, ...]

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Consume one batch (records in time order); return findings now complete."""
        ...

    def flush(self, ctx: Context) -> list[Finding]:
        """Emit what is still pending at the end of the input."""
        ...
