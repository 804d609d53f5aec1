"""The firmware registry: vendor keys, real Ed25519 signatures, the catalogue detection reads,
patch compliance and priority (SQLite, and the local PostgreSQL where the store is exercised)."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from tests.conftest import IN_CI
from typer.testing import CliRunner

from fleetwarden.app import firmware as svc
from fleetwarden.cli import app
from fleetwarden.control.firmware import FirmwareInputError, SignatureRefused, check_image, parse_public_key
from fleetwarden.core.manifest import firmware_manifest
from fleetwarden.store import StoreError, open_store
from fleetwarden.store import firmware as repo

runner = CliRunner()
SHA = {v: hashlib.sha256(f"acme-x200-{v}".encode()).hexdigest() for v in ("1.0.0", "1.1.0", "2.0.0")}


# ---------------------------------------------------------------------------- helpers


def new_key(tmp_path: Path, name: str) -> tuple[ed25519.Ed25519PrivateKey, Path]:
    """A fresh Ed25519 key; its public half as a PEM file."""
    priv = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / f"{name}.pub.pem"
    path.write_bytes(
        priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, path


def signed(priv, vendor="Acme", model="X200", version="1.0.0", sha=None, **extra) -> dict:
    sha = sha or SHA[version]
    sig = priv.sign(firmware_manifest(vendor, model, version, sha)).hex()
    return {"vendor": vendor, "model": model, "version": version, "sha256": sha, "signature": sig, **extra}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = open_store(f"sqlite:///{tmp_path / 'fw.db'}")
        yield st
        st.close()
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"fw_firmware_{secrets.token_hex(4)}"
    st = open_store(url, schema=schema)
    yield st
    st.close()
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    eng.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------------- keys and signatures


def test_signed_image_is_registered_and_forgeries_are_refused(store, tmp_path):
    acme, acme_pem = new_key(tmp_path, "acme")
    other, other_pem = new_key(tmp_path, "other")
    key = svc.add_vendor_key(store, "Acme", "firmware", acme_pem)
    svc.add_vendor_key(store, "Other", "firmware", other_pem)
    assert key["algorithm"] == "ed25519" and len(key["fingerprint"]) == 64

    img = svc.add_image(store, signed(acme, cves=["CVE-2024-12345"], cvss_max=7.5, release_date="2024-05-01"))
    assert img["added"] and img["signed_by"] == key["fingerprint"]
    assert svc.add_image(store, signed(acme))["already_present"]  # same image twice: one row

    forged = signed(acme, version="1.1.0")
    forged["signature"] = forged["signature"][:-2] + ("00" if forged["signature"][-2:] != "00" else "01")
    with pytest.raises(SignatureRefused, match="does not verify"):
        svc.add_image(store, forged)
    relabelled = signed(acme, version="1.1.0")  # a valid signature of 1.1.0 presented for another image
    relabelled["sha256"] = SHA["2.0.0"]
    with pytest.raises(SignatureRefused, match="does not verify"):
        svc.add_image(store, relabelled)
    with pytest.raises(SignatureRefused, match="does not verify"):  # Other's key signing an Acme image
        svc.add_image(store, signed(other, version="1.1.0"))
    with pytest.raises(SignatureRefused, match="no active firmware key of vendor 'Nobody'"):
        svc.add_image(store, signed(acme, vendor="Nobody"))

    revoked = svc.revoke_vendor_key(store, key["fingerprint"])
    assert revoked["images_unverified"] == 1
    with pytest.raises(SignatureRefused, match="no active firmware key"):
        svc.add_image(store, signed(acme, version="1.1.0"))
    assert svc.firmware_catalog(store) == {}  # the image its revoked key signed no longer counts
    with pytest.raises(StoreError, match="already revoked"):
        svc.revoke_vendor_key(store, key["fingerprint"])

    images = svc.list_images(store)
    assert [(i["version"], i["verified"], i["cves"], i["cvss_max"]) for i in images] == [
        ("1.0.0", False, ["CVE-2024-12345"], 7.5)
    ]
    actions = [e.action for e in store.audit_entries()]
    assert (
        actions.count("vendor_key.add") == 2 and "firmware.add" in actions and "vendor_key.revoke" in actions
    )
    assert store.audit_verify() == (True, None)


def test_keys_are_checked_and_private_keys_never_stored(store, tmp_path):
    priv = ed25519.Ed25519PrivateKey.generate()
    private_pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(FirmwareInputError, match="PRIVATE key") as exc:
        parse_public_key(private_pem, "firmware")
    assert private_pem.decode().splitlines()[1][:20] not in str(exc.value)

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p256_pem = p256.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parse_public_key(p256_pem, "attestation").algorithm == "ecdsa-p256"
    with pytest.raises(FirmwareInputError, match="firmware keys must be Ed25519"):
        parse_public_key(p256_pem, "firmware")
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(FirmwareInputError, match="unsupported key type"):
        parse_public_key(rsa_pem, "attestation")
    with pytest.raises(FirmwareInputError, match="not a PEM public key"):
        parse_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "firmware")
    with pytest.raises(FirmwareInputError, match="unknown key purpose"):
        parse_public_key(p256_pem, "signing")

    # attestation keys for the onboarding service: active ones of one vendor and purpose only
    att = tmp_path / "att.pem"
    att.write_bytes(p256_pem)
    _, fw_pem = new_key(tmp_path, "fw")
    a = svc.add_vendor_key(store, "Acme", "attestation", att)
    svc.add_vendor_key(store, "Acme", "firmware", fw_pem)
    with pytest.raises(StoreError, match="already registered"):
        svc.add_vendor_key(store, "Acme", "attestation", att)
    keys = repo.vendor_public_keys(store, "Acme", "attestation")
    assert [(k.fingerprint, k.algorithm) for k in keys] == [(a["fingerprint"], "ecdsa-p256")]
    assert keys[0].public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    svc.revoke_vendor_key(store, a["fingerprint"])
    assert repo.vendor_public_keys(store, "Acme", "attestation") == []
    assert "PRIVATE" not in json.dumps([k.to_dict() for k in repo.list_vendor_keys(store)])


def test_a_key_and_signature_made_by_openssl_verify(store, tmp_path):
    """An independent implementation (the openssl command) signs the documented manifest bytes."""
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("openssl is not installed (CI=true: it must be)")
        pytest.skip("openssl is not installed")

    def run(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60).stdout

    run("genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "k.pem"))
    run("pkey", "-in", str(tmp_path / "k.pem"), "-pubout", "-out", str(tmp_path / "pub.pem"))
    der = run("pkey", "-pubin", "-in", str(tmp_path / "pub.pem"), "-outform", "DER")
    (tmp_path / "manifest").write_bytes(firmware_manifest("Acme", "X200", "2.0.0", SHA["2.0.0"]))
    sig = run(
        "pkeyutl", "-sign", "-rawin", "-inkey", str(tmp_path / "k.pem"), "-in", str(tmp_path / "manifest")
    )

    key = svc.add_vendor_key(store, "Acme", "firmware", tmp_path / "pub.pem")
    assert key["fingerprint"] == hashlib.sha256(der).hexdigest()
    import base64

    img = svc.add_image(
        store,
        {
            "vendor": "Acme",
            "model": "X200",
            "version": "2.0.0",
            "sha256": SHA["2.0.0"],
            "signature": base64.b64encode(sig).decode(),
        },
    )
    assert img["added"] and img["signature"] == sig.hex()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "zz" * 32}, "sha256 must be 64 hex digits"),
        ({"cves": ["CVE-24-1"]}, "not a CVE id"),
        ({"cves": ["CVE-2024-1234; DROP TABLE"]}, "not a CVE id"),
        ({"cves": [f"CVE-2024-{1000 + i}" for i in range(201)]}, "more than 200 CVEs"),
        ({"cvss_max": 11}, "cvss must be from 0 to 10"),
        ({"vendor": "A" * 201}, "vendor longer than 200"),
        ({"model": "X\x1b[31m"}, "model holds control characters"),
        ({"signature": "abc"}, "signature is neither"),
        ({"signature": ""}, "unsigned images are refused"),
        ({"release_date": "yesterday"}, "not an ISO date"),
    ],
)
def test_catalogue_rows_are_bounded(change, message):
    row = {
        "vendor": "Acme",
        "model": "X200",
        "version": "1",
        "sha256": "ab" * 32,
        "signature": "00" * 64,
        **change,
    }
    with pytest.raises(FirmwareInputError, match=message):
        check_image(row)


def test_cve_lists_and_dates_are_normalised():
    img = check_image(
        {
            "vendor": "Acme",
            "model": "X",
            "version": "1",
            "image_sha256": "AB" * 32,
            "signature": "00" * 64,
            "cves": "cve-2024-1234; CVE-2023-99999,CVE-2024-1234",
            "released": "2024-05-01",
        }
    )
    assert img.sha256 == "ab" * 32 and img.cves == ("CVE-2024-1234", "CVE-2023-99999")
    assert img.release_date == 1714521600.0


# ---------------------------------------------------------------------------- import


def test_the_simulators_signed_catalogue_imports(store, tmp_path):
    """``simulate --out`` writes a signed catalogue and the vendors' public keys beside it."""
    from fleetwarden.simulate import simulate_fleet, write_files

    fleet = simulate_fleet(devices=24, hours=1, seed=3, scenarios=[])
    paths = write_files(fleet, tmp_path / "sim")
    key_files = sorted((tmp_path / "sim" / "vendor_keys").glob("*.pem"))
    vendors = sorted({r["vendor"] for r in fleet.firmware_catalog})
    assert len(key_files) == len(vendors)
    for vendor in vendors:
        from fleetwarden.simulate.signing import key_file_name

        svc.add_vendor_key(
            store, vendor, "firmware", tmp_path / "sim" / "vendor_keys" / key_file_name(vendor)
        )
        assert "PRIVATE" not in (tmp_path / "sim" / "vendor_keys" / key_file_name(vendor)).read_text()

    catalogue = json.loads(paths["firmware_catalog.json"].read_text())
    catalogue[0]["image_sha256"] = "0" * 64  # a row whose signature no longer matches
    catalogue[1]["cves"] = ["not-a-cve"]
    bad = tmp_path / "cat.json"
    bad.write_text(json.dumps(catalogue))
    res = svc.import_catalogue(store, bad)
    assert (res.read, res.added, res.present) == (len(catalogue), len(catalogue) - 2, 0)
    assert res.errors[0].startswith("row 2 (") and "not a CVE id" in res.errors[0]
    assert res.errors[1].startswith("row 1:") and "does not verify" in res.errors[1]
    again = svc.import_catalogue(store, paths["firmware_catalog.json"])
    assert (again.added, again.present, again.errors) == (2, len(catalogue) - 2, [])
    assert sum(len(h) for h in svc.firmware_catalog(store).values()) == len(catalogue)


def test_csv_catalogue_and_cli(sqlite_url, tmp_path):
    acme, pem = new_key(tmp_path, "acme")
    res = cli("vendor-key", "add", "Acme", "--purpose", "firmware", "--pem", pem, "--db", sqlite_url)
    assert res.exit_code == 0, res.output
    rows = [signed(acme, version=v) for v in ("1.0.0", "1.1.0")]
    csv_path = tmp_path / "cat.csv"
    csv_path.write_text(
        "vendor,model,version,sha256,signature,cves,cvss_max,release_date\n"
        + f"Acme,X200,1.0.0,{rows[0]['sha256']},{rows[0]['signature']},CVE-2024-0001;CVE-2024-0002,9.8,2024-01-02\n"
        + f"Acme,X200,1.1.0,{rows[1]['sha256']},{'ff' * 64},,,\n"
    )
    res = cli("firmware", "import", csv_path, "--db", sqlite_url)
    assert res.exit_code == 2
    assert "2 images read, 1 added, 0 already registered, 1 refused" in res.stdout
    assert "row 2: Acme X200 1.1.0: refused, the signature does not verify" in res.stderr

    res = cli(
        "firmware",
        "add",
        "--vendor",
        "Acme",
        "--model",
        "X200",
        "--version",
        "1.1.0",
        "--sha256",
        rows[1]["sha256"],
        "--signature",
        rows[1]["signature"],
        "--released",
        "2024-06-01",
        "--db",
        sqlite_url,
    )
    assert res.exit_code == 0 and "added: Acme X200 1.1.0" in res.stdout
    res = cli(
        "firmware",
        "add",
        "--vendor",
        "Acme",
        "--model",
        "X200",
        "--version",
        "2.0.0",
        "--sha256",
        SHA["2.0.0"],
        "--signature",
        rows[1]["signature"],
        "--db",
        sqlite_url,
    )
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "refused, the signature does not verify" in res.stderr

    listed = json.loads(cli("firmware", "list", "--json", "--db", sqlite_url).stdout)
    assert [(i["version"], i["cves"], i["cvss_max"]) for i in listed] == [
        ("1.0.0", ["CVE-2024-0001", "CVE-2024-0002"], 9.8),
        ("1.1.0", [], None),
    ]
    keys = json.loads(cli("vendor-key", "list", "--json", "--db", sqlite_url).stdout)
    res = cli("vendor-key", "revoke", keys[0]["fingerprint"], "--db", sqlite_url)
    assert res.exit_code == 0 and "2 image(s) it signed are no longer verified" in res.stdout
    res = cli("vendor-key", "revoke", "f" * 64, "--db", sqlite_url)
    assert res.exit_code == 2 and "no vendor key with fingerprint" in res.stderr


# ---------------------------------------------------------------------------- integrity through analyze --db


def _firmware_events(path: Path, reports: list[tuple[float, str, str, str]]) -> Path:
    with path.open("w") as fh:
        for ts, dev, version, sha in reports:
            fh.write(
                json.dumps(
                    {
                        "kind": "firmware_report",
                        "ts": ts,
                        "device_id": dev,
                        "version": version,
                        "image_sha256": sha,
                        "signature": "valid",
                    }
                )
                + "\n"
            )
    return path


def test_a_hash_matching_no_signed_image_is_a_tamper_finding_in_analyze_db(tmp_path):
    acme, pem = new_key(tmp_path, "acme")
    devices = [
        {
            "device_id": "plc-1",
            "vendor": "Acme",
            "model": "X200",
            "device_class": "plc",
            "firmware_version": "1.0.0",
        },
        {
            "device_id": "plc-2",
            "vendor": "Acme",
            "model": "X200",
            "device_class": "plc",
            "firmware_version": "1.0.0",
        },
    ]
    evil = hashlib.sha256(b"implant").hexdigest()
    events = _firmware_events(
        tmp_path / "events.jsonl",
        [
            (1_700_000_000.0, "plc-1", "1.0.0", evil),
            (1_700_000_005.0, "plc-2", "1.0.0", SHA["1.0.0"]),
            (1_700_000_600.0, "plc-2", "1.1.0", SHA["1.1.0"]),
        ],
    )

    def analyze(db: str) -> list[dict]:
        res = cli("analyze", events, "--db", db, "--json")
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    without = f"sqlite:///{tmp_path / 'plain.db'}"
    with open_store(without) as st:
        st.upsert_devices(devices)
    # no registry: a device's first report is its baseline, nothing to compare with
    assert [i for i in analyze(without) if i["category"] == "firmware-tamper"] == []

    db = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_store(db) as st:
        st.upsert_devices(devices)
        svc.add_vendor_key(st, "Acme", "firmware", pem)
        for v in ("1.0.0", "1.1.0"):
            svc.add_image(st, signed(acme, version=v))
    tamper = [i for i in analyze(db) if i["category"] == "firmware-tamper"]
    assert [i["entity"] for i in tamper] == ["plc-1"]  # plc-2's signed update to 1.1.0 is benign
    assert any(
        "does not match the 1 catalogued image(s) of version 1.0.0" in e for e in tamper[0]["evidence"]
    )
    with open_store(db) as st:
        stored = st.list_incidents(category="firmware-tamper")
        assert [(i.entity, i.device_id) for i in stored] == [("plc-1", "plc-1")]


# ---------------------------------------------------------------------------- compliance and priority


def _fleet(store, tmp_path) -> None:
    acme, pem = new_key(tmp_path, "acme")
    svc.add_vendor_key(store, "Acme", "firmware", pem)
    svc.add_image(store, signed(acme, version="1.0.0", cves=["CVE-2024-3400"], cvss_max=9.8))
    svc.add_image(store, signed(acme, version="1.1.0"))
    base = {"vendor": "Acme", "model": "X200"}
    store.upsert_devices(
        [
            {**base, "device_id": "d1", "firmware_version": "1.1.0", "device_class": "plc", "site": "A"},
            {
                **base,
                "device_id": "d2",
                "firmware_version": "1.0.0",
                "device_class": "infusion-pump",
                "site": "A",
                "data_class": "regulated",
                "attributes": {"internet_reachable": True, "criticality": "critical"},
            },
            {
                **base,
                "device_id": "d3",
                "firmware_version": "1.0.0",
                "device_class": "ip-camera",
                "site": "B",
                "data_class": "internal",
            },
            {
                **base,
                "device_id": "d4",
                "firmware_version": "0.5",
                "device_class": "env-sensor",
                "site": "B",
                "data_class": "public",
            },
            {
                "device_id": "d5",
                "vendor": "Other",
                "model": "Y",
                "firmware_version": "1",
                "device_class": "plc",
                "site": "B",
            },
        ]
    )


def test_compliance_figures_per_site_class_and_vendor(store, tmp_path):
    _fleet(store, tmp_path)
    by_site = {g["group"]: g for g in svc.compliance_report(store, "site")}
    assert by_site["A"] == {
        "group": "A",
        "devices": 2,
        "covered": 2,
        "compliant": 1,
        "outdated": 1,
        "vulnerable": 1,
        "unregistered": 0,
        "rate": 0.5,
    }
    assert by_site["B"] == {
        "group": "B",
        "devices": 3,
        "covered": 2,
        "compliant": 0,
        "outdated": 1,
        "vulnerable": 1,
        "unregistered": 1,
        "rate": 0.0,
    }
    by_vendor = {
        g["group"]: (g["covered"], g["compliant"], g["rate"]) for g in svc.compliance_report(store, "vendor")
    }
    assert by_vendor == {"Acme": (4, 1, 0.25), "Other": (0, 0, None)}
    by_class = {g["group"]: g["rate"] for g in svc.compliance_report(store, "class")}
    assert by_class == {"plc": 1.0, "infusion-pump": 0.0, "ip-camera": 0.0, "env-sensor": 0.0}
    with pytest.raises(FirmwareInputError, match="expected class, site or vendor"):
        svc.compliance_report(store, "owner")


def test_patch_priority_ranks_exposed_critical_devices_first(store, tmp_path):
    _fleet(store, tmp_path)
    ranked = svc.priority_report(store)
    # 100 * severity * (0.35 + 0.65 * (0.4 exposure + 0.3 data + 0.3 criticality))
    assert [(r["device_id"], r["score"], r["status"]) for r in ranked] == [
        ("d2", 90.4, "vulnerable"),  # 9.8 CVSS, internet-reachable, regulated data, critical
        ("d3", 54.7, "vulnerable"),  # same CVE, internal camera, internal data, medium
        ("d4", 23.0, "unregistered"),  # no signed image of 0.5, public data, low
    ]
    assert ranked[0]["reasons"][:2] == ["1 CVE(s) on 1.0.0, CVSS up to 9.8", "reachable from the internet"]
    assert ranked[0]["target"] == "1.1.0" and ranked[0]["cves"] == ["CVE-2024-3400"]


def test_compliance_and_priority_cli(sqlite_url, tmp_path):
    with open_store(sqlite_url) as st:
        _fleet(st, tmp_path)
    res = cli("firmware", "compliance", "--by", "site", "--json", "--db", sqlite_url)
    assert res.exit_code == 0
    assert {g["group"]: g["rate"] for g in json.loads(res.stdout)} == {"A": 0.5, "B": 0.0}
    res = cli("firmware", "priority", "--db", sqlite_url)
    assert res.exit_code == 0 and "d2" in res.stdout and "90.4" in res.stdout
    res = cli("firmware", "compliance", "--by", "owner", "--db", sqlite_url)
    assert res.exit_code == 2 and "expected class, site or vendor" in res.stderr
