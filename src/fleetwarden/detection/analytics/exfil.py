"""Exfiltration: a device uploading far more than its baseline to a new or rare destination.

Contract
    :class:`ExfilDetector` consumes ``flow`` batches.  Per source device it keeps an
    exponentially weighted mean of the bytes it sends per ``window`` seconds (its
    baseline) and the external destinations it has sent to in earlier windows (bounded,
    least recently used dropped first).  Within the current window it sums the bytes sent
    to each external destination.  An ``exfiltration`` finding (T1048, T1041) is emitted in
    the update where a destination that is new or rare for the device (seen in at most
    ``rare_windows`` earlier windows) has received

    * at least ``min_bytes`` and ``ratio`` times the device's baseline, once the device has
      a baseline (``min_history`` windows), or at least ``cold_bytes`` before that;
    * mostly uploads: sent bytes at least ``min_upload_ratio`` times the received bytes.

Blind spots
    Slow exfiltration under the baseline, exfiltration to a destination the device already
    uses (a compromised cloud account), and exfiltration over DNS (left to the DNS
    analytic) are missed.  Devices whose normal job is uploading (cameras) have large
    baselines, which is the point of the ratio but also hides smaller thefts.

Reference
    Slips' "data upload" detection (large upload to one IP within a time window) and AWS
    IoT Device Defender's ``aws:all-bytes-out`` behaviour with ML Detect baselines.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from fleetwarden.detection.analytics.base import Context
from fleetwarden.detection.analytics.netcommon import (
    is_group,
    is_private,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding

__all__ = ["ANALYTICS", "ExfilDetector"]


@dataclass
class _Device:
    win: int = -1
    sent: dict = field(default_factory=dict)  # dst -> [bytes out, bytes in, first, last, uids]
    total: int = 0
    baseline: float = 0.0
    windows: int = 0
    seen: OrderedDict = field(default_factory=OrderedDict)  # dst -> number of windows seen
    reported: set = field(default_factory=set)
    mac: str | None = None


class ExfilDetector:
    """Upload volume to new or rare destinations far above the device's baseline."""

    name = "exfil"
    kinds = ("flow",)

    def __init__(
        self,
        window: float = 300.0,
        min_bytes: int = 5_000_000,
        cold_bytes: int = 50_000_000,
        ratio: float = 10.0,
        min_history: int = 3,
        rare_windows: int = 1,
        min_upload_ratio: float = 3.0,
        alpha: float = 0.1,
        max_destinations: int = 256,
        max_devices: int = 100_000,
    ) -> None:
        self.window = window
        self.min_bytes = min_bytes
        self.cold_bytes = cold_bytes
        self.ratio = ratio
        self.min_history = min_history
        self.rare_windows = rare_windows
        self.min_upload_ratio = min_upload_ratio
        self.alpha = alpha
        self.max_destinations = max_destinations
        self.max_devices = max_devices
        self._devices: dict[str, _Device] = {}

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        ts = batch.np("ts")
        table = pa.table(
            {
                "src": str_col(batch, "id.orig_h"),
                "dst": str_col(batch, "id.resp_h"),
                "win": np.floor(ts / self.window).astype(np.int64),
                "ob": num_col(batch, "orig_bytes").astype(np.int64),
                "rb": num_col(batch, "resp_bytes").astype(np.int64),
                "ts": ts,
                "uid": str_col(batch, "uid"),
                "mac": str_col(batch, "orig_l2_addr"),
            }
        )
        g = table.group_by(["src", "win", "dst"]).aggregate(
            [("ob", "sum"), ("rb", "sum"), ("ts", "min"), ("ts", "max"), ("uid", "list"), ("mac", "max")]
        )
        findings = []
        rows = zip(*(g.column(c).to_pylist() for c in g.column_names), strict=True)
        for src, win, dst, ob, rb, t0, t1, uids, mac in sorted(rows, key=lambda r: (r[1], r[0])):
            dev = self._devices.get(src)
            if dev is None:
                dev = self._devices[src] = _Device()
            if dev.win != win:
                self._roll(dev, win)
            dev.total += ob
            dev.mac = mac or dev.mac
            if is_private(dst) or is_group(dst):
                continue
            acc = dev.sent.setdefault(dst, [0, 0, t0, t1, []])
            acc[0] += ob
            acc[1] += rb
            acc[2], acc[3] = min(acc[2], t0), max(acc[3], t1)
            if len(acc[4]) < 50:
                acc[4].extend(u for u in uids[: 50 - len(acc[4])] if u)
            f = self._check(src, dev, dst, acc, ctx)
            if f:
                findings.append(f)
        if len(self._devices) > self.max_devices:
            latest = max(d.win for d in self._devices.values())
            self._devices = {k: d for k, d in self._devices.items() if d.win >= latest - 12}
        return findings

    def _roll(self, dev: _Device, win: int) -> None:
        if dev.win >= 0:
            # Idle windows in between count as zero-byte windows for the baseline.
            gap = max(1, min(win - dev.win, 100))
            dev.baseline = dev.baseline * (1 - self.alpha) ** (gap - 1)
            dev.baseline = (
                (1 - self.alpha) * dev.baseline + self.alpha * dev.total if dev.windows else dev.total
            )
            dev.windows += 1
            for dst in dev.sent:
                dev.seen[dst] = dev.seen.pop(dst, 0) + 1
            while len(dev.seen) > self.max_destinations:
                dev.seen.popitem(last=False)
        dev.win = win
        dev.sent = {}
        dev.total = 0
        dev.reported = set()

    def _check(self, src: str, dev: _Device, dst: str, acc: list, ctx: Context) -> Finding | None:
        out, back, first, last, uids = acc
        if dst in dev.reported or out < self.min_bytes:
            return None
        prior = dev.seen.get(dst, 0)
        if prior > self.rare_windows:
            return None
        if out < self.min_upload_ratio * max(back, 1):
            return None
        if dev.windows >= self.min_history:
            limit = max(self.min_bytes, self.ratio * dev.baseline)
            basis = f"{self.ratio:.0f}x the device's baseline of {dev.baseline / 1e6:.2f} MB per window"
        else:
            limit = self.cold_bytes
            basis = f"{self.cold_bytes / 1e6:.0f} MB for a device without history"
        if out < limit:
            return None
        dev.reported.add(dst)
        novelty = "a new destination" if prior == 0 else f"a destination seen in only {prior} earlier window"
        score = min(1.0, 0.55 + 0.3 * math.log10(out / limit + 1) + (0.1 if prior == 0 else 0.0))
        evidence = [
            f"uploaded {out / 1e6:.1f} MB to {dst} ({novelty}) within {max(last - first, 0):.0f} s, received "
            f"{back / 1e6:.2f} MB; limit {limit / 1e6:.1f} MB = {basis}"
        ]
        return make_finding(
            ctx,
            src,
            "exfiltration",
            self.name,
            score,
            first,
            last,
            evidence,
            ["T1048", "T1041"],
            uids,
            mac=dev.mac,
            destination=dst,
            bytes_out=int(out),
        )

    def flush(self, ctx: Context) -> list[Finding]:
        return []


ANALYTICS = [ExfilDetector]
