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
      value).  Flows are judged one by one in time order, each against what the device and
      its class knew just before it, then learnt (the baseline counts the flows up to it), so
      the findings do not depend on how the flows were batched.  A device whose profile is
      full (``max_values``) is judged again at each use of a value it could not learn.
      Scores stay low-to-medium: novelty is context for the correlator, not proof.
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
    distinct_map,
    group_mask,
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
        """Judge, flow by flow in time order, each established connection whose service or
        country the device does not know yet (against what the device and its class knew just
        before it), then learn it.  Only those first uses need Python: the running figures they
        quote (flows, time seen, whether the device or its class had a baseline) are computed
        for the whole batch at once."""
        dst = str_col(batch, "id.resp_h")
        live = ~group_mask(dst)
        if not live.any():
            return []
        rows = np.flatnonzero(live)
        src = str_col(batch, "id.orig_h")[rows]
        dst = dst[rows]
        ts = num_col(batch, "ts")[rows]
        state = str_col(batch, "conn_state")[rows]
        ob = num_col(batch, "orig_bytes")[rows]
        rb = num_col(batch, "resp_bytes")[rows]
        est = np.isin(state, ESTABLISHED) | ((ob > 0) & (rb > 0))
        n = len(rows)
        # Profiles, in the order sources first appear (the device cap keeps the earliest).
        enc = pc.dictionary_encode(pa.array(src, pa.string()))
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = enc.dictionary.to_pylist()
        profs: list[_Profile | None] = []
        for name in names:
            prof = self._devices.get(name)
            if prof is None and len(self._devices) < self.max_devices:
                prof = self._devices[name] = _Profile()
            profs.append(prof)
        has = np.array([p is not None for p in profs], dtype=bool)
        if not has.all():
            keep = has[code]
            rows, src, dst, ts, est, code = rows[keep], src[keep], dst[keep], ts[keep], est[keep], code[keep]
            n = len(rows)
            if n == 0:
                return []
        # Running figures per source, as of each flow (flows counted, first time, latest MAC).
        order = np.lexsort((np.arange(n), code))
        c = order_code = code[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        base_flows = np.array([p.flows if p is not None else 0 for p in profs], dtype=np.int64)
        flows_sorted = base_flows[order_code] + rank + 1
        flows_at = np.empty(n, dtype=np.int64)
        flows_at[order] = flows_sorted
        t_first_batch = np.full(len(names), np.inf)
        np.minimum.at(t_first_batch, code, ts)
        base_first = np.array([p.first if p is not None else np.inf for p in profs])
        first_of = np.minimum(base_first, t_first_batch)
        mac = str_col(batch, "orig_l2_addr")[rows]
        # Learning: a device has a baseline from the first established flow that finds it with
        # ``warmup_flows`` flows over ``warmup_seconds`` (judged after that flow itself).
        learned_at = np.full(len(names), n, dtype=np.int64)  # n: not in this batch
        ready = est & (flows_at >= self.warmup_flows) & (ts - first_of[code] >= self.warmup_seconds)
        if ready.any():
            idx = np.flatnonzero(ready)
            np.minimum.at(learned_at, code[idx], idx)
        for k, p in enumerate(profs):
            if p is not None and p.learned:
                learned_at[k] = -1
        # Candidates: established flows whose service (or country) the device's profile lacks.
        # "proto/port" built by Arrow (numpy's char.add is slow on object strings)
        svc_all = pc.binary_join_element_wise(
            pa.array(str_col(batch, "proto"), pa.string()),
            pc.cast(pa.array(num_col(batch, "id.resp_p").astype(np.int64)), pa.string()),
            "/",
        )
        svc = np.asarray(svc_all.take(pa.array(rows)).to_numpy(zero_copy_only=False), dtype=object)
        country = distinct_map(dst, country_of)
        events: list[tuple] = []
        classes = [device_class(ctx, name) for name in names]
        for kind, values in (("service", svc), ("country", country)):
            e = np.flatnonzero(est & (values != None))  # noqa: E711 (elementwise)
            if not len(e):
                continue
            vals = pa.array(values[e], pa.string())
            pairs = (
                pa.table({"c": code[e], "v": vals, "i": e})
                .group_by(["c", "v"], use_threads=False)
                .aggregate([("i", "min")])
            )
            for ci, v, i0 in zip(
                pairs.column("c").to_pylist(), pairs.column("v").to_pylist(), pairs.column("i_min").to_pylist(),
                strict=True,
            ):  # fmt: skip
                prof = profs[ci]
                known = prof.services if kind == "service" else prof.countries
                if v in known:
                    continue
                cohort = self._classes.get(classes[ci]) if classes[ci] else None
                if cohort is not None and v in (cohort.services if kind == "service" else cohort.countries):
                    continue  # the class knows it already (what a class learns, it keeps)
                if len(known) + 1 >= self.max_values:
                    # The profile may fill up in this batch: a value it cannot learn is judged
                    # again at its next use (until reported), as flow-by-flow processing would.
                    alli = e[(code[e] == ci) & (values[e] == v)]
                    events.extend((int(i), 0, kind, v, ci) for i in alli)
                else:
                    events.append((i0, 0, kind, v, ci))
        if not events:
            self._advance_profiles(profs, code, ts, flows_at, mac, learned_at, names, ctx)
            return []
        for k in np.flatnonzero((learned_at >= 0) & (learned_at < n)).tolist():
            events.append((int(learned_at[k]), 1, "", "", k))
        events.sort()
        out = []
        learned_now: set[int] = set()
        uid = str_col(batch, "uid")[rows]
        for i, what, kind, value, ci in events:
            name = names[ci]
            cls = classes[ci]
            if what == 1:
                learned_now.add(ci)
                if cls:
                    self._class_learned[cls] = self._class_learned.get(cls, 0) + 1
                continue
            prof = profs[ci]
            cohort = self._classes.setdefault(cls, _Profile()) if cls else None
            known = prof.services if kind == "service" else prof.countries
            cohort_known = (cohort.services if kind == "service" else cohort.countries) if cohort else set()
            if value in known or value in cohort_known:
                continue
            baseline_ready = (
                prof.learned
                or ci in learned_now
                or (cls is not None and self._class_learned.get(cls, 0) >= self.min_cohort)
            )
            if baseline_ready and (kind, value) not in prof.reported:
                prof.reported.add((kind, value))
                macs = [m for m in mac[(code == ci) & (np.arange(n) <= i)].tolist() if m]
                t = float(ts[i])
                out.append(
                    self._finding(
                        ctx,
                        name,
                        kind,
                        value,
                        dst[i],
                        t,
                        t,
                        uid[i],
                        int(flows_at[i]),
                        float(first_of[ci]),
                        t,
                        macs[-1] if macs else prof.mac,
                        cls,
                    )  # fmt: skip
                )
            if len(known) < self.max_values:
                known.add(value)
            if cohort is not None and len(cohort_known) < self.max_values * 4:
                cohort_known.add(value)
        self._advance_profiles(profs, code, ts, flows_at, mac, learned_at, names, ctx, counted=True)
        return out

    def _advance_profiles(
        self, profs, code, ts, flows_at, mac, learned_at, names, ctx, counted=False
    ) -> None:  # noqa: ANN001
        """Each profile as it stands after the batch (figures, and a baseline learnt in it)."""
        n = len(code)
        last = np.full(len(profs), -np.inf)
        np.maximum.at(last, code, ts)
        first = np.full(len(profs), np.inf)
        np.minimum.at(first, code, ts)
        flows = np.zeros(len(profs), dtype=np.int64)
        np.maximum.at(flows, code, flows_at)
        has_mac = np.flatnonzero(mac != "")
        last_mac: dict[int, str] = {}
        for i in has_mac.tolist():
            last_mac[int(code[i])] = mac[i]
        for k, prof in enumerate(profs):
            if prof is None or flows[k] == 0:
                continue
            prof.flows = int(flows[k])
            prof.first, prof.last = min(prof.first, float(first[k])), max(prof.last, float(last[k]))
            if k in last_mac:
                prof.mac = last_mac[k]
            if not prof.learned and 0 <= learned_at[k] < n:
                prof.learned = True
                if not counted:
                    cls = device_class(ctx, names[k])
                    if cls:
                        self._class_learned[cls] = self._class_learned.get(cls, 0) + 1

    def _finding(self, ctx, src, kind, value, dst, t0, t1, uid, flows, first, last, mac, cls) -> Finding:  # noqa: ANN001
        basis = f"its class {cls!r}" if cls else "it"
        if kind == "service":
            text = f"first established connection to service {value} (to {dst}), which {basis} never used"
            mitre = ["T1571"]
        else:
            text = f"first connection to country {value} (to {dst}), which {basis} never contacted"
            mitre = ["T1041"]
        hours = max(last - first, 0) / 3600
        text += f" in {flows} flows over {hours:.1f} h of baseline"
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
            mac=mac,
            novelty=kind,
            value=value,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        return []


ANALYTICS = [NoveltyDetector]
