"""Novelty and policy: new services or countries for a device (or its class), plaintext management.

Contract
    :class:`NoveltyDetector` consumes ``flow`` batches.

    * New service / country (``anomaly``, T1571 non-standard port, T1041): per device it
      learns the outbound services (``proto/port`` of established connections) and the
      countries of external destinations; per device class (``ctx.devices``) it learns the
      union over the class.  Once the device has a baseline (``warmup_flows`` flows over
      ``warmup_seconds``) or its class has ``min_cohort`` learned devices (a new device starts
      from its cohort: no blind period), an established connection to a service or country
      that neither the device nor its class has used yields one finding per (device, new
      value).  Scores stay low-to-medium: novelty is context for the correlator, not proof.
    * Plaintext management (``policy-violation``, T1021, T1040): established telnet, FTP,
      rlogin, SNMPv1/2 or MQTT without TLS, and HTTP to a management port of an inventoried
      device, when encryption is required (``require_encryption``; ``ctx.require_encryption``
      overrides it).  The entity is the device on the LAN side that offers (telnet, FTP,
      HTTP admin) or speaks (MQTT client) the protocol; one finding per (device, protocol).

    Countries come from :func:`fleetwarden.detection.enrich.country_of` when present,
    otherwise from geoip2fast's bundled database (no network access).

Blind spots
    Protocols are recognised by port or by the flow's ``service`` field, so telnet on an odd
    port without service detection is missed; new services of a device that talks to
    everything during its learning period become part of its baseline; country lookups are
    only as good as the bundled GeoIP snapshot.

Reference
    AWS IoT Device Defender audit checks and ML Detect behaviours (listening ports,
    destinations), Slips' "connection to a new port/country" evidence, and NIST IR 8259A
    (device cybersecurity capability core: secure management interfaces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa

from fleetwarden.detection.analytics.base import Context
from fleetwarden.detection.analytics.netcommon import (
    device_class,
    is_group,
    is_private,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding

__all__ = ["ANALYTICS", "NoveltyDetector", "country_of"]

# (proto, port) -> (name, score, which side is the device: "resp" offers it, "orig" speaks it)
PLAINTEXT = {
    ("tcp", 23): ("telnet", 0.5, "resp"),
    ("tcp", 2323): ("telnet", 0.5, "resp"),
    ("tcp", 21): ("FTP", 0.4, "resp"),
    ("tcp", 513): ("rlogin", 0.5, "resp"),
    ("udp", 161): ("SNMP v1/v2c", 0.3, "resp"),
    ("tcp", 1883): ("MQTT without TLS", 0.35, "orig"),
}
PLAINTEXT_SERVICES = {"telnet": ("telnet", 0.5, "resp"), "ftp": ("FTP", 0.4, "resp")}
HTTP_ADMIN_PORTS = frozenset({80, 8080, 8000, 8081, 8888})
ESTABLISHED = ("SF", "S1", "S2", "S3", "RSTO", "RSTR")


@lru_cache(maxsize=1)
def _geo():
    try:
        from fleetwarden.detection import enrich  # type: ignore[attr-defined]

        if hasattr(enrich, "country_of"):

            def via_enrich(ip: str) -> str | None:
                code = enrich.country_of([ip])[0].as_py()
                return code if code and len(code) == 2 and code != "--" else None

            return via_enrich
    except ImportError:
        pass
    from geoip2fast import GeoIP2Fast

    g = GeoIP2Fast()

    def lookup(ip: str) -> str | None:
        try:
            code = g.lookup(ip).country_code
        except Exception:  # geoip2fast raises on malformed input; an unknown country is fine
            return None
        return code if code and code != "--" and len(code) == 2 else None

    return lookup


@lru_cache(maxsize=65_536)
def country_of(ip: str) -> str | None:
    """ISO country code of a public address (None for private or unknown ones)."""
    if is_private(ip) or is_group(ip):
        return None
    return _geo()(ip)


@dataclass
class _Profile:
    services: set = field(default_factory=set)
    countries: set = field(default_factory=set)
    flows: int = 0
    first: float = math.inf
    last: float = -math.inf
    learned: bool = False
    reported: set = field(default_factory=set)
    mac: str | None = None


class NoveltyDetector:
    """New services/countries for a device or its class; plaintext management protocols."""

    name = "novelty"
    kinds = ("flow",)

    def __init__(
        self,
        warmup_flows: int = 500,
        warmup_seconds: float = 3600.0,
        min_cohort: int = 2,
        require_encryption: bool = True,
        max_values: int = 128,
        max_devices: int = 100_000,
    ) -> None:
        self.warmup_flows = warmup_flows
        self.warmup_seconds = warmup_seconds
        self.min_cohort = min_cohort
        self.require_encryption = require_encryption
        self.max_values = max_values
        self.max_devices = max_devices
        self._devices: dict[str, _Profile] = {}
        self._classes: dict[str, _Profile] = {}
        self._class_learned: dict[str, int] = {}
        self._policy_reported: set[tuple] = set()

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "flow" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        findings = self._policy(batch, ctx)
        findings += self._novelty(batch, ctx)
        return findings

    # plaintext management ---------------------------------------------------------
    def _policy(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        required = getattr(ctx, "require_encryption", self.require_encryption)
        if not required:
            return []
        ob = num_col(batch, "orig_bytes").astype(np.int64)
        rb = num_col(batch, "resp_bytes").astype(np.int64)
        talked = (ob > 0) & (rb > 0)
        if not talked.any():
            return []
        b = batch.filter(talked)
        proto = str_col(b, "proto")
        port = num_col(b, "id.resp_p").astype(np.int64)
        service = str_col(b, "service")
        src = str_col(b, "id.orig_h")
        dst = str_col(b, "id.resp_h")
        ts = b.np("ts")
        uid = str_col(b, "uid")
        candidates = np.isin(port, [p for _, p in PLAINTEXT] + list(HTTP_ADMIN_PORTS)) | np.isin(
            service, list(PLAINTEXT_SERVICES)
        )
        out = []
        for i in np.flatnonzero(candidates):
            rule = PLAINTEXT.get((proto[i], int(port[i]))) or PLAINTEXT_SERVICES.get(service[i])
            if rule is None:
                # HTTP management of an inventoried device from inside the network.
                if proto[i] == "tcp" and dst[i] in ctx.ip_to_device and is_private(src[i]):
                    rule = ("HTTP management", 0.25, "resp")
                else:
                    continue
            label, score, side = rule
            device_ip = dst[i] if side == "resp" else src[i]
            peer = src[i] if side == "resp" else dst[i]
            if side == "orig" and not is_private(device_ip):
                device_ip, peer = dst[i], src[i]
            key = (device_ip, label)
            if key in self._policy_reported:
                continue
            self._policy_reported.add(key)
            where = f"{proto[i]}/{port[i]}"
            verb = "accepted" if side == "resp" else "used"
            out.append(
                make_finding(
                    ctx,
                    device_ip,
                    "policy-violation",
                    self.name,
                    score,
                    float(ts[i]),
                    float(ts[i]),
                    [
                        f"{verb} a plaintext {label} session on {where} with {peer} "
                        f"({int(ob[talked][i])} B / {int(rb[talked][i])} B exchanged); policy requires "
                        "encrypted management"
                    ],
                    ["T1021", "T1040"],
                    [uid[i]],
                    protocol=label,
                )
            )
        return out

    # new services and countries ------------------------------------------------------
    def _novelty(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        state = str_col(batch, "conn_state")
        ob = num_col(batch, "orig_bytes").astype(np.int64)
        rb = num_col(batch, "resp_bytes").astype(np.int64)
        established = np.isin(state, ESTABLISHED) | ((ob > 0) & (rb > 0))
        dst = str_col(batch, "id.resp_h")
        ts = batch.np("ts")
        table = pa.table(
            {
                "src": str_col(batch, "id.orig_h"),
                "dst": dst,
                "svc": np.char.add(
                    np.char.add(str_col(batch, "proto").astype(str), "/"),
                    num_col(batch, "id.resp_p").astype(np.int64).astype(str),
                ),
                "est": established,
                "ts": ts,
                "uid": str_col(batch, "uid"),
                "mac": str_col(batch, "orig_l2_addr"),
            }
        )
        g = table.group_by(["src", "svc", "dst"]).aggregate(
            [("est", "any"), ("ts", "min"), ("ts", "max"), ("ts", "count"), ("uid", "min"), ("mac", "max")]
        )
        out = []
        rows = zip(*(g.column(c).to_pylist() for c in g.column_names), strict=True)
        for src, svc, d, est, t0, t1, n, uid, mac in sorted(rows, key=lambda r: r[4]):
            if is_group(d):
                continue
            prof = self._devices.get(src)
            if prof is None:
                if len(self._devices) >= self.max_devices:
                    continue
                prof = self._devices[src] = _Profile()
            prof.flows += n
            prof.first, prof.last = min(prof.first, t0), max(prof.last, t1)
            prof.mac = mac or prof.mac
            if not est:
                continue
            cls = device_class(ctx, src)
            cohort = self._classes.setdefault(cls, _Profile()) if cls else None
            country = country_of(d)
            baseline_ready = prof.learned or (
                cls is not None and self._class_learned.get(cls, 0) >= self.min_cohort
            )
            for kind, value in (("service", svc), ("country", country)):
                if value is None:
                    continue
                known = prof.services if kind == "service" else prof.countries
                cohort_known = (
                    (cohort.services if kind == "service" else cohort.countries) if cohort else set()
                )
                if value in known or value in cohort_known:
                    continue
                if baseline_ready and (kind, value) not in prof.reported:
                    prof.reported.add((kind, value))
                    out.append(self._finding(ctx, src, kind, value, d, t0, t1, uid, prof, cls))
                if len(known) < self.max_values:
                    known.add(value)
                if cohort is not None and len(cohort_known) < self.max_values * 4:
                    cohort_known.add(value)
            if (
                not prof.learned
                and prof.flows >= self.warmup_flows
                and prof.last - prof.first >= self.warmup_seconds
            ):
                prof.learned = True
                if cls:
                    self._class_learned[cls] = self._class_learned.get(cls, 0) + 1
        return out

    def _finding(self, ctx, src, kind, value, dst, t0, t1, uid, prof: _Profile, cls) -> Finding:
        basis = f"its class {cls!r}" if cls else "it"
        if kind == "service":
            text = f"first established connection to service {value} (to {dst}), which {basis} never used"
            mitre = ["T1571"]
        else:
            text = f"first connection to country {value} (to {dst}), which {basis} never contacted"
            mitre = ["T1041"]
        hours = max(prof.last - prof.first, 0) / 3600
        text += f" in {prof.flows} flows over {hours:.1f} h of baseline"
        return make_finding(
            ctx,
            src,
            "anomaly",
            self.name,
            0.35 if kind == "service" else 0.3,
            t0,
            t1,
            [text],
            mitre,
            [uid] if uid else [],
            mac=prof.mac,
            novelty=kind,
            value=value,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        return []


ANALYTICS = [NoveltyDetector]
