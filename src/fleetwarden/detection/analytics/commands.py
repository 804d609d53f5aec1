"""Control-command analytics: commands a device never received at that hour, from that operator or source.

:class:`CommandBaseline` (category ``anomaly``, MITRE ICS T0855, T0836, T0816, T0858)

*Contract.* Learns, from the ``command`` stream itself, a profile per device: a damped
hour-of-day histogram (hours local to the device, ``extra['utc_offset_hours']``), the
operators, source addresses and command names seen (bounded maps).  After ``warmup``
commands a device is judged against its own profile; before that, against its cohort's
(same ``device_class``, else same vendor/model) when the cohort is warm, else not at all.
Each command collects reasons: a source never seen (0.35), an operator never seen (0.3), an
hour holding less than ``rare_hour_share`` of the profile's commands and outside any
maintenance window (0.35), a command name never sent (0.2).  Reads, status queries and other
non-write commands count at 0.6 of that weight; writes (set points, register writes, mode
changes, restarts, firmware loads, recognised by ``write_pattern``) at full weight.  A
command whose noisy-OR score reaches ``min_score`` (so at least two reasons for a write) is
anomalous and is not learned; the others are.  Anomalous commands of one device are grouped
in an episode (``episode_gap``) and reported as one finding when it closes or on flush.

*Blind spots.* An attacker who uses the usual operator account from the usual jump host in
working hours (only the command content would show it, and arguments are not modelled); a
device whose first ``warmup`` commands are already hostile with no warm cohort; a slow
attacker whose commands, once unflagged, become the baseline.

*Reference.* MITRE ATT&CK for ICS T0855 (Unauthorized Command Message), T0836 (Modify
Parameter); the per-asset command whitelisting of ICS monitoring (e.g. Zeek's ICSNPP
analysers, Dragos/Claroty "new command / new communicating host" baselines).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from fleetwarden.detection.analytics.auth import (
    EpisodeBook,
    in_maintenance_window,
    local_hours,
    lru_get,
    noisy_or,
)
from fleetwarden.detection.analytics.base import Context, DeviceInfo
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding

__all__ = ["ANALYTICS", "CommandBaseline"]

DEFAULT_WRITE = (
    r"(write|set|put|load|download|upload|flash|firmware|reboot|restart|reset|stop|start|mode|delete|force)"
)


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
    if info is None:
        return None
    if info.device_class:
        return "class:" + info.device_class.lower()
    if info.vendor and info.model:
        return f"model:{info.vendor.lower()}/{info.model.lower()}"
    return None


class CommandBaseline:
    """Per-device command profile (hours, operators, sources, names) -> anomalous command episodes."""

    name = "commands.baseline"
    kinds = ("command",)

    def __init__(
        self,
        warmup: int = 20,
        rare_hour_share: float = 0.02,
        decay: float = 0.998,
        min_score: float = 0.5,
        episode_gap: float = 3600.0,
        max_open: float = 6 * 3600.0,
        write_pattern: str = DEFAULT_WRITE,
        max_devices: int = 200_000,
        max_items: int = 16,
    ) -> None:
        self.warmup = warmup
        self.rare_hour_share = rare_hour_share
        self.decay = decay
        self.min_score = min_score
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
        hours = local_hours(ts_np, offsets).tolist()
        ts = ts_np.tolist()
        for i in range(len(ts)):  # commands are rare (operators type them): a loop is fine
            if dev[i]:
                self._one(ctx, ts[i], dev[i], op[i], cmd[i], src[i], hours[i])
        return self._emit(self.episodes.close_due(float(ts_np.max())), ctx)

    def flush(self, ctx: Context) -> list[Finding]:
        return self._emit(self.episodes.close_all(), ctx)

    def _one(self, ctx: Context, ts: float, dev: str, op: str, cmd: str, src: str, hour: int) -> None:
        info = ctx.devices.get(dev)
        prof = lru_get(self.devices_, dev, _Profile, self.max_devices)
        ckey = _cohort_of(info)
        cohort = lru_get(self.cohorts_, ckey, _Profile, 4096) if ckey else None
        ref, whose = prof, dev
        if prof.n < self.warmup:
            ref, whose = (
                (cohort, f"cohort {ckey}") if cohort is not None and cohort.n >= self.warmup else (None, "")
            )
        is_write = bool(self.write.search(cmd))
        reasons: list[tuple[str, float, str]] = []
        if ref is not None:
            f = 1.0 if is_write else 0.6
            if src and src not in ref.sources:
                known = ", ".join(list(ref.sources)[-3:]) or "none"
                reasons.append(
                    ("new_source", 0.35 * f, f"source {src} never sent commands to {whose} (known: {known})")
                )
            if op and op not in ref.operators:
                known = ", ".join(list(ref.operators)[-3:]) or "none"
                reasons.append(
                    ("new_operator", 0.3 * f, f"operator {op} never seen on {whose} (known: {known})")
                )
            share = ref.hours[hour] / ref.total if ref.total > 0 else 0.0
            if share < self.rare_hour_share and not in_maintenance_window(ts, info):
                reasons.append(
                    (
                        "rare_hour",
                        0.35 * f,
                        f"command at {hour:02d}:00 local, an hour holding {100 * share:.1f} % of {whose}'s "
                        f"{ref.n} earlier commands (threshold {100 * self.rare_hour_share:.0f} %)",
                    )
                )
            if cmd not in ref.commands:
                reasons.append(("new_command", 0.2 * f, f"command '{cmd}' never sent to {whose} before"))
        score = noisy_or(w for _, w, _ in reasons)
        if score >= self.min_score:
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
        for p in (prof, cohort):
            if p is None:
                continue
            p.learn_hour(hour, self.decay)  # damping: old habits fade over ~1/(1-decay) commands
            p.n += 1
            _remember(p.operators, op, self.max_items)
            _remember(p.sources, src, self.max_items)
            _remember(p.commands, cmd, 2 * self.max_items)

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
