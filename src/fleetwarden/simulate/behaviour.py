"""Normal behaviour of every device class, generated per class as numpy arrays.

Each class has a small declarative list of :class:`Channel` s (periodic or Poisson traffic to
one kind of destination) and of telemetry metrics.  One generator turns a channel into the
flows of all devices of the class at once: periodic channels get per-device phases and
jittered periods; Poisson channels are thinned against a local-time profile (daylight,
shift hours, opening hours), which is what makes cameras stream more by day and POS
terminals busy in opening hours.  People (operators and the maintenance contractor) are
generated per site and day, which is a handful of Python iterations, not one per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetwarden.simulate import records as R
from fleetwarden.simulate.catalog import (
    CITIES,
    DEVICE_CLASSES,
    SITES,
    VENDORS,
    DeviceTable,
    Operator,
    firmware_hash,
    public_ip,
    server_ip,
    station_ip,
)

DAY = 86400.0


@dataclass(frozen=True)
class Channel:
    """One recurring conversation of a device class.

    ``dest`` is ``broker`` (the site gateway's MQTT broker), ``cloud`` (the vendor's cloud) or a
    site server name; ``inbound`` means the server opens the connection (RTSP pull, Modbus
    polling).  Sizes are lognormal (median, sigma).
    """

    name: str
    dest: str
    port: int | None = 443  # None: MQTT, 8883 if the vendor uses TLS else 1883
    proto: int = R.TCP
    service: str | None = "ssl"
    inbound: bool = False
    period: float = 0.0
    jitter: float = 0.03
    rate: float = 0.0  # Poisson events per hour at the profile's peak
    profile: str = "flat"
    orig: tuple[float, float] = (300.0, 0.3)
    resp: tuple[float, float] = (60.0, 0.3)
    dur: tuple[float, float] = (0.2, 0.5)
    volume_profile: str | None = None
    telemetry: bool = False
    fail_rate: float = 0.002


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    mean: float
    device_sd: float
    noise_sd: float
    diurnal: float  # added at the profile's peak
    lo: float = -1e9
    hi: float = 1e9


def _mqtt(period: float, size: float) -> Channel:
    return Channel(
        "mqtt-telemetry",
        "broker",
        None,
        period=period,
        telemetry=True,
        orig=(size, 0.15),
        resp=(14.0, 0.1),
        dur=(0.09, 0.4),
    )


CLASS_CHANNELS: dict[str, tuple[Channel, ...]] = {
    "ip-camera": (
        _mqtt(300, 420),
        Channel(
            "rtsp-stream",
            "nvr",
            554,
            service=None,
            inbound=True,
            period=600,
            jitter=0.002,
            orig=(2400, 0.2),
            resp=(2.2e8, 0.15),
            dur=(600, 0.002),
            volume_profile="daylight",
        ),
        Channel(
            "cloud-keepalive", "cloud", 443, period=900, orig=(900, 0.3), resp=(1600, 0.3), dur=(0.8, 0.5)
        ),
        Channel(
            "motion-clip",
            "cloud",
            443,
            rate=3.0,
            profile="daylight",
            orig=(2.5e6, 0.6),
            resp=(3000, 0.3),
            dur=(8.0, 0.5),
        ),
    ),
    "env-sensor": (
        _mqtt(120, 260),
        Channel("cloud-sync", "cloud", 443, period=3600, orig=(4000, 0.3), resp=(800, 0.3), dur=(1.2, 0.4)),
    ),
    "plc": (
        _mqtt(60, 380),
        Channel(
            "modbus-poll",
            "scada",
            502,
            service="modbus",
            inbound=True,
            period=60,
            jitter=0.01,
            orig=(144, 0.05),
            resp=(380, 0.1),
            dur=(0.04, 0.3),
        ),
    ),
    "gateway": (
        Channel(
            "cloud-uplink",
            "cloud",
            8883,
            period=60,
            telemetry=True,
            orig=(18000, 0.3),
            resp=(900, 0.2),
            dur=(0.5, 0.3),
        ),
        Channel(
            "historian-sync",
            "historian",
            443,
            period=300,
            orig=(60000, 0.3),
            resp=(1500, 0.2),
            dur=(1.5, 0.3),
        ),
    ),
    "smart-plug": (
        _mqtt(120, 210),
        Channel(
            "cloud-keepalive", "cloud", 443, period=600, orig=(350, 0.2), resp=(250, 0.2), dur=(0.4, 0.4)
        ),
    ),
    "infusion-pump": (
        _mqtt(120, 520),
        Channel(
            "druglib-sync", "druglib", 443, period=3600, orig=(2000, 0.3), resp=(40000, 0.4), dur=(2.0, 0.4)
        ),
    ),
    "badge-reader": (
        _mqtt(300, 240),
        Channel(
            "badge-swipe",
            "access",
            443,
            rate=30.0,
            profile="opening",
            orig=(350, 0.1),
            resp=(180, 0.1),
            dur=(0.12, 0.3),
        ),
        Channel(
            "cloud-keepalive", "cloud", 443, period=3600, orig=(600, 0.2), resp=(400, 0.2), dur=(0.5, 0.4)
        ),
    ),
    "pos-terminal": (
        _mqtt(300, 300),
        Channel(
            "payment",
            "cloud",
            443,
            rate=25.0,
            profile="opening",
            orig=(1800, 0.25),
            resp=(4200, 0.25),
            dur=(1.2, 0.4),
        ),
        Channel(
            "cloud-keepalive", "cloud", 443, period=900, orig=(500, 0.2), resp=(700, 0.2), dur=(0.5, 0.4)
        ),
    ),
    "digital-signage": (
        _mqtt(300, 330),
        Channel(
            "content-sync", "cms", 443, period=3600, orig=(1500, 0.2), resp=(2.5e7, 0.8), dur=(20.0, 0.5)
        ),
        Channel(
            "cloud-keepalive", "cloud", 443, period=600, orig=(800, 0.2), resp=(1200, 0.2), dur=(0.6, 0.4)
        ),
    ),
}

CLASS_METRICS: dict[str, tuple[Metric, ...]] = {
    "ip-camera": (Metric("cpu_pct", "%", 25, 5, 4, 10, 0, 100), Metric("temperature_c", "C", 42, 3, 0.5, 4)),
    "env-sensor": (
        Metric("temperature_c", "C", 21, 1.5, 0.15, 1.5),
        Metric("humidity_pct", "%", 45, 5, 0.8, -4, 0, 100),
    ),
    "plc": (Metric("cycle_time_ms", "ms", 12, 2, 0.3, 0, 1), Metric("cpu_pct", "%", 35, 5, 2, 10, 0, 100)),
    "gateway": (Metric("cpu_pct", "%", 20, 4, 3, 10, 0, 100), Metric("mem_pct", "%", 55, 6, 1, 0, 0, 100)),
    "smart-plug": (Metric("power_w", "W", 60, 30, 5, 40, 0), Metric("voltage_v", "V", 230, 2, 0.8, 0)),
    "infusion-pump": (
        Metric("rate_ml_h", "ml/h", 80, 40, 0.5, 0, 0),
        Metric("battery_pct", "%", 85, 8, 0.3, 0, 0, 100),
    ),
    "badge-reader": (Metric("temperature_c", "C", 30, 2, 0.3, 2), Metric("tamper", "bool", 0, 0, 0, 0, 0, 0)),
    "pos-terminal": (
        Metric("battery_pct", "%", 75, 10, 0.5, 0, 0, 100),
        Metric("temperature_c", "C", 35, 2, 0.5, 3),
    ),
    "digital-signage": (
        Metric("temperature_c", "C", 45, 3, 0.5, 5),
        Metric("brightness_pct", "%", 80, 10, 0, 15, 0, 100),
    ),
}

CLASS_PROFILE = {
    "ip-camera": "daylight",
    "env-sensor": "daylight",
    "plc": "factory",
    "gateway": "daylight",
    "smart-plug": "opening",
    "infusion-pump": "hospital",
    "badge-reader": "opening",
    "pos-terminal": "opening",
    "digital-signage": "opening",
}
# Classes that talk to their vendor's cloud (and so resolve its names and check for updates online).
CLOUD_CLASSES = frozenset(c for c, chans in CLASS_CHANNELS.items() if any(ch.dest == "cloud" for ch in chans))
NTP_PERIOD = 1024.0
DNS_TTL = 1800.0
PLC_COMMANDS = np.array(
    ["write_register", "set_point", "read_coils", "start_sequence", "stop_sequence"], dtype=object
)
PUMP_COMMANDS = np.array(["set_rate", "start_infusion", "stop_infusion", "silence_alarm"], dtype=object)
MAINT_COMMANDS = np.array(["read_diagnostics", "backup_config", "config_push", "reboot"], dtype=object)
# Classes the maintenance contractor services (and an intruder with its account goes for).
MAINTAINED_CLASSES = ("plc", "gateway", "infusion-pump", "pos-terminal")
# Columns of an auth row as :meth:`NormalBehaviour.add_auth` takes it (label columns apart).
AUTH_FIELDS = (
    "ts",
    "user",
    "src_ip",
    "src_country",
    "src_lat",
    "src_lon",
    "service",
    "success",
    "reason",
    "device_id",
)


# --- time helpers -----------------------------------------------------------------------------


def local_hour(ts: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return ((ts + offset) % DAY) / 3600.0


def local_weekday(ts: np.ndarray, offset: np.ndarray) -> np.ndarray:
    # 1970-01-01 was a Thursday (Monday = 0)
    return ((np.floor((ts + offset) / DAY)).astype(np.int64) + 3) % 7


def _ramp(h: np.ndarray, up: float, down: float, width: float = 1.0) -> np.ndarray:
    """1 between ``up`` and ``down`` local hours with linear ramps of ``width`` hours, else 0."""
    return np.clip(np.minimum((h - up) / width + 0.5, (down - h) / width + 0.5), 0.0, 1.0)


def profile_value(name: str, ts: np.ndarray, dev: np.ndarray, fleet: DeviceTable) -> np.ndarray:
    """Activity in [0, 1] of devices ``dev`` at times ``ts`` under a named local-time profile."""
    off = fleet.utc_offset[dev]
    h = local_hour(ts, off)
    if name == "flat":
        return np.ones_like(ts)
    if name == "daylight":
        return 0.35 + 0.65 * _ramp(h, 7.0, 19.5, 2.0)
    if name == "hospital":
        return 0.45 + 0.55 * _ramp(h, 7.0, 21.0, 1.5)
    wd = local_weekday(ts, off)
    if name == "factory":
        workday = wd < 5
        return np.where(workday, 0.15 + 0.85 * _ramp(h, 6.0, 22.0, 0.5), 0.08)
    if name == "opening":
        site = fleet.site[dev]
        open_h = np.array([s.opening[0] for s in SITES])[site]
        close_h = np.array([s.opening[1] for s in SITES])[site]
        open_days = np.array([[d in s.open_days for d in range(7)] for s in SITES])
        is_open = open_days[site, wd] & (h >= open_h) & (h < close_h)
        # lunch and after-work peaks inside opening hours
        shape = 0.55 + 0.25 * _ramp(h, 11.5, 14.0) + 0.2 * _ramp(h, 16.5, 19.0)
        return np.where(is_open, shape, 0.02)
    raise ValueError(f"unknown profile {name!r}")


# --- timing primitives ------------------------------------------------------------------------


def periodic(
    rng: np.random.Generator, dev: np.ndarray, period: float | np.ndarray, t0: float, t1: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-device periodic times with a random phase and Gaussian jitter (fraction of the period)."""
    per = np.broadcast_to(np.asarray(period, dtype=float), dev.shape).copy()
    phase = rng.uniform(0.0, per)
    counts = np.maximum(np.floor((t1 - t0 - phase) / per).astype(np.int64) + 1, 0)
    idx = np.repeat(dev, counts)
    rep_per = np.repeat(per, counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ts = t0 + np.repeat(phase, counts) + k * rep_per + rng.normal(0.0, jitter, size=len(idx)) * rep_per
    keep = (ts >= t0) & (ts < t1)
    return idx[keep], ts[keep]


def poisson(
    rng: np.random.Generator,
    dev: np.ndarray,
    rate_per_h: float,
    profile: str,
    t0: float,
    t1: float,
    fleet: DeviceTable,
) -> tuple[np.ndarray, np.ndarray]:
    """Inhomogeneous Poisson times by thinning: peak rate, accepted with the profile's value."""
    counts = rng.poisson(rate_per_h * (t1 - t0) / 3600.0, size=len(dev))
    idx = np.repeat(dev, counts)
    ts = rng.uniform(t0, t1, size=len(idx))
    keep = rng.random(len(idx)) < profile_value(profile, ts, idx, fleet)
    return idx[keep], ts[keep]


# --- the generator ----------------------------------------------------------------------------


class NormalBehaviour:
    """Generates the benign traffic of a fleet into a :class:`records.Parts`."""

    def __init__(self, fleet: DeviceTable, start: float, end: float, seed: int) -> None:
        self.fleet = fleet
        self.start = start
        self.end = end
        self.seed = seed
        n = len(fleet)
        self.site_ips = {
            si: {
                name: server_ip(si, name)
                for name in ("resolver", "ntp", "nvr", "scada", "access", "druglib", "cms", "historian")
            }
            for si in range(len(SITES))
        }
        self.cloud_ip = np.array([VENDORS[v].cloud_ip(i) for i, v in enumerate(fleet.vendor)], dtype=object)
        self.cloud_domain = np.array([VENDORS[v].cloud_domain for v in fleet.vendor], dtype=object)
        self.update_ip = np.array([VENDORS[v].update_ip for v in fleet.vendor], dtype=object)
        self.update_domain = np.array([VENDORS[v].update_domain for v in fleet.vendor], dtype=object)
        self.mqtt_port = np.array([8883 if VENDORS[v].mqtt_tls else 1883 for v in fleet.vendor])
        self.image_hash = np.array(
            [
                firmware_hash(VENDORS[v].name, m, ver)
                for v, m, ver in zip(fleet.vendor, fleet.model, fleet.version, strict=True)
            ],
            dtype=object,
        )
        self.server = {
            name: np.array([self.site_ips[s][name] for s in fleet.site], dtype=object)
            for name in self.site_ips[0]
        }
        # per-device metric baselines, drawn once so that each device has its own level
        self.metric_base: dict[str, np.ndarray] = {}
        brng = self.rng(1)
        for cname, metrics in CLASS_METRICS.items():
            for m in metrics:
                base = m.mean + brng.normal(0.0, m.device_sd, size=n)
                if m.name == "voltage_v":
                    us = np.array([CITIES[SITES[s].city].country == "US" for s in fleet.site])
                    base = np.where(us, base - 110.0, base)
                self.metric_base[f"{cname}/{m.name}"] = base

    def rng(self, key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1000 + key])

    # channels -------------------------------------------------------------------------------
    def generate(self, parts: R.Parts) -> None:
        for ci, cname in enumerate(DEVICE_CLASSES):
            dev = self.fleet.of_class(cname)
            if not len(dev):
                continue
            for k, ch in enumerate(CLASS_CHANNELS[cname]):
                self._channel(parts, cname, dev, ch, self.rng(100 + ci * 10 + k))
            self._ntp(parts, dev, self.rng(200 + ci))
            if cname in CLOUD_CLASSES:
                self._dns(parts, dev, self.rng(300 + ci))
            elif cname == "infusion-pump":
                self._internal_dns(parts, dev, self.rng(300 + ci))
        self._firmware_reports(parts, self.rng(400))
        self._provision(parts, self.rng(401))
        self._operators(parts, self.rng(402))
        self._commands(parts, self.rng(403))
        self._maintenance(parts, self.rng(404))

    def _dest(self, ch: Channel, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if ch.dest == "broker":
            return self.fleet.broker_ip[idx], self.mqtt_port[idx]
        if ch.dest == "cloud":
            return self.cloud_ip[idx], np.full(len(idx), ch.port)
        return self.server[ch.dest][idx], np.full(len(idx), ch.port)

    def _channel(
        self, parts: R.Parts, cname: str, dev: np.ndarray, ch: Channel, rng: np.random.Generator
    ) -> None:
        if ch.period > 0:
            idx, ts = periodic(rng, dev, ch.period, self.start, self.end, ch.jitter)
        else:
            idx, ts = poisson(rng, dev, ch.rate, ch.profile, self.start, self.end, self.fleet)
        n = len(idx)
        if n == 0:
            return
        ob = R.lognormal(rng, ch.orig[0], ch.orig[1], n)
        rb = R.lognormal(rng, ch.resp[0], ch.resp[1], n)
        if ch.volume_profile:
            scale = profile_value(ch.volume_profile, ts, idx, self.fleet)
            ob, rb = ob * scale, rb * scale
        dur = R.lognormal(rng, ch.dur[0], ch.dur[1], n)
        state = np.where(rng.random(n) < ch.fail_rate, np.where(rng.random(n) < 0.5, R.S0, R.REJ), R.SF)
        dst, port = self._dest(ch, idx)
        dev_ip, dev_mac = self.fleet.ip[idx], self.fleet.mac[idx]
        service = ch.service
        if ch.port is None:  # MQTT: Zeek names TLS 'ssl'; plain MQTT has no default analyzer name here
            service = np.where(port == 8883, "ssl", "mqtt").astype(object)
        if ch.inbound:
            orig_h, resp_h, orig_mac, resp_mac = dst, dev_ip, None, dev_mac
        else:
            orig_h, resp_h, orig_mac, resp_mac = dev_ip, dst, dev_mac, None
        parts.add(
            "flow",
            R.flows(
                rng,
                ts,
                orig_h,
                resp_h,
                port,
                ch.proto,
                orig_bytes=ob,
                resp_bytes=rb,
                duration=dur,
                state=state,
                service=service,
                device_id=self.fleet.device_id[idx],
                detailed_label=ch.name,
                orig_mac=orig_mac,
                resp_mac=resp_mac,
            ),
        )
        if ch.telemetry:
            sent = state == R.SF  # a reading exists only when the publish got through
            self._telemetry(parts, cname, idx[sent], ts[sent], rng)

    def _telemetry(
        self, parts: R.Parts, cname: str, idx: np.ndarray, ts: np.ndarray, rng: np.random.Generator
    ) -> None:
        prof = profile_value(CLASS_PROFILE[cname], ts, idx, self.fleet)
        for m in CLASS_METRICS[cname]:
            n = len(idx)
            value = (
                self.metric_base[f"{cname}/{m.name}"][idx] + m.diurnal * prof + rng.normal(0, m.noise_sd, n)
            )
            parts.add(
                "telemetry",
                {
                    "ts": ts + 0.001,  # the reading is logged by the broker just after the connection opens
                    "metric": R.full(n, m.name),
                    "value": np.round(np.clip(value, m.lo, m.hi), 3),
                    "unit": R.full(n, m.unit),
                    "device_id": self.fleet.device_id[idx],
                    "label": R.full(n, "benign"),
                    "detailed_label": R.full(n, "mqtt-telemetry"),
                },
            )

    def _ntp(self, parts: R.Parts, dev: np.ndarray, rng: np.random.Generator) -> None:
        idx, ts = periodic(rng, dev, NTP_PERIOD, self.start, self.end, 0.01)
        n = len(idx)
        parts.add(
            "flow",
            R.flows(
                rng,
                ts,
                self.fleet.ip[idx],
                self.server["ntp"][idx],
                123,
                R.UDP,
                orig_bytes=np.full(n, 48),
                resp_bytes=np.full(n, 48),
                duration=R.lognormal(rng, 0.004, 0.4, n),
                service="ntp",
                orig_p=123,
                device_id=self.fleet.device_id[idx],
                detailed_label="ntp",
                orig_mac=self.fleet.mac[idx],
            ),
        )

    def _dns(self, parts: R.Parts, dev: np.ndarray, rng: np.random.Generator) -> None:
        """Cloud-name lookups each time the cached answer expires, A and sometimes AAAA."""
        idx, ts = periodic(rng, dev, DNS_TTL, self.start, self.end, 0.15)
        n = len(idx)
        vend = self.fleet.vendor[idx]
        answers = np.array(
            [f"{VENDORS[v].cloud_ip(0)},{VENDORS[v].cloud_ip(1)}" for v in range(len(VENDORS))], dtype=object
        )[vend]
        self._add_dns(parts, rng, idx, ts, self.cloud_domain[idx], "A", answers, "dns-cloud")
        aaaa = rng.random(n) < 0.3
        self._add_dns(
            parts, rng, idx[aaaa], ts[aaaa] + 0.002, self.cloud_domain[idx[aaaa]], "AAAA", None, "dns-cloud"
        )

    def _internal_dns(self, parts: R.Parts, dev: np.ndarray, rng: np.random.Generator) -> None:
        idx, ts = periodic(rng, dev, DNS_TTL * 2, self.start, self.end, 0.15)
        names = np.array([f"druglib.{s.code}.{s.owner}.internal" for s in SITES], dtype=object)[
            self.fleet.site[idx]
        ]
        self._add_dns(parts, rng, idx, ts, names, "A", self.server["druglib"][idx], "dns-internal")

    def _add_dns(self, parts, rng, idx, ts, query, qtype, answers, step) -> None:  # noqa: ANN001
        if not len(idx):
            return
        rec, flow = R.dns(
            rng,
            ts,
            self.fleet.ip[idx],
            self.server["resolver"][idx],
            query,
            qtype,
            answers,
            device_id=self.fleet.device_id[idx],
            detailed_label=step,
            client_mac=self.fleet.mac[idx],
        )
        parts.add("dns", rec)
        parts.add("flow", flow)

    # firmware, provisioning ------------------------------------------------------------------
    def _firmware_reports(self, parts: R.Parts, rng: np.random.Generator) -> None:
        """Daily self-report of the running image, and for cloud classes the online update check."""
        dev = np.arange(len(self.fleet))
        idx, ts = periodic(rng, dev, DAY, self.start, self.end, 0.002)
        n = len(idx)
        parts.add(
            "firmware_report",
            {
                "ts": ts,
                "version": self.fleet.version[idx],
                "image_sha256": self.image_hash[idx],
                "signature": R.full(n, "valid"),
                "device_id": self.fleet.device_id[idx],
                "label": R.full(n, "benign"),
                "detailed_label": R.full(n, "firmware-report"),
            },
        )
        online = np.isin(self.fleet.cls[idx], [DEVICE_CLASSES.index(c) for c in CLOUD_CLASSES])
        oi, ots = idx[online], ts[online] + rng.uniform(1, 30, size=online.sum())
        self._add_dns(
            parts, rng, oi, ots - 0.05, self.update_domain[oi], "A", self.update_ip[oi], "firmware-check"
        )
        m = len(oi)
        parts.add(
            "flow",
            R.flows(
                rng,
                ots,
                self.fleet.ip[oi],
                self.update_ip[oi],
                443,
                R.TCP,
                orig_bytes=R.lognormal(rng, 700, 0.2, m),
                resp_bytes=R.lognormal(rng, 1300, 0.2, m),
                duration=R.lognormal(rng, 0.9, 0.4, m),
                service="ssl",
                device_id=self.fleet.device_id[oi],
                detailed_label="firmware-check",
                orig_mac=self.fleet.mac[oi],
            ),
        )

    def _provision(self, parts: R.Parts, rng: np.random.Generator) -> None:
        f = self.fleet
        n = len(f)
        parts.add(
            "provision",
            {
                "ts": f.enrolled,
                "serial": f.serial,
                "vendor": np.array([VENDORS[v].name for v in f.vendor], dtype=object),
                "model": f.model,
                "pubkey_sha256": f.pubkey,
                "attestation": R.full(n, "ok"),
                "src_ip": f.ip,
                "device_id": f.device_id,
                "label": R.full(n, "benign"),
                "detailed_label": R.full(n, "enrolment"),
            },
        )

    # people ----------------------------------------------------------------------------------
    def login_targets(self, site: int) -> np.ndarray:
        """Devices of a site that people log in to (web UI / ssh / engineering tools)."""
        f = self.fleet
        ui = [
            DEVICE_CLASSES.index(c)
            for c in ("gateway", "ip-camera", "plc", "infusion-pump", "digital-signage")
        ]
        return np.flatnonzero((f.site == site) & np.isin(f.cls, ui))

    def maintenance_targets(self, site: int) -> np.ndarray:
        """Devices of a site that the maintenance contractor services."""
        f = self.fleet
        maintained = [DEVICE_CLASSES.index(c) for c in MAINTAINED_CLASSES]
        return np.flatnonzero((f.site == site) & np.isin(f.cls, maintained))

    def operator_origin(self, si: int, op: Operator, k: int = 0) -> tuple[str, str, float, float, str]:
        """(src_ip, country, lat, lon, service) of an operator's logins."""
        city = CITIES[op.city]
        if op.remote:
            return public_ip(city.country, 20 + k, k), city.country, city.lat, city.lon, "vpn"
        site_city = CITIES[SITES[si].city]
        return station_ip(si, op), site_city.country, site_city.lat, site_city.lon, "web"

    def shift_windows(self, si: int, op: Operator) -> list[tuple[float, float]]:
        """UTC [start, end) of each of the operator's shifts overlapping the simulated window."""
        off = SITES[si].utc_offset * 3600.0
        first_day = np.floor((self.start + off) / DAY) - 1
        last_day = np.floor((self.end + off) / DAY)
        out = []
        for d in np.arange(first_day, last_day + 1):
            weekday = (int(d) + 3) % 7
            if weekday not in op.days:
                continue
            s_h, e_h = op.shift
            s = d * DAY + s_h * 3600.0 - off
            e = d * DAY + (e_h if e_h > s_h else e_h + 24.0) * 3600.0 - off
            if e > self.start and s < self.end:
                out.append((s, e))
        return out

    def _operators(self, parts: R.Parts, rng: np.random.Generator) -> None:
        """Operators log in during their shifts: once at the start, a few times later; rare typos."""
        rows: list[tuple] = []
        for si, site in enumerate(SITES):
            targets = self.login_targets(si)
            if not len(targets):
                continue
            for oi, op in enumerate(site.operators):
                ip, cc, lat, lon, service = self.operator_origin(si, op, oi)
                for s, e in self.shift_windows(si, op):
                    first = s + abs(rng.normal(0.2, 0.15)) * 3600.0
                    times = np.concatenate([[first], rng.uniform(first, e - 600.0, size=rng.poisson(2.0))])
                    times = times[(times >= self.start) & (times < self.end)]
                    for t in times:
                        tgt = targets[rng.integers(len(targets))]
                        svc = (
                            "ssh"
                            if DEVICE_CLASSES[self.fleet.cls[tgt]] == "gateway" and not op.remote
                            else service
                        )
                        attempts = [(t - rng.uniform(5, 40), False)] if rng.random() < 0.04 else []
                        for ts, ok in [*attempts, (t, True)]:
                            reason = None if ok else "bad password"
                            rows.append(
                                (ts, op.name, ip, cc, lat, lon, svc, ok, reason, self.fleet.device_id[tgt])
                            )
        self.add_auth(parts, rows, "benign", "operator-login")

    def on_shift(
        self, si: int, ts: np.ndarray, onsite_only: bool = True
    ) -> tuple[np.ndarray, list[Operator]]:
        """Boolean matrix (records x operators) of which operators are on shift at each time."""
        ops = [op for op in SITES[si].operators if not (onsite_only and op.remote)]
        mat = np.zeros((len(ts), len(ops)), dtype=bool)
        for j, op in enumerate(ops):
            for s, e in self.shift_windows(si, op):
                mat[:, j] |= (ts >= s) & (ts < e)
        return mat, ops

    def _commands(self, parts: R.Parts, rng: np.random.Generator) -> None:
        """Operators on shift send control commands to PLCs and pumps from their stations."""
        for cname, rate, prof, port, svc, names in (
            ("plc", 1.5, "factory", 502, "modbus", PLC_COMMANDS),
            ("infusion-pump", 1.0, "hospital", 443, "ssl", PUMP_COMMANDS),
        ):
            dev = self.fleet.of_class(cname)
            if not len(dev):
                continue
            idx, ts = poisson(rng, dev, rate, prof, self.start, self.end, self.fleet)
            src = np.empty(len(idx), dtype=object)
            who = np.empty(len(idx), dtype=object)
            keep = np.zeros(len(idx), dtype=bool)
            for si in np.unique(self.fleet.site[idx]):
                sel = np.flatnonzero(self.fleet.site[idx] == si)
                mat, ops = self.on_shift(int(si), ts[sel])
                if not ops:
                    continue
                has = mat.any(axis=1)
                pick = np.argmax(mat * rng.random(mat.shape), axis=1)
                stations = np.array([station_ip(int(si), op) for op in ops], dtype=object)
                names_ = np.array([op.name for op in ops], dtype=object)
                src[sel], who[sel], keep[sel] = stations[pick], names_[pick], has
            idx, ts, src, who = idx[keep], ts[keep], src[keep], who[keep]
            self._add_commands(parts, rng, idx, ts, who, src, names, port, svc, "benign", "operator-command")

    def _add_commands(self, parts, rng, idx, ts, who, src, names, port, svc, label, step) -> None:  # noqa: ANN001
        n = len(idx)
        if not n:
            return
        cmd = names[rng.integers(0, len(names), size=n)]
        args = np.array(
            [
                f"reg=4{r:04d} value={v}"
                for r, v in zip(rng.integers(1, 200, n), rng.integers(0, 1000, n), strict=True)
            ],
            dtype=object,
        )
        parts.add(
            "command",
            {
                "ts": ts,
                "operator": who,
                "command": cmd,
                "args": args,
                "src_ip": src,
                "device_id": self.fleet.device_id[idx],
                "label": R.full(n, label),
                "detailed_label": R.full(n, step),
            },
        )
        parts.add(
            "flow",
            R.flows(
                rng,
                ts - 0.05,
                src,
                self.fleet.ip[idx],
                port,
                R.TCP,
                orig_bytes=R.lognormal(rng, 160, 0.2, n),
                resp_bytes=R.lognormal(rng, 120, 0.2, n),
                duration=R.lognormal(rng, 0.08, 0.3, n),
                service=svc,
                device_id=self.fleet.device_id[idx],
                label=label,
                detailed_label=step,
                resp_mac=self.fleet.mac[idx],
            ),
        )

    def _maintenance(self, parts: R.Parts, rng: np.random.Generator) -> None:
        """Daily maintenance window: the contractor logs in over the VPN and services a few devices."""
        auth: list[tuple] = []
        for si, site in enumerate(SITES):
            op = site.maintenance
            targets = self.maintenance_targets(si)
            gws = np.flatnonzero(
                (self.fleet.site == si) & (self.fleet.cls == DEVICE_CLASSES.index("gateway"))
            )
            if not len(targets) or not len(gws):
                continue
            ip, cc, lat, lon, _ = self.operator_origin(si, op, 0)
            vpn_ip = f"10.{si + 1}.6.10"
            for s, e in self.shift_windows(si, op):
                t = s + rng.uniform(60, 600)
                if not self.start <= t < e - 300 or t >= self.end:
                    continue
                auth.append((t, op.name, ip, cc, lat, lon, "vpn", True, None, self.fleet.device_id[gws[0]]))
                k = int(rng.integers(2, 6))
                tgt = rng.choice(targets, size=min(k, len(targets)), replace=False)
                ts = np.sort(rng.uniform(t + 60, min(e, self.end) - 60, size=len(tgt)))
                port = np.where(
                    self.fleet.cls[tgt] == DEVICE_CLASSES.index("plc"),
                    502,
                    np.where(self.fleet.cls[tgt] == DEVICE_CLASSES.index("gateway"), 22, 443),
                )
                for p, svc in ((502, "modbus"), (22, "ssh"), (443, "ssl")):
                    sel = port == p
                    self._add_commands(
                        parts,
                        rng,
                        tgt[sel],
                        ts[sel],
                        R.full(sel.sum(), op.name),
                        R.full(sel.sum(), vpn_ip),
                        MAINT_COMMANDS,
                        p,
                        svc,
                        "benign",
                        "maintenance-command",
                    )
        self.add_auth(parts, auth, "benign", "maintenance-login")

    def add_auth(self, parts: R.Parts, rows: list[tuple], label: str, step: str | np.ndarray) -> None:
        """Auth records from rows of :data:`AUTH_FIELDS` values."""
        if not rows:
            return
        cols = {k: np.array([r[i] for r in rows], dtype=object) for i, k in enumerate(AUTH_FIELDS)}
        for k in ("ts", "src_lat", "src_lon"):
            cols[k] = cols[k].astype(np.float64)
        cols["success"] = cols["success"].astype(bool)
        n = len(rows)
        cols["label"] = R.full(n, label)
        cols["detailed_label"] = step if isinstance(step, np.ndarray) else R.full(n, step)
        parts.add("auth", cols)
