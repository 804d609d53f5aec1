"""Control-command analytics: commands a device never received at that hour, from that operator or source.

:class:`CommandBaseline` (category ``anomaly``, MITRE ICS T0855, T0836, T0816, T0858)

*Contract.* Learns, from the ``command`` stream itself, three nested profiles: per device, per
cohort (same site and ``device_class``, else same vendor/model) and per site: a damped
hour-of-day histogram (hours local to the device, ``extra['utc_offset_hours']``), the operators,
source addresses and command names seen (bounded maps).  After ``warmup`` commands a device is
judged against its own profile; before that, against its cohort's when the cohort is warm, else
only by the reasons that need no profile (below).  It also reads ``auth`` events: a successful login of an account opens a session
of ``session_s`` seconds for it (commands inside an authenticated operator session are what
normal operation looks like).  Each command collects reasons, weighted by how far outside the
known world it falls:

- source address: known at the site but new to this device/cohort (0.1); new at the site but in
  the same /24 as a known source, e.g. another station in the operators' zone (0.15); from a
  network no command ever came from (0.35);
- operator: known at the site, or logged in within ``session_s`` (0.1); neither (0.3);
- time: an hour holding less than ``rare_hour_share`` of the profile's commands, once the
  profile spans ``profile_span_s`` (a full daily cycle), outside ``ctx.working_hours`` (0.35) or
  inside them (0.15); while the profile is younger, the working hours alone decide (0.35
  outside, nothing inside); nothing inside a maintenance window of the device;
- a command name never sent to the device/cohort (0.2).

Reads, status queries and other non-write commands count at 0.6 of that weight; writes (set
points, register writes, mode changes, restarts, firmware loads, recognised by
``write_pattern``) at full weight.  Inside a declared maintenance window the novelty reasons
count half: that is when contractors do unusual work.  The operator and time reasons need no
learned profile, so they also judge commands while the device and its cohort are still cold
(an account that never logged in, writing at night, is suspicious on day one).  A command
whose noisy-OR score reaches ``min_score`` is anomalous and is not learned; one below
``learn_below`` is learned; the grey zone in between is neither reported nor learned, so a
patient attacker does not become the baseline by staying just under the threshold.  So a new operator's station in
the operators' subnet during working hours stays well below the threshold, while off-hours +
new source + write, or an account that never logged in writing from a foreign network, is
reported.  Anomalous commands of one device are grouped in an episode (``episode_gap``) and
reported as one finding when it closes or on flush.

Commands are judged one by one in time order once ``session_lead_s`` of event time has passed
them (the engine hands logins over before the commands of the same window), against every
login up to then: logins are kept until no command left to judge can fall in their session,
and "the analytic sees the auth stream" means a login came by the command's time plus the
lead, so the judgments do not depend on how the kinds were batched.

*Blind spots.* An attacker who uses the usual operator account from the usual jump host in
working hours (only the command content would show it, and arguments are not modelled); a
device whose first ``warmup`` commands are already hostile with no warm cohort; a slow
attacker whose commands, once unflagged, become the baseline; a stolen account that logged in
(the session makes its commands look routine: credential-misuse is the analytic for that);
auth events delivered after the commands they authorise.

*Reference.* MITRE ATT&CK for ICS T0855 (Unauthorized Command Message), T0836 (Modify
Parameter); the per-asset command whitelisting of ICS monitoring (e.g. Zeek's ICSNPP
analysers, Dragos/Claroty "new command / new communicating host" baselines).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.auth import (
    EpisodeBook,
    in_maintenance_window,
    local_hours,
    lru_get,
    noisy_or,
    off_hours,
)
from fleetwarden.detection.analytics.firmware import version_key

__all__ = ["ANALYTICS", "CommandBaseline"]

DEFAULT_WRITE = (
    r"(write|set|put|load|download|upload|flash|firmware|reboot|restart|reset|stop|start|mode|delete|force)"
)

# commands that install firmware: expected work when the catalogue holds a newer release
DEFAULT_FIRMWARE = r"(firmware|ota|upgrade|update)"


@dataclass
class _Profile:
    # damped hour histogram kept as growing weights (new observations weigh 1/decay more
    # than the previous one), renormalised now and then: O(1) per command, no decay loop
    hours: list[float] = field(default_factory=lambda: [0.0] * 24)
    total: float = 0.0
    weight: float = 1.0
    operators: OrderedDict[str, int] = field(default_factory=OrderedDict)
    sources: OrderedDict[str, int] = field(default_factory=OrderedDict)
    commands: OrderedDict[str, int] = field(default_factory=OrderedDict)
    n: int = 0
    first_ts: float | None = None  # first learned command: how much of a day the hours have seen

    def learn_hour(self, hour: int, decay: float) -> None:
        self.weight /= decay
        self.hours[hour] += self.weight
        self.total += self.weight
        if self.weight > 1e6:
            self.hours = [h / self.weight for h in self.hours]
            self.total /= self.weight
            self.weight = 1.0


def _remember(store: OrderedDict[str, int], key: str, cap: int) -> None:
    if not key:
        return
    store[key] = store.get(key, 0) + 1
    store.move_to_end(key)
    if len(store) > cap:
        store.popitem(last=False)


def _cohort_of(info: DeviceInfo | None) -> str | None:
    """Peers of a device: same site (operators and stations are per site) and class, else model."""
    if info is None:
        return None
    where = f"site:{info.site.lower()}/" if info.site else ""
    if info.device_class:
        return where + "class:" + info.device_class.lower()
    if info.vendor and info.model:
        return where + f"model:{info.vendor.lower()}/{info.model.lower()}"
    return None


def _subnet24(ip: str) -> str:
    """The /24 of an IPv4 address ('' for anything else): stations of one zone share it."""
    head, dot, _ = ip.rpartition(".")
    return head if dot and ":" not in ip else ""


class CommandBaseline:
    """Per-device command profile (hours, operators, sources, names) -> anomalous command episodes."""

    name = "commands.baseline"
    kinds = ("command", "auth")

    def __init__(
        self,
        warmup: int = 20,
        rare_hour_share: float = 0.02,
        decay: float = 0.998,
        min_score: float = 0.5,
        learn_below: float = 0.25,
        episode_gap: float = 3600.0,
        max_open: float = 6 * 3600.0,
        write_pattern: str = DEFAULT_WRITE,
        max_devices: int = 200_000,
        max_items: int = 16,
        session_s: float = 12 * 3600.0,
        session_lead_s: float = 1800.0,
        max_pending: int = 100_000,
        firmware_pattern: str = DEFAULT_FIRMWARE,
        profile_span_s: float = 86400.0,
        max_users: int = 50_000,
    ) -> None:
        self.warmup = warmup
        self.session_s = session_s
        self.profile_span_s = profile_span_s
        self.max_users = max_users
        self.session_lead_s = session_lead_s
        self.max_pending = max_pending
        self.sessions_: OrderedDict[str, deque[float]] = OrderedDict()  # account -> recent logins
        self.first_login_ = math.inf  # the first successful login seen
        self.pending_: deque[tuple] = deque()  # commands waiting session_lead_s for a late login
        self.now_ = -math.inf
        self.firmware = re.compile(firmware_pattern, re.IGNORECASE)
        self._cat_key: tuple[int, int] | None = None
        self._cat_index: dict[tuple[str, str], list[str]] = {}
        self.sites_: OrderedDict[str, _Profile] = OrderedDict()
        self.rare_hour_share = rare_hour_share
        self.decay = decay
        self.min_score = min_score
        self.learn_below = learn_below
        self.write = re.compile(write_pattern, re.IGNORECASE)
        self.max_devices = max_devices
        self.max_items = max_items
        self.devices_: OrderedDict[str, _Profile] = OrderedDict()
        self.cohorts_: OrderedDict[str, _Profile] = OrderedDict()
        self.episodes = EpisodeBook(gap=episode_gap, max_open=max_open, cap=max_devices)

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if len(batch) == 0:
            return []
        ts_np = batch.np("ts")
        self.now_ = max(self.now_, float(ts_np.max()))
        if batch.kind == "auth":
            self._sessions(batch)
        else:
            dev = batch.np("device_id").tolist()
            op = batch.np("operator").tolist()
            cmd = batch.np("command").tolist()
            src = batch.np("src_ip").tolist()
            offsets = np.array(
                [
                    float(ctx.devices[d].extra.get("utc_offset_hours", 0.0)) if d in ctx.devices else 0.0
                    for d in dev
                ]
            )
            hours_np = local_hours(ts_np, offsets)
            off = off_hours(hours_np, ctx.working_hours).tolist()
            hours = hours_np.tolist()
            for i, t in enumerate(ts_np.tolist()):
                if dev[i]:
                    self.pending_.append((t, dev[i], op[i], cmd[i], src[i], hours[i], off[i]))
        # judge a command once the login that may follow it (other log, other clock) had time to arrive
        self._drain(ctx, self.now_ - self.session_lead_s)
        return self._emit(self.episodes.close_due(self.now_ - self.session_lead_s), ctx)

    def flush(self, ctx: Context) -> list[Finding]:
        self._drain(ctx, math.inf)
        return self._emit(self.episodes.close_all(), ctx)

    def _drain(self, ctx: Context, until: float) -> None:
        while self.pending_ and self.pending_[0][0] <= until:
            self._one(ctx, *self.pending_.popleft())
        while len(self.pending_) > self.max_pending:  # bounded: judge the oldest early
            self._one(ctx, *self.pending_.popleft())

    def _sessions(self, batch: EventBatch) -> None:
        ok = batch.np("success").astype(bool)
        if not ok.any():
            return
        users = batch.np("user")[ok].tolist()
        ts = batch.np("ts")[ok].tolist()
        for u, t in zip(users, ts, strict=True):
            if u:
                # every login is kept until no command still to judge can fall in its session
                # (commands are judged in time order: see _in_session), whatever the batches
                lru_get(self.sessions_, u, lambda: deque(maxlen=4096), self.max_users).append(float(t))
                self.first_login_ = min(self.first_login_, float(t))

    def _in_session(self, op: str, ts: float) -> bool:
        """A successful login of ``op`` up to ``session_s`` before or ``session_lead_s`` after ``ts``."""
        logins = self.sessions_.get(op)
        if not logins:
            return False
        while logins and logins[0] < ts - self.session_s:
            logins.popleft()  # too old for this command and every later one
        return any(-self.session_lead_s <= ts - t <= self.session_s for t in logins)

    def _newer_release(self, ctx: Context, info: DeviceInfo | None) -> str | None:
        """The newest catalogued version of the device's model above its inventory version."""
        if info is None or not info.vendor or not info.model or not info.firmware:
            return None
        key = (id(ctx.firmware_catalog), len(ctx.firmware_catalog))
        if key != self._cat_key:
            index: dict[tuple[str, str], list[str]] = {}
            for vendor, model, version in ctx.firmware_catalog:
                index.setdefault((str(vendor).lower(), str(model).lower()), []).append(str(version))
            self._cat_index, self._cat_key = index, key
        versions = self._cat_index.get((info.vendor.lower(), info.model.lower()), [])
        newest = max(versions, key=version_key, default=None)
        return newest if newest is not None and version_key(newest) > version_key(info.firmware) else None

    def _one(
        self, ctx: Context, ts: float, dev: str, op: str, cmd: str, src: str, hour: int, is_off: bool
    ) -> None:
        info = ctx.devices.get(dev)
        prof = lru_get(self.devices_, dev, _Profile, self.max_devices)
        ckey = _cohort_of(info)
        cohort = lru_get(self.cohorts_, ckey, _Profile, 4096) if ckey else None
        site = lru_get(self.sites_, info.site, _Profile, 4096) if info is not None and info.site else None
        ref, whose = prof, dev
        if prof.n < self.warmup:
            ref, whose = (
                (cohort, f"cohort {ckey}") if cohort is not None and cohort.n >= self.warmup else (None, "")
            )
        is_write = bool(self.write.search(cmd))
        f = 1.0 if is_write else 0.6
        maint = in_maintenance_window(ts, info)
        release = self._newer_release(ctx, info) if self.firmware.search(cmd) else None
        maint = maint or release is not None  # a catalogued release is announced change, like a window
        novel = f * (0.5 if maint else 1.0)  # unusual work is what maintenance windows are for
        reasons: list[tuple[str, float, str]] = []
        # who: needs no learned profile, only the site's operators and the login sessions (when
        # the analytic sees auth events at all: no auth stream is no evidence either way)
        known_here = ref is not None and op in ref.operators
        if op and not known_here:
            if site is not None and op in site.operators:
                w, how = 0.1 * novel, "known at the site"
            elif self._in_session(op, ts):
                w, how = 0.1 * novel, f"logged in within {self.session_s / 3600:.0f} h"
            elif self.first_login_ <= ts + self.session_lead_s:
                # the analytic sees the auth stream (a login came by the time this command is
                # judged): no session for this operator is evidence
                w, how = 0.3 * f, "unknown at the site and no login session"
            else:
                w, how = (0.3 * f, "unknown at the site") if ref is not None else (0.0, "")
            if w > 0:
                known = ", ".join(list(ref.operators)[-3:]) if ref is not None else ""
                reasons.append(
                    (
                        "new_operator",
                        w,
                        f"operator {op} never seen on {whose or dev} ({how}"
                        + (f"; known: {known or 'none'})" if ref is not None else ")"),
                    )
                )
        # when: the declared working hours until the hour profile has seen a whole day
        if not maint:
            span = ts - ref.first_ts if ref is not None and ref.first_ts is not None else 0.0
            wh = ctx.working_hours
            if ref is not None and span >= self.profile_span_s:
                share = ref.hours[hour] / ref.total if ref.total > 0 else 0.0
                if share < self.rare_hour_share:
                    reasons.append(
                        (
                            "rare_hour",
                            (0.35 if is_off else 0.15) * f,
                            f"command at {hour:02d}:00 local, an hour holding {100 * share:.1f} % of "
                            f"{whose}'s {ref.n} earlier commands (threshold {100 * self.rare_hour_share:.0f} %)"
                            + (f", outside working hours {wh[0]:02d}-{wh[1]:02d}" if is_off else ""),
                        )
                    )
            elif is_off:
                reasons.append(
                    (
                        "rare_hour",
                        0.35 * f,
                        f"command at {hour:02d}:00 local, outside working hours {wh[0]:02d}-{wh[1]:02d} "
                        "and outside any maintenance window",
                    )
                )
        # from where and what: only against a warm profile (before it, everything is new)
        if ref is not None:
            if src and src not in ref.sources:
                known = ", ".join(list(ref.sources)[-3:]) or "none"
                net = _subnet24(src)
                if site is not None and src in site.sources:
                    w, how = 0.1, "known at the site"
                elif net and site is not None and any(_subnet24(x) == net for x in site.sources):
                    w, how = 0.15, f"new at the site but in {net}.0/24 with its known sources"
                else:
                    w, how = 0.35, "from a network no command came from"
                reasons.append(
                    (
                        "new_source",
                        w * novel,
                        f"source {src} never sent commands to {whose} ({how}; known: {known})",
                    )
                )
            if cmd not in ref.commands:
                reasons.append(("new_command", 0.2 * novel, f"command '{cmd}' never sent to {whose} before"))
        score = noisy_or(w for _, w, _ in reasons)
        if score >= self.min_score:
            if release is not None:
                reasons.append(("release", 0.0, f"the catalogue holds release {release} for this model"))
            ep = self.episodes.get(dev, ts)
            for code, w, sentence in reasons:
                ep.add(ts, code, w, sentence)
            cmds = ep.attrs.setdefault("commands", {})
            if cmd in cmds or len(cmds) < 16:
                cmds[cmd] = cmds.get(cmd, 0) + 1
            ep.attrs["writes"] = ep.attrs.get("writes", 0) + int(is_write)
            ep.attrs.setdefault("sources", set())
            if len(ep.attrs["sources"]) < 8 and src:
                ep.attrs["sources"].add(src)
            return  # anomalous commands are not learned: a repeated attack stays visible
        if score >= self.learn_below:
            return  # the grey zone: not worth a finding, not clean enough to become normal either
        for p in (prof, cohort):
            if p is None:
                continue
            p.learn_hour(hour, self.decay)  # damping: old habits fade over ~1/(1-decay) commands
            p.n += 1
            if p.first_ts is None:
                p.first_ts = ts
            _remember(p.operators, op, self.max_items)
            _remember(p.sources, src, self.max_items)
            _remember(p.commands, cmd, 2 * self.max_items)
        if site is not None:  # the site profile only answers "who commands devices here, from where"
            site.n += 1
            _remember(site.operators, op, 4 * self.max_items)
            _remember(site.sources, src, 4 * self.max_items)

    def _emit(self, closed, ctx: Context) -> list[Finding]:
        out = []
        for dev, ep in closed:
            info = ctx.devices.get(dev)
            cmds = ep.attrs.get("commands", {})
            n = sum(cmds.values())
            mitre = ["T0855"]
            names = " ".join(cmds)
            if re.search(r"set|write|param|register", names, re.IGNORECASE):
                mitre.append("T0836")
            if re.search(r"reboot|restart|reset|stop|shutdown", names, re.IGNORECASE):
                mitre.append("T0816")
            if re.search(r"mode", names, re.IGNORECASE):
                mitre.append("T0858")
            summary = ", ".join(f"{c} x{k}" for c, k in sorted(cmds.items(), key=lambda kv: -kv[1])[:5])
            sources = sorted(ep.attrs.get("sources", ()))
            out.append(
                Finding(
                    entity=dev,
                    category="anomaly",
                    detector=self.name,
                    score=ep.score,
                    first_seen=ep.first,
                    last_seen=ep.last,
                    evidence=[
                        f"{n} unusual command(s) to {dev} ({ep.attrs.get('writes', 0)} writes): {summary}",
                        *ep.evidence(),
                    ],
                    mitre=mitre,
                    ip=info.ip if info else None,
                    mac=info.mac if info else None,
                    device_id=dev,
                    attributes={"commands": dict(cmds), "sources": sources, "reasons": sorted(ep.reasons)},
                )
            )
        return out


ANALYTICS = [CommandBaseline]
