"""The device edge service: a Mosquitto broker speaking mutual TLS with the fleet's certificates.

:func:`broker_files` writes what the broker needs (its server certificate from the FleetWarden CA,
the CA certificate, the current CRL, the dynamic-security bootstrap with an admin, and
``mosquitto.conf``); :func:`provision_broker` gives every device its dynsec client and own-topic
role over the plugin's control topic (``$CONTROL/dynamic-security/v1``); :func:`fleet_device_ids`
names the devices holding an active certificate.  Policy is :mod:`fleetwarden.control.edge`.

The admin password is read from a file or given by the caller; it is hashed into the dynsec file
and never written or printed in clear.  Revocation takes effect at the broker when it loads a new
CRL: write it (``fleetwarden ca crl --out``) and restart the broker.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fleetwarden.control import ca as x509ca
from fleetwarden.control import edge
from fleetwarden.store import Store

__all__ = ["BrokerFiles", "ProvisionResult", "broker_files", "fleet_device_ids", "provision_broker"]

DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"


@dataclass(frozen=True)
class BrokerFiles:
    folder: Path
    config: Path
    ca: Path
    cert: Path
    key: Path
    crl: Path
    dynsec: Path
    log: Path


@dataclass
class ProvisionResult:
    commands: int = 0
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # clients or roles the broker already had


def broker_files(
    store: Store,
    folder: Path,
    *,
    tls_port: int,
    admin_port: int | None,
    admin_user: str,
    admin_password: bytes,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    plugin: str = DYNSEC_PLUGIN,
    passphrase_file: Path | None = None,
    actor: str = "cli",
) -> BrokerFiles:
    """Write the broker's files into ``folder`` (created 0700): a server certificate for ``hosts``
    signed by the CA (audited), the CA certificate, a fresh CRL, the dynsec bootstrap and the
    configuration.  Needs the CA passphrase (as ``fleetwarden ca``)."""
    from fleetwarden.app import identity
    from fleetwarden.store import identity as ids

    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    authority = identity.load_authority(passphrase_file)
    files = _paths(folder)
    key = x509ca.generate_key("ecdsa-p256")
    cert = edge.issue_broker_certificate(authority, hosts, key.public_key(), now=datetime.now(UTC))
    _write(files.key, x509ca.private_key_pem(key), 0o600)
    _write(files.cert, x509ca.certificate_pem(cert), 0o644)
    _write(files.ca, x509ca.certificate_pem(authority.certificate), 0o644)
    ids.record_ca_event(
        store, "ca.broker_certificate", {"hosts": list(hosts), "fingerprint": x509ca.fingerprint(cert)}, actor=actor
    )
    identity.crl(store, files.crl, passphrase_file=passphrase_file, actor=actor)
    bootstrap = edge.dynsec_bootstrap(admin_user, admin_password, secrets.token_bytes(12))
    _write(files.dynsec, json.dumps(bootstrap, indent=2).encode(), 0o600)
    text = edge.mosquitto_config(
        tls_port=tls_port, admin_port=admin_port, cafile=str(files.ca), certfile=str(files.cert),
        keyfile=str(files.key), crlfile=str(files.crl), dynsec_file=str(files.dynsec), plugin=plugin,
        log_file=str(files.log), user=_run_as(),
    )  # fmt: skip
    _write(files.config, text.encode(), 0o600)
    return files


def _paths(folder: Path) -> BrokerFiles:
    return BrokerFiles(
        folder, folder / "mosquitto.conf", folder / "ca.crt", folder / "broker.crt", folder / "broker.key",
        folder / "ca.crl", folder / "dynsec.json", folder / "mosquitto.log",
    )  # fmt: skip


def _run_as() -> str | None:
    """As root Mosquitto drops to user ``mosquitto``, who cannot read 0700 folders: stay root then."""
    if os.geteuid() != 0:
        return None
    import pwd

    return pwd.getpwuid(0).pw_name


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def fleet_device_ids(store: Store) -> list[str]:
    """Devices holding an active certificate (the identities the broker should know)."""
    from fleetwarden.app.identity import list_certificates

    return sorted({c["device_id"] for c in list_certificates(store, status="active")})


def provision_broker(
    url: str,
    device_ids: list[str],
    *,
    admin_user: str,
    admin_password: str,
    gateways: tuple[str, ...] = (),
    prefix: str = edge.DEFAULT_PREFIX,
    timeout: float = 10.0,
) -> ProvisionResult:
    """Send the dynsec commands of :func:`fleetwarden.control.edge.provision_commands` to the broker
    at ``url`` (a listener where ``admin_user`` logs in with a password) and check every answer;
    a client or role that already exists is reported, not an error.  Raises EdgeError when the
    broker refuses a command or does not answer within ``timeout``."""
    commands = edge.provision_commands(device_ids, prefix=prefix, gateways=gateways)
    result = ProvisionResult(commands=len(commands))
    for start in range(0, len(commands), 100):  # bounded messages
        chunk = commands[start : start + 100]
        answers = _control(url, admin_user, admin_password, chunk, timeout)
        for cmd, answer in zip(chunk, answers, strict=False):
            name = cmd.get("username") or cmd.get("rolename")
            problem = answer.get("error")
            if problem is None:
                result.created.append(name)
            elif "already exists" in str(problem):
                result.existing.append(name)
            else:
                raise edge.EdgeError(f"broker refused {cmd['command']} {name}: {str(problem)[:200]}")
    return result


def _control(url: str, user: str, password: str, commands: list[dict], timeout: float) -> list[dict]:
    """One request on the dynsec control topic and its answers (``responses``, in order)."""
    import paho.mqtt.client as mqtt

    from fleetwarden.sources.mqtt import _connect, parse_mqtt_url

    target = parse_mqtt_url(url)
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"fw-admin-{os.getpid()}")
    client.username_pw_set(user, password)
    answered, subscribed, box = threading.Event(), threading.Event(), {}

    def on_message(_c, _u, msg) -> None:
        try:
            box["answer"] = json.loads(msg.payload[:1 << 20])
        except ValueError:
            box["answer"] = {}
        answered.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_a, **_k: subscribed.set()
    _connect(client, target, timeout)
    try:
        client.subscribe(CONTROL_TOPIC + "/response", qos=1)
        if not subscribed.wait(timeout):
            raise edge.EdgeError("the broker did not confirm the dynsec response subscription")
        client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        if not answered.wait(timeout):
            raise edge.EdgeError(f"no dynsec answer within {timeout:.0f} s (is the plugin loaded, is {user} its admin?)")
    finally:
        client.loop_stop()
        client.disconnect()
    responses = box["answer"].get("responses") if isinstance(box["answer"], dict) else None
    if not isinstance(responses, list):
        raise edge.EdgeError("the broker's dynsec answer is not a list of responses")
    return [r if isinstance(r, dict) else {} for r in responses]


