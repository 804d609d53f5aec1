"""The device edge on a real Mosquitto (2.0, dynamic-security plugin) speaking mutual TLS with
certificates of the FleetWarden CA, made through ``fleetwarden ca``.

One broker per module on spare ports: a TLS listener (``require_certificate``, the CA, its CRL,
``use_identity_as_username``) and a password listener for the dynsec admin.  Proven here: a device
certificate connects and publishes; an unknown CA's certificate is refused; a revoked one is refused
once the new CRL is loaded (broker restarted); a device publishing on another device's topic is
refused by the ACL and that refusal, read back from the broker's log, is a finding; one certificate
connected from two addresses is a cloned-device finding; ``watch`` and ``simulate`` speak TLS.
Skips when mosquitto, its plugin or openssl is missing; fails instead under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from tests.conftest import free_port, need, program
from typer.testing import CliRunner

from fleetwarden.app.edge import DYNSEC_PLUGIN, broker_files, fleet_device_ids, provision_broker
from fleetwarden.app.stores import store_at

ADMIN, ADMIN_PW = "fw-admin", "broker-admin-pw-0123"
PASS = "correct horse battery staple"
runner = CliRunner()
_ENV: dict[str, str] = {}  # the edge's FleetWarden home and CA passphrase, for every CLI call


def _mosquitto() -> str:
    path = program("mosquitto")
    need(path is not None, "mosquitto is not installed (Debian package mosquitto)")
    need(os.path.exists(DYNSEC_PLUGIN), f"the dynamic-security plugin is missing ({DYNSEC_PLUGIN})")
    need(shutil.which("openssl") is not None, "openssl is not installed")
    return path  # type: ignore[return-value]


def _cli(*args: str) -> str:
    from fleetwarden.cli import app

    result = runner.invoke(app, list(args), env=_ENV)
    assert result.exit_code == 0, (args, result.output)
    return result.output


class Broker:
    def __init__(self, exe: str, files, tls_port: int, admin_port: int) -> None:
        self.exe, self.files, self.tls_port, self.admin_port = exe, files, tls_port, admin_port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.files.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2):
                    return
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read().decode()
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def log(self) -> str:
        return self.files.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    exe = _mosquitto()
    home = tmp_path_factory.mktemp("edgehome")
    mp = pytest.MonkeyPatch()
    mp.setenv("FLEETWARDEN_HOME", str(home))
    mp.setenv("FLEETWARDEN_CA_PASSPHRASE", PASS)
    _ENV.update(FLEETWARDEN_HOME=str(home), FLEETWARDEN_CA_PASSPHRASE=PASS)
    certs = home / "certs"
    _cli("ca", "init")
    for device in ("dev-1", "dev-2", "dev-3", "gw-1"):
        _cli("ca", "issue", device, "--out-dir", str(certs))
    tls_port, admin_port = free_port(), free_port()
    with store_at(None) as store:
        files = broker_files(
            store, home / "broker", tls_port=tls_port, admin_port=admin_port, admin_user=ADMIN,
            admin_password=ADMIN_PW.encode(),
        )  # fmt: skip
        devices = [d for d in fleet_device_ids(store) if d.startswith("dev-")]
    broker = Broker(exe, files, tls_port, admin_port)
    broker.start()
    result = provision_broker(
        f"mqtt://127.0.0.1:{admin_port}", devices, admin_user=ADMIN, admin_password=ADMIN_PW, gateways=("gw-1",)
    )
    assert result.created and not result.existing
    yield {"broker": broker, "certs": certs, "files": files, "home": home}
    broker.stop()
    mp.undo()


def _rogue(folder: Path) -> tuple[Path, Path]:
    """A certificate named dev-1 from a CA the broker does not trust (openssl, not FleetWarden)."""
    folder.mkdir(exist_ok=True)
    key, crt = folder / "rogue.key", folder / "rogue.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=dev-1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


def _device(edge, name: str, *, cert=None, key=None, client_id=None, bind="") -> mqtt.Client | None:
    """A device connected over mutual TLS, or None when the broker refused it."""
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or name, protocol=mqtt.MQTTv311
    )
    c.tls_set(
        ca_certs=str(edge["files"].ca),
        certfile=str(cert or edge["certs"] / f"{name}.crt"),
        keyfile=str(key or edge["certs"] / f"{name}.key"),
    )
    c.reconnect_delay_set(30, 60)
    accepted = threading.Event()
    c.on_connect = lambda _c, _u, _f, rc, _p=None: (not rc.is_failure) and accepted.set()
    try:
        c.connect("127.0.0.1", edge["broker"].tls_port, keepalive=30, bind_address=bind)
    except OSError:
        return None
    c.loop_start()
    if not accepted.wait(3):
        c.loop_stop()
        c.disconnect()
        return None
    return c


def _listen(edge, topic: str) -> tuple[mqtt.Client, list]:
    got: list = []
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="fw-listener")
    sub.username_pw_set(ADMIN, ADMIN_PW)
    ready = threading.Event()
    sub.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
    sub.on_subscribe = lambda *_a, **_k: ready.set()
    sub.connect("127.0.0.1", edge["broker"].admin_port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert ready.wait(5)
    return sub, got


def _close(*clients) -> None:
    for c in clients:
        if c is not None:
            c.loop_stop()
            c.disconnect()


def _wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _event(device: str) -> bytes:
    return json.dumps({"kind": "telemetry", "ts": time.time(), "metric": "temp", "value": 21.5}).encode()


def test_device_certificate_connects_and_publishes(edge):
    sub, got = _listen(edge, "fleetwarden/events/#")
    dev = _device(edge, "dev-1")
    assert dev is not None, "a device certificate of the FleetWarden CA must be accepted"
    dev.publish("fleetwarden/events/dev-1", _event("dev-1"), qos=1).wait_for_publish(5)
    assert _wait_for(lambda: any(t == "fleetwarden/events/dev-1" for t, _ in got))
    _close(dev, sub)
    assert "as dev-1 (p2, c1, k30, u'dev-1')" in edge["broker"].log()


def test_unknown_ca_is_refused(edge, tmp_path):
    crt, key = _rogue(tmp_path)
    assert _device(edge, "dev-1", cert=crt, key=key, client_id="rogue") is None
    assert "certificate verify failed" in edge["broker"].log()


def test_acl_refuses_another_devices_topic_and_it_is_a_finding(edge, tmp_path):
    sub, got = _listen(edge, "fleetwarden/events/#")
    dev2 = _device(edge, "dev-2")
    assert dev2 is not None
    dev2.publish("fleetwarden/events/dev-1", _event("dev-1"), qos=1).wait_for_publish(5)
    dev2.publish("fleetwarden/events/dev-2", _event("dev-2"), qos=1).wait_for_publish(5)
    assert _wait_for(lambda: any(t == "fleetwarden/events/dev-2" for t, _ in got))
    time.sleep(0.3)
    assert not any(t == "fleetwarden/events/dev-1" for t, _ in got), "the ACL must drop dev-2's publish as dev-1"
    assert "Denied PUBLISH from dev-2" in edge["broker"].log()
    _close(dev2, sub)
    incidents = _analyze(edge, tmp_path)
    misuse = [i for i in incidents if i["entity"] == "dev-2" and i["category"] == "credential-misuse"]
    assert misuse, incidents
    assert any("the topic of device dev-1" in e for e in misuse[0]["evidence"])


def _analyze(edge, tmp_path: Path) -> list[dict]:
    copy = tmp_path / "mosquitto.log"
    copy.write_bytes(edge["files"].log.read_bytes())
    return json.loads(_cli("analyze", str(copy), "--json"))


def test_one_certificate_from_two_places_is_a_clone(edge, tmp_path):
    first = _device(edge, "dev-1", client_id="dev-1-a", bind="127.0.0.1")
    second = _device(edge, "dev-1", client_id="dev-1-b", bind="127.0.0.2")
    assert first is not None and second is not None
    _close(first, second)
    time.sleep(0.3)
    clones = [i for i in _analyze(edge, tmp_path) if i["entity"] == "dev-1" and i["category"] == "cloned-device"]
    assert clones and any("two places at once" in e for e in clones[0]["evidence"])


def test_revoked_certificate_is_refused_after_new_crl(edge):
    before = _device(edge, "dev-3")
    assert before is not None, "dev-3 connects while its certificate is valid"
    _close(before)
    _cli("ca", "revoke", "dev-3")
    _cli("ca", "crl", "--out", str(edge["files"].crl))
    check = subprocess.run(
        ["openssl", "verify", "-crl_check", "-CAfile", str(edge["files"].ca), "-CRLfile", str(edge["files"].crl),
         str(edge["certs"] / "dev-3.crt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode != 0 and "revoked" in (check.stdout + check.stderr)
    edge["broker"].stop()
    edge["broker"].start()  # the broker reads its CRL at start
    assert _device(edge, "dev-3") is None, "a revoked certificate must be refused"
    still = _device(edge, "dev-2")
    assert still is not None, "other devices keep working"
    _close(still)


def test_watch_and_simulate_speak_mutual_tls(edge):
    from fleetwarden.app.simulation import simulate
    from fleetwarden.app.watch import watch_mqtt

    certs, ca = edge["certs"], str(edge["files"].ca)
    url = f"mqtts://127.0.0.1:{edge['broker'].tls_port}"
    box: dict = {}

    def run() -> None:
        box["result"] = watch_mqtt(
            url, "fleetwarden/events/#", duration=6.0, tls_ca=ca, tls_cert=str(certs / "gw-1.crt"),
            tls_key=str(certs / "gw-1.key"),
        )  # fmt: skip

    # a watcher needs to subscribe: give gw-1 a subscription grant through the admin listener
    _grant_subscribe(edge, "gw-1")
    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.5)
    sent = simulate(
        devices=24, hours=0.5, seed=3, mqtt=url, tls_ca=ca, tls_cert=str(certs / "gw-1.crt"),
        tls_key=str(certs / "gw-1.key"), per_message=50,
    ).sent_mqtt  # fmt: skip
    t.join(30)
    assert sent > 0
    assert box["result"].events >= sent * 0.9, (box["result"].events, sent)


def _grant_subscribe(edge, user: str) -> None:
    from fleetwarden.app.edge import _control

    answers = _control(
        f"mqtt://127.0.0.1:{edge['broker'].admin_port}", ADMIN, ADMIN_PW,
        [{"command": "addRoleACL", "rolename": "gateway", "acltype": "subscribePattern",
          "topic": "fleetwarden/events/#", "allow": True}],
        10,
    )  # fmt: skip
    assert "error" not in answers[0], answers


def test_tls_files_are_checked(tmp_path):
    from fleetwarden.core.errors import InputError
    from fleetwarden.sources.mqtt import MqttTls

    with pytest.raises(InputError, match="--tls-ca"):
        MqttTls(ca=str(tmp_path / "missing.pem")).check()
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(InputError, match="go together"):
        MqttTls(cert=str(tmp_path / "c.pem")).check()
