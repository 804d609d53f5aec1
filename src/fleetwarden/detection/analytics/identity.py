"""Device identity analytics: cloned identities, attestation policy, devices the inventory lacks.

:class:`ClonedIdentity` (category ``cloned-device``, MITRE T1078, T1036)
    *Contract.* Follows every enrolment (``provision`` event) of an identity, where the identity
    is the ``device_id`` (or ``serial:<serial>`` when the request names no device).  Within
    ``overlap_s`` seconds of each other, these are clone evidence:

    - two different public keys (``pubkey_sha256``) for one identity (0.5); the old key used
      again after the new one (alternation: two live devices) scores 0.9;
    - the same identity enrolling from addresses that alternate (A, B, A): two devices taking
      turns, not a device that moved;
    - one serial number claimed under two different device ids.

    - against the inventory: an enrolment of a device the inventory lists with a registered key
      (``DeviceInfo.extra['pubkey_sha256']``) under a *different* key, from an address other than
      the device's registered one, while the device is live (its telemetry, firmware reports or
      commands were seen before the enrolment and within ``overlap_s``): 0.7, or 0.55 when the
      stream holds no activity of the device but the inventory says it is ``active``; a missing
      (0.3) or failed (0.5) attestation on that enrolment adds to it.  A second live device taking
      over an identity is what a clone looks like; the original does not need to re-enrol.

    Liveness is the device's activity *before* the enrolment in event time: the records of
    every kind wait until all kinds are in up to their time (within a window the engine hands
    over telemetry and firmware reports before enrolments, commands after), then go in event
    time, so the judgment does not depend on how the kinds were batched.

    A re-enrolment with the registered key (from the same or a new address) is normal and silent,
    and so is a key rotation from the device's registered address, or after the old key has been
    quiet for ``overlap_s``.
    *Blind spots.* A perfect clone (same key, same address behind one NAT) is indistinguishable
    here; telemetry and firmware reports carry no address or key, so liveness is per device id
    (the clone's own reports cannot be told from the original's); a clone enrolling while the
    original is powered off looks like a replacement device with a new key.

:class:`AttestationPolicy` (category ``policy-violation``, MITRE T1200)
    *Contract.* An enrolment whose ``attestation`` is ``failed`` (score 0.7) or ``missing``
    (0.45) violates the onboarding policy; one finding per device and status.
    *Blind spots.* Trusts the attestation verdict the enrolment service wrote in the record.

:class:`UnknownDevice` (category ``unknown-device``, MITRE T1200)
    *Contract.* A ``device_id`` on telemetry, firmware reports, commands or logins that is
    neither in ``ctx.devices`` nor enrolled earlier in the stream (in event time: records wait
    until every kind is in up to their time; on a tie an enrolment comes after telemetry,
    firmware reports and logins of the same instant, before commands): one finding per device
    id, at its first such record.  Silent when the context has no inventory at all (nothing to
    compare with).
    *Blind spots.* A rogue device that reuses a known device id (that is a clone, see above).


:class:`BrokerSessions` (identity and behaviour fused at the device edge; MITRE T1078, T1036)
    *Contract.* Reads the broker's session facts (``auth`` records with a ``client_id``, as
    :mod:`fleetwarden.sources.mosquitto` writes them from a Mosquitto log: ``action`` login,
    disconnect, conflict, publish), keeping each identity's open sessions (the user is the
    certificate's common name with ``use_identity_as_username``: the device id):

    - one identity connected from two addresses with overlapping sessions: a certificate in two
      places at once (``cloned-device``, 0.8);
    - a client id taken over from another address (0.6), or taken over ``takeovers_min`` times
      within ``takeover_window`` (0.85): two devices fighting over one identity
      (``cloned-device``); one client id used by two identities (``policy-violation``, 0.6);
    - a publish the broker's ACL refused on a topic naming another device (a level of the topic
      that is an inventoried device id, else the level after ``events``): the identity acted as
      another device (``credential-misuse``, 0.75); refused on a topic naming no device
      (``policy-violation``, 0.4);
    - a successful connection of an identity whose inventory entry says its certificate is
      revoked (``DeviceInfo.extra['certificate_status'] == 'revoked'``): the broker's CRL is stale
      (``policy-violation``, 0.85).

    One finding per identity and reason (bounded LRU maps).
    *Blind spots.* Two clones behind one NAT share an address (only their client-id fight shows);
    sessions opened before the log starts are unknown; a TLS refusal names no certificate, so a
    revoked device that keeps trying shows only as failed logins (see :class:`BruteForce`).

*Reference.* MITRE ATT&CK T1200 (Hardware Additions), T1036 (Masquerading), T1078; NIST IR 8259A
(device identification); IETF RFC 9334 (RATS remote attestation architecture); AWS IoT Device
Defender audit checks (``DEVICE_CERTIFICATE_SHARED_CHECK``, ``CONFLICTING_CLIENT_IDS_CHECK``,
``REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context
from fleetwarden.core.events import KINDS, EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.core.text import redact
from fleetwarden.detection.analytics.auth import fmt_duration, lru_get, noisy_or
from fleetwarden.detection.analytics.netcommon import KindClock, plain_table

__all__ = ["ANALYTICS", "AttestationPolicy", "BrokerSessions", "ClonedIdentity", "UnknownDevice"]


@dataclass
class _Enrolment:
    ts: float
    key: str
    ip: str


@dataclass
class _IdentityState:
    recent: deque[_Enrolment] = field(default_factory=lambda: deque(maxlen=16))
    reported: OrderedDict[str, None] = field(default_factory=OrderedDict)


class ClonedIdentity:
    """One identity enrolled with two keys, or from alternating addresses, or one serial twice."""

    name = "identity.clone"
    kinds = ("provision", "telemetry", "firmware_report", "command")
    ATTESTATION = {"missing": 0.3, "failed": 0.5}

    def __init__(self, overlap_s: float = 6 * 3600.0, max_identities: int = 1_000_000) -> None:
        self.overlap_s = overlap_s
        self.max_identities = max_identities
        self.identities_: OrderedDict[str, _IdentityState] = OrderedDict()
        self.serials_: OrderedDict[str, tuple[str, float]] = OrderedDict()  # serial -> (device_id, ts)
        # device_id -> [first, last] time a record of the device was seen (liveness)
        self.alive_: OrderedDict[str, list[float]] = OrderedDict()
        self.clock = KindClock(self.kinds)
        self._held_activity: pa.Table | None = None  # (device, ts, kind, seq) not yet in event time
        self._held_enrolments: pa.Table | None = None
        self._seq = 0

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Records wait until every kind read is complete up to their time (:class:`KindClock`),
        then go in event time: the activity of a device before an enrolment (its telemetry,
        firmware reports and commands) is what the enrolment is judged against, however the
        kinds were batched."""
        if len(batch) == 0 or batch.kind not in self.kinds:
            return []
        ts = batch.np("ts")
        self.clock.note(batch.kind, float(np.nanmax(ts)))
        k = KINDS.index(batch.kind)
        seq = self._seq + np.arange(len(batch), dtype=np.int64)
        self._seq += len(batch)
        if batch.kind == "provision":
            part = (
                plain_table(batch.table)
                .append_column("k", pa.array(np.full(len(batch), k, dtype=np.int64)))
                .append_column("i", pa.array(seq))
            )
            self._held_enrolments = _concat(self._held_enrolments, part)
        else:
            ok = pc.is_valid(batch["device_id"])
            part = pa.table(
                {
                    "d": batch["device_id"],
                    "ts": batch["ts"],
                    "k": np.full(len(batch), k, dtype=np.int64),
                    "i": seq,
                }
            ).filter(ok)
            self._held_activity = _concat(self._held_activity, part)
        return self._release(ctx, self.clock.through)

    def flush(self, ctx: Context) -> list[Finding]:
        self.clock.finish()
        return self._release(ctx, math.inf)

    def _release(self, ctx: Context, until: float) -> list[Finding]:
        activity, self._held_activity = _split(self._held_activity, until)
        enrolments, self._held_enrolments = _split(self._held_enrolments, until)
        if enrolments is None:
            if activity is not None:
                self._observe(activity)  # first and last times: the order does not matter
            return []
        if activity is not None:
            activity = activity.sort_by([("ts", "ascending"), ("k", "ascending"), ("i", "ascending")])
        enrolments = enrolments.sort_by([("ts", "ascending"), ("i", "ascending")])
        a_ts = activity.column("ts").to_numpy() if activity is not None else np.zeros(0)
        a_k = activity.column("k").to_numpy() if activity is not None else np.zeros(0, dtype=np.int64)
        e_ts = enrolments.column("ts").to_numpy()
        k_prov = KINDS.index("provision")
        # the activity before each enrolment in event time (kinds before provision first on a tie)
        lo = np.searchsorted(a_ts, e_ts, side="left")
        hi = np.searchsorted(a_ts, e_ts, side="right")
        before = np.array([lo[j] + int((a_k[lo[j] : hi[j]] < k_prov).sum()) for j in range(len(e_ts))])
        done = 0
        out: list[Finding] = []
        # enrolments with no activity between them are judged together
        runs = np.flatnonzero(np.r_[True, before[1:] != before[:-1]])
        for a, b in zip(runs.tolist(), np.r_[runs[1:], len(before)].tolist(), strict=True):
            upto = int(before[a])
            if upto > done:
                self._observe(activity.slice(done, upto - done))
                done = upto
            out += self._enrol(enrolments.slice(a, b - a), ctx)
        if activity is not None and done < activity.num_rows:
            self._observe(activity.slice(done))
        return out

    def _observe(self, activity: pa.Table) -> None:
        """Per device, first and last record time (one group-by, not a row loop)."""
        if activity.num_rows == 0:
            return
        g = activity.group_by("d", use_threads=False).aggregate([("ts", "min"), ("ts", "max")])
        for d, lo, hi in zip(
            g["d"].to_pylist(), g["ts_min"].to_pylist(), g["ts_max"].to_pylist(), strict=True
        ):
            span = lru_get(self.alive_, d, lambda lo=lo: [float(lo), float(lo)], self.max_identities)
            span[0] = min(span[0], float(lo))
            span[1] = max(span[1], float(hi))

    def _enrol(self, table: pa.Table, ctx: Context) -> list[Finding]:
        ts = table.column("ts").to_pylist()
        dev = [d or "" for d in table.column("device_id").to_pylist()]
        serial = [x or "" for x in table.column("serial").to_pylist()]
        key = pc.utf8_lower(pc.fill_null(table["pubkey_sha256"], "")).to_pylist()
        ip = [x or "" for x in table.column("src_ip").to_pylist()]
        att = pc.utf8_lower(pc.fill_null(table["attestation"], "missing")).to_pylist()
        out: list[Finding] = []
        for i in range(len(ts)):  # enrolments are rare: one per device per (re)install
            ident = dev[i] or (f"serial:{serial[i]}" if serial[i] else "")
            if not ident:
                continue
            reasons: list[tuple[float, str, str]] = []
            if serial[i] and dev[i]:
                prev = self.serials_.get(serial[i])
                if prev is not None and prev[0] != dev[i]:
                    reasons.append(
                        (
                            0.8,
                            f"serial {serial[i]} already enrolled as {prev[0]} "
                            f"{fmt_duration(ts[i] - prev[1])} earlier, now claimed by {dev[i]}",
                            f"serial:{prev[0]}",
                        )
                    )
                lru_get(self.serials_, serial[i], lambda: ("", 0.0), self.max_identities)
                self.serials_[serial[i]] = (dev[i], float(ts[i]))
            st = lru_get(self.identities_, ident, _IdentityState, self.max_identities)
            reasons += self._key_and_address(st, float(ts[i]), key[i], ip[i])
            if dev[i]:
                reasons += self._against_inventory(ctx, dev[i], float(ts[i]), key[i], ip[i], att[i])
            st.recent.append(_Enrolment(float(ts[i]), key[i], ip[i]))
            fresh = [r for r in reasons if r[2] not in st.reported]
            if not fresh:
                continue
            for r in fresh:
                st.reported[r[2]] = None
                if len(st.reported) > 8:
                    st.reported.popitem(last=False)
            window = [e for e in st.recent if ts[i] - e.ts <= self.overlap_s]
            info = ctx.devices.get(dev[i]) if dev[i] else None
            out.append(
                Finding(
                    entity=ident,
                    category="cloned-device",
                    detector=self.name,
                    score=noisy_or(w for w, _, _ in fresh),
                    first_seen=min(e.ts for e in window),
                    last_seen=float(ts[i]),
                    evidence=[s for _, s, _ in fresh],
                    mitre=["T1078", "T1036"],
                    ip=ip[i] or None,
                    mac=info.mac if info else None,
                    device_id=dev[i] or None,
                    attributes={
                        "keys": sorted({e.key[:16] for e in window if e.key}),
                        "addresses": sorted({e.ip for e in window if e.ip}),
                    },
                )
            )
        return out

    def _against_inventory(
        self, ctx: Context, dev: str, ts: float, key: str, ip: str, att: str
    ) -> list[tuple[float, str, str]]:
        """A key other than the registered one, from another address, while the device is live."""
        info = ctx.devices.get(dev)
        registered = str(info.extra.get("pubkey_sha256") or "").lower() if info else ""
        if not registered or not key or key == registered or not ip or ip == (info.ip or ""):
            return []  # same key, no registered key, or a rotation from the device's own address
        span = self.alive_.get(dev)
        if span is not None and span[0] < ts and ts - span[1] <= self.overlap_s:
            w = 0.7
            live = (
                f"while {dev} is live (reporting for {fmt_duration(ts - span[0])} before this enrolment, "
                f"last {fmt_duration(ts - span[1])} earlier)"
            )
        elif str(info.extra.get("lifecycle", "")).lower() == "active":  # type: ignore[union-attr]
            w, live = 0.55, f"while the inventory lists {dev} as active"
        else:
            return []
        out = [
            (
                w,
                f"enrolment of {dev} from {ip} with key {redact(key)[:12]}, not its registered key "
                f"{redact(registered)[:12]} (registered address {info.ip or 'unknown'}), {live}",  # type: ignore[union-attr]
                "inventory-key:" + key,
            )
        ]
        if att in self.ATTESTATION:
            out.append(
                (self.ATTESTATION[att], f"that enrolment's attestation is {att}", "inventory-att:" + key)
            )
        return out

    def _key_and_address(
        self, st: _IdentityState, ts: float, key: str, ip: str
    ) -> list[tuple[float, str, str]]:
        window = [e for e in st.recent if ts - e.ts <= self.overlap_s]
        reasons: list[tuple[float, str, str]] = []
        if key:
            keys_in_order = [e.key for e in window if e.key]
            others = {k for k in keys_in_order if k != key}
            if others:
                # the key came back after another one was used: two devices hold the identity
                alternating = key in keys_in_order and keys_in_order[-1] != key
                last_other = max(e.ts for e in window if e.key in others)
                reasons.append(
                    (
                        0.9 if alternating else 0.5,
                        f"{'alternating' if alternating else 'two'} keys for one identity: {redact(key)[:12]} and "
                        f"{redact(sorted(others)[0])[:12]} within {fmt_duration(ts - last_other)} "
                        f"(overlap window {fmt_duration(self.overlap_s)})",
                        ("key-alternating:" if alternating else "key:") + "|".join(sorted(others | {key})),
                    )
                )
        if ip:
            ips = [e.ip for e in window if e.ip]
            if ip in ips and ips[-1] != ip:
                between = sorted({x for x in ips[ips.index(ip) :] if x != ip})
                reasons.append(
                    (
                        0.6,
                        f"enrolments alternate between addresses {ip} and {', '.join(between[:3])} within "
                        f"{fmt_duration(self.overlap_s)}",
                        "ip:" + "|".join(sorted({ip, *between})),
                    )
                )
        return reasons


class AttestationPolicy:
    """Enrolments whose attestation failed or is missing."""

    name = "identity.attestation"
    kinds = ("provision",)
    WEIGHTS = {"failed": 0.7, "missing": 0.45}

    def __init__(self, max_devices: int = 1_000_000) -> None:
        self.max_devices = max_devices
        self.reported_: OrderedDict[tuple[str, str], None] = OrderedDict()

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        status = pc.utf8_lower(pc.fill_null(batch["attestation"], "missing"))
        bad = pc.is_in(status, value_set=pa.array(list(self.WEIGHTS))).to_numpy(zero_copy_only=False)
        if not bad.any():
            return []
        idx = np.flatnonzero(bad)
        ts, dev, serial = batch.np("ts"), batch.np("device_id"), batch.np("serial")
        ip, vendor, model = batch.np("src_ip"), batch.np("vendor"), batch.np("model")
        st = np.asarray(status.to_numpy(zero_copy_only=False), dtype=object)
        out: list[Finding] = []
        for i in idx:
            ident = dev[i] or (f"serial:{serial[i]}" if serial[i] else ip[i] or "unknown")
            if (ident, st[i]) in self.reported_:
                continue
            lru_get(self.reported_, (ident, st[i]), lambda: None, self.max_devices)
            self.reported_[(ident, st[i])] = None
            claimed = " ".join(x for x in (vendor[i], model[i]) if x) or "unknown model"
            out.append(
                Finding(
                    entity=ident,
                    category="policy-violation",
                    detector=self.name,
                    score=self.WEIGHTS[st[i]],
                    first_seen=float(ts[i]),
                    last_seen=float(ts[i]),
                    evidence=[
                        f"enrolment of {ident} ({claimed}, serial {serial[i] or 'none'}) from "
                        f"{ip[i] or 'unknown address'} with attestation {st[i]}; policy requires 'ok'"
                    ],
                    mitre=["T1200"],
                    ip=ip[i] or None,
                    device_id=dev[i] or None,
                    attributes={"attestation": st[i]},
                )
            )
        return out

    def flush(self, ctx: Context) -> list[Finding]:
        return []


class UnknownDevice:
    """Device ids in the stream that neither the inventory nor an enrolment introduced."""

    name = "identity.unknown_device"
    kinds = ("telemetry", "firmware_report", "command", "auth", "provision")

    def __init__(self, max_devices: int = 1_000_000) -> None:
        self.max_devices = max_devices
        self.enrolled_: OrderedDict[str, None] = OrderedDict()
        self.reported_: OrderedDict[str, None] = OrderedDict()
        self._known_key: tuple[int, int] | None = None
        self._known = pa.array([], type=pa.string())
        # Records of ids the inventory lacks, and enrolments, wait until every kind is complete up
        # to their time (:class:`KindClock`): an id is unknown when a record of it comes before
        # any enrolment of it in event time, however the kinds were batched.
        self.clock = KindClock(self.kinds)
        self._held: pa.Table | None = None  # (device, ts, kind, seq)
        self._seq = 0

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if len(batch) == 0 or batch.kind not in self.kinds:
            return []
        ts = batch.np("ts")
        self.clock.note(batch.kind, float(np.nanmax(ts)))
        seq = self._seq + np.arange(len(batch), dtype=np.int64)
        self._seq += len(batch)
        ids = pc.fill_null(batch["device_id"], "")
        keep = pc.not_equal(ids, "")
        if batch.kind != "provision":
            if not ctx.devices:
                keep = None  # no inventory: nothing to compare with
            else:
                key = (id(ctx.devices), len(ctx.devices))
                if key != self._known_key:  # the inventory rarely changes; rebuild its id set only then
                    self._known = pa.array(list(ctx.devices), type=pa.string())
                    self._known_key = key
                keep = pc.and_(keep, pc.invert(pc.is_in(ids, value_set=self._known)))
        if keep is not None and pc.any(keep).as_py():
            rows = pa.array(np.flatnonzero(keep.to_numpy(zero_copy_only=False)))
            part = pa.table(
                {
                    "d": ids.take(rows),
                    "ts": batch["ts"].take(rows),
                    "k": np.full(len(rows), KINDS.index(batch.kind), dtype=np.int64),
                    "i": seq[rows.to_numpy()],
                }
            )
            self._held = _concat(self._held, part)
        return self._release(ctx, self.clock.through)

    def flush(self, ctx: Context) -> list[Finding]:
        self.clock.finish()
        return self._release(ctx, math.inf)

    def _release(self, ctx: Context, until: float) -> list[Finding]:
        ready, self._held = _split(self._held, until)
        if ready is None:
            return []
        ready = ready.sort_by([("ts", "ascending"), ("k", "ascending"), ("i", "ascending")])
        k_prov = KINDS.index("provision")
        out: list[Finding] = []
        for d, t, k in zip(
            ready.column("d").to_pylist(),
            ready.column("ts").to_pylist(),
            ready.column("k").to_pylist(),
            strict=True,
        ):
            if k == k_prov:
                lru_get(self.enrolled_, d, lambda: None, self.max_devices)
                continue
            if d in self.enrolled_ or d in self.reported_ or d in ctx.devices:
                continue
            lru_get(self.reported_, d, lambda: None, self.max_devices)
            kind = KINDS[k]
            out.append(
                Finding(
                    entity=d,
                    category="unknown-device",
                    detector=self.name,
                    score=0.55,
                    first_seen=float(t),
                    last_seen=float(t),
                    evidence=[
                        f"{kind} records from device {d} (the first at this time), which is not among the "
                        f"{len(ctx.devices)} inventoried devices and never enrolled"
                    ],
                    mitre=["T1200"],
                    device_id=d,
                )
            )
        return out


def _concat(held: pa.Table | None, part: pa.Table) -> pa.Table:
    return part if held is None or held.num_rows == 0 else pa.concat_tables([held, part])


def _split(held: pa.Table | None, until: float) -> tuple[pa.Table | None, pa.Table | None]:
    """(rows of ``held`` at or before ``until``, the rest); None for none."""
    if held is None or held.num_rows == 0:
        return None, None
    ts = held.column("ts").to_numpy()
    ready = ts <= until
    if not ready.any():
        return None, held
    if ready.all():
        return held.combine_chunks(), None
    return held.filter(pa.array(ready)).combine_chunks(), held.filter(pa.array(~ready)).combine_chunks()


_SESSION_ACTIONS = ("login", "disconnect", "conflict", "publish")


class BrokerSessions:
    """Broker sessions judged against identity: one certificate in two places, client ids fought
    over or shared, publishes refused on another device's topic, revoked identities accepted."""

    name = "identity.broker_sessions"
    kinds = ("auth",)

    def __init__(
        self,
        takeover_window: float = 3600.0,
        takeovers_min: int = 3,
        max_identities: int = 1_000_000,
        max_sessions: int = 16,
    ) -> None:
        self.takeover_window = takeover_window
        self.takeovers_min = takeovers_min
        self.max_identities = max_identities
        self.max_sessions = max_sessions
        # user -> client id -> (address, port, since); client id -> (last user, when it lost it)
        self.open_: OrderedDict[str, OrderedDict[str, tuple[str, int, float]]] = OrderedDict()
        self.lost_: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.takeovers_: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self.reported_: OrderedDict[tuple[str, str], None] = OrderedDict()

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        rows = _session_rows(batch)
        out: list[Finding] = []
        for r in rows:
            act = r["action"]
            if act == "login" and r["success"]:
                out += self._login(r, ctx)
            elif act == "disconnect":
                self.open_.get(r["user"], {}).pop(r["client_id"], None)
            elif act == "conflict":
                out += self._conflict(r, ctx)
            elif act == "publish" and not r["success"]:
                out += self._denied(r, ctx)
        return out

    def flush(self, ctx: Context) -> list[Finding]:
        return []

    # -- the facts ---------------------------------------------------------------------
    def _login(self, r: dict, ctx: Context) -> list[Finding]:
        user, cid, ip, ts = r["user"], r["client_id"], r["src_ip"] or "", r["ts"]
        out: list[Finding] = []
        info = ctx.devices.get(user)
        if info is not None and str(info.extra.get("certificate_status", "")).lower() == "revoked":
            out += self._report(
                r, ctx, "revoked", "policy-violation", 0.85,
                f"the broker accepted {user} from {ip or 'an unknown address'} although its certificate is "
                "revoked: the broker's CRL is stale (publish a new CRL and reload the broker)",
            )  # fmt: skip
        prev = self.lost_.pop(cid, None)
        if prev is not None and prev[0] != user and ts - prev[1] <= 60.0:
            out += self._report(
                r, ctx, "cid:" + cid, "policy-violation", 0.6,
                f"client id {cid} used by two identities: {prev[0]} and then {user} (from {ip or 'unknown'})",
            )  # fmt: skip
        sessions = lru_get(self.open_, user, OrderedDict, self.max_identities)
        elsewhere = [(c, s) for c, s in sessions.items() if s[0] and ip and s[0] != ip]
        if elsewhere:
            c, (oip, oport, since) = elsewhere[-1]
            out += self._report(
                r, ctx, "twice:" + "|".join(sorted({ip, oip})), "cloned-device", 0.8,
                f"{user} connected from {ip}:{r['src_port'] or '?'} (client id {cid}) while its session from "
                f"{oip}:{oport or '?'} (client id {c}), open for {fmt_duration(ts - since)}, is still open: "
                "one certificate used from two places at once",
            )  # fmt: skip
        sessions[cid] = (ip, r["src_port"] or 0, ts)
        if len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        return out

    def _conflict(self, r: dict, ctx: Context) -> list[Finding]:
        user, cid, ip, ts = r["user"], r["client_id"], r["src_ip"] or "", r["ts"]
        old = self.open_.get(user, {}).pop(cid, None)
        lru_get(self.lost_, cid, lambda: (user, ts), self.max_identities)
        self.lost_[cid] = (user, ts)
        seen = lru_get(self.takeovers_, cid, lambda: deque(maxlen=32), self.max_identities)
        seen.append((ts, ip))
        while seen and ts - seen[0][0] > self.takeover_window:
            seen.popleft()
        out: list[Finding] = []
        if old is not None and old[0] and ip and old[0] != ip:
            out += self._report(
                r, ctx, "takeover:" + cid, "cloned-device", 0.6,
                f"client id {cid} of {user} taken over by a connection from {ip} while connected from {old[0]}",
            )  # fmt: skip
        if len(seen) >= self.takeovers_min:
            places = sorted({a for _, a in seen if a})
            out += self._report(
                r, ctx, "fight:" + cid, "cloned-device", 0.85,
                f"client id {cid} of {user} taken over {len(seen)} times in {fmt_duration(ts - seen[0][0])} "
                f"(addresses {', '.join(places[:4]) or 'unknown'}): two devices fighting over one identity",
            )  # fmt: skip
        return out

    def _denied(self, r: dict, ctx: Context) -> list[Finding]:
        user, topic = r["user"], r["topic"] or ""
        owner = _topic_owner(topic, ctx)
        shown = topic if len(topic) <= 200 else topic[:200] + "…"
        if owner and owner != user:
            return self._report(
                r, ctx, "as:" + owner, "credential-misuse", 0.75,
                f"{user} published on {shown!r}, the topic of device {owner}; the broker's ACL refused it: "
                "an identity acting as another device",
            )  # fmt: skip
        return self._report(
            r, ctx, "topic:" + topic[:256], "policy-violation", 0.4,
            f"{user} published on {shown!r}, which its role does not allow; the broker's ACL refused it",
        )  # fmt: skip

    def _report(
        self, r: dict, ctx: Context, key: str, category: str, score: float, evidence: str
    ) -> list[Finding]:
        user = r["user"]
        if (user, key) in self.reported_:
            return []
        lru_get(self.reported_, (user, key), lambda: None, self.max_identities)
        info = ctx.devices.get(user)
        return [
            Finding(
                entity=user,
                category=category,
                detector=self.name,
                score=score,
                first_seen=float(r["ts"]),
                last_seen=float(r["ts"]),
                evidence=[evidence],
                mitre=["T1078"] if category != "cloned-device" else ["T1078", "T1036"],
                ip=r["src_ip"] or None,
                mac=info.mac if info else None,
                device_id=user if info is not None else None,
                attributes={"client_id": r["client_id"], "action": r["action"]},
            )
        ]


def _session_rows(batch: EventBatch) -> list[dict]:
    """The batch's broker session facts (``action`` set, a client id or a refused publish), in time
    order, as dicts: broker sessions are few next to flows, one Python step each."""
    if len(batch) == 0 or batch["action"].null_count == len(batch):
        return []
    act = pc.utf8_lower(pc.fill_null(batch["action"], ""))
    keep = pc.and_(pc.is_in(act, value_set=pa.array(list(_SESSION_ACTIONS))), pc.is_valid(batch["client_id"]))
    mask = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
    if not mask.any():
        return []
    cols = ["ts", "user", "src_ip", "src_port", "success", "action", "client_id", "topic"]
    table = batch.table.filter(pa.array(mask)).select(cols)
    table = table.set_column(cols.index("action"), "action", pc.utf8_lower(table["action"]))
    return table.sort_by([("ts", "ascending")]).to_pylist()


def _topic_owner(topic: str, ctx: Context) -> str | None:
    """The device a topic names: a level that is an inventoried device id, else the level after
    ``events`` (FleetWarden's ``…/events/<device_id>`` layout)."""
    levels = topic.split("/")[:32]
    for level in levels:
        if level and level in ctx.devices:
            return level
    if "events" in levels:
        k = levels.index("events")
        if k + 1 < len(levels) and levels[k + 1] not in ("", "+", "#", "_gateway"):
            return levels[k + 1]
    return None


ANALYTICS = [ClonedIdentity, AttestationPolicy, UnknownDevice, BrokerSessions]
