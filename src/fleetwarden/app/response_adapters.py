"""Response adapters: what an executed action does to real systems, and how it is undone.

* ``quarantine``: on the Mosquitto broker (dynamic-security plugin, over
  :func:`fleetwarden.app.edge._control`), the device's own-topic role is replaced by a quarantine
  role allowing nothing but ``<prefix>/<id>/status``; the device's nftables containment is written
  (isolate).  Undo restores the role and removes the device from the rule set.
* ``disable-account``: the device's dynsec client is disabled (password logins refused) and
  loses its own-topic role (a certificate login, which the plugin does not authenticate, can
  publish nothing); undo enables it and gives the role back.
* ``restrict``: an nftables rule set limiting the device to its ``allowed_destinations``
  attribute.  Undo removes it.
* ``revoke``: every active certificate of the device through the CA (:func:`identity.revoke`).
  Irreversible: undo refuses.
* ``ticket``: a SOAR webhook, JSON signed with HMAC-SHA256 (header ``X-FleetWarden-Signature:
  sha256=<hex>`` over ``<timestamp>.<body>``, timestamp in ``X-FleetWarden-Timestamp``).
* ``alert``: nothing outside the audit log.

The nftables rule set is the whole ``inet fleetwarden`` table for every contained device, written
to ``nft_dir/fleetwarden.nft`` and always checked with ``nft -c -f``; it is applied (``nft -f``)
only when the config says so (``--apply-nft``, enforce mode).  Secrets (broker admin password,
webhook secret) live in :class:`AdapterConfig` only, never in results, logs or the audit.

*Blind spots.* A quarantined device that is connected keeps its session: the new role applies to
its next publish; the webhook is at-most-once (no retry queue).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetwarden.app.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign  # one signing scheme
from fleetwarden.control import edge
from fleetwarden.control import response as policy
from fleetwarden.core.errors import InputError

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "check_nft",
    "webhook_post",
]

_MAX_SECRET = 4096


class AdapterError(InputError):
    """An adapter that cannot run: missing configuration, a refusal by the system it drives."""


@dataclass(frozen=True, repr=False)
class AdapterConfig:
    """Where the adapters act.  ``repr`` hides the secrets."""

    broker_url: str | None = None
    broker_admin: str | None = None
    broker_password: str | None = None
    prefix: str = edge.DEFAULT_PREFIX
    webhook_url: str | None = None
    webhook_secret: bytes | None = None
    nft_dir: Path | None = None
    apply_nft: bool = False
    nft: str | None = None  # the nft program (found on PATH when None)
    timeout: float = 10.0

    def __repr__(self) -> str:
        return f"AdapterConfig(broker_url={self.broker_url!r}, webhook_url={self.webhook_url!r}, nft_dir={self.nft_dir!r})"


def read_secret(path: Path | None, env: str) -> bytes | None:
    """A secret from a file (first line) or environment variable ``env``; never echoed."""
    if path is not None:
        data = Path(path).read_bytes()[: _MAX_SECRET + 1]
        if len(data) > _MAX_SECRET:
            raise AdapterError(f"{path}: a secret file larger than {_MAX_SECRET} bytes")
        value = data.splitlines()[0].strip() if data.strip() else b""
    else:
        value = os.environ.get(env, "").encode()
    return value or None


# ---------------------------------------------------------------------------------- MQTT (dynsec)


def _broker(config: AdapterConfig) -> tuple[str, str, str]:
    if not (config.broker_url and config.broker_admin and config.broker_password):
        raise AdapterError(
            "no broker configured: --broker URL, --broker-admin NAME and the admin password file are needed"
        )
    return config.broker_url, config.broker_admin, config.broker_password


_ROLE_COMMANDS = ("addClientRole", "removeClientRole", "createRole")
_TOLERATED = ("already", "not found", "not have")  # a role already in place, or already gone


def _send(config: AdapterConfig, commands: list[dict]) -> list[str]:
    """Send dynsec ``commands``; a role command that finds its work done is fine, any other
    refusal raises AdapterError."""
    from fleetwarden.app.edge import _control

    url, user, password = _broker(config)
    answers = _control(url, user, password, commands, config.timeout)
    if len(answers) < len(commands):
        raise AdapterError(f"the broker answered {len(answers)} of {len(commands)} commands")
    for cmd, answer in zip(commands, answers, strict=False):
        problem = str(answer.get("error") or "")
        if problem and not (
            cmd["command"] in _ROLE_COMMANDS and any(t in problem.lower() for t in _TOLERATED)
        ):
            raise AdapterError(f"broker refused {cmd['command']}: {problem[:200]}")
    return [c["command"] for c in commands]


def mqtt_quarantine(config: AdapterConfig, device_id: str) -> dict[str, Any]:
    sent = _send(config, policy.dynsec_quarantine(device_id, config.prefix))
    return {"broker": config.broker_url, "commands": sent, "role": policy.quarantine_role(device_id)}


def mqtt_release(config: AdapterConfig, device_id: str) -> dict[str, Any]:
    return {"broker": config.broker_url, "commands": _send(config, policy.dynsec_release(device_id))}


def mqtt_disable(config: AdapterConfig, device_id: str, enable: bool = False) -> dict[str, Any]:
    commands = policy.dynsec_enable(device_id) if enable else policy.dynsec_disable(device_id)
    return {"broker": config.broker_url, "commands": _send(config, commands)}


# ---------------------------------------------------------------------------------- nftables


def nft_program(config: AdapterConfig) -> str | None:
    return config.nft or shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


def check_nft(path: Path, nft: str | None = None) -> tuple[bool, str]:
    """``nft -c -f path``: (accepted, nft's message).  Raises AdapterError when nft is missing."""
    program = nft or nft_program(AdapterConfig())
    if program is None:
        raise AdapterError("nft is not installed (Debian package nftables): cannot check the rule set")
    done = subprocess.run([program, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    return done.returncode == 0, (done.stderr or done.stdout).strip()[:2000]


def write_nft(config: AdapterConfig, entries: list[policy.NftEntry]) -> dict[str, Any]:
    """Write the rule set of ``entries``, check it (``nft -c``), apply it when configured."""
    folder = config.nft_dir
    if folder is None:
        raise AdapterError("no nftables folder configured (--nft-dir)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleetwarden.nft"
    path.write_text(policy.nft_ruleset(entries))
    program = nft_program(config)
    result: dict[str, Any] = {
        "ruleset": str(path),
        "devices": [e.device_id for e in entries],
        "applied": False,
    }
    if program is None:
        result["checked"] = "skipped: nft is not installed"
        return result
    ok, message = check_nft(path, program)
    if not ok:
        raise AdapterError(f"nft -c refused the generated rule set {path}: {message[:300]}")
    result["checked"] = "nft -c: ok"
    if config.apply_nft:
        done = subprocess.run([program, "-f", str(path)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise AdapterError(f"nft -f failed: {done.stderr.strip()[:300]}")
        result["applied"] = True
    return result


# ---------------------------------------------------------------------------------- webhook


def webhook_post(config: AdapterConfig, payload: dict[str, Any]) -> dict[str, Any]:
    """POST ``payload`` as signed JSON to the SOAR webhook; the answer's status (body not kept)."""
    if not config.webhook_url or not config.webhook_url.startswith(("http://", "https://")):
        raise AdapterError("no webhook configured: --webhook-url http(s)://… is needed for a ticket")
    if not config.webhook_secret:
        raise AdapterError("no webhook secret: FLEETWARDEN_WEBHOOK_SECRET or --webhook-secret-file")
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    stamp = int(time.time())
    request = urllib.request.Request(
        config.webhook_url, data=body, method="POST",
        headers={"Content-Type": "application/json", TIMESTAMP_HEADER: str(stamp),
                 SIGNATURE_HEADER: sign(body, config.webhook_secret, stamp)},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=config.timeout) as answer:  # noqa: S310 (http(s) checked)
            answer.read(1 << 16)
            return {"webhook": config.webhook_url, "status": answer.status}
    except urllib.error.HTTPError as exc:
        raise AdapterError(f"the webhook answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdapterError(
            f"the webhook could not be reached: {str(getattr(exc, 'reason', exc))[:200]}"
        ) from None
