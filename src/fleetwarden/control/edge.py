"""The device edge's broker policy, pure: who may publish where, as Mosquitto's dynamic-security
plugin understands it, the broker's configuration text, and the broker's server certificate.

*Contract.* Every device is one dynsec client whose username is its certificate's common name (the
device id; the TLS listener has ``use_identity_as_username true``) with one role,
``device:<id>``, allowing ``publishClientSend`` on its own topics only: ``<prefix>/<id>`` and
``<prefix>/<id>/#`` (``prefix`` ``fleetwarden/events``: the layout ``simulate --mqtt`` publishes
and ``watch --mqtt`` reads, the device being the level after ``events``).  A gateway (a service
forwarding for many devices, such as ``simulate --mqtt``) gets role ``gateway`` allowing
``<prefix>/#``.  The plugin's default ACL denies any other publish, so a device publishing on
another device's topic is refused by the broker and logged ("Denied PUBLISH"), which
:mod:`fleetwarden.sources.mosquitto` reads back as a finding.

*Blind spots.* Subscriptions are not restricted beyond the plugin's defaults (devices may not
subscribe); a gateway's role trusts it for every device.

*Reference.* Mosquitto dynamic security plugin (``$CONTROL/dynamic-security/v1``, mosquitto.org
documentation); AWS IoT policy variables (``${iot:Connection.Thing.ThingName}``) for the same idea.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetwarden.control.ca import CertificateAuthority
from fleetwarden.core.errors import InputError

__all__ = [
    "DEFAULT_PREFIX",
    "GATEWAY_ROLE",
    "EdgeError",
    "device_role_name",
    "dynsec_bootstrap",
    "issue_broker_certificate",
    "mosquitto_config",
    "provision_commands",
]

DEFAULT_PREFIX = "fleetwarden/events"
GATEWAY_ROLE = "gateway"
DYNSEC_ITERATIONS = 101  # what mosquitto_ctrl writes (PBKDF2-SHA512)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class EdgeError(InputError):
    """A bad device id, topic prefix or broker setting."""


def _check_name(name: str, what: str = "device id") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise EdgeError(f"bad {what} {str(name)[:60]!r}: letters, digits and ._:@- only, at most 128")
    return name


def _check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix or "") or len(prefix) > 200:
        raise EdgeError(f"bad topic prefix {prefix[:60]!r}: plain topic levels, no wildcards")
    return prefix


def device_role_name(device_id: str) -> str:
    return f"device:{_check_name(device_id)}"


def _publish_acls(topics: Iterable[str]) -> list[dict]:
    return [{"acltype": "publishClientSend", "topic": t, "priority": 0, "allow": True} for t in topics]


def provision_commands(
    device_ids: Iterable[str], *, prefix: str = DEFAULT_PREFIX, gateways: Iterable[str] = ()
) -> list[dict]:
    """The dynsec commands that give each device its client and own-topic role, and each gateway
    the gateway role (create commands; :func:`fleetwarden.app.edge.provision_broker` sends them)."""
    prefix = _check_prefix(prefix)
    commands: list[dict] = []
    for device in sorted(set(device_ids)):
        role = device_role_name(device)
        acls = _publish_acls([f"{prefix}/{device}", f"{prefix}/{device}/#"])
        commands.append({"command": "createRole", "rolename": role, "acls": acls})
        commands.append({"command": "createClient", "username": device, "roles": [{"rolename": role}]})
    gateways = sorted({_check_name(g, "gateway name") for g in gateways})
    if gateways:
        commands.append({"command": "createRole", "rolename": GATEWAY_ROLE, "acls": _publish_acls([f"{prefix}/#"])})
        for g in gateways:
            commands.append({"command": "createClient", "username": g, "roles": [{"rolename": GATEWAY_ROLE}]})
    return commands


def dynsec_bootstrap(admin_user: str, admin_password: bytes, salt: bytes) -> dict:
    """The plugin's first configuration: one admin client (password hashed as the plugin does:
    PBKDF2-SHA512, ``DYNSEC_ITERATIONS``) whose role may use the control topic; publishing denied
    by default.  ``salt``: 12 random bytes from the caller."""
    _check_name(admin_user, "admin user")
    if len(admin_password) < 12:
        raise EdgeError("the broker admin password must have at least 12 characters")
    digest = hashlib.pbkdf2_hmac("sha512", admin_password, salt, DYNSEC_ITERATIONS)
    control = "$CONTROL/dynamic-security/#"
    acls = [
        {"acltype": "publishClientSend", "topic": control, "allow": True},
        {"acltype": "publishClientReceive", "topic": control, "allow": True},
        {"acltype": "subscribePattern", "topic": control, "allow": True},
        {"acltype": "publishClientReceive", "topic": "#", "allow": True},
        {"acltype": "subscribePattern", "topic": "#", "allow": True},
        {"acltype": "unsubscribePattern", "topic": "#", "allow": True},
    ]
    return {
        "clients": [
            {
                "username": admin_user,
                "textName": "FleetWarden broker admin",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": DYNSEC_ITERATIONS,
                "roles": [{"rolename": "admin"}],
            }
        ],
        "roles": [{"rolename": "admin", "acls": acls}],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def mosquitto_config(
    *,
    tls_port: int,
    cafile: str,
    certfile: str,
    keyfile: str,
    crlfile: str,
    dynsec_file: str,
    plugin: str,
    log_file: str,
    admin_port: int | None = None,
    bind: str = "127.0.0.1",
    user: str | None = None,
) -> str:
    """``mosquitto.conf`` for the edge: a TLS listener requiring a client certificate from the
    FleetWarden CA (checked against its CRL; the certificate's CN is the username), the dynamic
    security plugin, ``log_type all`` to ``log_file``, and optionally a password listener on
    ``bind``:``admin_port`` for the dynsec admin."""
    values = [cafile, certfile, keyfile, crlfile, dynsec_file, plugin, log_file, bind, user or ""]
    if any("\n" in v or "\r" in v for v in values):
        raise EdgeError("broker settings may not contain line breaks")
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        f"log_dest file {log_file}",
        "log_type all",
        f"plugin {plugin}",
        f"plugin_opt_config_file {dynsec_file}",
    ]
    if user:
        lines.insert(0, f"user {user}")
    if admin_port is not None:
        lines += [f"listener {int(admin_port)} {bind}"]
    lines += [
        f"listener {int(tls_port)} {bind}",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        f"crlfile {crlfile}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    return "\n".join(lines) + "\n"


def issue_broker_certificate(
    ca: CertificateAuthority, hosts: Iterable[str], public_key: object, *, now: datetime, days: int = 365
) -> x509.Certificate:
    """The broker's server certificate (``serverAuth``), signed by the FleetWarden CA, naming
    ``hosts`` (DNS names or IP addresses) so devices verify the broker with the same CA."""
    hosts = list(hosts)
    if not hosts or len(hosts) > 16:
        raise EdgeError("the broker certificate needs 1 to 16 host names")
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(_check_name(h, "host name")))
    start = now - timedelta(minutes=5)
    end = min(start + timedelta(days=days), ca.certificate.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, ca.hash_algorithm)
    )
