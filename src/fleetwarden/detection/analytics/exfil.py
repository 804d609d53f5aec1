"""Exfiltration: a device uploading far more than its baseline to a new or rare destination.

Contract
    :class:`ExfilDetector` consumes ``flow`` batches.  Per source device it keeps an
    exponentially weighted mean of the bytes it sends per ``window`` seconds (its
    baseline) and the external destinations it has sent to in earlier windows (bounded,
    least recently used dropped first).  Within the current window it sums the bytes sent
    to each external destination.  Windows (``[k * window, (k + 1) * window)`` of event time)
    are judged whole: a window's flows wait until a later flow proves it over and the fleet
    context up to its end is complete (the DNS answers of its time learnt; prevalence is asked
    as of its last flow), so the findings do not depend on how the flows were batched.  When
    its window is judged, an ``exfiltration`` finding (T1048, T1041) is emitted for a
    destination that is new or rare for the device (seen in at most ``rare_windows`` earlier
    windows) that has received

    * at least ``min_bytes`` and ``ratio`` times the device's baseline, once the device has
      a baseline (``min_history`` windows), or at least ``cold_bytes`` before that;
    * mostly uploads: sent bytes at least ``min_upload_ratio`` times the received bytes.

    Slow exfiltration over hours: each destination that is new for the device (first
    contacted after its first ``slow_min_observed`` seconds, or at any time once the fleet
    has a cohort of the device's kind) is followed for up to ``slow_horizon`` seconds of
    activity.  A finding is emitted when the bytes uploaded to it reach ``slow_min_bytes``
    and ``slow_ratio`` times what the device sent to all its other destinations over the
    same span (its own rate, measured over everything it was seen doing; ``slow_cold_bytes``
    when it was observed for less than ``slow_min_observed``), the uploads are mostly
    one-way, and the destination is rare in the fleet (at most ``rare_devices`` devices, not
    a service of the device's cohort: :class:`~fleetwarden.detection.analytics.netcommon.
    Prevalence`).  A country that neither the device nor its cohort contacted before raises
    the score.  It is reported again when the volume doubles.  Only answered flows count as
    uploads (a one-way flood is the flood analytic's).

Blind spots
    Exfiltration below ``slow_ratio`` times the device's own rate (or below
    ``slow_min_bytes`` over the horizon), spread over many destinations each under the
    limit, to a destination the device already uses or that many devices of the fleet use
    (a compromised cloud account, a shared storage service), over unanswered UDP, or over
    DNS (left to the DNS analytic) is missed.  A device compromised before monitoring began
    has the drop site in its baseline.  Devices whose normal job is uploading (cameras)
    have large baselines, which is the point of the ratio but also hides smaller thefts.

Reference
    Slips' "data upload" detection (large upload to one IP within a time window) and AWS
    IoT Device Defender's ``aws:all-bytes-out`` behaviour with ML Detect baselines.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    Prevalence,
    TickGate,
    cohorts_of,
    is_group,
    is_local,
    judgeable_until,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)

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
    # long horizon: everything sent, and the rare destinations followed over hours
    out_all: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    slow: dict = field(default_factory=dict)  # dst -> _Slow
    # (last, seq, dst) of the followed destinations, with stale entries: finds the least
    # recently active one to drop without scanning them all (see ExfilDetector._drop_oldest)
    slow_heap: list = field(default_factory=list)
    slow_seq: int = 0
    countries: set = field(default_factory=set)
    # countries this device already taught its cohorts (``taught_cohorts``): adding them again
    # changes nothing, so the per-group update skips them
    taught_cohorts: tuple | None = None
    taught: set = field(default_factory=set)


@dataclass(slots=True)
class _Slow:
    out: int = 0
    back: int = 0
    first: float = math.inf
    last: float = -math.inf
    flows: int = 0
    uids: list = field(default_factory=list)
    reported: int = 0  # bytes at the last report (0 = never)
    new_country: str | None = None
    dst: str = ""  # the destination followed (its key in ``_Device.slow``)
    seq: int = 0  # creation order within the device (the order of ``_Device.slow``)


_LAST = operator.attrgetter("last")


def _encode(values: np.ndarray, ordered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distinct strings and each value's code (``ordered``: codes follow string order)."""
    enc = pc.dictionary_encode(pa.array(values, pa.string()))
    names = enc.dictionary
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if ordered and len(names) > 1:
        # Arrow sorts UTF-8 bytewise, which is code point order: the order of Python strings.
        rank = np.empty(len(names), dtype=np.int64)
        rank[pc.array_sort_indices(names).to_numpy()] = np.arange(len(names))
        return names.to_numpy(zero_copy_only=False)[np.argsort(rank)], rank[codes]
    return names.to_numpy(zero_copy_only=False), codes


class ExfilDetector:
    """Upload volume to new or rare destinations far above the device's baseline."""

    name = "exfil"
    kinds = ("flow", "dns")

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
        slow_horizon: float = 12 * 3600.0,
        slow_min_bytes: int = 5_000_000,
        slow_ratio: float = 20.0,
        slow_min_observed: float = 3600.0,
        slow_cold_bytes: int = 50_000_000,
        rare_devices: int = 2,
        max_slow: int = 32,
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
        self.slow_horizon = slow_horizon
        self.slow_min_bytes = slow_min_bytes
        self.slow_ratio = slow_ratio
        self.slow_min_observed = slow_min_observed
        self.slow_cold_bytes = slow_cold_bytes
        self.rare_devices = rare_devices
        self.max_slow = max_slow
        self._devices: dict[str, _Device] = {}
        self.prevalence = Prevalence()
        # Flows wait here until their window is over (and its DNS is in): each window is judged
        # whole, so findings do not depend on how the flows were batched.
        self._gate = TickGate(window)
        self._at = -math.inf  # the time the window being judged is judged as of
        self._cohort_key: tuple | None = None
        self._cohort_memo: dict[str, tuple[str, ...]] = {}
        self._cohort_countries: dict[str, set[str]] = {}

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if len(batch) == 0 or batch.kind not in self.kinds:
            return []
        batch = sorted_by_time(batch)
        # DNS answers and the answered connections the sources opened (shared with beacon and
        # retry when an engine runs them): learnt as they come, asked as of the window judged.
        self.prevalence.observe_batch(batch, ctx)
        if batch.kind == "flow":
            self._gate.push(batch)
        return self._judge_ready(ctx, judgeable_until(self._gate, self.prevalence, 10))

    def flush(self, ctx: Context) -> list[Finding]:
        self.prevalence.clock.finish()
        return self._judge_ready(ctx, math.inf)

    def _judge_ready(self, ctx: Context, until: float) -> list[Finding]:
        """Judge every whole window of flows that can be judged (see :func:`judgeable_until`)."""
        findings: list[Finding] = []
        for part in self._gate.pop(until):
            findings += self._window(part, ctx)
        return findings

    def _window(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """One whole window of flows (in time order), judged as of its last flow."""
        from fleetwarden.detection.analytics.novelty import country_of

        ts = batch.np("ts")
        replied = (num_col(batch, "resp_pkts") > 0) | (num_col(batch, "resp_bytes") > 0)
        src = str_col(batch, "id.orig_h")
        dst = str_col(batch, "id.resp_h")
        win = np.floor(ts / self.window).astype(np.int64)
        # Only answered flows carry an upload: the peer acknowledged the data.  One-way
        # floods (GBs sent, nothing back) are the flood analytic's, not a theft.
        ob = np.where(replied, num_col(batch, "orig_bytes"), 0).astype(np.int64)
        rb = num_col(batch, "resp_bytes").astype(np.int64)

        # Group the records by (source, window, destination), vectorised.  Groups are visited
        # by window, then source, then in the order of their first record, and each group's
        # records keep their time order (its uids are its first records).
        s_names, s_code = _encode(src, ordered=True)
        d_names, d_code = _encode(dst)
        wmin = int(win.min())
        n_s, n_d = len(s_names), len(d_names)
        key = ((win - wmin) * n_s + s_code) * n_d + d_code
        keys, first, inv = np.unique(key, return_index=True, return_inverse=True)
        rows = np.argsort(inv, kind="stable")
        starts = np.zeros(len(keys), dtype=np.int64)
        np.cumsum(np.bincount(inv, minlength=len(keys))[:-1], out=starts[1:])
        ends = np.append(starts[1:], len(rows))
        g_ob = np.add.reduceat(ob[rows], starts)
        g_rb = np.add.reduceat(rb[rows], starts)
        ts_rows = ts[rows]
        g_t0 = np.minimum.reduceat(ts_rows, starts)
        g_t1 = np.maximum.reduceat(ts_rows, starts)
        g_mac = np.maximum.reduceat(str_col(batch, "orig_l2_addr")[rows], starts)
        uid_rows = str_col(batch, "uid")[rows]
        order = np.lexsort((first, keys // n_d))
        g_dst = keys % n_d
        g_src = (keys // n_d) % n_s
        g_win = keys // (n_d * n_s) + wmin

        # Per distinct destination / source, what does not change within the batch.
        d_list = d_names.tolist()
        external = [not (is_local(ctx, d) or is_group(d)) for d in d_list]
        s_list = s_names.tolist()
        # cohorts per source, remembered while the inventory stays the same
        inventory = (id(ctx), id(ctx.devices), len(ctx.devices), len(ctx.ip_to_device))
        if inventory != self._cohort_key:
            self._cohort_key, self._cohort_memo = inventory, {}
        memo = self._cohort_memo
        cohorts = []
        for s_ip in s_list:
            cs = memo.get(s_ip)
            if cs is None:
                cs = memo[s_ip] = cohorts_of(ctx, s_ip)
                if len(memo) > 4 * self.max_devices:
                    memo.clear()
            cohorts.append(cs)
        prev = self.prevalence
        at = self._at = float(ts[-1])
        fleet = prev.population_at(at) >= 10
        sizes: dict[str, bool] = {}
        has_cohort = []
        for cs in cohorts:
            ok = False
            if fleet:
                for c in cs:
                    big = sizes.get(c)
                    if big is None:
                        big = sizes[c] = prev.cohort_size(c, at) >= 3
                    if big:
                        ok = True
                        break
            has_cohort.append(ok)
        d_country: dict[int, str | None] = {}
        g_country = []
        for di in g_dst[order].tolist():
            if external[di]:
                if di not in d_country:
                    d_country[di] = country_of(d_list[di])
                g_country.append(d_country[di])
            else:
                g_country.append(False)  # not external: only the device's totals move
        uids = uid_rows.tolist()
        no_empty_uid = bool(np.all(uid_rows != ""))

        findings = []
        devices = self._devices
        min_bytes, rare, min_observed = self.min_bytes, self.rare_windows, self.slow_min_observed
        horizon, max_slow = self.slow_horizon, self.max_slow
        slow_min_bytes = self.slow_min_bytes
        cohort_countries = self._cohort_countries
        heappush = heapq.heappush
        for si, d_ip, country, w, ob_g, rb_g, t0, t1, mac, lo, hi in zip(
            g_src[order].tolist(),
            d_names[g_dst[order]].tolist(),
            g_country,
            g_win[order].tolist(),
            g_ob[order].tolist(),
            g_rb[order].tolist(),
            g_t0[order].tolist(),
            g_t1[order].tolist(),
            g_mac[order].tolist(),
            starts[order].tolist(),
            ends[order].tolist(),
            strict=True,
        ):
            s_ip = s_list[si]
            dev = devices.get(s_ip)
            if dev is None:
                dev = devices[s_ip] = _Device()
            if dev.win != w:
                self._roll(dev, w)
            dev.total += ob_g
            dev.out_all += ob_g
            if t0 < dev.first_ts:
                dev.first_ts = t0
            if t1 > dev.last_ts:
                dev.last_ts = t1
            if mac:
                dev.mac = mac
            if country is False:
                continue
            # Slow exfiltration: follow the destination over hours.  Inlined, as it runs for
            # nearly every group (a device's destinations are mostly new to it).
            slow = dev.slow
            acc_s = slow.get(d_ip)
            if acc_s is not None and t1 - acc_s.last > horizon:
                del slow[d_ip]  # idle for the whole horizon: a new episode starts from zero
                acc_s = None
            if (
                acc_s is None
                and dev.seen.get(d_ip, 0) <= rare
                and (has_cohort[si] or dev.last_ts - dev.first_ts >= min_observed)
            ):
                if len(slow) >= max_slow:
                    self._drop_oldest(dev)
                dev.slow_seq += 1
                acc_s = slow[d_ip] = _Slow(dst=d_ip, seq=dev.slow_seq)
                if (
                    country
                    and dev.countries
                    and country not in dev.countries
                    and not any(country in cohort_countries.get(c, ()) for c in cohorts[si])
                ):
                    acc_s.new_country = country  # neither the device nor its cohort went there
            if country and (country not in dev.taught or dev.taught_cohorts != cohorts[si]):
                # Learn the country for the device and its cohorts; a device teaches its
                # cohorts each country once (per cohort assignment): later adds are no-ops.
                if dev.taught_cohorts != cohorts[si]:
                    dev.taught_cohorts, dev.taught = cohorts[si], set()
                dev.taught.add(country)
                if len(dev.countries) < 64:
                    dev.countries.add(country)
                for c in cohorts[si]:
                    cc = cohort_countries.setdefault(c, set())
                    if len(cc) < 256:
                        cc.add(country)
            if acc_s is not None:
                acc_s.out += ob_g
                acc_s.back += rb_g
                if t0 < acc_s.first:
                    acc_s.first = t0
                if t1 > acc_s.last:
                    acc_s.last = t1
                    heappush(dev.slow_heap, (t1, acc_s.seq, d_ip))
                acc_s.flows += hi - lo  # the flows of the group
                room = 50 - len(acc_s.uids)
                if room > 0:
                    if hi - lo == 1:
                        u = uids[lo]
                        if u:
                            acc_s.uids.append(u)
                    else:
                        acc_s.uids.extend(u for u in uids[lo : min(hi, lo + room)] if u)
                if acc_s.out >= slow_min_bytes:
                    f = self._slow_check(s_ip, dev, d_ip, acc_s, ctx, country)
                    if f:
                        findings.append(f)
            acc = dev.sent.get(d_ip)
            if acc is None:
                acc = dev.sent[d_ip] = [ob_g, rb_g, t0, t1, []]
            else:
                acc[0] += ob_g
                acc[1] += rb_g
                acc[2], acc[3] = min(acc[2], t0), max(acc[3], t1)
            room = 50 - len(acc[4])
            if room > 0:
                part = uids[lo : min(hi, lo + room)]
                acc[4] += part if no_empty_uid else [u for u in part if u]
            # _check needs min_bytes in the window first: most groups stop here, unchecked.
            if acc[0] >= min_bytes:
                f = self._check(s_ip, dev, d_ip, acc, ctx)
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
        at = self._at
        if self.prevalence.devices(dst, at) > self.rare_devices or self.prevalence.fleet_service(
            src, dst, ctx, at=at
        ):
            return None  # the fleet's or the cohort's service (a camera's clip upload to its cloud)
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

    # slow exfiltration over hours ---------------------------------------------------------
    def _drop_oldest(self, dev: _Device) -> None:
        """Stop following the least recently active destination (the first created on a tie).

        Same choice as ``min(dev.slow.values(), key=last)``: heap entries are (last, creation
        order), and an entry is stale once its destination is dropped or active again later.
        """
        heap, slow = dev.slow_heap, dev.slow
        if len(heap) > 8 * self.max_slow:
            heap[:] = [(a.last, a.seq, a.dst) for a in slow.values()]
            heapq.heapify(heap)
        while heap:
            last, seq, dst = heapq.heappop(heap)
            acc = slow.get(dst)
            if acc is not None and acc.seq == seq and acc.last == last:
                del slow[dst]
                return
        del slow[min(slow.values(), key=_LAST).dst]  # not reached: each one has a current entry

    def _slow_check(
        self, src: str, dev: _Device, dst: str, acc: _Slow, ctx: Context, country: str | None
    ) -> Finding | None:
        """The finding, if any, of a followed destination ``dst`` of ``src`` after an update."""
        if acc.out < self.slow_min_bytes or (acc.reported and acc.out < 2 * acc.reported):
            return None
        if acc.out < self.min_upload_ratio * max(acc.back, 1):
            return None
        at = self._at
        n_devices = self.prevalence.devices(dst, at)
        if n_devices > self.rare_devices or self.prevalence.fleet_service(src, dst, ctx, at=at) is not None:
            return None  # a destination the fleet or the cohort uses: not a new drop site
        observed = dev.last_ts - dev.first_ts
        span = max(acc.last - acc.first, self.window)
        if observed >= self.slow_min_observed:
            # The device's own rate on everything else it sends, over the same time span.
            others = max(0, dev.out_all - acc.out)
            rate = others / max(observed, 1.0)
            limit = max(self.slow_min_bytes, self.slow_ratio * rate * span)
            basis = (
                f"{self.slow_ratio:.0f}x what the device sends to all its other destinations in the same "
                f"{span / 3600:.1f} h ({rate * 3600 / 1e6:.3f} MB/h over {observed / 3600:.1f} h observed)"
            )
        else:
            limit = self.slow_cold_bytes
            basis = f"{limit / 1e6:.0f} MB for a device observed under {self.slow_min_observed / 3600:.1f} h"
        if acc.out < limit:
            return None
        acc.reported = acc.out
        prevalence = self.prevalence.population_at(at)
        score = 0.5 + 0.25 * min(1.0, math.log10(acc.out / limit + 1) / math.log10(11))
        score += 0.15 if acc.new_country else 0.0
        evidence = [
            f"uploaded {acc.out / 1e6:.1f} MB to {dst} in {acc.flows} flows over {span / 3600:.1f} h "
            f"(received {acc.back / 1e6:.2f} MB); limit {limit / 1e6:.1f} MB = {basis}",
            f"{dst} is new for the device and rare in the fleet ({max(n_devices, 1)} of {prevalence} devices)"
            + (f"; new country {acc.new_country} for the device and its cohort" if acc.new_country else ""),
        ]
        return make_finding(
            ctx,
            src,
            "exfiltration",
            self.name,
            min(1.0, score),
            acc.first,
            acc.last,
            evidence,
            ["T1048", "T1041", "T1030"],
            acc.uids,
            mac=dev.mac,
            destination=dst,
            bytes_out=int(acc.out),
            country=country,
            slow=True,
        )


ANALYTICS = [ExfilDetector]
