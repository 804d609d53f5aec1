"""The simulated fleet enrols through onboarding, as a real one would.

:func:`enrol_simulated_fleet` sets up what a real installation has before its first device arrives,
then turns every ``provision`` event of the simulator into a provisioning request and hands it to
:func:`fleetwarden.app.onboarding.enrol`:

1. each simulated vendor's firmware key and signed catalogue (:mod:`fleetwarden.simulate.signing`)
   enter the signed registry through :func:`fleetwarden.app.firmware.import_catalogue`; each
   vendor gets an attestation key (Ed25519, derived from the vendor's name so a second demo run on
   the same database finds the same keys), registered as ``vendor_keys`` purpose ``attestation``;
2. the fleet's inventory becomes the expected shipments (serial, vendor, model, site, country,
   device id, class);
3. every enrolment, in event time: a nonce issued five seconds before, the device's key (derived
   from the seed, the device and the key fingerprint the simulator gave it, so a clone has its
   own), the image it runs, the maker's signature when the simulator says the attestation is
   ``ok`` (none when ``missing``), the address it came from.  The CA is an in-memory one made for
   the run (its key is never written).

A device already enrolled with the same key (a second run on the same database) is skipped, so
the demo can be run again.  The cloned-device scenario's second enrolment is refused as a clone
(``duplicate-serial``) and becomes a ``cloned-device`` finding on the original's identity.

These keys are simulation keys: derivable by anyone who reads this module.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetwarden.app import onboarding as svc
from fleetwarden.app.firmware import import_catalogue
from fleetwarden.control import ca as x509ca
from fleetwarden.control import onboarding as ob
from fleetwarden.control.firmware import parse_public_key
from fleetwarden.core.findings import Finding
from fleetwarden.simulate.catalog import firmware_hash
from fleetwarden.simulate.signing import public_key_pem, sign_catalog
from fleetwarden.store import Store
from fleetwarden.store import firmware as keys_repo
from fleetwarden.store import onboarding as repo

__all__ = ["FleetEnrolment", "enrol_simulated_fleet"]

ACTOR = "demo"
DAYS = 5 * 365  # the simulated devices enrolled up to 500 days before the run


@dataclass
class FleetEnrolment:
    """What the fleet's enrolment came to."""

    accepted: int = 0
    skipped: int = 0  # already enrolled with the same key (an earlier run)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (device id, reason)
    findings: list[Finding] = field(default_factory=list)


def enrol_simulated_fleet(store: Store, fleet: Any) -> FleetEnrolment:
    """Register the vendors' keys and signed images, expect the fleet, enrol every ``provision``
    event through the onboarding service (module docstring)."""
    vendors = sorted({r["vendor"] for r in fleet.inventory})
    _register_firmware(store, fleet, vendors)
    attestation = {v: _attestation_key(store, v) for v in vendors}
    rows = [_shipment(r) for r in fleet.inventory]
    repo.import_shipments(store, rows, actor=ACTOR)
    authority = x509ca.create_ca(
        now=datetime.fromtimestamp(fleet.start - 600 * 86400, UTC), name="FleetWarden demo CA"
    )
    baselines = svc.load_baselines()
    done = repo.enrolled_keys(store)
    by_id = {r["device_id"]: r for r in fleet.inventory}
    out = FleetEnrolment()
    todo = []
    for event in _provision_events(fleet):
        key = _device_key(fleet.seed, event)
        if (event["vendor"], event["serial"], ob.key_fingerprint(key.public_key())) in done:
            out.skipped += 1
        elif event["device_id"] in by_id:
            todo.append((event, key))
    nonces = svc.issue_nonces(store, [float(e["ts"]) - 5.0 for e, _ in todo], actor=ACTOR)
    requests = [
        (_request(event, by_id[event["device_id"]], key, attestation, nonce), float(event["ts"]))
        for (event, key), nonce in zip(todo, nonces, strict=True)
    ]
    results = svc.enrol_batch(
        store, requests, authority=authority, baselines=baselines, actor=ACTOR, days=DAYS
    )
    for result in results:
        _count(out, result)
    return out


def _count(out: FleetEnrolment, result: svc.EnrolmentResult) -> None:
    if result.accepted:
        out.accepted += 1
    else:
        out.refused.append((result.device_id, str(result.reason)))
        out.findings += result.findings


# ---------------------------------------------------------------------------- keys and registry


def _register_firmware(store: Store, fleet: Any, vendors: list[str]) -> None:
    known = {k.fingerprint for k in keys_repo.list_vendor_keys(store, purpose="firmware")}
    for vendor in sorted({r["vendor"] for r in fleet.firmware_catalog} | set(vendors)):
        key = parse_public_key(public_key_pem(vendor), "firmware")
        if key.fingerprint not in known:
            keys_repo.add_vendor_key(
                store, vendor, "firmware", key.algorithm, key.pem, key.fingerprint, actor=ACTOR
            )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "firmware_catalog.json"
        path.write_text(json.dumps(sign_catalog(fleet.firmware_catalog)))
        import_catalogue(store, path, actor=ACTOR)


def _derived_key(*parts: object) -> Ed25519PrivateKey:
    seed = hashlib.sha256("|".join(["fleetwarden-sim", *map(str, parts)]).encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def _attestation_key(store: Store, vendor: str) -> Ed25519PrivateKey:
    private = _derived_key(vendor, "attestation-key")
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = parse_public_key(pem, "attestation")
    known = {k.fingerprint for k in keys_repo.list_vendor_keys(store, vendor=vendor, purpose="attestation")}
    if key.fingerprint not in known:
        keys_repo.add_vendor_key(
            store, vendor, "attestation", key.algorithm, key.pem, key.fingerprint, actor=ACTOR
        )
    return private


def _device_key(seed: int, event: Mapping[str, Any]) -> Ed25519PrivateKey:
    return _derived_key(seed, event["device_id"], event["pubkey_sha256"], "device-key")


# ---------------------------------------------------------------------------- requests


def _shipment(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "serial": row["serial"],
        "vendor": row["vendor"],
        "model": row["model"],
        "site": row["site"],
        "country": row.get("country"),
        "device_id": row["device_id"],
        "device_class": row.get("device_class"),
    }


def _provision_events(fleet: Any) -> list[dict[str, Any]]:
    batch = fleet.batches.get("provision")
    if batch is None or not len(batch):
        return []
    cols = ("ts", "serial", "vendor", "model", "pubkey_sha256", "attestation", "src_ip", "device_id")
    table = batch.table.select(list(cols)).sort_by("ts")
    return table.to_pylist()


def _request(
    event: Mapping[str, Any],
    device: Mapping[str, Any],
    key: Ed25519PrivateKey,
    attestation: Mapping[str, Ed25519PrivateKey],
    nonce: str,
) -> ob.ProvisioningRequest:
    signer = attestation.get(event["vendor"]) if event.get("attestation") == "ok" else None
    doc = ob.request_document(
        serial=event["serial"],
        vendor=event["vendor"],
        model=event["model"],
        public_key=key.public_key(),
        firmware_sha256=firmware_hash(device["vendor"], device["model"], device["firmware_version"]),
        site=device["site"],
        country=device.get("country"),
        source_ip=event.get("src_ip"),
        nonce=nonce,
        attestation_key=signer,
    )
    return ob.parse_request(doc, name=f"enrolment of {event['device_id']}")
