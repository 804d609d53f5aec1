"""What a vendor signs when it releases a firmware image: the canonical manifest.

One definition shared by the registry that verifies signatures
(:mod:`fleetwarden.control.firmware`) and the simulator that signs its catalogue
(:mod:`fleetwarden.simulate.signing`), so the two can never disagree about the bytes.

The manifest is the UTF-8 encoding of the canonical JSON (keys sorted, no whitespace,
non-ASCII kept as UTF-8) of::

    {"model": M, "sha256": H, "type": "fleetwarden-firmware-manifest/1", "vendor": V, "version": X}

with ``H`` the lower-case hex SHA-256 of the image and ``V``, ``M``, ``X`` exactly as registered
(case and spaces matter).  The ``type`` field separates this from anything else the same key may
sign.  The signature is Ed25519 (RFC 8032) over these bytes: 64 bytes, given as hex or base64.
"""

from __future__ import annotations

import json

__all__ = ["MANIFEST_TYPE", "firmware_manifest"]

MANIFEST_TYPE = "fleetwarden-firmware-manifest/1"


def firmware_manifest(vendor: str, model: str, version: str, sha256: str) -> bytes:
    """The bytes a vendor's firmware key signs for one image (see the module docstring)."""
    doc = {
        "model": model,
        "sha256": sha256.lower(),
        "type": MANIFEST_TYPE,
        "vendor": vendor,
        "version": version,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
