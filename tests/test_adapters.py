"""Response adapters on a real Mosquitto (2.0, dynamic-security plugin, mutual TLS with the
FleetWarden CA), started here on spare ports as tests/test_mtls.py does.

Proven: an approved quarantine replaces the device's role (its event publishes no longer reach
a subscriber, its status topic still does) and writes an nftables rule set accepted by ``nft -c``;
rolling it back restores delivery; disable-account (client disabled, role removed) refuses the
device's publishes until rolled back.  Skips when mosquitto, its plugin, openssl or nft is missing; fails instead under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from tests.conftest import free_port, need, program
from typer.testing import CliRunner

from fleetwarden.app import response as svc
from fleetwarden.app import response_adapters as ad
from fleetwarden.app.edge import DYNSEC_PLUGIN, broker_files, provision_broker
from fleetwarden.app.stores import store_at
from fleetwarden.control import response as rp
from fleetwarden.core.findings import Finding, Incident

ADMIN, ADMIN_PW = "fw-admin", "broker-admin-pw-4567"
PASS = "response adapters passphrase"
PREFIX = "fleetwarden/events"
runner = CliRunner()


def _wait_port(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    exe = program("mosquitto")
    need(exe is not None, "mosquitto is not installed (Debian package mosquitto)")
    need(os.path.exists(DYNSEC_PLUGIN), f"the dynamic-security plugin is missing ({DYNSEC_PLUGIN})")
    need(shutil.which("openssl") is not None, "openssl is not installed")
    home = tmp_path_factory.mktemp("adapterhome")
    env = {"FLEETWARDEN_HOME": str(home), "FLEETWARDEN_CA_PASSPHRASE": PASS}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    from fleetwarden.cli import app

    certs = home / "certs"
    for args in (["ca", "init"], *(["ca", "issue", d, "--out-dir", str(certs)] for d in ("dev-q", "dev-d"))):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
    tls_port, admin_port = free_port(), free_port()
    with store_at(None) as store:
        files = broker_files(
            store, home / "broker", tls_port=tls_port, admin_port=admin_port, admin_user=ADMIN,
            admin_password=ADMIN_PW.encode(),
        )  # fmt: skip
    proc = subprocess.Popen([exe, "-c", str(files.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(proc, tls_port)
        provision_broker(
            f"mqtt://127.0.0.1:{admin_port}", ["dev-q", "dev-d"], admin_user=ADMIN, admin_password=ADMIN_PW
        )
        mp.undo()
        yield {"files": files, "certs": certs, "tls": tls_port, "admin": admin_port}
    finally:
        proc.terminate()
        proc.wait(10)
        mp.undo()


def _device(b, name: str) -> mqtt.Client | None:
    """The device connected over mutual TLS, or None when the broker refused it."""
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}"
    )
    c.tls_set(
        ca_certs=str(b["files"].ca),
        certfile=str(b["certs"] / f"{name}.crt"),
        keyfile=str(b["certs"] / f"{name}.key"),
    )
    c.reconnect_delay_set(30, 60)
    accepted = threading.Event()
    c.on_connect = lambda _c, _u, _f, rc, _p=None: (not rc.is_failure) and accepted.set()
    c.connect("127.0.0.1", b["tls"], keepalive=30)
    c.loop_start()
    if not accepted.wait(3):
        c.loop_stop()
        c.disconnect()
        return None
    return c


@pytest.fixture
def listener(broker):
    got: list = []
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="fw-resp-listener")
    sub.username_pw_set(ADMIN, ADMIN_PW)
    ready = threading.Event()
    sub.on_message = lambda _c, _u, m: got.append(m.topic)
    sub.on_subscribe = lambda *_a, **_k: ready.set()
    sub.connect("127.0.0.1", broker["admin"])
    sub.loop_start()
    sub.subscribe(f"{PREFIX}/#", qos=1)
    assert ready.wait(5)
    yield got
    sub.loop_stop()
    sub.disconnect()


def _delivered(b, got: list, device: str, topic: str) -> bool:
    """Connect as ``device``, publish on ``topic``, and say whether the subscriber received it."""
    c = _device(b, device)
    assert c is not None, f"{device} could not connect"
    try:
        c.publish(topic, json.dumps({"kind": "telemetry", "ts": time.time()}), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and topic not in got:
            time.sleep(0.05)
        return topic in got
    finally:
        got.clear()
        c.loop_stop()
        c.disconnect()


def _config(b, tmp_path) -> ad.AdapterConfig:
    return ad.AdapterConfig(
        broker_url=f"mqtt://127.0.0.1:{b['admin']}",
        broker_admin=ADMIN,
        broker_password=ADMIN_PW,
        nft_dir=tmp_path / "nft",
    )


def _seed(store, device_id: str) -> int:
    store.upsert_devices(
        [
            {
                "device_id": device_id,
                "criticality": "critical",
                "device_class": "sensor",
                "ip": "10.20.0.7",
                "ips": ["10.20.0.7"],
            }
        ]
    )
    f = Finding(device_id, "c2-beacon", "beacon", 0.97, 1e9, 1e9 + 600, ["beacon"], device_id=device_id)
    store.record_results(
        "test",
        [f],
        [Incident(device_id, "c2-beacon", "critical", 95, 1e9, 1e9 + 600, ["beacon"], findings=[f])],
    )
    return store.list_incidents(entity=device_id)[0].id


def test_quarantine_refuses_publish_and_rollback_restores(broker, listener, tmp_path):
    nft = program("nft")
    need(nft is not None, "nft is not installed (Debian package nftables)")
    events, status = f"{PREFIX}/dev-q", f"{PREFIX}/dev-q/status"
    assert _delivered(broker, listener, "dev-q", events)  # before: the device publishes
    policy = rp.parse_policy(
        (svc.resources.files("fleetwarden.control") / "response_policy.toml").read_bytes(), 'mode = "enforce"'
    )
    config = _config(broker, tmp_path)
    with store_at(None) as store:
        inc = _seed(store, "dev-q")
        quarantine = next(
            a for a in svc.propose(store, inc, policy=policy, actor="soc") if a["kind"] == "quarantine"
        )
        svc.approve(store, quarantine["id"], approver="alice")
        done = svc.execute(store, quarantine["id"], policy=policy, config=config, actor="soc")
    assert done["status"] == "executed" and done["approved_by"] == "alice"
    assert done["result"]["mqtt"]["role"] == "quarantine:dev-q"
    assert done["result"]["nft"]["checked"] == "nft -c: ok" and not done["result"]["nft"]["applied"]
    assert "ip saddr { 10.20.0.7 } drop" in (tmp_path / "nft" / "fleetwarden.nft").read_text()
    assert not _delivered(broker, listener, "dev-q", events)  # refused by the quarantine role
    assert _delivered(broker, listener, "dev-q", status)  # its own status topic still passes
    log = broker["files"].log.read_text(errors="replace")
    assert "Denied PUBLISH from dev-q" in log

    with store_at(None) as store:
        back = svc.rollback(store, quarantine["id"], config=config, actor="alice")
        audit = [(e.action, e.actor) for e in store.audit_entries() if e.action.startswith("action.")]
    assert back["status"] == "reverted"
    assert _delivered(broker, listener, "dev-q", events)  # works again
    assert "10.20.0.7" not in (tmp_path / "nft" / "fleetwarden.nft").read_text()
    assert (
        ("action.approved", "alice") in audit
        and ("action.executed", "soc") in audit
        and ("action.reverted", "alice") in audit
    )
    assert ADMIN_PW not in json.dumps(done) + json.dumps(back)


def test_disable_account_refuses_publish_until_rolled_back(broker, listener, tmp_path):
    config = _config(broker, tmp_path)
    assert _delivered(broker, listener, "dev-d", f"{PREFIX}/dev-d")  # before: the device publishes
    policy = rp.parse_policy(
        (svc.resources.files("fleetwarden.control") / "response_policy.toml").read_bytes(),
        'mode = "enforce"\n[[rules]]\nname = "lock"\nactions = ["disable-account"]',
    )
    with store_at(None) as store:
        inc = _seed(store, "dev-d")
        (act,) = svc.propose(store, inc, policy=policy, actor="soc")
        svc.approve(store, act["id"], approver="bob")
        assert svc.execute(store, act["id"], policy=policy, config=config)["status"] == "executed"
        # a certificate login still connects (the plugin does not authenticate it) but may publish nothing
        assert not _delivered(broker, listener, "dev-d", f"{PREFIX}/dev-d")
        assert svc.rollback(store, act["id"], config=config)["status"] == "reverted"
    assert _delivered(broker, listener, "dev-d", f"{PREFIX}/dev-d")


def test_broker_refusal_is_reported(broker, tmp_path):
    bad = ad.AdapterConfig(
        broker_url=f"mqtt://127.0.0.1:{broker['admin']}", broker_admin=ADMIN, broker_password=ADMIN_PW
    )
    with pytest.raises(ad.AdapterError, match="broker refused disableClient"):
        ad.mqtt_disable(bad, "no-such-device")
