"""Shared pieces of the network behaviour analytics (scan, beacon, flood, dns, exfil, novelty).

Address classification (private, multicast/broadcast) cached per distinct address, the
sliding distinct-count window the rate detectors share, and the helper that turns an
address into the entity/ip/mac a :class:`~fleetwarden.findings.Finding` carries.
Everything here is bounded: windows expire by event time and cap the items they keep.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from fleetwarden.detection.analytics.base import Context
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding

MAX_RECORD_IDS = 50

# Zeek conn_state values that mean "no application exchange happened".
FAILED_STATES = frozenset({"S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR", "OTH", "S1"})


@lru_cache(maxsize=65_536)
def _addr(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


@lru_cache(maxsize=65_536)
def is_private(ip: str) -> bool:
    """Private, loopback, link-local or otherwise non-routable (inside the monitored network)."""
    a = _addr(ip)
    return a is not None and (a.is_private or a.is_link_local or a.is_loopback)


@lru_cache(maxsize=65_536)
def is_group(ip: str) -> bool:
    """Multicast or broadcast: traffic to these is discovery, never a peer to count."""
    a = _addr(ip)
    if a is None:
        return True
    if a.is_multicast or a.is_unspecified:
        return True
    if a.version == 4:
        last = int(a) & 0xFF
        # x.x.x.255 is the broadcast of any /24 or wider subnet (the common IoT LAN shape).
        return last == 255 or int(a) == 0xFFFFFFFF
    return False


def group_mask(ips: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_group` over an object array of addresses (one lookup per distinct value)."""
    if len(ips) == 0:
        return np.zeros(0, dtype=bool)
    uniq, inv = np.unique(ips.astype(str), return_inverse=True)
    return np.fromiter((is_group(u) for u in uniq), dtype=bool, count=len(uniq))[inv]


def private_mask(ips: np.ndarray) -> np.ndarray:
    if len(ips) == 0:
        return np.zeros(0, dtype=bool)
    uniq, inv = np.unique(ips.astype(str), return_inverse=True)
    return np.fromiter((is_private(u) for u in uniq), dtype=bool, count=len(uniq))[inv]


def sorted_by_time(batch: EventBatch) -> EventBatch:
    ts = batch.np("ts")
    if len(ts) > 1 and np.any(np.diff(ts) < 0):
        return batch.sort_by_time()
    return batch


def entity_ref(ctx: Context, ip: str, mac: str | None = None) -> dict[str, Any]:
    """Entity, ip, mac and device id for a Finding about the host at ``ip``."""
    device_id = ctx.ip_to_device.get(ip)
    info = ctx.devices.get(device_id) if device_id else None
    if mac is None and info is not None:
        mac = info.mac
    return {"entity": device_id or ip, "ip": ip, "mac": mac or None, "device_id": device_id}


def device_class(ctx: Context, ip: str) -> str | None:
    device_id = ctx.ip_to_device.get(ip)
    info = ctx.devices.get(device_id) if device_id else None
    return info.device_class if info else None


def cap_ids(ids: Iterable[str], limit: int = MAX_RECORD_IDS) -> list[str]:
    out: list[str] = []
    for i in ids:
        if i and i not in out:
            out.append(i)
            if len(out) >= limit:
                break
    return out


def ratio_score(value: float, threshold: float, floor: float = 0.5, decades: float = 1.0) -> float:
    """Score in [floor, 1]: ``floor`` at the threshold, 1 at ``10**decades`` times it (log scale)."""
    if value < threshold or threshold <= 0:
        return 0.0
    return float(min(1.0, floor + (1 - floor) * math.log10(value / threshold) / decades))


@dataclass
class DistinctWindow:
    """Distinct items seen for one key within a sliding event-time window.

    ``items`` maps item -> last time seen (capped at ``cap`` items: past the cap the count
    stops growing, which only matters far above every threshold).
    """

    items: dict[Any, float] = field(default_factory=dict)
    failed: set[Any] = field(default_factory=set)
    events: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    uids: list[str] = field(default_factory=list)
    reported: int = 0  # distinct count at the last emission (0 = never)
    macs: str | None = None

    def add(self, item: Any, ts: float, uid: str, failed: bool, cap: int) -> None:
        if item in self.items or len(self.items) < cap:
            self.items[item] = ts
            if failed:
                self.failed.add(item)
        self.events += 1
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)
        if uid and len(self.uids) < MAX_RECORD_IDS:
            self.uids.append(uid)

    def expire(self, now: float, window: float) -> None:
        cutoff = now - window
        if self.items and min(self.items.values()) < cutoff:
            self.items = {k: t for k, t in self.items.items() if t >= cutoff}
            self.failed &= self.items.keys()
            self.first_ts = min(self.items.values(), default=now)
            if not self.items:
                self.reported = 0
                self.events = 0
                self.uids = []


def make_finding(
    ctx: Context,
    ip: str,
    category: str,
    detector: str,
    score: float,
    first: float,
    last: float,
    evidence: list[str],
    mitre: list[str],
    record_ids: Iterable[str] = (),
    mac: str | None = None,
    **attributes: Any,
) -> Finding:
    ref = entity_ref(ctx, ip, mac)
    return Finding(
        category=category,
        detector=detector,
        score=score,
        first_seen=float(first),
        last_seen=float(last),
        evidence=evidence,
        mitre=mitre,
        record_ids=cap_ids(record_ids),
        attributes=attributes,
        **ref,
    )


def str_col(batch: EventBatch, name: str) -> np.ndarray:
    return batch.np(name, fill="")


def num_col(batch: EventBatch, name: str, fill: float = 0) -> np.ndarray:
    return batch.np(name, fill=fill)
