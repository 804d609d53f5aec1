"""The device certificate authority: keys, certificates and revocation lists, pure X.509.

Every device of the fleet proves who it is with a client certificate issued by FleetWarden's own
CA (mutual TLS to the broker, the API, the update server).  This module is the cryptography only:
bytes and objects in, bytes and objects out; no file, no database, no clock (every function that
needs the time takes ``now``).  The services in :mod:`fleetwarden.app.identity` keep the key on
disk, the certificates in the store and the audit trail.

Contract
    * :func:`create_ca`: a self-signed CA (ECDSA P-256 by default, P-384 possible), BasicConstraints
      CA=true pathlen 0, KeyUsage keyCertSign + cRLSign, SubjectKeyIdentifier.  The CA key is
      serialised only encrypted (:func:`encrypted_key_pem`, PKCS#8 with the library's best
      available encryption: AES-256-CBC under a scrypt/PBKDF2 key) and :func:`load_ca` refuses a
      wrong passphrase, a key that does not match the certificate, or a certificate that is no CA.
    * :func:`issue_from_csr`: the CSR must be PEM, carry a valid self-signature (proof that the
      requester holds the private key; a tampered CSR is refused) and a strong key (RSA >= 2048,
      ECDSA P-256/P-384, Ed25519/Ed448; DSA, small RSA and other curves are refused).  Nothing else
      of the CSR is trusted: subject and requested extensions are ignored, the certificate says
      what :func:`issue_certificate` decides.  :func:`issue_with_key` generates the key instead
      (ECDSA P-256 by default, P-384 or Ed25519).
    * :func:`issue_certificate`: CN = device id, BasicConstraints CA=false, KeyUsage
      digitalSignature, ExtendedKeyUsage clientAuth, SKI/AKI, SubjectAltName with the URI
      ``urn:fleetwarden:device:<id>`` (and the id as DNS name when it is a valid host name), a
      random 159-bit serial (RFC 5280 §4.1.2.2 allows 20 octets; CA/B Forum wants >= 64 random
      bits), validity from ``now`` minus :data:`BACKDATE` (clock skew of small devices) for
      ``days`` days.
    * :func:`build_crl`: a v2 CRL signed by the CA with lastUpdate/nextUpdate, CRL number, AKI, and
      per entry the revocation date and reason (no reason extension for ``unspecified``, as RFC
      5280 §5.3.1 asks).
    * :func:`verify_device_certificate`: signature by this CA, validity at ``now``, not revoked;
      returns ``None`` or the reason it fails.

Blind spots
    The CA key is as safe as its passphrase and its file; there is no HSM or PKCS#11 path, no
    OCSP responder, no name constraints, and a CRL is only as fresh as the last ``ca crl``.
    The device id is limited to :data:`DEVICE_ID_RE` (it names files and goes into a URN and a
    64-character CN).

References: RFC 5280 (profile, CRL), RFC 8410 (Ed25519 in X.509), NIST SP 800-57 Part 1 Rev. 5
§5.6 (112-bit security minimum: RSA 2048, P-256), CA/Browser Forum Baseline Requirements §7.1
(serial entropy).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetwarden.core.errors import InputError

__all__ = [
    "BACKDATE",
    "CA_KEY_TYPES",
    "DEVICE_ID_RE",
    "DEVICE_KEY_TYPES",
    "REVOCATION_REASONS",
    "CAError",
    "CertificateAuthority",
    "Revocation",
    "build_crl",
    "certificate_pem",
    "create_ca",
    "crl_pem",
    "describe_key",
    "device_urn",
    "encrypted_key_pem",
    "fingerprint",
    "generate_key",
    "issue_certificate",
    "issue_from_csr",
    "issue_with_key",
    "load_ca",
    "load_certificate",
    "load_csr",
    "private_key_pem",
    "serial_hex",
    "validate_device_id",
    "verify_device_certificate",
]

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = (
    ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | rsa.RSAPublicKey
    | dsa.DSAPublicKey
)

CA_KEY_TYPES = ("ecdsa-p256", "ecdsa-p384")
DEVICE_KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "ed25519")
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1}
_ALLOWED_CURVES = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # beyond this a CSR is a denial of service, not a key
MAX_PEM_BYTES = 64 * 1024
MAX_DAYS = 3650 * 3
BACKDATE = timedelta(minutes=5)
# 1-64 characters: a file name, a URN's specific string and an RFC 5280 CN (ub-common-name 64)
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
URN_PREFIX = "urn:fleetwarden:device:"

# CLI spelling -> X.509 reason; "unspecified" is written without a reason extension
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "certificate-hold": x509.ReasonFlags.certificate_hold,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


class CAError(InputError):
    """Bad input to the CA: a forged or weak CSR, a wrong passphrase, an invalid device id."""


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA's certificate and (decrypted, in memory only) private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return _hash_for(self.key)


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()


@dataclass(frozen=True)
class Revocation:
    """One CRL entry: the certificate's serial, when and why it was revoked."""

    serial: int
    revoked_at: datetime
    reason: str = "unspecified"


# ---------------------------------------------------------------------- input checks


def validate_device_id(device_id: str) -> str:
    """``device_id`` when it may name a certificate (see :data:`DEVICE_ID_RE`), else :class:`CAError`."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        shown = repr(device_id[:80]) if isinstance(device_id, str) else type(device_id).__name__
        raise CAError(
            f"invalid device id {shown}: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


def _check_days(days: int) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise CAError(f"validity must be 1 to {MAX_DAYS} days, got {days!r}")
    return days


def _check_now(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now


def _pem_bytes(data: bytes, what: str, marker: bytes) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise CAError(f"{what}: expected bytes")
    if len(data) > MAX_PEM_BYTES:
        raise CAError(f"{what}: larger than {MAX_PEM_BYTES // 1024} KiB")
    if b"-----BEGIN " + marker not in data:
        raise CAError(f"{what}: not a PEM {marker.decode().rstrip('-').strip().lower()}")
    return bytes(data)


def _check_strength(key: object, what: str) -> tuple[str, int]:
    """``(key type, bits)`` of an acceptable public key, else :class:`CAError` naming the weakness."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CAError(f"{what}: RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})")
        if key.key_size > MAX_RSA_BITS:
            raise CAError(f"{what}: RSA key of {key.key_size} bits is larger than {MAX_RSA_BITS}")
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        name = _ALLOWED_CURVES.get(key.curve.name)
        if name is None:
            raise CAError(f"{what}: curve {key.curve.name} is not accepted (P-256 or P-384)")
        return name, key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        raise CAError(f"{what}: DSA keys are not accepted (use ECDSA P-256, Ed25519 or RSA >= 2048)")
    raise CAError(f"{what}: unsupported key type {type(key).__name__}")


def describe_key(key: object) -> tuple[str, int]:
    """``(type, bits)`` of a public or private key: ``("ecdsa-p256", 256)``, ``("ed25519", 256)``,
    ``("rsa", 2048)``.  Weak keys raise :class:`CAError`."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return _check_strength(public, "key")


# ---------------------------------------------------------------------- keys


def generate_key(key_type: str = "ecdsa-p256") -> PrivateKey:
    """A new private key of ``key_type`` (:data:`DEVICE_KEY_TYPES`)."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = _CURVES.get(key_type)
    if curve is None:
        raise CAError(f"unknown key type {key_type!r}: one of {', '.join(DEVICE_KEY_TYPES)}")
    return ec.generate_private_key(curve())


def private_key_pem(key: PrivateKey) -> bytes:
    """A device key as unencrypted PKCS#8 PEM (for the device; never stored by FleetWarden)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def encrypted_key_pem(key: PrivateKey, passphrase: bytes) -> bytes:
    """``key`` as PKCS#8 PEM encrypted under ``passphrase`` (``BEGIN ENCRYPTED PRIVATE KEY``)."""
    if not passphrase:
        raise CAError("an empty passphrase cannot protect the CA key")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(bytes(passphrase)),
    )


# ---------------------------------------------------------------------- the CA


def create_ca(
    *, now: datetime, name: str = "FleetWarden device CA", days: int = 3650, key_type: str = "ecdsa-p256"
) -> CertificateAuthority:
    """A new self-signed CA valid ``days`` days from ``now`` (minus :data:`BACKDATE`)."""
    if key_type not in CA_KEY_TYPES:
        raise CAError(f"CA key type must be one of {', '.join(CA_KEY_TYPES)}, got {key_type!r}")
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise CAError("CA name: 1-64 printable characters")
    _check_days(days)
    key = ec.generate_private_key(_CURVES[key_type]())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FleetWarden"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    start = _check_now(now) - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return CertificateAuthority(builder.sign(key, _hash_for(key)), key)


def load_ca(cert_pem: bytes, key_pem: bytes, passphrase: bytes) -> CertificateAuthority:
    """The CA from its certificate and encrypted key; :class:`CAError` on a wrong passphrase, an
    unencrypted or mismatched key, or a certificate that is not a CA."""
    cert = load_certificate(cert_pem, "CA certificate")
    key_pem = _pem_bytes(key_pem, "CA key", b"")
    if b"ENCRYPTED" not in key_pem:
        raise CAError("the CA key file is not encrypted; refusing to use it")
    try:
        key = serialization.load_pem_private_key(key_pem, password=bytes(passphrase))
    except (ValueError, TypeError):
        raise CAError("cannot decrypt the CA key: wrong passphrase (or a damaged key file)") from None
    except UnsupportedAlgorithm:
        raise CAError("the CA key file uses an unsupported encryption") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError("the CA key is not an ECDSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CAError("the CA key does not belong to the CA certificate")
    _require_ca(cert)
    return CertificateAuthority(cert, key)


def _require_ca(cert: x509.Certificate) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError("the CA certificate is not a CA certificate (BasicConstraints CA=false)")


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# ---------------------------------------------------------------------- device certificates


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """A PEM CSR whose self-signature verifies and whose key is strong, else :class:`CAError`."""
    data = _pem_bytes(pem, "CSR", b"CERTIFICATE REQUEST")
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CAError(
            f"CSR: cannot parse it ({str(exc).splitlines()[0][:120] if str(exc) else 'malformed'})"
        ) from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CAError("CSR: unsupported or malformed public key") from None
    _check_strength(key, "CSR")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise CAError("CSR: its signature does not verify (forged or tampered request)")
    return csr


def issue_from_csr(
    ca: CertificateAuthority, device_id: str, csr_pem: bytes, *, now: datetime, days: int = 365
) -> x509.Certificate:
    """A device certificate for the key of a verified CSR; the CSR's subject is ignored."""
    csr = load_csr(csr_pem)
    return issue_certificate(ca, device_id, csr.public_key(), now=now, days=days)


def issue_with_key(
    ca: CertificateAuthority, device_id: str, *, now: datetime, days: int = 365, key_type: str = "ecdsa-p256"
) -> tuple[x509.Certificate, PrivateKey]:
    """A new key of ``key_type`` and its device certificate."""
    validate_device_id(device_id)
    _check_days(days)
    key = generate_key(key_type)
    return issue_certificate(ca, device_id, key.public_key(), now=now, days=days), key


def issue_certificate(
    ca: CertificateAuthority, device_id: str, public_key: object, *, now: datetime, days: int = 365
) -> x509.Certificate:
    """The device certificate of ``public_key`` (see the module's contract for its profile)."""
    validate_device_id(device_id)
    _check_days(days)
    _check_strength(public_key, "device key")
    start = _check_now(now) - BACKDATE
    end = min(start + timedelta(days=days), ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(_authority_key_id(ca), critical=False)
        .add_extension(x509.SubjectAlternativeName(_device_names(device_id)), critical=False)
    )
    return builder.sign(ca.key, ca.hash_algorithm)


def device_urn(device_id: str) -> str:
    return URN_PREFIX + device_id


def _device_names(device_id: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(device_urn(device_id))]
    if _is_hostname(device_id):
        names.append(x509.DNSName(device_id.lower()))
    return names


def _is_hostname(name: str) -> bool:
    """RFC 1123 host name (letters, digits, hyphens per label), not an IPv4 address look-alike."""
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def _authority_key_id(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())


# ---------------------------------------------------------------------- revocation


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[Revocation],
    *,
    now: datetime,
    number: int,
    next_update_days: int = 7,
) -> x509.CertificateRevocationList:
    """A CRL listing ``revoked``, valid from ``now`` for ``next_update_days`` days, numbered ``number``
    (keep it increasing: RFC 5280 §5.2.3)."""
    if not isinstance(number, int) or not 0 <= number < 2**159:
        raise CAError(f"CRL number out of range: {number!r}")
    _check_days(next_update_days)
    now = _check_now(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(_revoked_entry(entry))
    return builder.sign(ca.key, ca.hash_algorithm)


def _revoked_entry(entry: Revocation) -> x509.RevokedCertificate:
    reason = REVOCATION_REASONS.get(entry.reason)
    if reason is None:
        raise CAError(f"unknown revocation reason {entry.reason!r}: one of {', '.join(REVOCATION_REASONS)}")
    builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
    if reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


# ---------------------------------------------------------------------- helpers


def load_certificate(pem: bytes, what: str = "certificate") -> x509.Certificate:
    data = _pem_bytes(pem, what, b"CERTIFICATE")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CAError(f"{what}: not a valid PEM certificate") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex (what ``openssl x509 -fingerprint -sha256``
    prints, without the colons)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def verify_device_certificate(
    ca_cert: x509.Certificate, cert: x509.Certificate, *, now: datetime, revoked: Collection[int] = ()
) -> str | None:
    """``None`` when ``cert`` was signed by ``ca_cert``, is valid at ``now`` and its serial is not in
    ``revoked``; otherwise the reason, one line."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by this CA"
    now = _check_now(now)
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"expired at {cert.not_valid_after_utc.isoformat()}"
    if cert.serial_number in revoked:
        return "revoked"
    return None
