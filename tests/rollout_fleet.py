"""The signed Acme X200 fleet the rollout tests share: a vendor key, 1.0.0 and 1.1.0 signed in the
registry (real Ed25519 signatures over the canonical manifest), and devices on 1.0.0."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fleetwarden.app import firmware as fw
from fleetwarden.core.manifest import firmware_manifest

OLD, NEW = (hashlib.sha256(f"x200-{v}".encode()).hexdigest() for v in ("1.0.0", "1.1.0"))


def signed_x200_fleet(
    store: Any, key_dir: Path, classes: list[str], *, with_ip: bool = True, extra: list[dict] | None = None
) -> None:
    """Sign and register X200 1.0.0 (``OLD``) and 1.1.0 (``NEW``), and register devices ``d0``,
    ``d1``, … of ``classes`` on 1.0.0 (``ip`` 10.0.0.1<i> with ``with_ip``), then ``extra`` rows."""
    priv = ed25519.Ed25519PrivateKey.generate()
    pem = key_dir / "acme.pem"
    pem.write_bytes(
        priv.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    fw.add_vendor_key(store, "Acme", "firmware", pem)
    for version, sha in (("1.0.0", OLD), ("1.1.0", NEW)):
        sig = priv.sign(firmware_manifest("Acme", "X200", version, sha)).hex()
        fw.add_image(store, {"vendor": "Acme", "model": "X200", "version": version, "sha256": sha, "signature": sig})
    rows = []
    for i, cls in enumerate(classes):
        row = {"device_id": f"d{i}", "vendor": "Acme", "model": "X200", "firmware_version": "1.0.0", "device_class": cls}
        if with_ip:
            row["ip"] = f"10.0.0.1{i}"
        rows.append(row)
    store.upsert_devices(rows + list(extra or ()))


def scan_flows(ip: str, start: float) -> list[dict[str, Any]]:
    """40 unanswered telnet probes from ``ip`` in 20 s (JSON-lines flow events): a scan finding of
    its device."""
    return [
        {
            "kind": "flow", "ts": start + i * 0.5, "uid": f"C{int(start)}{i}", "id.orig_h": ip, "id.orig_p": 40000 + i,
            "id.resp_h": f"10.0.9.{i + 1}", "id.resp_p": 23, "proto": "tcp", "conn_state": "S0", "orig_bytes": 0,
            "resp_bytes": 0, "orig_pkts": 1, "resp_pkts": 0,
        }  # fmt: skip
        for i in range(40)
    ]
