"""Attested onboarding end to end, with real keys, a real CA on disk, real SQLite and `openssl verify`.

Every refusal the issue names is provoked for real: a forged attestation, a replayed nonce, an
unknown serial, a clone (same serial, or same key), a wrong site or country, an unsigned firmware.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from tests.conftest import IN_CI
from typer.testing import CliRunner

from fleetwarden.app import onboarding as svc
from fleetwarden.app.firmware import add_image, add_vendor_key
from fleetwarden.app.identity import ca_dir, ca_init, load_authority
from fleetwarden.cli import app
from fleetwarden.control import onboarding as ob
from fleetwarden.core.manifest import firmware_manifest
from fleetwarden.store import open_store

VENDOR, MODEL, SITE = "Acme Sensors", "AS-200", "factory-1"
GOOD_FW = "ab" * 32
OTHER_FW = "cd" * 32
PASSPHRASE = "correct horse battery staple"


def _pem(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FLEETWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("FLEETWARDEN_DB", raising=False)
    return tmp_path / "home"


@pytest.fixture
def world(tmp_path, home):
    """A store with a CA, a vendor's attestation and firmware keys, one signed image, two shipments."""
    db = f"sqlite:///{tmp_path / 'fw.db'}"
    store = open_store(db)
    att = ed25519.Ed25519PrivateKey.generate()
    fw = ed25519.Ed25519PrivateKey.generate()
    for purpose, key in (("attestation", att), ("firmware", fw)):
        path = tmp_path / f"{purpose}.pem"
        path.write_bytes(_pem(key.public_key()))
        add_vendor_key(store, VENDOR, purpose, path)
    signature = fw.sign(firmware_manifest(VENDOR, MODEL, "2.1.0", GOOD_FW)).hex()
    add_image(
        store,
        {"vendor": VENDOR, "model": MODEL, "version": "2.1.0", "sha256": GOOD_FW, "signature": signature},
    )
    ship = tmp_path / "shipments.csv"
    ship.write_text(
        "serial,vendor,model,site,country,device_id,device_class\n"
        f"SN-0001,{VENDOR},{MODEL},{SITE},DE,sensor-0001,env-sensor\n"
        f"SN-0002,{VENDOR},{MODEL},{SITE},DE,,plc\n"
    )
    assert svc.import_shipments(store, ship) == (2, 2, 0)
    ca_init(store)
    yield {"store": store, "db": db, "att": att, "authority": load_authority(), "tmp": tmp_path}
    store.close()


def _request(
    world, *, serial="SN-0001", key=None, site=SITE, country="DE", fw=GOOD_FW, signer=None, nonce=None
):
    key = key or ed25519.Ed25519PrivateKey.generate()
    nonce = nonce or svc.issue_nonce(world["store"])
    doc = ob.request_document(
        serial=serial,
        vendor=VENDOR,
        model=MODEL,
        public_key=key.public_key(),
        firmware_sha256=fw,
        site=site,
        country=country,
        source_ip="10.1.2.3",
        nonce=nonce,
        attestation_key=signer or world["att"],
    )
    return doc, key


def _openssl_verify(ca: Path, cert: Path) -> subprocess.CompletedProcess:
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("openssl is not installed (CI=true: it must be)")
        pytest.skip("openssl is not installed")
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True, check=False
    )


def _enrol(world, doc, **kw):
    return svc.enrol(world["store"], doc, authority=world["authority"], **kw)


# ---------------------------------------------------------------------------- accepted


def test_good_request_yields_a_certificate_openssl_accepts(world):
    doc, key = _request(world)
    result = _enrol(world, doc)
    assert result.accepted and result.reason is None and result.device_id == "sensor-0001"
    cert_path = world["tmp"] / "sensor-0001.crt"
    cert_path.write_bytes(result.certificate_pem)
    done = _openssl_verify(ca_dir() / "ca.crt", cert_path)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    cert = x509.load_pem_x509_certificate(result.certificate_pem)
    assert _pem(cert.public_key()) == _pem(key.public_key())  # it certifies the device's own key
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-0001"
    store = world["store"]
    dev = store.get_device("sensor-0001")
    assert dev.lifecycle == "active" and dev.serial == "SN-0001" and dev.device_class == "env-sensor"
    assert dev.zone == "iot" and dev.attributes["baseline"]["telemetry_interval_s"] == 60
    assert store.audit_entries()[-1].details["baseline"]["zone"] == "iot"
    actions = [e.action for e in store.audit_entries()]
    for step in (
        "onboarding.nonce",
        "onboarding.accept",
        "ca.issue",
        "device.lifecycle",
    ):
        assert step in actions
    assert actions.index("onboarding.accept") < actions.index("ca.issue") < actions.index("device.lifecycle")
    assert store.audit_verify() == (True, None)
    (row,) = svc.list_enrolments(store)
    assert row["result"] == "accepted" and row["certificate_serial"] == result.certificate_serial


def test_ecdsa_attestation_key_and_csr_are_accepted(world, tmp_path):
    att = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "att-ec.pem"
    path.write_bytes(_pem(att.public_key()))
    add_vendor_key(world["store"], VENDOR, "attestation", path)
    device_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SN-0002")]))
        .sign(device_key, hashes.SHA256())
    )
    doc, _ = _request(world, serial="SN-0002", key=device_key, signer=att)
    doc.pop("public_key")
    doc["csr"] = csr.public_bytes(serialization.Encoding.PEM).decode()
    result = _enrol(world, doc)
    assert result.accepted and result.device_id == "SN-0002"  # no device id shipped: the serial names it
    assert result.baseline["zone"] == "ot"
    out = tmp_path / "SN-0002.crt"
    out.write_bytes(result.certificate_pem)
    assert _openssl_verify(ca_dir() / "ca.crt", out).returncode == 0


# ---------------------------------------------------------------------------- refused


def _refused(world, doc, reason, category, **kw):
    result = _enrol(world, doc, **kw)
    assert not result.accepted and result.reason == reason, (result.reason, result.sentence)
    assert result.certificate_pem is None
    (finding,) = result.findings
    assert finding.category == category and finding.detector == "onboarding"
    incidents = world["store"].list_incidents(entity=result.device_id, category=category)
    assert incidents, "the refusal must reach the incidents"
    entry = world["store"].audit_entries()[-2]  # the refusal, then the recorded finding
    assert entry.action == "onboarding.refuse" and entry.details["reason"] == reason
    return result


def test_forged_attestation_is_refused(world):
    forger = ed25519.Ed25519PrivateKey.generate()
    doc, _ = _request(world, signer=forger)
    result = _refused(world, doc, "bad-signature", "credential-misuse")
    assert "forged" in result.sentence
    assert world["store"].get_device("sensor-0001") is None


def test_altered_request_is_refused(world):
    doc, _ = _request(world)
    doc["site"] = "warehouse-9"  # signed for factory-1: any edit breaks the attestation
    result = _refused(world, doc, "bad-signature", "credential-misuse")
    assert "unexpected-site" in result.reasons


def test_missing_attestation_is_refused(world):
    doc, _ = _request(world)
    doc["attestation"] = ""
    _refused(world, doc, "bad-signature", "credential-misuse")


def test_replayed_nonce_is_refused(world):
    doc, _ = _request(world)
    first = dict(doc, attestation=base64.b64encode(b"\x00" * 64).decode())
    _refused(world, first, "bad-signature", "credential-misuse")  # the nonce is spent by any attempt
    result = _refused(world, doc, "replayed-nonce", "credential-misuse")
    assert result.reasons == ["replayed-nonce"]


def test_replaying_an_accepted_request_is_a_clone_and_a_replay(world):
    doc, _ = _request(world)
    assert _enrol(world, doc).accepted
    result = _refused(world, doc, "duplicate-serial", "cloned-device")
    assert result.reasons == ["duplicate-serial", "duplicate-key", "replayed-nonce"]


def test_unknown_and_expired_nonces_are_refused(world):
    doc, _ = _request(world, nonce="N" * 43)
    _refused(world, doc, "unknown-nonce", "policy-violation")
    issued = 1_700_000_000.0
    nonce = svc.issue_nonce(world["store"], now=issued, ttl=60)
    doc, _ = _request(world, nonce=nonce)
    _refused(world, doc, "expired-nonce", "policy-violation", now=issued + 61)


def test_unknown_serial_is_refused(world):
    doc, _ = _request(world, serial="SN-9999")
    _refused(world, doc, "unknown-serial", "policy-violation")


def test_clone_of_an_active_device_is_refused(world):
    doc, original = _request(world)
    assert _enrol(world, doc).accepted
    # the clone has the serial and even a valid maker signature (an extracted factory key), but a new key
    clone_doc, _ = _request(world)
    result = _refused(world, clone_doc, "duplicate-serial", "cloned-device")
    assert result.device_id == "sensor-0001"  # the incident is about the identity being cloned
    assert "clone" in result.sentence
    # one key on two devices is a clone too
    twin, _ = _request(world, serial="SN-0002", key=original)
    _refused(world, twin, "duplicate-key", "cloned-device")
    assert world["store"].get_device("SN-0002") is None


def test_wrong_site_or_country_is_refused(world):
    doc, _ = _request(world, site="warehouse-9")
    _refused(world, doc, "unexpected-site", "policy-violation")
    doc, _ = _request(world, country="KP")
    _refused(world, doc, "unexpected-country", "policy-violation")


def test_unsigned_firmware_is_refused(world):
    doc, _ = _request(world, fw=OTHER_FW)
    result = _refused(world, doc, "unapproved-firmware", "firmware-tamper")
    assert "signed image" in result.sentence


def test_retired_device_may_enrol_again(world):
    doc, _ = _request(world)
    assert _enrol(world, doc).accepted
    world["store"].set_device_lifecycle("sensor-0001", "retired", actor="test")
    again, _ = _request(world)
    assert _enrol(world, again).accepted


# ---------------------------------------------------------------------------- the pure verdict


def test_verdict_lists_every_failure_in_precedence_order():
    key = ed25519.Ed25519PrivateKey.generate()
    doc = ob.request_document(
        serial="X1",
        vendor="V",
        model="M",
        public_key=key.public_key(),
        firmware_sha256=GOOD_FW,
        site="s",
        nonce="n" * 20,
        attestation_key=None,
        attestation=b"junk",
    )
    req = ob.parse_request(json.dumps(doc).encode())
    facts = ob.OnboardingFacts(
        attestation_keys=(_pem(ed25519.Ed25519PrivateKey.generate().public_key()).decode(),),
        nonce=ob.NonceState(issued_at=0.0, expires_at=900.0, used_at=5.0),
        shipment=None,
        serial_owner="dev-1",
    )
    verdict = ob.verify_request(req, facts, now=10.0)
    assert [r.code for r in verdict.refusals] == [
        "duplicate-serial",
        "bad-signature",
        "replayed-nonce",
        "unknown-serial",
        "unapproved-firmware",
    ]
    assert verdict.category == "cloned-device" and verdict.device_id == "dev-1"


def test_attestation_bytes_are_documented_exactly():
    fields = {
        "serial": "S1",
        "vendor": "V",
        "model": "M",
        "public_key_sha256": "aa",
        "firmware_sha256": "bb",
        "site": "x",
        "country": "",
        "nonce": "n",
    }
    assert ob.attestation_bytes(fields) == (
        b"FLEETWARDEN-ATTESTATION-V1\nserial=S1\nvendor=V\nmodel=M\npublic_key_sha256=aa\n"
        b"firmware_sha256=bb\nsite=x\ncountry=\nnonce=n\n"
    )
    with pytest.raises(ob.RequestError, match="control character"):
        ob.attestation_bytes({**fields, "site": "x\nnonce=forged"})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.update(serial="../etc/passwd"), "serial"),
        (lambda d: d.update(serial="A" * 65), "serial"),
        (lambda d: d.update(site="a\x1b[31mb"), "site holds a control"),
        (lambda d: d.update(vendor="v" * 201), "vendor must be 1-200"),
        (lambda d: d.update(nonce="short"), "nonce"),
        (lambda d: d.update(firmware_sha256="zz"), "firmware_sha256"),
        (
            lambda d: d.update(public_key="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            "not a PEM",
        ),
        (lambda d: d.update(csr="x"), "exactly one of"),
        (lambda d: d.update(attestation="!!!"), "not base64"),
        (lambda d: d.update(attestation="A" * 1000), "at most"),
        (lambda d: d.update(country="Germany"), "country"),
        (lambda d: d.update(source_ip="999.1.1.1"), "source_ip"),
        (lambda d: d.pop("serial"), "serial is missing"),
        (lambda d: d.update(model=["list"]), "model must be a string"),
    ],
)
def test_hostile_requests_are_refused_with_a_named_field(edit, message):
    key = ed25519.Ed25519PrivateKey.generate()
    doc = ob.request_document(
        serial="SN-1",
        vendor="V",
        model="M",
        public_key=key.public_key(),
        firmware_sha256=GOOD_FW,
        site="s",
        nonce="n" * 20,
        attestation_key=key,
    )
    edit(doc)
    with pytest.raises(ob.RequestError, match=message):
        ob.parse_request(json.dumps(doc).encode(), name="req.json")


def test_rsa_keys_and_huge_or_binary_files_are_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()).decode()
    with pytest.raises(ob.RequestError, match="Ed25519 or ECDSA P-256"):
        ob.parse_request({"public_key": rsa_pem, "serial": "S"})
    with pytest.raises(ob.RequestError, match="larger than"):
        ob.parse_request(b"{" + b" " * ob.MAX_REQUEST_BYTES + b"}")
    with pytest.raises(ob.RequestError, match="UTF-8"):
        ob.parse_request(b"\xff\xfe{}")
    with pytest.raises(ob.RequestError, match="JSON object"):
        ob.parse_request(b"[1, 2]")


def test_bad_shipment_rows_are_named(tmp_path):
    with pytest.raises(ob.RequestError, match="shipment 2: serial"):
        ob.parse_shipments(b"serial,vendor,model,site\nA1,V,M,S\nbad serial!,V,M,S\n", name="s.csv")
    with pytest.raises(ob.RequestError, match="listed twice"):
        ob.parse_shipments(
            b'[{"serial":"A","vendor":"V","model":"M","site":"S"},'
            b'{"serial":"A","vendor":"V","model":"M","site":"S"}]'
        )
    with pytest.raises(ob.RequestError, match="unknown column"):
        ob.parse_shipments(b"serial,vendor,model,site,password\nA,V,M,S,hunter2\n")


def test_packaged_baselines_cover_every_simulated_class(home):
    from fleetwarden.simulate.catalog import DEVICE_CLASSES

    baselines = svc.load_baselines()
    assert set(DEVICE_CLASSES) <= set(baselines) and "*" in baselines
    (home / "baselines.toml").parent.mkdir(parents=True, exist_ok=True)
    (home / "baselines.toml").write_text(
        '[default]\nzone = "quarantine"\nallowed_destinations = []\n'
        "allowed_protocols = []\ntelemetry_interval_s = 0\n"
    )
    with pytest.raises(ob.RequestError, match="telemetry_interval_s"):
        svc.load_baselines()


# ---------------------------------------------------------------------------- the command line


def test_cli_expect_nonce_request_list(world, tmp_path):
    runner = CliRunner()
    db = world["db"]
    ship = tmp_path / "more.json"
    ship.write_text(json.dumps([{"serial": "SN-0003", "vendor": VENDOR, "model": MODEL, "site": SITE}]))
    done = runner.invoke(app, ["onboard", "expect", str(ship), "--db", db])
    assert done.exit_code == 0 and "1 added" in done.stdout, done.output
    done = runner.invoke(app, ["onboard", "nonce", "--db", db])
    assert done.exit_code == 0
    nonce = done.stdout.strip().splitlines()[-1]
    key = ed25519.Ed25519PrivateKey.generate()
    doc = ob.request_document(
        serial="SN-0003",
        vendor=VENDOR,
        model=MODEL,
        public_key=key.public_key(),
        firmware_sha256=GOOD_FW,
        site=SITE,
        nonce=nonce,
        attestation_key=world["att"],
    )
    req = tmp_path / "req.json"
    req.write_text(json.dumps(doc))
    out_dir = tmp_path / "certs"
    done = runner.invoke(app, ["onboard", "request", str(req), "--out-dir", str(out_dir), "--db", db])
    assert done.exit_code == 0 and "enrolled SN-0003" in done.stdout, done.output
    assert _openssl_verify(ca_dir() / "ca.crt", out_dir / "SN-0003.crt").returncode == 0
    # the same file again: refused (exit 1) with the reason, and no new certificate
    done = runner.invoke(
        app, ["onboard", "request", str(req), "--out-dir", str(tmp_path / "again"), "--db", db]
    )
    assert done.exit_code == 1 and "duplicate-serial" in done.stdout
    assert not (tmp_path / "again").exists()
    done = runner.invoke(app, ["onboard", "list", "--json", "--db", db])
    rows = json.loads(done.stdout)
    assert [r["result"] for r in rows] == ["refused", "accepted"]
    # a malformed request is bad input: exit 2, one line
    req.write_text('{"serial": 1}')
    done = runner.invoke(app, ["onboard", "request", str(req), "--db", db])
    assert done.exit_code == 2 and "give exactly one of public_key and csr" in done.stderr


def test_cli_request_without_ca_passphrase_spends_no_nonce(world, tmp_path, monkeypatch):
    doc, _ = _request(world)
    req = tmp_path / "req.json"
    req.write_text(json.dumps(doc))
    monkeypatch.delenv("FLEETWARDEN_CA_PASSPHRASE")
    done = CliRunner().invoke(app, ["onboard", "request", str(req), "--db", world["db"]])
    assert done.exit_code == 2 and "passphrase" in done.stderr
    monkeypatch.setenv("FLEETWARDEN_CA_PASSPHRASE", PASSPHRASE)
    done = CliRunner().invoke(app, ["onboard", "request", str(req), "--db", world["db"]])
    assert done.exit_code == 0, done.output


# ---------------------------------------------------------------------------- the simulated fleet


def test_simulated_fleet_enrols_through_onboarding_and_its_clone_is_refused(tmp_path, home):
    from fleetwarden.app.fleet_onboarding import enrol_simulated_fleet
    from fleetwarden.simulate import simulate_fleet

    fleet = simulate_fleet(devices=30, hours=1, seed=3, scenarios=["cloned-device", "tampered-controller"])
    clone = fleet.truth("cloned-device").device_ids[0]
    with open_store(f"sqlite:///{tmp_path / 'sim.db'}") as store:
        done = enrol_simulated_fleet(store, fleet)
        assert done.accepted == len(fleet.inventory) and done.refused == [(clone, "duplicate-serial")]
        assert {d.lifecycle for d in store.list_devices()} == {"active"}
        (incident,) = store.list_incidents(category="cloned-device")
        assert incident.entity == clone and any("clone" in e for e in incident.evidence)
        # a second run on the same database enrols nothing twice
        again = enrol_simulated_fleet(store, fleet)
        assert again.accepted == 0 and again.skipped == len(fleet.inventory)
        assert store.audit_verify() == (True, None)
