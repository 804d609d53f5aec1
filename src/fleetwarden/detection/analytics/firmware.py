"""Firmware integrity: device firmware reports against a catalogue and the device's own history.

:class:`FirmwareIntegrity` (category ``firmware-tamper``, MITRE T1542, T1601)

*Contract.* Reads ``firmware_report`` events (device id, version, image SHA-256, signature
status) and raises one finding per device and distinct suspicious image, with every reason,
at the first report of it (reports are judged one by one in time order; a report repeating
the device's previous one changes nothing and is skipped, whatever the batches):

- signature ``invalid`` (strong) or ``unsigned`` (weaker; weaker still when the hash is catalogued);
- catalogue checks, when a catalogue covers the device's (vendor, model): a known version whose
  hash is not catalogued for it (strong), a hash catalogued under a *different* version (a
  relabelled image), or a version the catalogue does not know;
- history checks against the device's last good report: the hash changed but the version did
  not (tamper without a catalogue), or the version went down (downgrade, T1601.002; weaker when
  the older image is catalogued and validly signed, since operators do roll back); a device's
  first report is compared with the inventory's ``DeviceInfo.firmware`` for downgrades.

A new version that is signed (or not reported invalid/unsigned) and whose hash the catalogue
lists is a benign rollout: no finding; it is counted in ``rollouts_`` (vendor, model, version)
-> devices seen, so the engine or the demo can show the rollout as information.

*Catalogue.* ``ctx.firmware_catalog[(vendor, model, version)] -> {sha256}`` (vendor and model
from the inventory's ``DeviceInfo``) and/or a per-device ``DeviceInfo.extra['firmware_catalog']``
as ``{version: [sha256, ...]}``; both are merged.  Hashes compare case-insensitively.

*Blind spots.* Everything rests on the device reporting honestly: a rootkit that reports the
good hash is invisible here (the network analytics must catch its behaviour).  Without a
catalogue, an unknown new version with a valid signature status is trusted, and a device's first
report is its baseline.  Version ordering is numeric-then-lexical per dotted component.

*Reference.* MITRE ATT&CK T1542 (Pre-OS Boot), T1601 (Modify System Image), ICS T0857
(System Firmware); NIST SP 800-193 (Platform Firmware Resiliency: detect, protect, recover).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.core.text import redact
from fleetwarden.detection.analytics.auth import lru_get, noisy_or
from fleetwarden.detection.analytics.netcommon import sorted_by_time

__all__ = ["ANALYTICS", "FirmwareIntegrity", "version_key"]

_PARTS = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sortable key: numeric parts compare as numbers, letters sort before numbers (1.0rc < 1.0.1)."""
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in _PARTS.findall(version or ""))


@dataclass
class _FirmwareState:
    version: str | None = None
    sha256: str = ""
    ts: float = 0.0
    flagged: OrderedDict[tuple[str, str, str], None] = field(default_factory=OrderedDict)


class FirmwareIntegrity:
    """Firmware reports vs catalogue and per-device baseline -> firmware-tamper findings."""

    name = "firmware.integrity"
    kinds = ("firmware_report",)

    def __init__(self, max_devices: int = 1_000_000, max_rollouts: int = 10_000) -> None:
        self.max_devices = max_devices
        self.max_rollouts = max_rollouts
        self.devices_: OrderedDict[str, _FirmwareState] = OrderedDict()
        self.rollouts_: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self._index_key: tuple[int, int] | None = None
        self._index: dict[tuple[str, str], dict[str, set[str]]] = {}
        # device -> its latest report ("version\x1fhash\x1fsignature"): a repeat changes nothing
        self._last_report: OrderedDict[str, str] = OrderedDict()

    # -- catalogue ---------------------------------------------------------------------
    def _catalogue(self, ctx: Context, info: DeviceInfo | None) -> dict[str, set[str]] | None:
        key = (id(ctx.firmware_catalog), len(ctx.firmware_catalog))
        if key != self._index_key:  # rebuilt only when the context's catalogue changes
            index: dict[tuple[str, str], dict[str, set[str]]] = {}
            for (vendor, model, version), hashes in ctx.firmware_catalog.items():
                per = index.setdefault((str(vendor).lower(), str(model).lower()), {})
                per.setdefault(str(version), set()).update(h.lower() for h in hashes)
            self._index, self._index_key = index, key
        if info is None:
            return None
        merged: dict[str, set[str]] = {}
        if info.vendor and info.model:
            for v, hs in self._index.get((info.vendor.lower(), info.model.lower()), {}).items():
                merged[v] = set(hs)
        own = info.extra.get("firmware_catalog")
        if isinstance(own, dict):
            for v, hs in own.items():
                merged.setdefault(str(v), set()).update(str(h).lower() for h in hs)
        return merged or None

    # -- streaming -------------------------------------------------------------------
    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Judge the reports one by one in time order.  Reports repeat (one per device per
        check-in); a report identical to the device's previous one (same version, hash and
        signature) cannot change anything, so only the first of each run is judged, whatever
        the batches."""
        if len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        dev = batch.np("device_id")
        version = batch.np("version")
        sha = np.char.lower(batch.np("image_sha256").astype(str))
        sig = np.char.lower(batch.np("signature").astype(str))
        ts = batch.np("ts")
        t = pa.table({"d": dev, "v": version, "h": sha, "s": sig, "i": np.arange(len(ts))})
        rows = t.sort_by([("d", "ascending"), ("i", "ascending")])
        d = np.asarray(rows.column("d").to_numpy(zero_copy_only=False), dtype=object)
        ident = pc.binary_join_element_wise(rows.column("v"), rows.column("h"), rows.column("s"), "\x1f")
        ident = np.asarray(ident.to_numpy(zero_copy_only=False), dtype=object)
        idx = rows.column("i").to_numpy()
        new_dev = np.r_[True, d[1:] != d[:-1]]
        changed = new_dev | np.r_[True, ident[1:] != ident[:-1]]
        # the first report of a device in the batch repeats its previous one when the state says so
        for j in np.flatnonzero(new_dev).tolist():
            if self._last_report.get(d[j]) == ident[j]:
                changed[j] = False
        ends = np.r_[np.flatnonzero(new_dev)[1:], len(d)] - 1
        for j in ends.tolist():
            if d[j]:
                self._last_report[d[j]] = ident[j]
                self._last_report.move_to_end(d[j])
        while len(self._last_report) > self.max_devices:
            self._last_report.popitem(last=False)
        out: list[Finding] = []
        for i in np.sort(idx[changed]).tolist():
            f = self._judge(
                ctx, str(dev[i] or ""), str(version[i] or ""), str(sha[i]), str(sig[i]), float(ts[i])
            )
            if f is not None:
                out.append(f)
        return out

    def flush(self, ctx: Context) -> list[Finding]:
        return []  # every report is judged when it arrives

    def _judge(self, ctx: Context, dev: str, version: str, sha: str, sig: str, ts: float) -> Finding | None:
        if not dev:
            return None
        info = ctx.devices.get(dev)
        catalogue = self._catalogue(ctx, info)
        st = lru_get(self.devices_, dev, _FirmwareState, self.max_devices)
        catalogued = bool(catalogue and sha and sha in catalogue.get(version, ()))
        reasons: list[tuple[float, str]] = []
        mitre = ["T1542", "T1601"]
        short = redact(sha)[:12] if sha else "no hash"

        if sig == "invalid":
            reasons.append((0.85, f"image {short} of version {version} reports an invalid signature"))
        elif sig == "unsigned":
            w = 0.35 if catalogued else 0.6
            reasons.append((w, f"image {short} of version {version} is unsigned"))

        if catalogue is not None and sha:
            if version in catalogue and not catalogued:
                reasons.append(
                    (
                        0.9,
                        f"hash {short} does not match the {len(catalogue[version])} catalogued image(s) "
                        f"of version {version}",
                    )
                )
            elif version not in catalogue:
                other = [v for v, hs in catalogue.items() if sha in hs]
                if other:
                    reasons.append(
                        (0.85, f"image {short} is catalogued as version {other[0]} but reports {version}")
                    )
                else:
                    known = ", ".join(sorted(catalogue, key=version_key)[-4:])
                    reasons.append((0.6, f"version {version} is not in the catalogue (known: {known})"))

        baseline = st.version
        if baseline is None and info is not None and info.firmware:
            baseline = info.firmware
        hash_changed = st.version is not None and version == st.version and sha and st.sha256 != sha
        if hash_changed and st.sha256 and not catalogued:
            reasons.append(
                (
                    0.85,
                    f"image hash changed {redact(st.sha256)[:12]} -> {short} while the version stayed {version}",
                )
            )
        if baseline and version and version_key(version) < version_key(baseline):
            w = 0.45 if (catalogued and sig == "valid") else 0.7
            reasons.append((w, f"downgrade from {baseline} to {version}"))
            mitre.append("T1601.002")

        if not reasons:
            if st.version is not None and version != st.version and info is not None:
                rk = (info.vendor or "", info.model or "", version)
                n = self.rollouts_.get(rk, 0) + 1
                self.rollouts_[rk] = n
                self.rollouts_.move_to_end(rk)
                if len(self.rollouts_) > self.max_rollouts:
                    self.rollouts_.popitem(last=False)
            st.version, st.sha256, st.ts = version, sha, ts
            return None

        fkey = (version, sha, sig)
        if fkey in st.flagged:  # already reported this image on this device
            return None
        st.flagged[fkey] = None
        if len(st.flagged) > 8:
            st.flagged.popitem(last=False)
        if info is not None and (info.device_class or "").lower() in {"plc", "controller", "rtu"}:
            mitre.append("T0857")
        evidence = [s for _, s in sorted(reasons, key=lambda r: -r[0])]
        evidence.append(f"last good report: {st.version or 'none'}")
        return Finding(
            entity=dev,
            category="firmware-tamper",
            detector=self.name,
            score=noisy_or(w for w, _ in reasons),
            first_seen=ts,
            last_seen=ts,
            evidence=evidence,
            mitre=mitre,
            ip=info.ip if info else None,
            mac=info.mac if info else None,
            device_id=dev,
            attributes={"version": version, "image_sha256": sha, "signature": sig},
        )


ANALYTICS = [FirmwareIntegrity]
