"""Tabletop attack scenarios (and one benign change) injected into a simulated fleet.

Each scenario picks its device(s) with the seed, writes its records (label = scenario name,
detailed_label = the step) and, where an attack changes what the device keeps doing (a
tampered image keeps being reported, a clone keeps publishing), rewrites the normal records
concerned.  It returns a :class:`ScenarioTruth` saying which devices, when, and which
incident categories (from :data:`fleetwarden.core.findings.CATEGORIES`) a detector should raise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fleetwarden.core.errors import InputError
from fleetwarden.core.findings import CATEGORIES
from fleetwarden.simulate import records as R
from fleetwarden.simulate.behaviour import (
    CLASS_CHANNELS,
    CLOUD_CLASSES,
    DAY,
    NormalBehaviour,
    local_hour,
    periodic,
)
from fleetwarden.simulate.catalog import (
    CITIES,
    DEVICE_CLASSES,
    HOSTILE_CITY,
    HOSTILE_COUNTRIES,
    SITES,
    VENDORS,
    firmware_hash,
    next_version,
    public_ip,
)

__all__ = ["SCENARIOS", "ScenarioTruth", "inject"]

SCENARIOS: dict[str, str] = {
    "mirai-camera": "a compromised IP camera scans tcp/23 and tcp/2323, beacons to a foreign C2, "
    "then UDP-floods a victim",
    "tampered-controller": "a PLC reports a firmware hash not in the catalogue, talks to new "
    "destinations and receives commands at odd times",
    "remote-access-misuse": "the maintenance account logs in off-hours from a new country after a "
    "burst of failures, with impossible travel",
    "cloned-device": "a second enrolment of an active device's identity from another address and "
    "key; both then report",
    "slow-exfiltration": "an environmental sensor slowly uploads far more than usual to a new "
    "foreign destination",
    "dns-tunnel": "a device sends many long high-entropy TXT/NULL queries under one domain",
    "benign-rollout": "a vendor rolls out a new signed catalogue firmware to a cohort; their "
    "behaviour then shifts a little",
}

# Natural length of each scenario (seconds); squeezed into short simulations.
DURATION = {
    "mirai-camera": 3.0 * 3600,
    "tampered-controller": 6.0 * 3600,
    "remote-access-misuse": 1.0 * 3600,
    "cloned-device": 4.0 * 3600,
    "slow-exfiltration": 6.0 * 3600,
    "dns-tunnel": 1.0 * 3600,
    "benign-rollout": 6.0 * 3600,
}
EXPECTED = {
    "mirai-camera": ("scan", "c2-beacon", "ddos"),
    "tampered-controller": ("firmware-tamper", "anomaly"),
    "remote-access-misuse": ("credential-misuse", "brute-force"),
    "cloned-device": ("cloned-device",),
    "slow-exfiltration": ("exfiltration",),
    "dns-tunnel": ("dns-tunnel",),
    "benign-rollout": (),
}
assert all(c in CATEGORIES for cats in EXPECTED.values() for c in cats)

_B32 = b"abcdefghijklmnopqrstuvwxyz234567"
_WORDS = ("cdn", "sync", "metrics", "update", "static", "cache", "edge", "relay", "stat", "api")
_TLDS = ("xyz", "top", "net", "info", "site", "online")


@dataclass
class ScenarioTruth:
    """Ground truth of one injected scenario."""

    name: str
    device_ids: tuple[str, ...]
    start: float
    end: float
    expected_categories: tuple[str, ...]
    benign: bool
    description: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "device_ids": list(self.device_ids),
            "start": self.start,
            "end": self.end,
            "expected_categories": list(self.expected_categories),
            "benign": self.benign,
            "description": self.description,
            "details": self.details,
        }


@dataclass
class Ctx:
    nb: NormalBehaviour
    parts: R.Parts
    rng: np.random.Generator
    t0: float
    dur: float
    used: set[int]
    catalog: list[dict]

    @property
    def fleet(self):  # noqa: ANN201
        return self.nb.fleet

    @property
    def t1(self) -> float:
        return self.t0 + self.dur

    def pick(self, classes: tuple[str, ...], k: int = 1) -> np.ndarray:
        f = self.fleet
        cand = np.flatnonzero(np.isin(f.cls, [DEVICE_CLASSES.index(c) for c in classes]))
        cand = np.array([i for i in cand if i not in self.used], dtype=int)
        if len(cand) < k:
            raise InputError(f"no unused device of class {'/'.join(classes)} left for the scenario")
        chosen = self.rng.choice(cand, size=k, replace=False)
        self.used.update(int(i) for i in chosen)
        return chosen

    def hostile_country(self, avoid: tuple[str, ...] = ()) -> str:
        options = [c for c in HOSTILE_COUNTRIES if c not in avoid]
        return options[int(self.rng.integers(len(options)))]

    def random_domain(self) -> str:
        w = _WORDS[int(self.rng.integers(len(_WORDS)))]
        token = R.random_tokens(self.rng, 1, 6, b"abcdefghijklmnopqrstuvwxyz")[0]
        return f"{w}-{token}.{_TLDS[int(self.rng.integers(len(_TLDS)))]}"


def _rewrite(parts: R.Parts, kind: str, mask_fn: Callable[[R.Cols], np.ndarray], edit: Callable) -> int:
    """Apply ``edit(cols, mask)`` to the records of a kind selected by ``mask_fn``; returns how many."""
    cols = parts.merged(kind)
    if not cols:
        return 0
    mask = mask_fn(cols)
    if mask.any():
        edit(cols, mask)
        parts.replace(kind, cols)
    return int(mask.sum())


# --- scenarios --------------------------------------------------------------------------------


def mirai_camera(c: Ctx) -> ScenarioTruth:
    f, rng = c.fleet, c.rng
    (d,) = c.pick(("ip-camera",))
    ip, mac, did = f.ip[d], f.mac[d], f.device_id[d]
    label = "mirai-camera"
    scan_end = c.t0 + c.dur * 0.2
    beacon_start, beacon_end = scan_end, c.t0 + c.dur * 0.8
    flood_start = beacon_end + c.dur * 0.05
    flood_end = min(flood_start + c.dur * 0.08, c.t1)

    # telnet scan: ~2 SYNs/s to random addresses, the Internet and the camera's own /16
    n = int(2.0 * (scan_end - c.t0))
    ts = np.sort(rng.uniform(c.t0, scan_end, n))
    public = rng.integers(0x01000000, 0xDF000000, size=n, dtype=np.int64)
    site_net = (10 << 24) | ((int(f.site[d]) + 1) << 16)
    local = site_net + rng.integers(256, 65535, size=n)
    targets = R.ips_from_ints(np.where(rng.random(n) < 0.3, local, public))
    port = np.where(rng.random(n) < 0.85, 23, 2323)
    u = rng.random(n)
    state = np.where(u < 0.8, R.S0, np.where(u < 0.96, R.REJ, R.SF))
    c.parts.add(
        "flow",
        R.flows(
            rng,
            ts,
            ip,
            targets,
            port,
            R.TCP,
            orig_bytes=R.lognormal(rng, 60, 0.4, n),
            resp_bytes=R.lognormal(rng, 90, 0.4, n),
            duration=rng.choice([0.0, 1.0, 3.0], n),
            state=state,
            device_id=did,
            label=label,
            detailed_label="telnet-scan",
            orig_mac=mac,
        ),
    )

    # C2 beacon: fixed interval with small jitter, small similar sizes, to one foreign address
    cc = c.hostile_country()
    c2_ip = public_ip(cc, 100 + int(rng.integers(100)), int(rng.integers(2)))
    c2_port = int(rng.choice([23, 6667, 48101]))
    interval = float(rng.choice([30.0, 60.0, 90.0]))
    bts = np.arange(beacon_start, beacon_end, interval) + rng.normal(0, interval * 0.03, size=1)
    bts = bts + rng.normal(0, interval * 0.03, size=len(bts))
    m = len(bts)
    c.parts.add(
        "flow",
        R.flows(
            rng,
            bts,
            ip,
            c2_ip,
            c2_port,
            R.TCP,
            orig_bytes=rng.normal(42, 3, m).round(),
            resp_bytes=rng.normal(24, 2, m).round(),
            duration=R.lognormal(rng, 0.25, 0.2, m),
            device_id=did,
            label=label,
            detailed_label="c2-beacon",
            orig_mac=mac,
        ),
    )
    c2_domain = c.random_domain()
    qts = np.arange(beacon_start - 1.0, beacon_end, 3600.0)
    rec, flow = R.dns(
        rng,
        qts,
        ip,
        c.nb.server["resolver"][d],
        c2_domain,
        "A",
        c2_ip,
        device_id=did,
        label=label,
        detailed_label="c2-beacon",
        client_mac=mac,
    )
    c.parts.add("dns", rec)
    c.parts.add("flow", flow)

    # UDP flood: many high-volume UDP conversations at one victim, random destination ports
    victim = public_ip(c.hostile_country(avoid=(cc,)), 200 + int(rng.integers(30)))
    k = int(15 * (flood_end - flood_start))
    fts = np.sort(rng.uniform(flood_start, flood_end, k))
    pkts = rng.integers(200, 2000, size=k)
    c.parts.add(
        "flow",
        R.flows(
            rng,
            fts,
            ip,
            victim,
            rng.integers(1, 65535, k),
            R.UDP,
            orig_bytes=pkts * 512,
            duration=R.lognormal(rng, 2.0, 0.4, k),
            state=R.S0,
            device_id=did,
            label=label,
            detailed_label="udp-flood",
            orig_mac=mac,
            orig_pkts=pkts,
        ),
    )
    return ScenarioTruth(
        label,
        (did,),
        c.t0,
        flood_end,
        EXPECTED[label],
        False,
        SCENARIOS[label],
        {
            "c2_ip": c2_ip,
            "c2_port": c2_port,
            "beacon_interval": interval,
            "victim": victim,
            "scan_end": scan_end,
            "flood_start": flood_start,
        },
    )


def tampered_controller(c: Ctx) -> ScenarioTruth:
    f, rng = c.fleet, c.rng
    (d,) = c.pick(("plc",))
    did, ip, mac = f.device_id[d], f.ip[d], f.mac[d]
    label = "tampered-controller"
    bad_hash = hashlib.sha256(rng.bytes(32)).hexdigest()
    signature = str(rng.choice(["invalid", "unsigned"]))
    version = f.version[d]

    # the device reboots into the modified image and reports it; later daily reports carry it too
    c.parts.add(
        "firmware_report",
        {
            "ts": np.array([c.t0]),
            "version": np.array([version], dtype=object),
            "image_sha256": np.array([bad_hash], dtype=object),
            "signature": np.array([signature], dtype=object),
            "device_id": np.array([did], dtype=object),
            "label": np.array([label], dtype=object),
            "detailed_label": np.array(["tampered-firmware-report"], dtype=object),
        },
    )

    def edit_fw(cols: R.Cols, mask: np.ndarray) -> None:
        cols["image_sha256"][mask] = bad_hash
        cols["signature"][mask] = signature
        cols["label"][mask] = label
        cols["detailed_label"][mask] = "tampered-firmware-report"

    _rewrite(
        c.parts, "firmware_report", lambda cols: (cols["device_id"] == did) & (cols["ts"] > c.t0), edit_fw
    )

    # new destinations: a few foreign addresses the controller never talked to
    cc = c.hostile_country()
    dests = [public_ip(cc, 120 + i, i) for i in range(3)]
    n = int(rng.integers(30, 60))
    ts = np.sort(rng.uniform(c.t0 + 600, c.t1, n))
    dst = np.array(dests, dtype=object)[rng.integers(0, 3, n)]
    port = rng.choice([443, 8443, 4444], n)
    c.parts.add(
        "flow",
        R.flows(
            rng,
            ts,
            ip,
            dst,
            port,
            R.TCP,
            orig_bytes=R.lognormal(rng, 3000, 0.6, n),
            resp_bytes=R.lognormal(rng, 9000, 0.6, n),
            duration=R.lognormal(rng, 3.0, 0.6, n),
            service=np.where(port == 4444, None, "ssl"),
            device_id=did,
            label=label,
            detailed_label="new-destination",
            orig_mac=mac,
        ),
    )

    # commands at odd local hours (01:00-04:30) from a host that is no operator station
    off = float(f.utc_offset[d])
    day0 = np.floor((c.t0 + off) / DAY) * DAY - off
    cand = np.concatenate([day0 + k * DAY + rng.uniform(1.0, 4.5, 12) * 3600.0 for k in range(3)])
    cand = cand[(cand >= c.t0) & (cand < c.t1)]
    if len(cand) < 5:  # the window holds no night: odd means right after the tamper, unannounced
        cand = np.sort(rng.uniform(c.t0 + 300, c.t1, 8))
    ts = np.sort(cand[:12])
    src = f"10.{int(f.site[d]) + 1}.5.{200 + int(rng.integers(40))}"
    k = len(ts)
    c.nb._add_commands(
        c.parts,
        rng,
        np.full(k, d),
        ts,
        R.full(k, "unknown"),
        R.full(k, src),
        np.array(["write_register", "stop_sequence", "download_program", "force_output"], dtype=object),
        502,
        "modbus",
        label,
        "odd-hour-command",
    )
    return ScenarioTruth(
        label,
        (did,),
        c.t0,
        c.nb.end,  # the tampered image keeps running: later reports carry it too
        EXPECTED[label],
        False,
        SCENARIOS[label],
        {
            "image_sha256": bad_hash,
            "signature": signature,
            "version": version,
            "new_destinations": dests,
            "command_src": src,
        },
    )


def remote_access_misuse(c: Ctx) -> ScenarioTruth:
    f, rng, nb = c.fleet, c.rng, c.nb
    label = "remote-access-misuse"
    sites = [si for si in range(len(SITES)) if len(nb.login_targets(si)) and (f.site == si).any()]
    si = sites[int(rng.integers(len(sites)))]
    site = SITES[si]
    op = site.maintenance
    gws = np.flatnonzero((f.site == si) & (f.cls == DEVICE_CLASSES.index("gateway")))
    gw = int(gws[0])
    c.used.add(gw)
    home_ip, home_cc, home_lat, home_lon, _ = nb.operator_origin(si, op, 0)
    cc = c.hostile_country(avoid=(home_cc,))
    city = CITIES[HOSTILE_CITY.get(cc, "sao-paulo")] if cc in HOSTILE_CITY else None
    lat, lon = (city.lat, city.lon) if city else (0.0, 0.0)
    bad_ip = public_ip(cc, 150 + int(rng.integers(50)))
    rows: list[tuple] = []
    steps: list[str] = []
    # burst of failures (password guessing) from the new country
    n_fail = int(rng.integers(20, 40))
    fts = np.sort(c.t0 + rng.uniform(0, 300, n_fail))
    for t in fts:
        rows.append((t, op.name, bad_ip, cc, lat, lon, "vpn", False, "bad password", f.device_id[gw]))
        steps.append("brute-force")
    t_in = fts[-1] + rng.uniform(10, 60)
    rows.append((t_in, op.name, bad_ip, cc, lat, lon, "vpn", True, None, f.device_id[gw]))
    steps.append("off-hours-login")
    # the real contractor logs in from home shortly after: two successes thousands of km apart
    t_home = t_in + rng.uniform(10, 30) * 60.0
    rows.append((t_home, op.name, home_ip, home_cc, home_lat, home_lon, "vpn", True, None, f.device_id[gw]))
    steps.append("impossible-travel")
    nb.add_auth(c.parts, rows, label, np.array(steps, dtype=object))
    # what the intruder does with the session
    targets = np.array([i for i in nb.maintenance_targets(si) if i not in c.used])
    k = min(3, len(targets))
    tgt = rng.choice(targets, size=k, replace=False) if k else np.zeros(0, dtype=int)
    c.used.update(int(i) for i in tgt)
    ts = np.sort(t_in + rng.uniform(60, 900, k))
    c.nb._add_commands(
        c.parts,
        rng,
        tgt,
        ts,
        R.full(k, op.name),
        R.full(k, f"10.{si + 1}.6.11"),
        np.array(["config_push", "add_user", "disable_logging"], dtype=object),
        22,
        "ssh",
        label,
        "post-login-command",
    )
    dids = (f.device_id[gw], *[f.device_id[t] for t in tgt if t != gw])
    end = max([t_home, *ts.tolist()]) + 1.0
    return ScenarioTruth(
        label,
        tuple(dict.fromkeys(dids)),
        c.t0,
        end,
        EXPECTED[label],
        False,
        SCENARIOS[label],
        {
            "user": op.name,
            "site": site.name,
            "foreign_ip": bad_ip,
            "foreign_country": cc,
            "home_country": home_cc,
            "failures": n_fail,
        },
    )


def cloned_device(c: Ctx) -> ScenarioTruth:
    f, rng, nb = c.fleet, c.rng, c.nb
    (d,) = c.pick(("env-sensor", "smart-plug", "ip-camera", "badge-reader"))
    did = f.device_id[d]
    label = "cloned-device"
    si = int(f.site[d])
    clone_ip = f"10.{si + 1}.30.{230 + int(rng.integers(20))}"
    clone_mac = "02:" + ":".join(f"{b:02x}" for b in rng.integers(0, 256, 5))
    clone_key = hashlib.sha256(rng.bytes(32)).hexdigest()
    vendor = VENDORS[f.vendor[d]]
    c.parts.add(
        "provision",
        {
            "ts": np.array([c.t0]),
            "serial": np.array([f.serial[d]], dtype=object),
            "vendor": np.array([vendor.name], dtype=object),
            "model": np.array([f.model[d]], dtype=object),
            "pubkey_sha256": np.array([clone_key], dtype=object),
            "attestation": np.array(["missing"], dtype=object),
            "src_ip": np.array([clone_ip], dtype=object),
            "device_id": np.array([did], dtype=object),
            "label": np.array([label], dtype=object),
            "detailed_label": np.array(["duplicate-enrolment"], dtype=object),
        },
    )
    # the clone publishes like the original, from its own address
    cname = DEVICE_CLASSES[f.cls[d]]
    ch = next(ch for ch in CLASS_CHANNELS[cname] if ch.telemetry)
    idx, ts = periodic(rng, np.array([d]), ch.period, c.t0 + 120, c.t1, ch.jitter)
    n = len(ts)
    port = nb.mqtt_port[d] if ch.port is None else ch.port
    dst = f.broker_ip[d] if ch.dest == "broker" else nb.cloud_ip[d]
    c.parts.add(
        "flow",
        R.flows(
            rng,
            ts,
            clone_ip,
            dst,
            port,
            R.TCP,
            orig_bytes=R.lognormal(rng, ch.orig[0], 0.15, n),
            resp_bytes=R.lognormal(rng, ch.resp[0], 0.1, n),
            duration=R.lognormal(rng, 0.09, 0.4, n),
            service="ssl" if port == 8883 else "mqtt" if port == 1883 else "ssl",
            device_id=did,
            label=label,
            detailed_label="clone-report",
            orig_mac=clone_mac,
        ),
    )
    sub = R.Parts()
    nb._telemetry(sub, cname, idx, ts, rng)
    tel = sub.merged("telemetry")
    tel["label"][:] = label
    tel["detailed_label"][:] = "clone-report"
    c.parts.add("telemetry", tel)
    t_fw = c.t0 + rng.uniform(300, 900)
    c.parts.add(
        "firmware_report",
        {
            "ts": np.array([t_fw]),
            "version": np.array([f.version[d]], dtype=object),
            "image_sha256": np.array([nb.image_hash[d]], dtype=object),
            "signature": np.array(["valid"], dtype=object),
            "device_id": np.array([did], dtype=object),
            "label": np.array([label], dtype=object),
            "detailed_label": np.array(["clone-report"], dtype=object),
        },
    )
    return ScenarioTruth(
        label,
        (did,),
        c.t0,
        c.t1,
        EXPECTED[label],
        False,
        SCENARIOS[label],
        {
            "clone_ip": clone_ip,
            "clone_mac": clone_mac,
            "clone_pubkey_sha256": clone_key,
            "original_ip": f.ip[d],
        },
    )


def slow_exfiltration(c: Ctx) -> ScenarioTruth:
    f, rng, nb = c.fleet, c.rng, c.nb
    (d,) = c.pick(("env-sensor",))
    did, ip, mac = f.device_id[d], f.ip[d], f.mac[d]
    label = "slow-exfiltration"
    vendor_cc = VENDORS[f.vendor[d]].country
    cc = c.hostile_country(avoid=(vendor_cc,))
    dest = public_ip(cc, 60 + int(rng.integers(60)), 1)
    domain = c.random_domain()
    # irregular uploads every few minutes: slow enough to stay under per-minute volume alarms
    gaps = rng.uniform(180, 540, size=int(c.dur / 180) + 2)
    ts = c.t0 + np.cumsum(gaps)
    ts = ts[ts < c.t1]
    n = len(ts)
    rec, flow = R.dns(
        rng,
        ts[:1] - 0.5,
        ip,
        nb.server["resolver"][d],
        domain,
        "A",
        dest,
        device_id=did,
        label=label,
        detailed_label="exfil-upload",
        client_mac=mac,
    )
    c.parts.add("dns", rec)
    c.parts.add("flow", flow)
    c.parts.add(
        "flow",
        R.flows(
            rng,
            ts,
            ip,
            dest,
            443,
            R.TCP,
            orig_bytes=R.lognormal(rng, 4.0e5, 0.4, n),
            resp_bytes=R.lognormal(rng, 2000, 0.3, n),
            duration=R.lognormal(rng, 9.0, 0.4, n),
            service="ssl",
            device_id=did,
            label=label,
            detailed_label="exfil-upload",
            orig_mac=mac,
        ),
    )
    return ScenarioTruth(
        label,
        (did,),
        c.t0,
        c.t1,
        EXPECTED[label],
        False,
        SCENARIOS[label],
        {"destination": dest, "country": cc, "domain": domain},
    )


def dns_tunnel(c: Ctx) -> ScenarioTruth:
    f, rng, nb = c.fleet, c.rng, c.nb
    (d,) = c.pick(("digital-signage", "smart-plug", "pos-terminal"))
    did, ip, mac = f.device_id[d], f.ip[d], f.mac[d]
    label = "dns-tunnel"
    domain = c.random_domain()
    n = int(rng.poisson(0.4 * c.dur))
    ts = np.sort(rng.uniform(c.t0, c.t1, n))
    lens = rng.integers(40, 63, n)
    chunks = R.random_tokens(rng, n, 62, _B32)
    seq = R.random_tokens(rng, n, 4, b"0123456789abcdef")
    query = np.array(
        [f"{ch[:k]}.{s}.{domain}" for ch, k, s in zip(chunks, lens, seq, strict=True)], dtype=object
    )
    qtype = np.where(rng.random(n) < 0.7, "TXT", "NULL").astype(object)
    txt = R.random_tokens(rng, n, 120, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    answers = np.where(qtype == "TXT", txt, None)
    rec, flow = R.dns(
        rng,
        ts,
        ip,
        nb.server["resolver"][d],
        query,
        qtype,
        answers,
        device_id=did,
        label=label,
        detailed_label="dns-tunnel",
        answer_bytes=rng.integers(100, 220, n),
        client_mac=mac,
    )
    c.parts.add("dns", rec)
    c.parts.add("flow", flow)
    return ScenarioTruth(
        label, (did,), c.t0, c.t1, EXPECTED[label], False, SCENARIOS[label], {"domain": domain, "queries": n}
    )


def benign_rollout(c: Ctx) -> ScenarioTruth:
    f, rng, nb = c.fleet, c.rng, c.nb
    label = "benign-rollout"
    cloud = [DEVICE_CLASSES.index(x) for x in CLOUD_CLASSES]
    groups: dict[tuple[int, str], list[int]] = {}
    for i in np.flatnonzero(np.isin(f.cls, cloud)):
        if int(i) not in c.used:
            groups.setdefault((int(f.vendor[i]), str(f.model[i])), []).append(int(i))
    eligible = sorted(k for k, v in groups.items() if len(v) >= 2)
    if not eligible:
        raise InputError("no vendor/model with two unused cloud-connected devices for the rollout")
    sizes = np.array([len(groups[k]) for k in eligible], dtype=float)
    vi, model = eligible[int(rng.choice(len(eligible), p=sizes / sizes.sum()))]
    members = np.array(groups[(vi, model)])
    k = min(40, max(2, int(round(0.6 * len(members)))))
    cohort = np.sort(rng.choice(members, size=k, replace=False))
    c.used.update(int(i) for i in cohort)
    vendor = VENDORS[vi]
    version = next_version(vendor, model)
    image = firmware_hash(vendor.name, model, version)
    c.catalog.append(
        {
            "vendor": vendor.name,
            "model": model,
            "version": version,
            "image_sha256": image,
            "signed": True,
            "released": c.t0 - 6 * 3600.0,
        }
    )
    upgrade = np.sort(c.t0 + rng.uniform(0, min(2 * 3600.0, c.dur * 0.4), k))
    dids = f.device_id[cohort]
    # the vendor's OTA service pushes the update, the device downloads it, reboots and reports
    nb._add_commands(
        c.parts,
        rng,
        cohort,
        upgrade,
        R.full(k, f"{vendor.name.lower()}-ota"),
        R.full(k, vendor.update_ip),
        np.array(["firmware_update"], dtype=object),
        443,
        "ssl",
        label,
        "ota-command",
    )
    c.parts.add(
        "flow",
        R.flows(
            rng,
            upgrade + 5,
            f.ip[cohort],
            vendor.update_ip,
            443,
            R.TCP,
            orig_bytes=R.lognormal(rng, 9000, 0.2, k),
            resp_bytes=R.lognormal(rng, 3.2e7, 0.05, k),
            duration=R.lognormal(rng, 60, 0.3, k),
            service="ssl",
            device_id=dids,
            label=label,
            detailed_label="image-download",
            orig_mac=f.mac[cohort],
        ),
    )
    rep_ts = upgrade + 200 + rng.uniform(0, 60, k)
    c.parts.add(
        "firmware_report",
        {
            "ts": rep_ts,
            "version": R.full(k, version),
            "image_sha256": R.full(k, image),
            "signature": R.full(k, "valid"),
            "device_id": dids,
            "label": R.full(k, label),
            "detailed_label": R.full(k, "upgrade-report"),
        },
    )
    up_of = dict(zip(dids.tolist(), rep_ts.tolist(), strict=True))

    def after(cols: R.Cols, candidates: np.ndarray | None = None) -> np.ndarray:
        """Records of cohort devices later than their upgrade (among ``candidates`` rows)."""
        mask = np.zeros(len(cols["ts"]), dtype=bool)
        rows = np.flatnonzero(cols["ts"] > rep_ts.min() if candidates is None else candidates)
        t_up = np.fromiter(
            (up_of.get(x, np.inf) for x in cols["device_id"][rows]), dtype=float, count=len(rows)
        )
        mask[rows] = cols["ts"][rows] > t_up
        return mask

    def edit_fw(cols: R.Cols, mask: np.ndarray) -> None:
        cols["version"][mask] = version
        cols["image_sha256"][mask] = image
        cols["label"][mask] = label
        cols["detailed_label"][mask] = "upgrade-report"

    _rewrite(c.parts, "firmware_report", after, edit_fw)

    # new firmware: slightly larger cloud messages
    def edit_flow(cols: R.Cols, mask: np.ndarray) -> None:
        for col in ("orig_bytes", "orig_ip_bytes"):
            cols[col][mask] = (cols[col][mask] * 1.15).astype(np.int64)
        cols["label"][mask] = label
        cols["detailed_label"][mask] = "post-upgrade"

    def to_cloud(cols: R.Cols) -> np.ndarray:
        resp = cols["id.resp_h"]
        return after(
            cols, (cols["ts"] > rep_ts.min()) & ((resp == vendor.cloud_ip(0)) | (resp == vendor.cloud_ip(1)))
        )

    _rewrite(c.parts, "flow", to_cloud, edit_flow)
    # ... and a new endpoint of the same vendor, resolved first
    idx, ts = periodic(rng, cohort, 900.0, float(upgrade.min()), nb.end, 0.05)
    t_up = np.array([up_of[f.device_id[i]] for i in idx])
    keep = ts > t_up + 30
    idx, ts = idx[keep], ts[keep]
    m = len(idx)
    first = np.unique(idx, return_index=True)[1]
    rec, flow = R.dns(
        rng,
        ts[first] - 0.3,
        f.ip[idx[first]],
        nb.server["resolver"][idx[first]],
        vendor.edge_domain,
        "A",
        vendor.edge_ip,
        device_id=f.device_id[idx[first]],
        label=label,
        detailed_label="new-endpoint",
        client_mac=f.mac[idx[first]],
    )
    c.parts.add("dns", rec)
    c.parts.add("flow", flow)
    c.parts.add(
        "flow",
        R.flows(
            rng,
            ts,
            f.ip[idx],
            vendor.edge_ip,
            443,
            R.TCP,
            orig_bytes=R.lognormal(rng, 1100, 0.2, m),
            resp_bytes=R.lognormal(rng, 900, 0.2, m),
            duration=R.lognormal(rng, 0.6, 0.3, m),
            service="ssl",
            device_id=f.device_id[idx],
            label=label,
            detailed_label="new-endpoint",
            orig_mac=f.mac[idx],
        ),
    )
    return ScenarioTruth(
        label,
        tuple(dids.tolist()),
        c.t0,
        c.nb.end,  # upgraded devices keep their new behaviour
        EXPECTED[label],
        True,
        SCENARIOS[label],
        {
            "vendor": vendor.name,
            "model": model,
            "version": version,
            "image_sha256": image,
            "edge_ip": vendor.edge_ip,
            "edge_domain": vendor.edge_domain,
        },
    )


INJECTORS: dict[str, Callable[[Ctx], ScenarioTruth]] = {
    "mirai-camera": mirai_camera,
    "tampered-controller": tampered_controller,
    "remote-access-misuse": remote_access_misuse,
    "cloned-device": cloned_device,
    "slow-exfiltration": slow_exfiltration,
    "dns-tunnel": dns_tunnel,
    "benign-rollout": benign_rollout,
}
assert set(INJECTORS) == set(SCENARIOS)


def _off_hours_start(nb: NormalBehaviour, lo: float, hi: float, rng: np.random.Generator) -> float | None:
    """A time in [lo, hi] that is 01:00-03:30 local at some site, or None."""
    ts = np.arange(lo, hi, 600.0)
    if not len(ts):
        return None
    offs = np.array([s.utc_offset * 3600.0 for s in SITES])
    h = local_hour(ts[:, None], offs[None, :])
    ok = ((h >= 1.0) & (h < 3.5)).all(axis=1)  # off-hours everywhere: whichever site is picked
    good = ts[ok]
    if not len(good):
        ok = ((h >= 1.0) & (h < 3.5)).any(axis=1)
        good = ts[ok]
    return float(good[int(rng.integers(len(good)))]) if len(good) else None


def inject(
    names: list[str], nb: NormalBehaviour, parts: R.Parts, catalog: list[dict], seed: int
) -> list[ScenarioTruth]:
    """Inject the named scenarios, spreading their start times over the simulated window."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise InputError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    span = nb.end - nb.start
    used: set[int] = set()
    truths = []
    order = sorted(names, key=list(SCENARIOS).index)
    for i, name in enumerate(order):
        rng = np.random.default_rng([seed, 5000 + list(SCENARIOS).index(name)])
        dur = min(DURATION[name], 0.5 * span)
        slot_lo = nb.start + span * i / len(order)
        slot_hi = nb.start + span * (i + 1) / len(order)
        lo = max(nb.start + 0.02 * span, min(slot_lo, nb.end - dur))
        hi = max(lo, min(slot_hi - dur * 0.5, nb.end - dur))
        t0 = float(rng.uniform(lo, hi)) if hi > lo else lo
        if name == "remote-access-misuse":
            alt = _off_hours_start(nb, nb.start + 0.02 * span, nb.end - dur, rng)
            t0 = alt if alt is not None else t0
        truths.append(INJECTORS[name](Ctx(nb, parts, rng, t0, dur, used, catalog)))
    return truths
