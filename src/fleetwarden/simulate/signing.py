"""The simulated vendors' firmware signing keys: each vendor signs its catalogue images.

Every simulated vendor has an Ed25519 key derived from its name (the same in every run and
seed), and signs :func:`fleetwarden.core.manifest.firmware_manifest` of each image, as a real
vendor's release process would.  ``simulate --out`` writes the signed ``firmware_catalog.json`` and
the vendors' PUBLIC keys beside it (``vendor_keys/<vendor>.pem``), so the registry can be loaded
the way an operator would: ``vendor key add`` each key, then ``firmware import`` the catalogue.

These are simulation keys: anyone who reads this module can derive them, so they must never be
trusted outside a simulation.  Private keys are never written to disk.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetwarden.core.manifest import firmware_manifest

__all__ = ["key_file_name", "public_key_pem", "sign_catalog"]


def _private_key(vendor: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(f"fleetwarden-sim|{vendor}|firmware-signing-key".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_pem(vendor: str) -> bytes:
    """The vendor's public firmware key as PEM SubjectPublicKeyInfo."""
    return (
        _private_key(vendor)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def sign_catalog(catalog: Iterable[dict]) -> list[dict]:
    """Copies of the catalogue rows with ``signature`` (hex Ed25519 over the canonical manifest)."""
    keys: dict[str, Ed25519PrivateKey] = {}
    out = []
    for row in catalog:
        key = keys.setdefault(row["vendor"], _private_key(row["vendor"]))
        manifest = firmware_manifest(row["vendor"], row["model"], row["version"], row["image_sha256"])
        out.append({**row, "signature": key.sign(manifest).hex()})
    return out


def key_file_name(vendor: str) -> str:
    """A safe file name for a vendor's key (``TP-Link`` -> ``TP-Link.pem``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", vendor) + ".pem"
