"""The flow model's story: a device's alerted flows, grouped by what they are about, told in words.

:class:`FlowAlerts` collects, per device, the flows the flow model alerted on, grouped by
destination, service (protocol and responder port) and direction (to the outside or inside the
network), with counts, unanswered attempts, bytes and time span.  :meth:`FlowAlerts.story` turns
them into what an analyst acts on: the first evidence line says what happened, to what, how
much and since when; the category follows the behaviour, not the model's feature names:

* **C2 retry** (``c2-beacon``): most of the alerted flows are repeated attempts to ONE external
  service, nearly all unanswered: a bot calling a command-and-control server that is down or
  blocked (Hakai's 8,000 SYNs to tcp/50, Mirai's IRC retries).  The destination is named to block.
* **flood** (``ddos``): the same, but dozens of attempts a second: the device is sending a
  flood to that destination, not calling home.
* **scan** (``scan``): unanswered attempts spread over many hosts on one service, or many
  services of one host.
* otherwise **anomaly**: the destinations and services the unusual flows went to, largest first.

Every story names the external destinations to block (the finding's ``block`` attribute) and
ends with the model's own reasons (which features were out of range) for the analyst who wants
them.  The thresholds below are fixed a priori, with their reasons, not fitted to a capture.

Blind spots: the story describes the flows the model alerted on, not all of the device's traffic;
a C2 that answers (a live channel) is an anomaly here and the beacon analytic's to name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fleetwarden.core.context import Context
from fleetwarden.detection.analytics.netcommon import FAILED_STATES, cap_ids, is_local

__all__ = ["EPISODE_GAP", "FlowAlerts", "Story"]

# A C2 retry: at least this many attempts (a handful of failures is a flaky service, dozens a
# program that will not give up), at least this share of them unanswered (a live service
# answers), and this share of the device's alerted flows (the story is about that service).
RETRY_MIN_ATTEMPTS = 10
RETRY_MIN_FAILED = 0.8
RETRY_MIN_SHARE = 0.5
# A retry loop waits between attempts (Paho's reconnect starts at 1 s; Hakai retries every 20 s):
# at most one attempt a second on average is a retry.  At the flood analytic's own threshold (200
# unanswered flows in 10 s) or faster it is a flood.
RETRY_MAX_RATE = 1.0
FLOOD_MIN_RATE = 20.0
# A scan: unanswered attempts to at least this many hosts on one service, or this many services of
# one host (the scan analytic's own order of magnitude: 10 hosts or 15 ports a minute).
SCAN_MIN_TARGETS = 20
# An episode of a device's alerts ends after an hour without one (a priori: C2 retries, scans and
# floods go on by the minute; an hour of quiet is a new story).
EPISODE_GAP = 3600.0
# Groups kept per device (the biggest by flows): a story names a few, never thousands.
MAX_GROUPS = 64
TOP_GROUPS = 3
BLOCK_MAX = 5
REASONS_SHOWN = 3


@dataclass
class _Group:
    flows: int = 0
    failed: int = 0
    out_bytes: float = 0.0
    in_bytes: float = 0.0
    first: float = np.inf
    last: float = -np.inf


@dataclass
class _Device:
    groups: dict[tuple[str, str, int], _Group] = field(default_factory=dict)  # (dst, proto, port)
    flows: int = 0
    top_score: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    uids: list[str] = field(default_factory=list)
    mac: str | None = None
    first: float = np.inf
    last: float = -np.inf
    told_at: int = 0  # alerts in the episode when it was last told


@dataclass
class Story:
    """What the alerted flows of one device say, ready for a finding."""

    category: str
    mitre: list[str]
    evidence: list[str]
    block: list[str]
    flows: int
    top_score: float
    first: float
    last: float
    uids: list[str]
    mac: str | None


class FlowAlerts:
    """Alerted flows per device, grouped by (destination, protocol, port), told as episodes.

    A device's alerts make one episode until it goes ``episode_gap`` seconds of event time without
    one.  The episode is told at its 1st, 2nd, 4th, 8th … alert (each story covering the whole
    episode so far: "4091 attempts over 22.7 h", not a minute's three), and at its end (a later
    alert after the gap, or the end of the input) when alerts came since the last story.  Decided
    alert by alert in event time, so the stories are the same whatever the batching."""

    def __init__(self, episode_gap: float = EPISODE_GAP) -> None:
        self.episode_gap = episode_gap
        self.devices: dict[str, _Device] = {}

    def add(
        self, batch_cols: dict[str, np.ndarray], rows: np.ndarray, scores: np.ndarray, reasons: list, ctx: Context
    ) -> list[tuple[str, Story]]:
        """Add the alerted ``rows`` of a flow batch (``batch_cols``: its columns as numpy arrays, rows
        in time order); returns the (device, story) pairs told on the way."""
        src, dst, ts = batch_cols["src"], batch_cols["dst"], batch_cols["ts"]
        proto, port, state = batch_cols["proto"], batch_cols["port"], batch_cols["state"]
        ob, ib, uid, mac = batch_cols["out_bytes"], batch_cols["in_bytes"], batch_cols["uid"], batch_cols["mac"]
        told: list[tuple[str, Story]] = []
        for i in rows.tolist():
            ip = str(src[i])
            t = float(ts[i])
            d = self.devices.get(ip)
            if d is not None and t - d.last > self.episode_gap:
                if d.flows > d.told_at:
                    told.append((ip, tell(ip, d, ctx)))  # the end of the device's last episode
                d = None
            if d is None:
                d = self.devices[ip] = _Device()
            key = (str(dst[i]), str(proto[i]), int(port[i]))
            g = d.groups.get(key)
            if g is None:
                if len(d.groups) >= MAX_GROUPS:
                    self._forget_smallest(d)
                g = d.groups[key] = _Group()
            g.flows += 1
            g.failed += int(state[i] in FAILED_STATES)
            g.out_bytes += float(ob[i])
            g.in_bytes += float(ib[i])
            g.first, g.last = min(g.first, t), max(g.last, t)
            d.flows += 1
            d.top_score = max(d.top_score, float(scores[i]))
            d.first, d.last = min(d.first, t), max(d.last, t)
            r = reasons[i]
            for part in r if isinstance(r, list | tuple) else str(r or "").split(";"):
                if part and part.strip():
                    d.reasons[part.strip()] += 1
            if uid[i] and len(d.uids) < 50:
                d.uids.append(str(uid[i]))
            d.mac = str(mac[i]) or d.mac
            if d.flows >= 2 * d.told_at or d.told_at == 0:
                d.told_at = d.flows
                told.append((ip, tell(ip, d, ctx)))
        return told

    def finish(self, ctx: Context) -> list[tuple[str, Story]]:
        """The last stories of the episodes with alerts since their last story (the end of the input)."""
        out = [(ip, tell(ip, d, ctx)) for ip, d in sorted(self.devices.items()) if d.flows > d.told_at]
        self.devices.clear()
        return out

    @staticmethod
    def _forget_smallest(d: _Device) -> None:
        smallest = min(d.groups, key=lambda k: (d.groups[k].flows, d.groups[k].last))
        del d.groups[smallest]


def tell(ip: str, d: _Device, ctx: Context) -> Story:
    """Name what a device's alerted flows are about (see the module docstring)."""
    ranked = sorted(d.groups.items(), key=lambda kv: (-kv[1].flows, kv[1].first))
    external = [(k, g) for k, g in ranked if not is_local(ctx, k[0])]
    model_line = _model_line(d)
    retry = _retry(d, external)
    if retry is not None and _rate_per_s(retry[1]) >= FLOOD_MIN_RATE:
        (dst, proto, port), g = retry
        svc = _service(proto, port)
        first = (
            f"{g.flows} connections to {dst} {svc} in {_span(g.first, g.last)} "
            f"({_rate_per_s(g):,.0f} a second), {g.failed / g.flows:.0%} unanswered: the device is "
            "flooding that destination (denial-of-service participation)"
        )
        return Story(
            "ddos", ["T1498"], [first, model_line], [], d.flows, d.top_score, d.first, d.last, cap_ids(d.uids), d.mac
        )  # fmt: skip
    if retry is not None and _rate_per_s(retry[1]) <= RETRY_MAX_RATE:
        (dst, proto, port), g = retry
        svc = _service(proto, port)
        # the same kind of retries to other external addresses: the bot's fallback C2 addresses
        fallback = [
            (k, h)
            for k, h in external[1:]
            if h.flows >= RETRY_MIN_ATTEMPTS and h.failed >= RETRY_MIN_FAILED * h.flows
            and _rate_per_s(h) <= RETRY_MAX_RATE
        ][: BLOCK_MAX - 1]  # fmt: skip
        also = "".join(f"; also {h.flows} attempts to {k[0]} {_service(k[1], k[2])}" for k, h in fallback)
        first = (
            f"{g.flows} attempts to {dst} {svc} over {_span(g.first, g.last)}"
            f"{_rate(g)}, {g.failed / g.flows:.0%} unanswered{also}: the device keeps calling "
            f"{'one external service' if not fallback else 'external services'} that do"
            f"{'es' if not fallback else ''} not answer, as a bot does when its command-and-control "
            "server is down or blocked (C2 retry)"
        )
        block = [f"{dst} {svc}"] + [f"{k[0]} {_service(k[1], k[2])}" for k, _h in fallback]
        return Story(
            "c2-beacon", ["T1071", "T1008"], [first, "block " + ", ".join(block), model_line], block,
            d.flows, d.top_score, d.first, d.last, cap_ids(d.uids), d.mac,
        )  # fmt: skip
    scan = _scan(d, ranked)
    if scan is not None:
        first, targets = scan
        return Story(
            "scan", ["T1046"], [first, model_line], [], d.flows, d.top_score, d.first, d.last, cap_ids(d.uids), d.mac
        )  # fmt: skip
    top = ranked[:TOP_GROUPS]
    parts = [f"{g.flows} to {dst} {_service(proto, port)} ({_volume(g)})" for (dst, proto, port), g in top]
    more = len(ranked) - len(top)
    first = (
        f"{d.flows} unusual flows over {_span(d.first, d.last)}: "
        + "; ".join(parts)
        + (f"; and {more} other destination/service pairs" if more > 0 else "")
    )
    block = [f"{dst} {_service(proto, port)}" for (dst, proto, port), _g in external[:BLOCK_MAX]]
    evidence = [first]
    if block:
        evidence.append("external destinations among them: " + ", ".join(block))
    evidence.append(model_line)
    return Story("anomaly", [], evidence, block, d.flows, d.top_score, d.first, d.last, cap_ids(d.uids), d.mac)


def _retry(d: _Device, external: list) -> tuple | None:
    if not external:
        return None
    key, g = external[0]
    if (
        g.flows >= RETRY_MIN_ATTEMPTS
        and g.failed >= RETRY_MIN_FAILED * g.flows
        and g.flows >= RETRY_MIN_SHARE * d.flows
    ):
        return key, g
    return None


def _scan(d: _Device, ranked: list) -> tuple[str, int] | None:
    failed = [(k, g) for k, g in ranked if g.failed >= RETRY_MIN_FAILED * g.flows]
    if not failed:
        return None
    by_service: dict[tuple[str, int], set[str]] = {}
    by_host: dict[str, set[tuple[str, int]]] = {}
    span = [np.inf, -np.inf]
    for (dst, proto, port), g in failed:
        by_service.setdefault((proto, port), set()).add(dst)
        by_host.setdefault(dst, set()).add((proto, port))
        span = [min(span[0], g.first), max(span[1], g.last)]
    (proto, port), hosts = max(by_service.items(), key=lambda kv: len(kv[1]))
    if len(hosts) >= SCAN_MIN_TARGETS:
        return (
            f"unanswered attempts to {len(hosts)} hosts on {_service(proto, port)} over "
            f"{_span(*span)}: a horizontal scan, as worms look for their next victims",
            len(hosts),
        )
    host, services = max(by_host.items(), key=lambda kv: len(kv[1]))
    if len(services) >= SCAN_MIN_TARGETS:
        return (
            f"unanswered attempts to {len(services)} services of {host} over {_span(*span)}: a vertical scan",
            len(services),
        )
    return None


def _rate_per_s(g: _Group) -> float:
    """Attempts a second over the group's span (a burst inside one second counts as one second)."""
    return g.flows / max(1.0, g.last - g.first)


def _model_line(d: _Device) -> str:
    top = ", ".join(r for r, _n in d.reasons.most_common(REASONS_SHOWN)) or "none given"
    return f"flow model: {d.flows} flows above its calibrated alert threshold (highest score {d.top_score:.2f}); out of range: {top}"


def _service(proto: str, port: int) -> str:
    return f"{proto}/{port}" if proto in ("tcp", "udp") else (proto or "ip")


def _span(first: float, last: float) -> str:
    s = max(0.0, last - first)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _rate(g: _Group) -> str:
    if g.flows < 3 or g.last <= g.first:
        return ""
    return f" (one every {_span(0.0, (g.last - g.first) / (g.flows - 1))})"


def _volume(g: _Group) -> str:
    if g.failed == g.flows:
        return "all unanswered"
    kb = (g.out_bytes + g.in_bytes) / 1024
    return f"{kb:,.0f} KB" + (f", {g.failed} unanswered" if g.failed else "")
