"""The onboarding service: expected shipments, enrolment nonces, and attested enrolment.

Composes :mod:`fleetwarden.control.onboarding` (parsing and the verdict: pure),
:mod:`fleetwarden.store.onboarding` (the tables, one transaction per enrolment) and the CA
(:mod:`fleetwarden.control.ca`, certificates recorded through :mod:`fleetwarden.store.identity`).

One enrolment, step by step, each step audited:

1. *verify* -- in ONE write transaction: read the facts (the vendor's active attestation keys,
   the nonce, consumed now whatever the outcome, the shipment, the signed firmware hashes, who
   already holds the serial or the key), decide (:func:`~fleetwarden.control.onboarding.verify_request`),
   record the enrolment (``onboarding.accept`` / ``onboarding.refuse``); an accepted device enters
   the inventory as ``provisioned``;
2. *refused*: a finding (category per reason: ``cloned-device``, ``credential-misuse``,
   ``policy-violation``, ``firmware-tamper``) is recorded and joined to the device's open
   incident story, so it reaches ``incidents list``;
3. *accepted*: the CA issues the certificate for the request's key (``ca.issue``), then the
   device is activated with its class baseline (``device.lifecycle`` provisioned -> active, the
   baseline and certificate serial in its details).

:func:`enrol_batch` does the same for many requests (a factory batch, the simulated fleet) with
one transaction per step instead of per request.

If issuing fails (no CA, wrong passphrase) after step 1, the device stays ``provisioned``
without a certificate and the error is raised: visible, never active without identity.  The CA
is loaded *before* step 1 by the callers here, so a missing passphrase costs no nonce.

Baselines are data: ``fleetwarden/control/baselines.toml`` in the package, replaced by
``FLEETWARDEN_HOME/baselines.toml`` when that file exists (same format, see the packaged file).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from fleetwarden.app.audit import advance_anchor
from fleetwarden.app.identity import certificate_record, load_authority
from fleetwarden.config import home
from fleetwarden.control import ca as x509ca
from fleetwarden.control import onboarding as ob
from fleetwarden.core.context import Context
from fleetwarden.core.findings import Finding
from fleetwarden.store import Store
from fleetwarden.store import identity as ids
from fleetwarden.store import onboarding as repo

__all__ = [
    "EnrolmentResult",
    "enrol",
    "enrol_batch",
    "enrol_file",
    "import_shipments",
    "issue_nonce",
    "issue_nonces",
    "list_enrolments",
    "load_baselines",
]

DETECTOR = "onboarding"
SOURCE = "onboarding"
MAX_FILE_BYTES = ob.MAX_REQUEST_BYTES
# how sure a refusal is of an attack, per category; and the ATT&CK techniques it points to
_SCORE = {"cloned-device": 0.9, "credential-misuse": 0.8, "firmware-tamper": 0.85, "policy-violation": 0.6}
_MITRE = {
    "cloned-device": ["T1078", "T1036"],
    "credential-misuse": ["T1078", "T1606"],
    "firmware-tamper": ["T1542", "T1601"],
    "policy-violation": ["T1200"],
}


@dataclass
class EnrolmentResult:
    """What one provisioning request came to."""

    accepted: bool
    device_id: str
    serial: str
    vendor: str
    reason: str | None
    sentence: str
    reasons: list[str]
    enrolment_id: int
    certificate_serial: str | None = None
    certificate_pem: bytes | None = None
    certificate_path: Path | None = None
    baseline: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "device_id": self.device_id,
            "serial": self.serial,
            "vendor": self.vendor,
            "reason": self.reason,
            "sentence": self.sentence,
            "reasons": self.reasons,
            "enrolment_id": self.enrolment_id,
            "certificate_serial": self.certificate_serial,
            "certificate_path": str(self.certificate_path) if self.certificate_path else None,
            "baseline": self.baseline,
        }


# ---------------------------------------------------------------------------- shipments, nonces


def import_shipments(store: Store, path: str | Path, *, actor: str = "cli") -> tuple[int, int, int]:
    """Import expected devices from a JSON list or CSV (``serial,vendor,model,site[,country,device_id,
    device_class]``); the whole file is checked first.  Returns (read, added, updated)."""
    path = Path(path)
    rows = ob.parse_shipments(path.read_bytes(), name=str(path))
    added, updated = repo.import_shipments(store, [s.to_dict() for s in rows], actor=actor)
    advance_anchor(store)
    return len(rows), added, updated


def issue_nonce(
    store: Store,
    *,
    now: float | None = None,
    ttl: float = ob.NONCE_TTL_S,
    actor: str = "cli",
    anchor: bool = True,
) -> str:
    """A fresh enrolment nonce, recorded (as its SHA-256) and audited; valid ``ttl`` seconds, once.
    ``anchor``: move the audit anchor file forward afterwards (:func:`fleetwarden.app.audit.advance_anchor`)."""
    if not 1 <= ttl <= 7 * 86400:
        raise ob.RequestError(f"nonce lifetime must be 1 s to 7 days, got {ttl:g} s")
    nonce = ob.new_nonce()
    repo.issue_nonce(
        store, repo.nonce_digest(nonce), now=time.time() if now is None else now, ttl=ttl, actor=actor
    )
    if anchor:
        advance_anchor(store)
    return nonce


def issue_nonces(
    store: Store, issued_at: Sequence[float], *, ttl: float = ob.NONCE_TTL_S, actor: str = "cli"
) -> list[str]:
    """One fresh nonce per time in ``issued_at``, recorded in one transaction (a factory batch)."""
    nonces = [ob.new_nonce() for _ in issued_at]
    if nonces:
        repo.issue_nonces(
            store,
            [(repo.nonce_digest(n), t) for n, t in zip(nonces, issued_at, strict=True)],
            ttl=ttl,
            actor=actor,
        )
    return nonces


def list_enrolments(store: Store, *, limit: int | None = None) -> list[dict[str, Any]]:
    return [e.to_dict() for e in repo.list_enrolments(store, limit=limit)]


def list_shipments(store: Store) -> list[dict[str, Any]]:
    return [e.to_dict() for e in repo.list_shipments(store)]


# ---------------------------------------------------------------------------- baselines


def load_baselines() -> dict[str, ob.Baseline]:
    """The class baselines: ``FLEETWARDEN_HOME/baselines.toml`` when present, else the packaged file."""
    override = home() / "baselines.toml"
    if override.is_file():
        name, text = str(override), override.read_text(encoding="utf-8")
    else:
        name = "fleetwarden/control/baselines.toml"
        text = resources.files("fleetwarden.control").joinpath("baselines.toml").read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ob.RequestError(f"{name}: not valid TOML ({exc})") from None
    return ob.parse_baselines(doc, name=name)


# ---------------------------------------------------------------------------- enrolment


def enrol_file(
    store: Store,
    path: str | Path,
    *,
    out_dir: str | Path | None = None,
    passphrase_file: Path | None = None,
    actor: str = "cli",
    days: int = 365,
) -> EnrolmentResult:
    """``onboard request FILE``: parse, load the CA (before any nonce is spent), enrol, and on
    success write ``out_dir/DEVICE_ID.crt``."""
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ob.RequestError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; not a provisioning request")
    request = ob.parse_request(path.read_bytes(), name=str(path))
    authority = load_authority(passphrase_file)
    result = enrol(store, request, authority=authority, actor=actor, days=days)
    if result.accepted and out_dir is not None and result.certificate_pem:
        result.certificate_path = _write_certificate(Path(out_dir), result.device_id, result.certificate_pem)
    advance_anchor(store)
    return result


def _write_certificate(folder: Path, device_id: str, pem: bytes) -> Path:
    if folder.exists() and not folder.is_dir():
        raise ob.RequestError(f"{folder}: not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{x509ca.validate_device_id(device_id)}.crt"
    target.write_bytes(pem)
    return target


def enrol(
    store: Store,
    request: ob.ProvisioningRequest | bytes | str | Mapping[str, Any],
    *,
    authority: x509ca.CertificateAuthority,
    now: float | None = None,
    baselines: Mapping[str, ob.Baseline] | None = None,
    ctx: Context | None = None,
    actor: str = "onboarding",
    days: int = 365,
) -> EnrolmentResult:
    """Verify one provisioning request and act on the verdict (module docstring).  ``now`` (epoch
    seconds) is the request's arrival time: the clock for nonce freshness and the record."""
    req = request if isinstance(request, ob.ProvisioningRequest) else ob.parse_request(request)
    (result,) = enrol_batch(
        store,
        [(req, time.time() if now is None else float(now))],
        authority=authority,
        baselines=baselines,
        ctx=ctx,
        actor=actor,
        days=days,
    )
    return result


def enrol_batch(
    store: Store,
    requests: Sequence[tuple[ob.ProvisioningRequest, float]],
    *,
    authority: x509ca.CertificateAuthority,
    baselines: Mapping[str, ob.Baseline] | None = None,
    ctx: Context | None = None,
    actor: str = "onboarding",
    days: int = 365,
) -> list[EnrolmentResult]:
    """:func:`enrol` for many ``(request, arrival time)`` at once (a factory batch, the simulated
    fleet), in arrival order: all verdicts in one transaction (a request sees the ones before it:
    a clone later in the batch is still caught), the refusals' findings in one, each certificate
    recorded, all activations in one."""
    if not requests:
        return []
    decided = _verify_and_record(store, requests, actor)
    results = [
        _result(req, verdict, enrolment_id)
        for (req, _), (verdict, enrolment_id, _) in zip(requests, decided, strict=True)
    ]
    refused = [
        (res, req, verdict, now)
        for res, (req, now), (verdict, _, _) in zip(results, requests, decided, strict=True)
        if not res.accepted
    ]
    for res, req, verdict, now in refused:
        res.findings = [_refusal_finding(req, verdict, res.enrolment_id, now)]
    if refused:
        _record_findings(store, [f for res, *_ in refused for f in res.findings], ctx)
    accepted = [
        (res, req, shipment, now)
        for res, (req, now), (_, _, shipment) in zip(results, requests, decided, strict=True)
        if res.accepted
    ]
    if accepted:
        _issue_and_activate(store, accepted, authority, baselines, actor, days)
    return results


def _result(req: ob.ProvisioningRequest, verdict: ob.Verdict, enrolment_id: int) -> EnrolmentResult:
    return EnrolmentResult(
        accepted=verdict.accepted,
        device_id=verdict.device_id,
        serial=req.serial,
        vendor=req.vendor,
        reason=verdict.reason,
        sentence=verdict.sentence,
        reasons=[r.code for r in verdict.refusals],
        enrolment_id=enrolment_id,
    )


def _verify_and_record(
    store: Store, requests: Sequence[tuple[ob.ProvisioningRequest, float]], actor: str
) -> list[tuple[ob.Verdict, int, ob.Shipment | None]]:
    with repo.enrolment(store, actor=actor) as tx:
        return [_decide(tx, req, now) for req, now in requests]


def _decide(
    tx: repo.EnrolmentTx, req: ob.ProvisioningRequest, now: float
) -> tuple[ob.Verdict, int, ob.Shipment | None]:
    raw = tx.facts(
        vendor=req.vendor,
        serial=req.serial,
        model=req.model,
        key_sha256=req.public_key_sha256,
        nonce=req.nonce,
        now=now,
    )
    shipment = ob.Shipment(**raw.shipment) if raw.shipment else None
    facts = ob.OnboardingFacts(
        attestation_keys=raw.attestation_keys,
        nonce=ob.NonceState(*raw.nonce) if raw.nonce else None,
        shipment=shipment,
        approved_firmware=raw.approved_firmware,
        serial_owner=raw.serial_owner,
        key_owner=raw.key_owner,
    )
    verdict = ob.verify_request(req, facts, now)
    row = tx.record(_enrolment_row(req, verdict, now), _device_row(req, verdict, shipment, now))
    return verdict, int(row.id), shipment


def _enrolment_row(req: ob.ProvisioningRequest, verdict: ob.Verdict, now: float) -> dict[str, Any]:
    return {
        "ts": now,
        "serial": req.serial,
        "vendor": req.vendor,
        "model": req.model,
        "device_id": verdict.device_id,
        "result": "accepted" if verdict.accepted else "refused",
        "reason": verdict.reason,
        "sentence": verdict.sentence[:1000],
        "reasons": [r.code for r in verdict.refusals],
        "site": req.site,
        "country": req.country,
        "source": req.source_ip,
        "public_key_sha256": req.public_key_sha256,
        "firmware_sha256": req.firmware_sha256,
    }


def _device_row(
    req: ob.ProvisioningRequest, verdict: ob.Verdict, shipment: ob.Shipment | None, now: float
) -> dict[str, Any] | None:
    if not verdict.accepted:
        return None
    return {
        "device_id": verdict.device_id,
        "serial": req.serial,
        "vendor": req.vendor,
        "model": req.model,
        "device_class": shipment.device_class if shipment else None,
        "site": req.site,
        "attributes": {
            "country": req.country or (shipment.country if shipment else None),
            "public_key_sha256": req.public_key_sha256,
            "firmware_sha256": req.firmware_sha256,
            "enrolled_at": now,
            "enrolled_from": req.source_ip,
        },
    }


def _issue_and_activate(
    store: Store,
    accepted: Sequence[tuple[EnrolmentResult, ob.ProvisioningRequest, ob.Shipment | None, float]],
    authority: x509ca.CertificateAuthority,
    baselines: Mapping[str, ob.Baseline] | None,
    actor: str,
    days: int,
) -> None:
    baselines = baselines if baselines is not None else load_baselines()
    activations = []
    for result, req, shipment, now in accepted:
        cert = _certificate(authority, result.device_id, req, now, days)
        recorded = ids.record_certificate(store, certificate_record(result.device_id, cert, now), actor=actor)
        baseline = ob.baseline_for(baselines, shipment.device_class if shipment else None)
        result.baseline = baseline.to_dict() if baseline else None
        result.certificate_serial = recorded.row.serial
        result.certificate_pem = x509ca.certificate_pem(cert)
        activations.append(repo.Activation(result.enrolment_id, result.certificate_serial, result.baseline))
    repo.activate_devices(store, activations, actor=actor)


def _certificate(
    authority: x509ca.CertificateAuthority, device_id: str, req: ob.ProvisioningRequest, now: float, days: int
) -> Any:
    when = datetime.fromtimestamp(now, UTC)
    if req.csr_pem:
        return x509ca.issue_from_csr(authority, device_id, req.csr_pem.encode(), now=when, days=days)
    key = serialization.load_pem_public_key(req.public_key_pem.encode())
    return x509ca.issue_certificate(authority, device_id, key, now=when, days=days)


# ---------------------------------------------------------------------------- refusals as findings


def _refusal_finding(
    req: ob.ProvisioningRequest, verdict: ob.Verdict, enrolment_id: int, now: float
) -> Finding:
    category = verdict.category or "policy-violation"
    where = f"from {req.source_ip}" if req.source_ip else "from an unreported address"
    evidence = [f"enrolment refused ({verdict.reason}): {verdict.sentence}"]
    evidence += [f"also {r.code}: {r.sentence}" for r in verdict.refusals[1:]]
    evidence.append(f"request for serial {req.serial} ({req.vendor} {req.model}) at site {req.site} {where}")
    return Finding(
        entity=verdict.device_id,
        category=category,
        detector=DETECTOR,
        score=_SCORE.get(category, 0.6),
        first_seen=now,
        last_seen=now,
        evidence=evidence,
        mitre=list(_MITRE.get(category, [])),
        ip=req.source_ip,
        device_id=verdict.device_id,
        record_ids=[f"enrolment:{enrolment_id}"],
        attributes={
            "reason": verdict.reason,
            "reasons": [r.code for r in verdict.refusals],
            "serial": req.serial,
        },
    )


def _record_findings(store: Store, findings: Sequence[Finding], ctx: Context | None) -> None:
    from fleetwarden.app.session import join_stories

    incidents = join_stories(store, findings, ctx if ctx is not None else Context())
    store.record_results(SOURCE, findings, incidents, actor=DETECTOR, replace_stories=True)
