"""The firmware registry's pure logic: vendor keys, signed images, patch compliance and priority.

Rows in, results out: nothing here opens a file or a database (the services in
:mod:`fleetwarden.app.firmware` do).

*Keys.*  A vendor key is a PEM ``SubjectPublicKeyInfo``: Ed25519 for firmware, Ed25519 or ECDSA
P-256 for device attestation.  Its fingerprint is the SHA-256 of the DER ``SubjectPublicKeyInfo``
(the same value ``openssl pkey -pubin -outform DER | sha256sum`` prints).  A PEM holding a private
key is refused without echoing any of it.

*Images.*  What is signed is :func:`fleetwarden.core.manifest.firmware_manifest` (canonical JSON of
vendor, model, version and SHA-256).  :func:`verify_image` accepts an image only when the Ed25519
signature verifies against an active (not revoked) firmware key of the image's own vendor; a key of
another vendor, a revoked key or a forged signature is refused with :class:`SignatureRefused`.

*Compliance.*  A device is covered when the registry has signed images of its vendor and model;
it is ``outdated`` when a newer signed version exists, ``vulnerable`` when its version carries
CVEs, ``unregistered`` when its version has no signed image, and compliant when none of these.

*Priority.*  :func:`patch_priority` ranks the non-compliant devices by risk with its reasons::

    score = 100 * severity * (0.35 + 0.65 * impact),  impact = 0.4 exposure + 0.3 data + 0.3 criticality

``severity`` is the version's highest CVSS / 10 (0.7 with CVEs but no score, 0.5 for an unregistered
image, 0.3 when merely outdated); ``exposure`` is 0.2 inside, +0.5 internet-reachable, +0.3 remote
administration (device attributes ``internet_reachable``/``remote_admin``, or a network role or zone
that implies them); ``data`` and ``criticality`` come from the data classification and the
``criticality`` attribute (else the device class).  The weights follow CVSS v3.1's split of base
severity and environmental impact (FIRST, CVSS v3.1 specification §7) and SSVC's exposure and
mission-impact decision points (CISA, SSVC guide 2022): a critical flaw on an internal sensor ranks
below the same flaw on an internet-facing infusion pump.

*Blind spots.*  Compliance trusts the version the inventory holds (what the devices last reported
or the operator registered); a device that lies about its version is the integrity analytic's job
(:mod:`fleetwarden.detection.analytics.firmware`).  CVE lists are as complete as the vendor's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetwarden.core.errors import InputError
from fleetwarden.core.manifest import firmware_manifest

__all__ = [
    "ALGORITHMS",
    "PURPOSES",
    "DeviceFirmware",
    "FirmwareInputError",
    "ImageEntry",
    "PublicKey",
    "SignatureRefused",
    "check_image",
    "compliance",
    "criticality_of",
    "device_firmware",
    "parse_public_key",
    "patch_priority",
    "signature_bytes",
    "verify_image",
    "version_key",
]

PURPOSES = ("firmware", "attestation")
ALGORITHMS = ("ed25519", "ecdsa-p256")
MAX_PEM_BYTES = 16 * 1024
MAX_CVES = 200
LIMITS = {"vendor": 200, "model": 200, "version": 100}
_CVE = re.compile(r"CVE-\d{4}-\d{4,7}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX_SIG = re.compile(r"[0-9a-fA-F]{128}")
_PARTS = re.compile(r"\d+|[A-Za-z]+")
# attribute values and network roles / zones that say a device is reachable from the internet
_INTERNET_ROLES = {
    "edge",
    "gateway",
    "dmz",
    "internet-facing",
    "public",
    "remote-access",
    "vpn",
    "cloud-connected",
}
_ADMIN_ROLES = {"remote-access", "management", "admin", "jump-host"}
_DATA_WEIGHT = {
    "public": 0.1,
    "internal": 0.3,
    "confidential": 0.7,
    "restricted": 1.0,
    "secret": 1.0,
    "phi": 1.0,
    "pci": 1.0,
    "pii": 0.8,
    "regulated": 1.0,
}
_CRIT_WEIGHT = {"low": 0.2, "medium": 0.5, "high": 0.8, "critical": 1.0}
# device classes whose failure hurts people or production most (when no criticality is set)
_CLASS_CRIT = {
    "infusion-pump": "critical",
    "plc": "high",
    "pos-terminal": "high",
    "badge-reader": "medium",
    "gateway": "medium",
    "ip-camera": "medium",
    "env-sensor": "low",
    "smart-plug": "low",
    "digital-signage": "low",
}


class FirmwareInputError(InputError, ValueError):
    """A key, image or catalogue row the registry refuses; the message names what was wrong."""


class SignatureRefused(FirmwareInputError):
    """An image whose signature does not verify against an active firmware key of its vendor."""


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sortable key: numeric parts compare as numbers, letters before numbers (1.0rc < 1.0.1).
    The same order as the integrity analytic's."""
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in _PARTS.findall(version or ""))


# ---------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class PublicKey:
    """A vendor's public key: algorithm, SHA-256 fingerprint of its DER SubjectPublicKeyInfo, PEM."""

    algorithm: str
    fingerprint: str
    pem: str


def parse_public_key(pem: bytes, purpose: str) -> PublicKey:
    """Read a PEM public key for ``purpose`` (firmware: Ed25519 only; attestation: Ed25519 or
    ECDSA P-256).  Raises :class:`FirmwareInputError` for anything else, never echoing the input."""
    if purpose not in PURPOSES:
        raise FirmwareInputError(f"unknown key purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    if len(pem) > MAX_PEM_BYTES:
        raise FirmwareInputError(f"key file larger than {MAX_PEM_BYTES // 1024} KiB; not a public key")
    if b"PRIVATE KEY" in pem:
        raise FirmwareInputError(
            "the file holds a PRIVATE key; give the vendor's public key (private keys are never stored)"
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, binascii.Error):
        raise FirmwareInputError("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)") from None
    algorithm = _algorithm_of(key)
    if purpose == "firmware" and algorithm != "ed25519":
        raise FirmwareInputError(f"firmware keys must be Ed25519; this one is {algorithm}")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    clean = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKey(algorithm, hashlib.sha256(der).hexdigest(), clean.decode("ascii"))


def _algorithm_of(key: Any) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    name = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
    raise FirmwareInputError(f"unsupported key type {name}; expected Ed25519 or ECDSA P-256")


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageEntry:
    """One firmware image as a vendor released it, checked and bounded."""

    vendor: str
    model: str
    version: str
    sha256: str
    signature: str  # lower-case hex of the 64 signature bytes
    cves: tuple[str, ...] = ()
    cvss_max: float | None = None
    release_date: float | None = None

    def manifest(self) -> bytes:
        return firmware_manifest(self.vendor, self.model, self.version, self.sha256)


def signature_bytes(text: str) -> bytes:
    """An Ed25519 signature given as 128 hex digits or base64 of its 64 bytes."""
    text = (text or "").strip()
    if _HEX_SIG.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) > 200:
        raise FirmwareInputError("signature longer than 200 characters; expected 64 bytes as hex or base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FirmwareInputError("signature is neither 128 hex digits nor base64") from None
    if len(raw) != 64:
        raise FirmwareInputError(f"signature is {len(raw)} bytes; an Ed25519 signature is 64")
    return raw


def check_image(row: Mapping[str, Any]) -> ImageEntry:
    """Validate a catalogue row (``sha256`` or ``image_sha256``; ``cves`` a list or a comma-separated
    string; ``released``/``release_date`` an ISO date or epoch seconds).  Raises
    :class:`FirmwareInputError` naming the field."""
    text = {k: _bounded(row, k) for k in LIMITS}
    sha = str(row.get("sha256") or row.get("image_sha256") or "").strip()
    if not _HEX64.fullmatch(sha):
        raise FirmwareInputError("sha256 must be 64 hex digits")
    sig = row.get("signature")
    if not sig:
        raise FirmwareInputError("signature missing: unsigned images are refused")
    return ImageEntry(
        **text,
        sha256=sha.lower(),
        signature=signature_bytes(str(sig)).hex(),
        cves=_cves(row.get("cves")),
        cvss_max=_cvss(row.get("cvss_max", row.get("cvss"))),
        release_date=_date(row.get("release_date", row.get("released"))),
    )


def _bounded(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None or not str(value).strip():
        raise FirmwareInputError(f"{name} missing")
    value = str(value).strip()
    if len(value) > LIMITS[name]:
        raise FirmwareInputError(f"{name} longer than {LIMITS[name]} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FirmwareInputError(f"{name} holds control characters")
    return value


def _cves(value: Any) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    items = [c for c in re.split(r"[,;\s]+", value) if c] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise FirmwareInputError("cves must be a list of CVE ids")
    if len(items) > MAX_CVES:
        raise FirmwareInputError(f"more than {MAX_CVES} CVEs on one image")
    out = []
    for item in items:
        cve = str(item).strip().upper()
        if not _CVE.fullmatch(cve):
            raise FirmwareInputError(f"not a CVE id: {str(item)[:40]!r} (expected CVE-YYYY-NNNN)")
        out.append(cve)
    return tuple(dict.fromkeys(out))


def _cvss(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise FirmwareInputError(f"cvss must be a number from 0 to 10, got {str(value)[:20]!r}") from None
    if not 0.0 <= score <= 10.0:
        raise FirmwareInputError(f"cvss must be from 0 to 10, got {score:g}")
    return score


def _date(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        parsed = datetime.fromisoformat(str(value).strip()[:40])
    except ValueError:
        raise FirmwareInputError(
            f"release date {str(value)[:40]!r} is not an ISO date (YYYY-MM-DD)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def verify_image(image: ImageEntry, keys: Iterable[tuple[str, str, str]]) -> str:
    """The fingerprint of the first active firmware key of ``image.vendor`` whose Ed25519 signature
    over the manifest verifies.  ``keys`` are ``(vendor, fingerprint, pem)`` of ACTIVE firmware keys
    (revoked ones are not passed).  Raises :class:`SignatureRefused` otherwise."""
    own = [(fp, pem) for vendor, fp, pem in keys if vendor == image.vendor]
    if not own:
        raise SignatureRefused(
            f"{image.vendor} {image.model} {image.version}: refused, no active firmware key of vendor {image.vendor!r}"
        )
    sig, manifest = bytes.fromhex(image.signature), image.manifest()
    for fp, pem in own:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
        try:
            key.verify(sig, manifest)  # type: ignore[union-attr, call-arg]
        except InvalidSignature:
            continue
        return fp
    raise SignatureRefused(
        f"{image.vendor} {image.model} {image.version}: refused, the signature does not verify against "
        f"any of the {len(own)} active firmware key(s) of {image.vendor!r}"
    )


# ---------------------------------------------------------------------------- compliance


@dataclass
class DeviceFirmware:
    """Where one device stands against the signed registry."""

    device_id: str
    status: str  # compliant | outdated | vulnerable | unregistered | uncovered | unknown-version
    version: str | None
    latest: str | None = None
    outdated: bool = False
    vulnerable: bool = False
    cves: list[str] = field(default_factory=list)
    cvss_max: float | None = None


def _index(images: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]]:
    index: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = {}
    for img in images:
        per = index.setdefault((str(img["vendor"]).lower(), str(img["model"]).lower()), {})
        per.setdefault(str(img["version"]), []).append(img)
    return index


def device_firmware(
    device: Mapping[str, Any], index: Mapping[tuple[str, str], Mapping[str, list]]
) -> DeviceFirmware:
    """Judge one inventory row (vendor, model, firmware_version) against an image index."""
    did, version = str(device["device_id"]), device.get("firmware_version") or None
    per = index.get((str(device.get("vendor") or "").lower(), str(device.get("model") or "").lower()))
    if not per:
        return DeviceFirmware(did, "uncovered", version)
    latest = max(per, key=version_key)
    if version is None:
        return DeviceFirmware(did, "unknown-version", None, latest)
    if version not in per:
        return DeviceFirmware(did, "unregistered", version, latest)
    imgs = per[version]
    cves = sorted({c for img in imgs for c in img.get("cves") or ()})
    scores = [float(img["cvss_max"]) for img in imgs if img.get("cvss_max") is not None]
    outdated = version_key(version) < version_key(latest)
    vulnerable = bool(cves)
    status = "vulnerable" if vulnerable else "outdated" if outdated else "compliant"
    return DeviceFirmware(did, status, version, latest, outdated, vulnerable, cves, max(scores, default=None))


def compliance(
    devices: Sequence[Mapping[str, Any]], images: Iterable[Mapping[str, Any]], by: str = "class"
) -> list[dict[str, Any]]:
    """Patch compliance per device class, site or vendor: devices, covered (the registry knows
    their model), compliant, outdated, vulnerable, unregistered and the compliant share of the
    covered ones (None when none is covered).  Sorted by the worst rate first."""
    column = {"class": "device_class", "site": "site", "vendor": "vendor"}.get(by)
    if column is None:
        raise FirmwareInputError(f"compliance by {by!r}? expected class, site or vendor")
    index = _index(images)
    groups: dict[str, dict[str, Any]] = {}
    for dev in devices:
        st = device_firmware(dev, index)
        g = groups.setdefault(
            str(dev.get(column) or "(none)"),
            {
                "group": str(dev.get(column) or "(none)"),
                "devices": 0,
                "covered": 0,
                "compliant": 0,
                "outdated": 0,
                "vulnerable": 0,
                "unregistered": 0,
            },
        )
        g["devices"] += 1
        g["covered"] += st.status != "uncovered"
        g["compliant"] += st.status == "compliant"
        g["outdated"] += st.outdated
        g["vulnerable"] += st.vulnerable
        g["unregistered"] += st.status in ("unregistered", "unknown-version")
    for g in groups.values():
        g["rate"] = round(g["compliant"] / g["covered"], 4) if g["covered"] else None
    return sorted(groups.values(), key=lambda g: (g["rate"] if g["rate"] is not None else 2.0, g["group"]))


def patch_priority(
    devices: Sequence[Mapping[str, Any]], images: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Non-compliant devices ranked by risk (see the module docstring), each with its reasons."""
    index = _index(images)
    ranked = []
    for dev in devices:
        st = device_firmware(dev, index)
        if st.status in ("compliant", "uncovered"):
            continue
        ranked.append(_priority_of(dev, st))
    return sorted(ranked, key=lambda r: (-r["score"], r["device_id"]))


def _priority_of(dev: Mapping[str, Any], st: DeviceFirmware) -> dict[str, Any]:
    severity, why = _severity(st)
    exposure, exp_why = _exposure(dev)
    data_class = str(dev.get("data_class") or "internal").lower()
    data = _DATA_WEIGHT.get(data_class, 0.3)
    crit_name = criticality_of(dev)
    crit = _CRIT_WEIGHT[crit_name]
    impact = 0.4 * exposure + 0.3 * data + 0.3 * crit
    score = round(100 * severity * (0.35 + 0.65 * impact), 1)
    reasons = [why, *exp_why, f"data classification {data_class}", f"criticality {crit_name}"]
    return {
        "device_id": st.device_id,
        "score": score,
        "status": st.status,
        "version": st.version,
        "target": st.latest,
        "cves": st.cves,
        "cvss_max": st.cvss_max,
        "reasons": reasons,
    }


def _severity(st: DeviceFirmware) -> tuple[float, str]:
    if st.vulnerable and st.cvss_max is not None:
        return st.cvss_max / 10.0, f"{len(st.cves)} CVE(s) on {st.version}, CVSS up to {st.cvss_max:g}"
    if st.vulnerable:
        return 0.7, f"{len(st.cves)} CVE(s) on {st.version} (no CVSS given)"
    if st.status in ("unregistered", "unknown-version"):
        return 0.5, f"version {st.version or 'unknown'} has no signed image in the registry"
    return 0.3, f"outdated: {st.version} < {st.latest}"


def _flag(dev: Mapping[str, Any], name: str) -> bool:
    value = (dev.get("attributes") or {}).get(name, dev.get(name))
    return value is True or str(value).lower() in ("true", "yes", "1")


def _exposure(dev: Mapping[str, Any]) -> tuple[float, list[str]]:
    role = {str(dev.get("network_role") or "").lower(), str(dev.get("zone") or "").lower()}
    score, why = 0.2, []
    if _flag(dev, "internet_reachable") or role & _INTERNET_ROLES:
        score += 0.5
        why.append("reachable from the internet")
    if _flag(dev, "remote_admin") or role & _ADMIN_ROLES:
        score += 0.3
        why.append("remote administration enabled")
    return min(score, 1.0), why or ["internal only"]


def criticality_of(dev: Mapping[str, Any]) -> str:
    """low / medium / high / critical: the device's own (column or attribute), else its class's."""
    given = str(dev.get("criticality") or (dev.get("attributes") or {}).get("criticality") or "").lower()
    if given in _CRIT_WEIGHT:
        return given
    return _CLASS_CRIT.get(str(dev.get("device_class") or "").lower(), "medium")
