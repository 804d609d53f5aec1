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
      device, weighed by a :class:`PlaintextPolicy` (the detector's ``policy``, or
      ``ctx.plaintext_policy``; ``ctx.require_encryption`` switches it off).  The entity is
      always the local device: the one that offers the service (telnet, FTP, HTTP admin) or
      speaks it (MQTT client), or the local client whose session to an *outside* server was
      answered (the answered probe of its own scan: it is that device's story, not the
      outside host's).  Default weights: inside the site low (MQTT to the site broker
      lowest), management offered to or used from outside the site medium, MQTT leaving the
      site medium; one finding per (device, protocol, weight).  ``auth`` events of logins
      over telnet/FTP/rlogin (credentials crossed in clear) are medium.

    Countries come from :func:`fleetwarden.detection.enrich.country_of` when present,
    otherwise from geoip2fast's bundled database (no network access).

Blind spots
    Protocols are recognised by port or by the flow's ``service`` field, so telnet on an odd
    port without service detection is missed; flows carry no payload, so credentials are
    only "seen" through ``auth`` events; "outside the site" means outside RFC 1918 and the
    inventory (another site's private subnet counts as inside); new services of a device that talks to
    everything during its learning period become part of its baseline; country lookups are
    only as good as the bundled GeoIP snapshot.

Reference
    AWS IoT Device Defender audit checks and ML Detect behaviours (listening ports,
    destinations), Slips' "connection to a new port/country" evidence, and NIST IR 8259A
    (device cybersecurity capability core: secure management interfaces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    device_class,
    is_group,
    is_local,
    is_private,
    make_finding,
    num_col,
    sorted_by_time,
    str_col,
)
from fleetwarden.detection.enrich import country_code

__all__ = ["ANALYTICS", "NoveltyDetector", "PlaintextPolicy", "country_of"]

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
PLAINTEXT_LOGIN_SERVICES = frozenset({"telnet", "ftp", "rlogin", "rsh"})
ESTABLISHED = ("SF", "S1", "S2", "S3", "RSTO", "RSTR")


@lru_cache(maxsize=65_536)
def country_of(ip: str) -> str | None:
    """ISO country code of a public address (None for private or unknown ones)."""
    if is_private(ip) or is_group(ip):
        return None
    return country_code(ip)


@dataclass(frozen=True)
class PlaintextPolicy:
    """How much each kind of plaintext management use weighs (a score of 0 allows it).

    Defaults follow a site that requires encryption on every management path but accepts
    that LAN-only protocols are a hygiene issue (low), whereas management reachable from
    outside the site, telemetry leaving the site in clear, and logins whose credentials
    crossed the network in clear are medium.  Set on the detector, or on the run's Context
    as ``ctx.plaintext_policy`` (``ctx.require_encryption`` switches the whole policy).
    """

    require_encryption: bool = True
    lan_score: float = 0.3  # telnet/FTP/SNMP/HTTP admin between hosts of the site
    lan_mqtt_score: float = 0.15  # MQTT on 1883 to a broker inside the site
    outbound_score: float = 0.25  # the device opened a plaintext session to an external server
    external_score: float = 0.55  # offered to / used from outside the site, or MQTT leaving it
    credentials_score: float = 0.55  # a login over telnet/FTP: credentials in clear


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
    kinds = ("flow", "auth")

    def __init__(
        self,
        warmup_flows: int = 50,
        warmup_seconds: float = 3600.0,
        min_cohort: int = 2,
        require_encryption: bool = True,
        policy: PlaintextPolicy | None = None,
        max_values: int = 128,
        max_devices: int = 100_000,
    ) -> None:
        self.warmup_flows = warmup_flows
        self.warmup_seconds = warmup_seconds
        self.min_cohort = min_cohort
        self.policy = policy or PlaintextPolicy(require_encryption=require_encryption)
        self.max_values = max_values
        self.max_devices = max_devices
        self._devices: dict[str, _Profile] = {}
        self._classes: dict[str, _Profile] = {}
        self._class_learned: dict[str, int] = {}
        self._policy_reported: set[tuple] = set()

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if len(batch) == 0:
            return []
        if batch.kind == "auth":
            return self._plaintext_logins(batch, ctx)
        if batch.kind != "flow":
            return []
        batch = sorted_by_time(batch)
        findings = self._policy(batch, ctx)
        findings += self._novelty(batch, ctx)
        return findings

    # plaintext management ---------------------------------------------------------
    def _policy_now(self, ctx: Context) -> PlaintextPolicy:
        policy = getattr(ctx, "plaintext_policy", None) or self.policy
        required = getattr(ctx, "require_encryption", None)
        if required is not None and required != policy.require_encryption:
            policy = replace(policy, require_encryption=bool(required))
        return policy

    def _policy(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        policy = self._policy_now(ctx)
        if not policy.require_encryption:
            return []
        ob = num_col(batch, "orig_bytes").astype(np.int64)
        rb = num_col(batch, "resp_bytes").astype(np.int64)
        talked = (ob > 0) & (rb > 0)
        if not talked.any():
            return []
        b = batch.filter(talked)
        ob, rb = ob[talked], rb[talked]
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
                # HTTP management of an inventoried device.
                if proto[i] == "tcp" and dst[i] in ctx.ip_to_device:
                    rule = ("HTTP management", 0.0, "resp")
                else:
                    continue
            label, _, side = rule
            server, client = dst[i], src[i]
            server_local, client_local = is_local(ctx, server), is_local(ctx, client)
            mqtt = label.startswith("MQTT")
            if side == "orig" and client_local:
                # MQTT: the client device speaks plaintext to its broker.
                device_ip, peer = client, server
                if server_local:
                    score, how = policy.lan_mqtt_score, f"used {label} inside the site with broker {peer}"
                else:
                    score, how = policy.external_score, f"sent {label} out of the site to {peer}"
            elif server_local and not client_local:
                # Management offered to (and used from) outside the site.
                device_ip, peer = server, client
                score = policy.external_score
                how = f"accepted a plaintext {label} session from {peer} outside the site"
            elif client_local and not server_local:
                # The device opened a plaintext session to an external server: the answered
                # probe of a scan, or remote management over the internet.  Its own doing.
                device_ip, peer = client, server
                score = policy.outbound_score
                how = f"opened a plaintext {label} session to external host {peer}"
            else:
                device_ip, peer = server, client
                score = policy.lan_mqtt_score if mqtt else policy.lan_score
                verb = "served" if mqtt else "accepted"
                how = f"{verb} a plaintext {label} session with {peer}"
            if score <= 0:
                continue  # the policy allows it
            key = (device_ip, label, score)
            if key in self._policy_reported:
                continue
            self._policy_reported.add(key)
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
                        f"{how} on {proto[i]}/{port[i]} ({int(ob[i])} B / {int(rb[i])} B exchanged); "
                        "policy requires encrypted management"
                    ],
                    ["T1021", "T1040"],
                    [uid[i]],
                    protocol=label,
                    peer=peer,
                )
            )
        return out

    def _plaintext_logins(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Logins over telnet/FTP: credentials crossed the network in clear text."""
        policy = self._policy_now(ctx)
        if not policy.require_encryption or policy.credentials_score <= 0:
            return []
        service = np.char.lower(str_col(batch, "service").astype(str))
        hit = np.isin(service, list(PLAINTEXT_LOGIN_SERVICES))
        if not hit.any():
            return []
        b = batch.filter(hit)
        device = str_col(b, "device_id")
        src = str_col(b, "src_ip")
        user = str_col(b, "user")
        svc = service[hit]
        ts = b.np("ts")
        out = []
        for i in range(len(b)):
            info = ctx.devices.get(device[i]) if device[i] else None
            ip = info.ip if info is not None and info.ip else None
            if ip is None:
                continue  # the device the login was on is unknown: nothing to name
            key = (ip, f"{svc[i]} login", policy.credentials_score)
            if key in self._policy_reported:
                continue
            self._policy_reported.add(key)
            out.append(
                make_finding(
                    ctx,
                    ip,
                    "policy-violation",
                    self.name,
                    policy.credentials_score,
                    float(ts[i]),
                    float(ts[i]),
                    [
                        f"account {user[i]!r} logged in over plaintext {svc[i]} from {src[i] or 'unknown'}: "
                        "credentials crossed the network unencrypted; policy requires encrypted management"
                    ],
                    ["T1021", "T1040", "T1552"],
                    [],
                    protocol=svc[i],
                    peer=src[i] or None,
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
                # "proto/port" built by Arrow (numpy's char.add is slow on object strings).
                "svc": pc.binary_join_element_wise(
                    pa.array(str_col(batch, "proto"), pa.string()),
                    pc.cast(pa.array(num_col(batch, "id.resp_p").astype(np.int64)), pa.string()),
                    "/",
                ),
                "est": established,
                "ts": ts,
                "uid": str_col(batch, "uid"),
                "mac": str_col(batch, "orig_l2_addr"),
            }
        )
        g = table.group_by(["src", "svc", "dst"], use_threads=False).aggregate(
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
