"""The device CA end to end: `fleetwarden ca ...` against the real `openssl verify -crl_check`, the
CSR checks (forged, weak), the encrypted CA key, file modes, and no secret in the database or audit.

Every test gets its own FLEETWARDEN_HOME and SQLite file under tmp_path.  openssl missing: the
openssl tests skip with the reason, and fail when CI=true.
"""

from __future__ import annotations

import base64
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.conftest import IN_CI
from typer.testing import CliRunner

from fleetwarden.cli import app
from fleetwarden.control import ca as x509ca
from fleetwarden.store import identity as ids
from fleetwarden.store import open_store

PASSPHRASE = "correct horse battery staple"
runner = CliRunner()


@pytest.fixture(scope="module")
def openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        reason = "openssl is not installed (Debian package openssl)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """A private FLEETWARDEN_HOME, the passphrase in the environment, and a SQLite file."""
    home = tmp_path / "home"
    monkeypatch.setenv("FLEETWARDEN_HOME", str(home))
    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("FLEETWARDEN_DB", raising=False)
    return {"home": home, "db": str(tmp_path / "fw.db"), "dir": tmp_path}


def fw(env: dict, *args: str, db: bool = True):
    """Run the CLI in process; ``--db`` points into tmp_path."""
    argv = [*args, "--db", env["db"]] if db else list(args)
    return runner.invoke(app, argv, catch_exceptions=False)


def ok(res) -> str:
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res.stdout


def exit_2(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def verify(openssl: str, ca: Path, cert: Path, crl: Path | None = None) -> subprocess.CompletedProcess:
    argv = [openssl, "verify", "-CAfile", str(ca)]
    if crl is not None:
        argv += ["-crl_check", "-CRLfile", str(crl)]
    return subprocess.run([*argv, str(cert)], capture_output=True, text=True, timeout=30)


@pytest.fixture
def ca_ready(env) -> dict:
    """An initialised CA and its exported certificate."""
    ok(fw(env, "ca", "init"))
    env["ca"] = env["dir"] / "ca.pem"
    ok(fw(env, "ca", "export", "--out", str(env["ca"]), db=False))
    env["out"] = env["dir"] / "out"
    return env


def _csr(openssl: str, folder: Path, name: str, *newkey: str) -> Path:
    """A CSR made by openssl itself, with a subject the CA must ignore."""
    csr = folder / f"{name}.csr"
    subprocess.run(
        [
            openssl,
            "req",
            "-new",
            *newkey,
            "-nodes",
            "-keyout",
            str(folder / f"{name}.key"),
            "-subj",
            "/CN=evil-subject/O=Someone Else",
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return csr


# ---------------------------------------------------------------------- the contract, as outside scripts run it


@pytest.mark.slow
def test_contract_end_to_end_in_a_real_process(tmp_path, openssl):
    """init, export, issue, crl: openssl accepts; revoke, crl: openssl refuses (subprocess, exit codes)."""
    import os

    base = [sys.executable, "-m", "fleetwarden"]
    environ = {
        **os.environ,
        "FLEETWARDEN_HOME": str(tmp_path / "home"),
        "FLEETWARDEN_CA_PASSPHRASE": PASSPHRASE,
        "FLEETWARDEN_DB": str(tmp_path / "fw.db"),
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, env=environ)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res

    ca, out, crl = tmp_path / "ca.pem", tmp_path / "out", tmp_path / "crl.pem"
    run("ca", "init")
    run("ca", "export", "--out", str(ca))
    run("ca", "issue", "cam-01", "--out-dir", str(out))
    assert (out / "cam-01.crt").is_file() and (out / "cam-01.key").is_file()
    run("ca", "crl", "--out", str(crl))
    good = verify(openssl, ca, out / "cam-01.crt", crl)
    assert good.returncode == 0 and ": OK" in good.stdout, good.stdout + good.stderr

    run("ca", "revoke", "cam-01")
    run("ca", "crl", "--out", str(crl))
    bad = verify(openssl, ca, out / "cam-01.crt", crl)
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr


# ---------------------------------------------------------------------- openssl agrees with us


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
def test_openssl_accepts_issued_then_rejects_revoked(ca_ready, openssl, key_type):
    env = ca_ready
    ok(fw(env, "ca", "issue", "sensor-7", "--out-dir", str(env["out"]), "--key-type", key_type))
    cert, crl = env["out"] / "sensor-7.crt", env["dir"] / "crl.pem"
    ok(fw(env, "ca", "crl", "--out", str(crl)))
    res = verify(openssl, env["ca"], cert, crl)
    assert res.returncode == 0, res.stdout + res.stderr
    text = subprocess.run(
        [openssl, "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    assert ("ED25519" if key_type == "ed25519" else "prime256v1") in text
    assert "TLS Web Client Authentication" in text and "URI:urn:fleetwarden:device:sensor-7" in text

    ok(fw(env, "ca", "revoke", "sensor-7", "--reason", "key-compromise"))
    ok(fw(env, "ca", "crl", "--out", str(crl)))
    res = verify(openssl, env["ca"], cert, crl)
    assert res.returncode != 0 and "certificate revoked" in res.stdout + res.stderr
    crl_text = subprocess.run(
        [openssl, "crl", "-in", str(crl), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    assert "Key Compromise" in crl_text and "X509v3 CRL Number" in crl_text


def test_a_certificate_from_another_ca_is_rejected(ca_ready, openssl):
    env = ca_ready
    now = datetime.now(UTC)
    rogue = x509ca.create_ca(now=now, name="FleetWarden device CA")  # same name, other key
    cert, _key = x509ca.issue_with_key(rogue, "cam-01", now=now)
    path = env["dir"] / "rogue.crt"
    path.write_bytes(x509ca.certificate_pem(cert))
    ok(fw(env, "ca", "crl", "--out", str(env["dir"] / "crl.pem")))
    res = verify(openssl, env["ca"], path, env["dir"] / "crl.pem")
    assert res.returncode != 0
    ours = x509ca.load_certificate(env["ca"].read_bytes())
    assert x509ca.verify_device_certificate(ours, cert, now=now) == "not signed by this CA"


def test_rotate_supersedes_the_old_certificate_on_the_crl(ca_ready, openssl):
    env = ca_ready
    ok(fw(env, "ca", "issue", "gw-1", "--out-dir", str(env["dir"] / "v1")))
    out = ok(fw(env, "ca", "rotate", "gw-1", "--out-dir", str(env["dir"] / "v2")))
    assert "superseded" in out
    crl = env["dir"] / "crl.pem"
    ok(fw(env, "ca", "crl", "--out", str(crl)))
    assert verify(openssl, env["ca"], env["dir"] / "v1" / "gw-1.crt", crl).returncode != 0
    assert verify(openssl, env["ca"], env["dir"] / "v2" / "gw-1.crt", crl).returncode == 0
    with open_store(env["db"]) as store:
        statuses = [r.status for r in ids.list_certificates(store, device_id="gw-1")]
    assert statuses == ["superseded", "active"]


# ---------------------------------------------------------------------- CSRs


def test_csr_is_certified_with_its_key_and_without_its_subject(ca_ready, openssl):
    env = ca_ready
    csr = _csr(openssl, env["dir"], "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    ok(fw(env, "ca", "issue", "meter-3", "--csr", str(csr), "--out-dir", str(env["out"])))
    assert not (env["out"] / "meter-3.key").exists()  # the device keeps its own key
    cert = x509.load_pem_x509_certificate((env["out"] / "meter-3.crt").read_bytes())
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert cert.public_key().public_numbers() == request.public_key().public_numbers()
    assert cert.subject.rfc4514_string() == "CN=meter-3"
    assert verify(openssl, env["ca"], env["out"] / "meter-3.crt").returncode == 0


def test_a_tampered_csr_is_refused(ca_ready, openssl):
    env = ca_ready
    csr = _csr(openssl, env["dir"], "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    der = x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    forged = der.replace(b"evil-subject", b"good-subject")  # signed bytes changed, signature kept
    assert forged != der
    b64 = base64.encodebytes(forged).decode()
    (env["dir"] / "forged.csr").write_text(
        f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"
    )
    exit_2(
        fw(
            env,
            "ca",
            "issue",
            "meter-4",
            "--csr",
            str(env["dir"] / "forged.csr"),
            "--out-dir",
            str(env["out"]),
        ),
        "signature",
    )
    assert not (env["out"] / "meter-4.crt").exists()


@pytest.mark.parametrize(
    ("newkey", "needle"),
    [
        (("-newkey", "rsa:1024"), "1024 bits is too weak"),
        (("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"), "secp256k1"),
    ],
)
def test_weak_csr_keys_are_refused(ca_ready, openssl, newkey, needle):
    env = ca_ready
    csr = _csr(openssl, env["dir"], "weak", *newkey)
    exit_2(fw(env, "ca", "issue", "old-cam", "--csr", str(csr), "--out-dir", str(env["out"])), needle)
    with open_store(env["db"]) as store:
        assert ids.list_certificates(store) == []


def test_dsa_and_garbage_csrs_are_refused():
    key = dsa.generate_private_key(2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(x509ca.CAError, match="DSA"):
        x509ca.load_csr(csr.public_bytes(serialization.Encoding.PEM))
    for junk in (
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----" + b"A" * 70_000,
    ):
        with pytest.raises(x509ca.CAError):
            x509ca.load_csr(junk)


# ---------------------------------------------------------------------- the CA key and its files


def test_the_ca_key_is_encrypted_and_the_files_are_private(ca_ready, openssl):
    env = ca_ready
    folder = env["home"] / "ca"
    key_pem = (folder / "ca.key").read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # "Password was not given but private key is encrypted"
        serialization.load_pem_private_key(key_pem, password=None)
    with pytest.raises(x509ca.CAError, match="wrong passphrase"):
        x509ca.load_ca((folder / "ca.crt").read_bytes(), key_pem, b"not the passphrase")
    wrong = subprocess.run(
        [openssl, "pkey", "-in", str(folder / "ca.key"), "-passin", "pass:nope", "-noout"],
        capture_output=True,
        timeout=30,
    )
    assert wrong.returncode != 0
    assert x509ca.load_ca((folder / "ca.crt").read_bytes(), key_pem, PASSPHRASE.encode()).key is not None
    assert PASSPHRASE.encode() not in key_pem

    ok(fw(env, "ca", "issue", "cam-9", "--out-dir", str(env["out"])))
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert ((folder / "ca.key").stat().st_mode & 0o777) == 0o600
    assert ((env["out"] / "cam-9.key").stat().st_mode & 0o777) == 0o600
    assert not list(folder.glob(".*"))  # no temporary file left behind


def test_a_wrong_passphrase_is_one_line(ca_ready, monkeypatch):
    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", "something else")
    exit_2(fw(ca_ready, "ca", "crl", "--out", str(ca_ready["dir"] / "crl.pem")), "wrong passphrase")


def test_a_passphrase_file_is_used_and_an_unreadable_one_refused(env, monkeypatch):
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE")
    exit_2(fw(env, "ca", "init", "--passphrase-file", str(env["dir"] / "absent.txt")), "passphrase")
    assert not (env["home"] / "ca" / "ca.key").exists()
    secret = env["dir"] / "pass.txt"
    secret.write_text("from-a-file-42\n")
    ok(fw(env, "ca", "init", "--passphrase-file", str(secret)))
    key_pem = (env["home"] / "ca" / "ca.key").read_bytes()
    x509ca.load_ca((env["home"] / "ca" / "ca.crt").read_bytes(), key_pem, b"from-a-file-42")
    assert not (env["home"] / "secrets").exists()  # nothing generated when one was given
    # signing later needs that passphrase again: none given, none generated -> refused, says how
    exit_2(fw(env, "ca", "issue", "d1", "--out-dir", str(env["dir"] / "o")), "FLEETWARDEN_CA_PASSPHRASE")


def test_without_any_passphrase_init_generates_one_apart_from_the_key(env, monkeypatch):
    """The command-line contract (`ca init`, then `ca issue`, nothing else) works on a bare machine;
    the generated passphrase lives outside ca/, so the key file alone is still useless."""
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE")
    result = fw(env, "ca", "init")
    ok(result)
    generated = env["home"] / "secrets" / "ca-passphrase"
    assert "generated" in result.stderr and str(generated) in result.stderr
    assert (generated.stat().st_mode & 0o777) == 0o600
    assert (generated.parent.stat().st_mode & 0o777) == 0o700
    secret = generated.read_bytes().strip()
    assert len(secret) >= 32 and secret not in result.stdout.encode() + result.stderr.encode()
    key_pem = (env["home"] / "ca" / "ca.key").read_bytes()
    assert b"ENCRYPTED" in key_pem and secret not in key_pem
    with pytest.raises(x509ca.CAError):
        x509ca.load_ca((env["home"] / "ca" / "ca.crt").read_bytes(), key_pem, b"")
    ok(fw(env, "ca", "issue", "d1", "--out-dir", str(env["dir"] / "o")))
    assert (env["dir"] / "o" / "d1.crt").is_file()


def test_no_private_key_passphrase_or_token_in_the_database(ca_ready):
    env = ca_ready
    ok(fw(env, "ca", "issue", "cam-1", "--out-dir", str(env["out"])))
    ok(fw(env, "ca", "rotate", "cam-1", "--out-dir", str(env["out"]), "--key-type", "ed25519"))
    ok(fw(env, "ca", "revoke", "cam-1", "--reason", "cessation-of-operation"))
    ok(fw(env, "ca", "crl", "--out", str(env["dir"] / "crl.pem")))
    token = ok(fw(env, "users", "add", "ops", "--role", "operator")).strip().splitlines()[-1]
    key_body = "".join((env["out"] / "cam-1.key").read_text().splitlines()[1:-1])

    with sqlite3.connect(env["db"]) as conn:
        dump = "\n".join(conn.iterdump())
    for secret in ("PRIVATE KEY", key_body, PASSPHRASE, token):
        assert secret not in dump
    with open_store(env["db"]) as store:
        actions = [e.action for e in store.audit_entries()]
        assert store.audit_verify() == (True, None)
        assert all(
            "PRIVATE" not in str(e.details) and token not in str(e.details) for e in store.audit_entries()
        )
    for action in ("ca.init", "ca.issue", "ca.rotate", "ca.revoke", "ca.crl.publish", "operator.add"):
        assert action in actions, actions


# ---------------------------------------------------------------------- bad input, one line each


def test_bad_input_is_exit_2_with_one_line(ca_ready):
    env = ca_ready
    out = str(env["out"])
    exit_2(fw(env, "ca", "init"), "already exists")
    exit_2(fw(env, "ca", "issue", "../etc/passwd", "--out-dir", out), "invalid device id")
    exit_2(fw(env, "ca", "issue", "x" * 65, "--out-dir", out), "invalid device id")
    exit_2(fw(env, "ca", "issue", "cam-1", "--out-dir", out, "--key-type", "rsa"), "unknown key type")
    exit_2(
        fw(env, "ca", "issue", "cam-1", "--out-dir", out, "--csr", str(env["dir"] / "none.csr")),
        "no such CSR",
    )
    exit_2(fw(env, "ca", "revoke", "never-issued"), "no active certificate")
    ok(fw(env, "ca", "issue", "cam-1", "--out-dir", out))
    exit_2(fw(env, "ca", "revoke", "cam-1", "--reason", "because"), "unknown revocation reason")
    exit_2(fw(env, "ca", "list", "--status", "weird"), "unknown certificate status")
    assert "cam-1" in ok(fw(env, "ca", "list"))


def test_export_without_a_ca_says_to_init(env):
    exit_2(fw(env, "ca", "export", "--out", str(env["dir"] / "ca.pem"), db=False), "ca init")


# ---------------------------------------------------------------------- the pure module


def test_device_certificate_profile_and_verification():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    authority = x509ca.create_ca(now=now)
    bc = authority.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    ku = authority.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature

    cert, _ = x509ca.issue_with_key(authority, "cam_01", now=now, days=30)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:fleetwarden:device:cam_01"]
    assert san.get_values_for_type(x509.DNSName) == []  # '_' is no host name
    host, _ = x509ca.issue_with_key(authority, "cam-01.site-a", now=now)
    dns = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert dns == ["cam-01.site-a"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert 0 < cert.serial_number < 2**159 and cert.serial_number != host.serial_number
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)

    assert x509ca.verify_device_certificate(authority.certificate, cert, now=now) is None
    assert "expired" in x509ca.verify_device_certificate(
        authority.certificate, cert, now=now + timedelta(days=31)
    )
    assert (
        x509ca.verify_device_certificate(authority.certificate, cert, now=now, revoked={cert.serial_number})
        == "revoked"
    )
    assert x509ca.describe_key(ec.generate_private_key(ec.SECP384R1())) == ("ecdsa-p384", 384)
    assert len(x509ca.fingerprint(cert)) == 64


def test_crl_entries_carry_date_and_reason():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    authority = x509ca.create_ca(now=now)
    entries = [x509ca.Revocation(11, now, "key-compromise"), x509ca.Revocation(12, now, "unspecified")]
    crl = x509ca.build_crl(authority, entries, now=now, number=5)
    assert crl.is_signature_valid(authority.key.public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 5
    assert crl.next_update_utc == now + timedelta(days=7)
    first = crl.get_revoked_certificate_by_serial_number(11)
    assert (
        first.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    assert len(crl.get_revoked_certificate_by_serial_number(12).extensions) == 0


# ---------------------------------------------------------------------- the store on PostgreSQL too


@pytest.mark.postgres
def test_identity_store_on_postgres(postgres_url):
    import secrets

    import sqlalchemy as sa

    schema = f"fw_test_ca_{secrets.token_hex(4)}"
    store = open_store(postgres_url, schema=schema)
    try:
        now = datetime.now(UTC)
        authority = x509ca.create_ca(now=now)
        cert, _ = x509ca.issue_with_key(authority, "pg-dev", now=now)
        row = {
            "serial": x509ca.serial_hex(cert.serial_number),
            "device_id": "pg-dev",
            "fingerprint": x509ca.fingerprint(cert),
            "key_type": "ecdsa-p256",
            "key_size": 256,
            "subject": "CN=pg-dev",
            "issued_at": now.timestamp(),
            "not_before": now.timestamp(),
            "not_after": cert.not_valid_after_utc.timestamp(),
            "pem": x509ca.certificate_pem(cert).decode(),
        }
        assert ids.record_certificate(store, row, actor="test").in_inventory is False
        ids.revoke_device(store, "pg-dev", "key-compromise", now=now.timestamp(), actor="test")
        numbers = [
            ids.publish_crl(store, lambda rows, n: (len(rows), n), now=now.timestamp(), actor="t")
            for _ in range(2)
        ]
        assert numbers == [(1, 1), (1, 2)]
        assert store.audit_verify() == (True, None)
    finally:
        store.close()
        eng = sa.create_engine(postgres_url)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()
