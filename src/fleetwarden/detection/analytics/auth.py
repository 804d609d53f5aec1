"""Authentication analytics: brute force, password spraying and credential misuse.

Two analytics read ``auth`` events (one login attempt each: who, from where, result):

:class:`BruteForce` (category ``brute-force``, MITRE T1110)
    *Contract.* Counts failed logins per (target, source) in a sliding window, where the
    target is the record's ``device_id`` when it has one and the account otherwise; an
    episode whose window count reaches ``threshold`` becomes one finding (T1110.001).  It
    also counts distinct accounts failing from one source (password spraying, T1110.003).
    A success from the same source inside an open burst is named in the evidence and
    raises the score: the guess probably worked.
    *Blind spots.* Slow guessing below ``threshold`` per ``window``; attackers rotating
    source addresses faster than one per ``threshold`` attempts; logins the platform never
    sees (local console).
    *Reference.* MITRE ATT&CK T1110; NIST SP 800-63B §5.2.2 (throttling failed attempts).

:class:`CredentialMisuse` (category ``credential-misuse``, MITRE T1078)
    *Contract.* Judges every successful login against the account's history and gathers
    the reasons into one finding per account per episode (reasons closer than
    ``episode_gap`` seconds belong together):

    - impossible travel: the great-circle distance from the previous successful login
      divided by the elapsed time exceeds ``max_speed_kmh`` (needs ``src_lat``/``src_lon``;
      without coordinates a change of country within ``country_hop_s`` is used instead);
    - new country: a country the account never logged in from (``src_country``, else the
      country of ``src_ip`` from geoip2fast's bundled database, cached per address);
    - off-hours privileged login: a privileged account (name matching ``privileged_pattern``
      or listed in the device's ``extra['privileged_users']``) outside ``ctx.working_hours``
      and outside every maintenance window of the device, unless the account routinely
      works off-hours;
    - success right after a failure burst from the same source.

    *Maintenance windows* are read from ``ctx.devices[device_id].extra['maintenance_windows']``:
    a list whose entries are either ``[start, end]`` epoch seconds (one-off window) or
    ``"HH:MM-HH:MM"`` (daily, may wrap midnight).  Hours are local to the device:
    ``extra['utc_offset_hours']`` (default 0, i.e. UTC) is added to the event time.
    *Blind spots.* A stolen credential used from the owner's usual country during working
    hours; country-level GeoIP cannot place VPN or cloud exits; the first login of a new
    account has no history (only a country never seen in the whole fleet counts then).
    *Reference.* MITRE ATT&CK T1078 (Valid Accounts), T1133 (External Remote Services);
    the "impossible travel" rule as used by Microsoft Entra ID Protection and Okta.

Both read login attempts only (:func:`login_attempts`): ``auth`` records whose ``action`` is null or
``login``.  A broker log's other records (a disconnect, an ACL-refused publish, a client id taken
over) are session facts, judged by :mod:`fleetwarden.detection.analytics.identity`.

Attempts are judged one by one in time order, whatever the batches: a failure joins its
burst (a gap over ``window`` or a burst open ``max_open`` starts a new one), a success is
judged against the history the logins before it left.  Findings of an episode are emitted
when the episode closes (quiet for its gap in event time, or open longer than ``max_open``:
decided at the next attempt of its key, or at the end of a batch that event time has passed
the gap), or at :meth:`flush`.

This module also holds the small helpers the other control-plane analytics share
(bounded LRU maps, episodes, local hours, maintenance windows, noisy-OR).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow.compute as pc

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import sorted_by_time, str_col
from fleetwarden.detection.enrich import country_code

__all__ = [
    "ANALYTICS",
    "BruteForce",
    "CredentialMisuse",
    "EpisodeBook",
    "fmt_duration",
    "great_circle_km",
    "in_maintenance_window",
    "local_hours",
    "login_attempts",
    "lru_get",
    "noisy_or",
]

K = TypeVar("K")
V = TypeVar("V")


# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------
def lru_get(store: OrderedDict[K, V], key: K, make: Callable[[], V], cap: int) -> V:
    """Get-or-create ``key`` in a bounded LRU map; the least recently used entry goes first."""
    value = store.get(key)
    if value is None:
        value = make()
        store[key] = value
        if len(store) > cap:
            store.popitem(last=False)
    else:
        store.move_to_end(key)
    return value


def login_attempts(batch: EventBatch) -> EventBatch:
    """The records of an ``auth`` batch that are login attempts: ``action`` null, empty or ``login``."""
    action = batch["action"]
    if action.null_count == len(batch):
        return batch
    act = pc.utf8_lower(pc.fill_null(action, "login"))
    keep = pc.or_(pc.equal(act, "login"), pc.equal(act, ""))
    mask = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
    return batch if mask.all() else batch.filter(mask)


def noisy_or(weights: Iterable[float]) -> float:
    """Combine independent reasons: 1 - prod(1 - w)."""
    p = 1.0
    for w in weights:
        p *= 1.0 - min(1.0, max(0.0, w))
    return 1.0 - p


def fmt_duration(seconds: float) -> str:
    """A span for evidence sentences: seconds under 2 min, minutes under 2 h, else hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a 6371 km sphere."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


def _utc_offset(info: DeviceInfo | None) -> float:
    if info is None:
        return 0.0
    try:
        return float(info.extra.get("utc_offset_hours", 0.0))
    except (TypeError, ValueError):
        return 0.0


def local_hours(ts: np.ndarray, offset_hours: np.ndarray | float = 0.0) -> np.ndarray:
    """Hour of day (0-23) of epoch seconds shifted by a UTC offset, vectorised."""
    return (np.floor(np.asarray(ts, dtype=float) / 3600.0 + offset_hours) % 24).astype(np.int64)


def off_hours(hours: np.ndarray, working_hours: tuple[int, int]) -> np.ndarray:
    """True where the hour is outside [start, end) (a window may wrap midnight)."""
    start, end = working_hours
    if start <= end:
        return (hours < start) | (hours >= end)
    return (hours < start) & (hours >= end)


_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def in_maintenance_window(ts: float, info: DeviceInfo | None) -> bool:
    """Whether ``ts`` falls in one of the device's maintenance windows (format: module doc)."""
    if info is None:
        return False
    windows = info.extra.get("maintenance_windows") or ()
    minute = ((ts / 60.0) + _utc_offset(info) * 60.0) % 1440.0
    for w in windows:
        if isinstance(w, str):
            m = _HHMM.match(w)
            if not m:
                continue
            a = int(m[1]) * 60 + int(m[2])
            b = int(m[3]) * 60 + int(m[4])
            inside = a <= minute < b if a <= b else (minute >= a or minute < b)
            if inside:
                return True
        elif isinstance(w, (list, tuple)) and len(w) == 2:
            try:
                if float(w[0]) <= ts <= float(w[1]):
                    return True
            except (TypeError, ValueError):
                continue
    return False


@dataclass
class Episode:
    """Reasons gathered about one key between quiet gaps."""

    first: float
    last: float
    reasons: dict[str, tuple[float, str]] = field(default_factory=dict)  # code -> (weight, sentence)
    counts: dict[str, int] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def add(self, ts: float, code: str, weight: float, sentence: str) -> None:
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)
        self.counts[code] = self.counts.get(code, 0) + 1
        old = self.reasons.get(code)
        if old is None or weight >= old[0]:
            self.reasons[code] = (weight, sentence)

    @property
    def score(self) -> float:
        return noisy_or(w for w, _ in self.reasons.values())

    def evidence(self) -> list[str]:
        out = []
        for code, (_, sentence) in sorted(self.reasons.items(), key=lambda kv: -kv[1][0]):
            n = self.counts.get(code, 1)
            out.append(sentence if n == 1 else f"{sentence} ({n} times in this episode)")
        return out


class EpisodeBook:
    """Open episodes per key, closed after ``gap`` seconds of quiet or ``max_open`` seconds.

    Bounded: at most ``cap`` open episodes; the stalest is closed (and reported) first.
    """

    def __init__(self, gap: float, max_open: float, cap: int = 10_000) -> None:
        self.gap = gap
        self.max_open = max_open
        self.cap = cap
        self.open: OrderedDict[Any, Episode] = OrderedDict()
        self._evicted: list[tuple[Any, Episode]] = []

    def get(self, key: Any, ts: float) -> Episode:
        ep = self.open.get(key)
        if ep is not None and (ts - ep.last > self.gap or ts - ep.first > self.max_open):
            self._evicted.append((key, self.open.pop(key)))
            ep = None
        if ep is None:
            ep = Episode(first=ts, last=ts)
            self.open[key] = ep
            if len(self.open) > self.cap:
                self._evicted.append(self.open.popitem(last=False))
        else:
            self.open.move_to_end(key)
        return ep

    def close_due(self, now: float) -> list[tuple[Any, Episode]]:
        """Episodes quiet for ``gap`` (ordered by last update, so the scan stops early)."""
        out, self._evicted = self._evicted, []
        while self.open:
            key, ep = next(iter(self.open.items()))
            if now - ep.last <= self.gap:
                break
            self.open.popitem(last=False)
            out.append((key, ep))
        # long-running episodes are reported in slices so an ongoing attack is not silent
        for key in [k for k, ep in self.open.items() if now - ep.first > self.max_open]:
            out.append((key, self.open.pop(key)))
        return out

    def close_all(self) -> list[tuple[Any, Episode]]:
        out = self._evicted + list(self.open.items())
        self._evicted = []
        self.open.clear()
        return out


def _target_keys(batch: EventBatch) -> np.ndarray:
    """device_id when present, else the account: what a login attempt is aimed at."""
    dev = pc.fill_null(batch["device_id"], "")
    user = pc.fill_null(batch["user"], "")
    target = pc.if_else(pc.equal(dev, ""), user, dev)
    return np.asarray(target.to_numpy(zero_copy_only=False), dtype=object)


def _device_ip(ctx: Context, device_id: str) -> str | None:
    info = ctx.devices.get(device_id)
    return info.ip if info else None


# ---------------------------------------------------------------------------------------
# brute force and spraying
# ---------------------------------------------------------------------------------------
@dataclass
class _BurstState:
    recent: deque[float]  # last failure times, enough to count a full window
    first: float = 0.0
    last: float = 0.0
    failures: int = 0
    peak: int = 0
    users: set[str] = field(default_factory=set)
    success_at: float | None = None
    device_id: str | None = None


class BruteForce:
    """Failed-login bursts per (target, source) and password spraying per source."""

    name = "auth.brute_force"
    kinds = ("auth",)

    def __init__(
        self,
        window: float = 300.0,
        threshold: int = 10,
        spray_window: float = 3600.0,
        spray_accounts: int = 8,
        max_open: float = 3600.0,
        max_keys: int = 50_000,
    ) -> None:
        self.window = window
        self.threshold = threshold
        self.spray_window = spray_window
        self.spray_accounts = spray_accounts
        self.max_open = max_open
        self.max_keys = max_keys
        self.bursts_: OrderedDict[tuple[str, str], _BurstState] = OrderedDict()
        # source -> account -> last failure time (bounded per source)
        self.spray_: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self.spray_open_: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -- streaming ------------------------------------------------------------------
    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Login attempts one by one in time order: a failure joins its (target, source) burst
        (a gap over ``window`` or a burst open ``max_open`` starts a new one), a success may
        follow a qualified burst; bursts and sprays quiet for their window are reported."""
        batch = login_attempts(batch)
        if len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        ts = batch.np("ts").tolist()
        success = batch.np("success").tolist()
        target = _target_keys(batch).tolist()
        src = str_col(batch, "src_ip").tolist()
        user = str_col(batch, "user").tolist()
        device = str_col(batch, "device_id").tolist()
        out: list[Finding] = []
        for i, t in enumerate(ts):
            t = float(t)
            if success[i]:
                # a success inside an open qualified burst: the guessing probably worked
                st = self.bursts_.get((target[i], src[i]))
                if (
                    st is not None
                    and st.peak >= self.threshold
                    and st.success_at is None
                    and 0 <= t - st.last <= self.window
                ):
                    st.success_at = t
                continue
            out += self._failure((target[i], src[i]), t, user[i], device[i], ctx)
            out += self._spray(t, src[i], user[i])
        out += self._close(float(ts[-1]), ctx, final=False)
        return out

    def flush(self, ctx: Context) -> list[Finding]:
        return self._close(math.inf, ctx, final=True)

    # -- internals ------------------------------------------------------------------
    def _failure(self, key: tuple[str, str], t: float, user: str, device: str, ctx: Context) -> list[Finding]:
        out: list[Finding] = []
        st = self.bursts_.get(key)
        if st is not None and (t - st.last > self.window or t - st.first > self.max_open):
            out += self._emit_burst(key, st, ctx)
            del self.bursts_[key]
            st = None
        if st is None:
            st = lru_get(
                self.bursts_, key, lambda: _BurstState(recent=deque(maxlen=4 * self.threshold)), self.max_keys
            )
            st.first = t
        else:
            self.bursts_.move_to_end(key)
        st.recent.append(t)
        peak = sum(1 for x in st.recent if t - x <= self.window)
        st.peak = max(st.peak, peak)
        st.failures += 1
        st.last = t
        st.device_id = device or st.device_id
        if len(st.users) < 64:
            st.users.add(user)
        return out

    def _emit_burst(self, key: tuple[str, str], st: _BurstState, ctx: Context) -> list[Finding]:
        if st.peak < self.threshold:
            return []
        target, src = key
        span = max(st.last - st.first, 1.0)
        ratio = st.peak / self.threshold
        score = min(0.9, 0.55 + 0.2 * math.log2(ratio))
        evidence = [
            f"{st.failures} failed logins on {target} from {src or 'an unknown source'} in "
            f"{fmt_duration(span)}; peak {st.peak} in {fmt_duration(self.window)} vs threshold {self.threshold}",
        ]
        if len(st.users) > 1:
            evidence.append(f"{len(st.users)} accounts tried: {', '.join(sorted(st.users)[:5])}")
        mitre = ["T1110", "T1110.001"]
        if st.success_at is not None:
            score = max(score, 0.95)
            evidence.append(
                f"then a successful login from the same source {fmt_duration(st.success_at - st.last)}"
                " after the last failure"
            )
            mitre.append("T1078")
        return [
            Finding(
                entity=target,
                category="brute-force",
                detector=self.name,
                score=score,
                first_seen=st.first,
                last_seen=max(st.last, st.success_at or 0.0),
                evidence=evidence,
                mitre=mitre,
                # the entity's address: the device's when the target is a device, else the source's
                ip=(_device_ip(ctx, st.device_id) if st.device_id else src) or None,
                device_id=st.device_id or None,
                attributes={"source": src, "failures": st.failures, "peak": st.peak},
            )
        ]

    def _spray(self, t: float, s: str, user: str) -> list[Finding]:
        if not s:
            return []
        out: list[Finding] = []
        accounts = lru_get(self.spray_, s, OrderedDict, self.max_keys)
        accounts[user] = t
        accounts.move_to_end(user)
        if len(accounts) > 4 * self.spray_accounts:
            accounts.popitem(last=False)
        recent = [u for u, x in accounts.items() if t - x <= self.spray_window]
        if len(recent) >= self.spray_accounts:
            ep = self.spray_open_.get(s)
            if ep is not None and (t - ep["last"] > self.spray_window or t - ep["first"] > self.max_open):
                # the spraying episode ended (quiet for its window, or open too long): a new one
                del self.spray_open_[s]
                out.append(self._spray_finding(s, ep))
            ep = lru_get(self.spray_open_, s, lambda: {"first": t, "accounts": set()}, self.max_keys)
            ep["last"] = t
            ep["accounts"].update(recent[: 4 * self.spray_accounts])
        return out

    def _close(self, now: float, ctx: Context, final: bool) -> list[Finding]:
        out: list[Finding] = []
        # bursts_ is ordered by last update, so the scan stops at the first live key; a
        # burst stays open one window after its last failure so a following success joins it
        while self.bursts_:
            key, st = next(iter(self.bursts_.items()))
            if not final and now - st.last <= self.window:
                break
            del self.bursts_[key]
            out += self._emit_burst(key, st, ctx)
        for s in list(self.spray_open_):
            ep = self.spray_open_[s]
            if final or now - ep["last"] > self.spray_window or now - ep["first"] > self.max_open:
                del self.spray_open_[s]
                out.append(self._spray_finding(s, ep))
        return out

    def _spray_finding(self, s: str, ep: dict[str, Any]) -> Finding:
        n = len(ep["accounts"])
        return Finding(
            entity=s,
            category="brute-force",
            detector=self.name,
            score=min(0.9, 0.6 + 0.1 * math.log2(n / self.spray_accounts)),
            first_seen=ep["first"],
            last_seen=ep["last"],
            evidence=[
                f"password spraying: failed logins to {n} distinct accounts from {s} within "
                f"{fmt_duration(self.spray_window)} vs threshold {self.spray_accounts}",
                f"accounts: {', '.join(sorted(ep['accounts'])[:8])}",
            ],
            mitre=["T1110", "T1110.003"],
            ip=s,
            attributes={"accounts": n},
        )


# ---------------------------------------------------------------------------------------
# credential misuse
# ---------------------------------------------------------------------------------------
@dataclass
class _UserHistory:
    last_ts: float | None = None
    last_country: str | None = None
    last_ip: str = ""
    last_geo: tuple[float, float, float] | None = None  # ts, lat, lon of last located success
    countries: OrderedDict[str, int] = field(default_factory=OrderedDict)
    logins: int = 0
    off_hours: int = 0


DEFAULT_PRIVILEGED = r"(admin|root|maint|service|support|engineer|vendor|installer|superuser)"


class CredentialMisuse:
    """Successful logins judged against the account's history; one finding per episode."""

    name = "auth.credential_misuse"
    kinds = ("auth",)

    def __init__(
        self,
        max_speed_kmh: float = 1000.0,
        min_travel_km: float = 300.0,
        country_hop_s: float = 1800.0,
        burst_window: float = 600.0,
        burst_min: int = 5,
        episode_gap: float = 3600.0,
        max_open: float = 6 * 3600.0,
        privileged_pattern: str = DEFAULT_PRIVILEGED,
        routine_off_hours_share: float = 0.2,
        max_users: int = 50_000,
        max_countries_per_user: int = 16,
    ) -> None:
        self.max_speed_kmh = max_speed_kmh
        self.min_travel_km = min_travel_km
        self.country_hop_s = country_hop_s
        self.burst_window = burst_window
        self.burst_min = burst_min
        self.privileged = re.compile(privileged_pattern, re.IGNORECASE)
        self.routine_off_hours_share = routine_off_hours_share
        self.max_users = max_users
        self.max_countries_per_user = max_countries_per_user
        self.users_: OrderedDict[str, _UserHistory] = OrderedDict()
        self.failures_: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self.fleet_countries_: OrderedDict[str, int] = OrderedDict()
        self.geo_cache_: OrderedDict[str, str | None] = OrderedDict()
        self.episodes = EpisodeBook(gap=episode_gap, max_open=max_open, cap=max_users)

    def _country(self, ip: str) -> str | None:
        if ip in self.geo_cache_:
            self.geo_cache_.move_to_end(ip)
            return self.geo_cache_[ip]
        code = country_code(ip)
        self.geo_cache_[ip] = code
        if len(self.geo_cache_) > 65_536:
            self.geo_cache_.popitem(last=False)
        return code

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        batch = login_attempts(batch)
        if len(batch) == 0:
            return []
        ts = batch.np("ts")
        success = batch.np("success")
        user = str_col(batch, "user")
        src = str_col(batch, "src_ip")
        device = str_col(batch, "device_id")
        target = _target_keys(batch)
        country = str_col(batch, "src_country")
        lat = batch.np("src_lat")
        lon = batch.np("src_lon")
        service = str_col(batch, "service")
        offsets = np.array([_utc_offset(ctx.devices.get(d)) if d else 0.0 for d in device])
        off = off_hours(local_hours(ts, offsets), ctx.working_hours)
        if not self.fleet_countries_:
            for info in ctx.devices.values():
                if info.country:
                    self.fleet_countries_[info.country.upper()] = 0

        for i in range(len(ts)):
            if not success[i]:
                q = lru_get(self.failures_, (target[i], src[i]), lambda: deque(maxlen=64), self.max_users)
                q.append(float(ts[i]))
                continue
            cc = country[i].upper() or self._country(src[i]) or None
            self._judge(
                ctx,
                float(ts[i]),
                user[i],
                src[i],
                device[i],
                target[i],
                cc,
                float(lat[i]),
                float(lon[i]),
                service[i],
                bool(off[i]),
            )
        return self._emit(self.episodes.close_due(float(ts.max())), ctx)

    def flush(self, ctx: Context) -> list[Finding]:
        return self._emit(self.episodes.close_all(), ctx)

    # -- one successful login ---------------------------------------------------------
    def _judge(self, ctx, ts, user, src, device, target, cc, lat, lon, service, is_off) -> None:
        h = lru_get(self.users_, user, _UserHistory, self.max_users)
        info = ctx.devices.get(device) if device else None
        reasons: list[tuple[str, float, str]] = []
        where = f"{src or 'unknown address'}" + (f" ({cc})" if cc else "")

        located = not (math.isnan(lat) or math.isnan(lon))
        if located and h.last_geo is not None:
            t0, lat0, lon0 = h.last_geo
            km = great_circle_km(lat0, lon0, lat, lon)
            hours = max(ts - t0, 60.0) / 3600.0  # a minute floor keeps same-second pairs finite
            speed = km / hours
            if km >= self.min_travel_km and speed > self.max_speed_kmh:
                reasons.append(
                    (
                        "impossible_travel",
                        0.7,
                        f"impossible travel: {km:,.0f} km from the previous login ({h.last_ip}) in "
                        f"{fmt_duration(ts - t0)} = {speed:,.0f} km/h vs limit {self.max_speed_kmh:,.0f} km/h",
                    )
                )
        elif (
            cc
            and h.last_country
            and cc != h.last_country
            and h.last_ts is not None
            and ts - h.last_ts <= self.country_hop_s
        ):
            reasons.append(
                (
                    "impossible_travel",
                    0.5,
                    f"login country changed {h.last_country} -> {cc} within {fmt_duration(ts - h.last_ts)} "
                    f"(limit {fmt_duration(self.country_hop_s)}; no coordinates to compute a speed)",
                )
            )

        if cc and cc not in h.countries:
            fleet_new = bool(self.fleet_countries_) and cc not in self.fleet_countries_
            if h.logins > 0:
                seen = ", ".join(list(h.countries)[:6]) or "none"
                reasons.append(
                    (
                        "new_country",
                        0.55 if fleet_new else 0.45,
                        f"first login of {user} from {cc} after {h.logins} logins from {seen}"
                        + ("; no account in the fleet has logged in from there" if fleet_new else ""),
                    )
                )
            elif fleet_new:
                reasons.append(
                    (
                        "new_country",
                        0.35,
                        f"first login of {user} comes from {cc}, a country never seen in the fleet "
                        f"(fleet countries: {', '.join(list(self.fleet_countries_)[:6])})",
                    )
                )

        privileged = bool(self.privileged.search(user)) or (
            info is not None and user in (info.extra.get("privileged_users") or ())
        )
        if privileged and is_off and not in_maintenance_window(ts, info):
            routine = h.logins >= 10 and h.off_hours / h.logins >= self.routine_off_hours_share
            if not routine:
                wh = ctx.working_hours
                reasons.append(
                    (
                        "off_hours",
                        0.4,
                        f"privileged account {user} logged in to {target} via {service or 'unknown service'} "
                        f"off-hours (working hours {wh[0]:02d}-{wh[1]:02d}, no maintenance window); "
                        f"{h.off_hours} of its {h.logins} earlier logins were off-hours",
                    )
                )

        q = self.failures_.get((target, src))
        if q:
            n = sum(1 for t in q if 0 <= ts - t <= self.burst_window)
            if n >= self.burst_min:
                reasons.append(
                    (
                        "success_after_burst",
                        0.75,
                        f"successful login to {target} from {where} after {n} failed attempts from the same "
                        f"source in the preceding {fmt_duration(self.burst_window)} (threshold {self.burst_min})",
                    )
                )
                q.clear()

        if reasons:
            ep = self.episodes.get(user, ts)
            for code, w, sentence in reasons:
                ep.add(ts, code, w, sentence)
            ep.attrs.setdefault("devices", set()).add(device)
            ep.attrs.setdefault("sources", set()).add(src)
            if len(ep.attrs["sources"]) > 32:
                ep.attrs["sources"].pop()

        # learn after judging
        h.logins += 1
        h.off_hours += int(is_off)
        h.last_ts, h.last_ip = ts, src
        if cc:
            h.last_country = cc
            h.countries[cc] = h.countries.get(cc, 0) + 1
            if len(h.countries) > self.max_countries_per_user:
                h.countries.pop(min(h.countries, key=h.countries.get))
            self.fleet_countries_[cc] = self.fleet_countries_.get(cc, 0) + 1
            if len(self.fleet_countries_) > 256:
                self.fleet_countries_.popitem(last=False)
        if located:
            h.last_geo = (ts, lat, lon)

    def _emit(self, closed: list[tuple[Any, Episode]], ctx: Context) -> list[Finding]:
        out = []
        for user, ep in closed:
            devices = sorted(d for d in ep.attrs.get("devices", ()) if d)
            sources = sorted(s for s in ep.attrs.get("sources", ()) if s)
            entity = devices[0] if len(devices) == 1 else user
            mitre = ["T1078"]
            if "impossible_travel" in ep.reasons or "new_country" in ep.reasons:
                mitre.append("T1133")
            if "success_after_burst" in ep.reasons:
                mitre.append("T1110")
            out.append(
                Finding(
                    entity=entity,
                    category="credential-misuse",
                    detector=self.name,
                    score=ep.score,
                    first_seen=ep.first,
                    last_seen=ep.last,
                    evidence=[f"account {user}: " + s for s in ep.evidence()],
                    mitre=mitre,
                    ip=_device_ip(ctx, devices[0])
                    if len(devices) == 1
                    else (sources[0] if len(sources) == 1 else None),
                    device_id=devices[0] if len(devices) == 1 else None,
                    attributes={"user": user, "reasons": sorted(ep.reasons), "sources": sources[:8]},
                )
            )
        return out


ANALYTICS = [BruteForce, CredentialMisuse]
