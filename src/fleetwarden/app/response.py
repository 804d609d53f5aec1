"""Graduated response services: load the policy and playbooks, propose actions for incidents,
approve / deny / execute / roll back them (every step audited with who asked and who approved),
show an incident with its story, playbook and proposed actions, and dry-run a policy over the
stored incidents.  Decisions are :mod:`fleetwarden.control.response`; the systems touched are
:mod:`fleetwarden.app.response_adapters`.

*Contract.* ``observe`` mode never executes (``execute`` refuses).  An action that needs a human
approval (disruptive on a critical or safety-critical device, or a revocation) executes only once
approved and while the approval is younger than its TTL; an expired approval is refused and the
action is closed (status ``rejected``, ``details.expired`` true; listed as ``expired``).  A
revocation cannot be rolled back.

Policy: the packaged ``response_policy.toml``; ``FLEETWARDEN_HOME/response_policy.toml`` or
``--policy FILE`` overrides its top-level keys.  Playbooks: the packaged ``playbooks.toml``, or
``FLEETWARDEN_HOME/playbooks.toml`` when present.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from fleetwarden.app import response_adapters as adapters
from fleetwarden.config import home
from fleetwarden.control import response as rp
from fleetwarden.core.errors import InputError
from fleetwarden.store.models import Action

__all__ = [
    "ResponseRefused",
    "approve",
    "deny",
    "dry_run",
    "execute",
    "incident_view",
    "list_actions",
    "load_playbooks",
    "load_policy",
    "propose",
    "rollback",
]

_LIVE = ("proposed", "approved", "executed", "failed")
_MAX_FILE = 1 << 20
_CONTAINED = ("quarantine", "restrict")


class ResponseRefused(InputError):
    """An action that may not move: observe mode, missing or expired approval, irreversible."""


# ---------------------------------------------------------------------------------- data files


def _read(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    data = path.read_bytes()[: _MAX_FILE + 1]
    if len(data) > _MAX_FILE:
        raise InputError(f"{path}: {what} file larger than {_MAX_FILE} bytes")
    return data


def load_policy(path: Path | None = None) -> rp.Policy:
    """The packaged policy with ``path`` (else ``FLEETWARDEN_HOME/response_policy.toml`` when it
    exists) overriding its top-level keys."""
    packaged = resources.files("fleetwarden.control").joinpath("response_policy.toml").read_bytes()
    if path is None and (home() / "response_policy.toml").is_file():
        path = home() / "response_policy.toml"
    override = _read(path, "policy") if path is not None else None
    return rp.parse_policy(packaged, override, what=str(path) if path else "response_policy.toml")


def load_playbooks() -> dict[str, Any]:
    local = home() / "playbooks.toml"
    if local.is_file():
        return rp.parse_playbooks(_read(local, "playbooks"), what=str(local))
    return rp.parse_playbooks(resources.files("fleetwarden.control").joinpath("playbooks.toml").read_bytes())


# ---------------------------------------------------------------------------------- rows as mappings


def _device(store: Any, device_id: str | None) -> dict[str, Any] | None:
    d = store.get_device(device_id) if device_id else None
    if d is None:
        return None
    return {
        "device_id": d.device_id, "criticality": d.criticality, "device_class": d.device_class,
        "ip": d.ip, "ips": list(d.ips or []), "attributes": dict(d.attributes or {}), "lifecycle": d.lifecycle,
    }  # fmt: skip


def _incident(store: Any, incident_id: int) -> Any:
    inc = store.get_incident(incident_id)
    if inc is None:
        raise InputError(f"unknown incident {incident_id}")
    return inc


def _incident_map(inc: Any) -> dict[str, Any]:
    return {"id": inc.id, "entity": inc.entity, "device_id": inc.device_id, "category": inc.category,
            "severity": inc.severity, "risk": inc.risk, "status": inc.status}  # fmt: skip


def _decide(
    store: Any, inc: Any, policy: rp.Policy, now: float
) -> tuple[list[rp.ProposedAction], dict | None]:
    device = _device(store, inc.device_id or inc.entity)
    return rp.decide(_incident_map(inc), device, policy, now), device


def _action(store: Any, action_id: int) -> Action:
    with store._read() as s:
        act = s.get(Action, action_id)
    if act is None:
        raise InputError(f"unknown action {action_id}")
    return act


def _ttl(act: Action, policy: rp.Policy) -> float:
    return float((act.details or {}).get("expires_after") or policy.approval_ttl_seconds)


def shown_status(act: Action, now: float) -> str:
    """The stored status, or ``expired`` for an approval past its TTL (or closed as expired)."""
    details = act.details or {}
    if act.status == "rejected" and details.get("expired"):
        return "expired"
    if act.status == "approved" and details.get("needs_approval"):
        ttl = float(details.get("expires_after") or 0)
        if ttl and rp.approval_expired(act.approved_at, ttl, now):
            return "expired"
    return act.status


def action_row(act: Action, now: float | None = None) -> dict[str, Any]:
    d = act.details or {}
    return {
        "id": act.id, "kind": act.kind, "status": shown_status(act, now or time.time()), "incident_id": act.incident_id,
        "device": act.device_id or d.get("device"), "rule": d.get("rule"), "needs_approval": bool(d.get("needs_approval")),
        "approval_reason": d.get("approval_reason", ""), "requested_by": act.requested_by, "approved_by": act.approved_by,
        "requested_at": act.requested_at, "approved_at": act.approved_at, "executed_at": act.executed_at,
        "reverted_at": act.reverted_at, "reason": d.get("reason", ""), "result": d.get("result"), "error": d.get("error"),
    }  # fmt: skip


# ---------------------------------------------------------------------------------- proposing


def propose(
    store: Any, incident_id: int, *, policy: rp.Policy, actor: str = "cli", now: float | None = None
) -> list[dict]:
    """Record the actions ``policy`` proposes for an incident (audited; one live action per kind
    and incident: proposing again adds nothing)."""
    now = time.time() if now is None else now
    inc = _incident(store, incident_id)
    proposed, device = _decide(store, inc, policy, now)
    live = {a.kind for a in store.list_actions(incident_id=incident_id) if a.status in _LIVE}
    rows = []
    for p in proposed:
        if p.kind in live:
            continue
        details = {k: v for k, v in p.to_dict().items() if k not in ("kind", "incident_id", "device_id")}
        details.update(device=p.device_id, policy_mode=policy.mode, policy_version=policy.version)
        act = store.propose_action(
            p.kind, requested_by=actor, incident_id=inc.id,
            device_id=device["device_id"] if device else None, details=details,
        )  # fmt: skip
        rows.append(action_row(act, now))
    return rows


def list_actions(store: Any, *, status: str | None = None, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    rows = [action_row(a, now) for a in store.list_actions()]
    return [r for r in rows if status is None or r["status"] == status]


def approve(store: Any, action_id: int, *, approver: str, now: float | None = None) -> dict:
    """Approve a proposed (or failed) action as ``approver`` (recorded in the row and the audit)."""
    approver = (approver or "").strip()
    if not approver or len(approver) > 200 or not approver.isprintable():
        raise InputError("an approval needs --as NAME (printable, at most 200 characters)")
    act = _action(store, action_id)
    if act.requested_by == approver and (act.details or {}).get("needs_approval"):
        raise ResponseRefused(f"action {action_id}: {approver!r} requested it and cannot approve it too")
    return action_row(store.approve_action(action_id, approved_by=approver), now)


def deny(store: Any, action_id: int, *, actor: str = "cli", note: str = "") -> dict:
    return action_row(
        store.update_action(action_id, "rejected", actor=actor, details={"denied": note[:500] or True})
    )


# ---------------------------------------------------------------------------------- executing


def _ready(store: Any, act: Action, policy: rp.Policy, actor: str, now: float) -> None:
    """Refuse unless the action may run now; a policy-cleared proposal is approved by the policy."""
    details = act.details or {}
    needs = bool(details.get("needs_approval", act.kind in rp.DISRUPTIVE))
    if policy.mode != "enforce":
        raise ResponseRefused(
            f"action {act.id}: the policy is in observe mode: actions are proposed, never executed"
        )
    if act.status == "proposed" and needs:
        raise ResponseRefused(
            f"action {act.id} ({act.kind}) waits for a human approval: {details.get('approval_reason', '')}"
        )
    if act.status == "proposed":
        store.update_action(act.id, "approved", actor=f"policy:{details.get('rule', '?')}")
        return
    if act.status != "approved":
        raise ResponseRefused(f"action {act.id} is {act.status}: only approved actions execute")
    if needs and rp.approval_expired(act.approved_at, _ttl(act, policy), now):
        store.update_action(act.id, "rejected", actor=actor, details={"expired": True, "expired_at": now})
        raise ResponseRefused(
            f"action {act.id}: the approval by {act.approved_by} expired; propose and approve again"
        )


def _nft_entries(store: Any, *, plus: Action | None = None, minus: int | None = None) -> list[rp.NftEntry]:
    acts = [a for a in store.list_actions(status="executed") if a.kind in _CONTAINED and a.id != minus]
    acts += [plus] if plus is not None else []
    entries: dict[str, rp.NftEntry] = {}
    for a in acts:
        device = _device(store, a.device_id)
        addrs = tuple(
            dict.fromkeys([x for x in [*(device or {}).get("ips", []), (device or {}).get("ip")] if x])
        )
        if not device or not addrs:
            continue
        allowed = device["attributes"].get("allowed_destinations") or []
        earlier = entries.get(device["device_id"])
        isolated = a.kind == "quarantine" or (earlier is not None and earlier.mode == "isolate")
        mode = "isolate" if isolated else "restrict"
        entries[device["device_id"]] = rp.NftEntry(
            device["device_id"], mode, addrs, tuple(str(x) for x in allowed[:256])
        )
    return list(entries.values())


def _run_adapter(store: Any, act: Action, config: adapters.AdapterConfig) -> dict[str, Any]:
    device = act.device_id
    if act.kind in rp.DISRUPTIVE and not device:
        raise adapters.AdapterError(f"action {act.id}: the device is not in the inventory")
    if act.kind == "alert":
        return {"alert": "recorded in the audit log"}
    if act.kind == "ticket":
        inc = store.get_incident(act.incident_id) if act.incident_id else None
        payload = {"action_id": act.id, "kind": act.kind, "device": device or (act.details or {}).get("device"),
                   "incident": inc.to_contract() if inc is not None else None, "reason": (act.details or {}).get("reason")}  # fmt: skip
        return adapters.webhook_post(config, payload)
    if act.kind == "revoke":
        from fleetwarden.app.identity import revoke

        return {
            "revoked_serials": revoke(store, device, reason="keyCompromise", actor=f"action:{act.id}"),
            "irreversible": True,
        }
    if act.kind == "disable-account":
        return adapters.mqtt_disable(config, device)
    return _contain(store, act, config)


def _contain(store: Any, act: Action, config: adapters.AdapterConfig) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if act.kind == "quarantine" and config.broker_url:
        result["mqtt"] = adapters.mqtt_quarantine(config, act.device_id)
    if config.nft_dir is not None:
        result["nft"] = adapters.write_nft(config, _nft_entries(store, plus=act))
    if not result:
        raise adapters.AdapterError(f"{act.kind} needs --broker (quarantine) or --nft-dir: nothing to act on")
    return result


def execute(
    store: Any, action_id: int, *, policy: rp.Policy, config: adapters.AdapterConfig,
    actor: str = "cli", now: float | None = None,
) -> dict:  # fmt: skip
    """Run an action's adapter (see the module contract for what is refused); a failing adapter
    leaves the action ``failed`` with its error (it may be approved and retried)."""
    now = time.time() if now is None else now
    act = _action(store, action_id)
    _ready(store, act, policy, actor, now)
    act = _action(store, action_id)
    try:
        result = _run_adapter(store, act, config)
    except InputError as exc:
        store.update_action(action_id, "failed", actor=actor, details={"error": str(exc)[:500]})
        raise
    return action_row(
        store.update_action(action_id, "executed", actor=actor, details={"result": result}), now
    )


def rollback(store: Any, action_id: int, *, config: adapters.AdapterConfig, actor: str = "cli") -> dict:
    """Undo an executed action (quarantine, disable-account, restrict; alert and ticket have
    nothing to undo); a revocation is irreversible and refused."""
    act = _action(store, action_id)
    if act.status != "executed":
        raise ResponseRefused(f"action {action_id} is {act.status}: only executed actions roll back")
    if act.kind in rp.IRREVERSIBLE:
        raise ResponseRefused(
            f"action {action_id} ({act.kind}) is irreversible: issue a new certificate through onboarding"
        )
    undo: dict[str, Any] = {}
    if act.kind == "disable-account":
        undo["mqtt"] = adapters.mqtt_disable(config, act.device_id, enable=True)
    elif act.kind in _CONTAINED:
        if act.kind == "quarantine" and ((act.details or {}).get("result") or {}).get("mqtt"):
            undo["mqtt"] = adapters.mqtt_release(config, act.device_id)
        if ((act.details or {}).get("result") or {}).get("nft"):
            undo["nft"] = adapters.write_nft(config, _nft_entries(store, minus=act.id))
    return action_row(store.update_action(action_id, "reverted", actor=actor, details={"undo": undo}))


# ---------------------------------------------------------------------------------- views


def incident_view(store: Any, incident_id: int, *, policy: rp.Policy, now: float | None = None) -> dict:
    """An incident's story (its findings), evidence, playbook, the policy's proposal and the
    recorded actions: what ``fleetwarden incident show`` prints."""
    now = time.time() if now is None else now
    inc = _incident(store, incident_id)
    proposed, device = _decide(store, inc, policy, now)
    story = [
        {"detector": f.detector, "category": f.category, "severity": f.severity, "score": f.score,
         "first_seen": f.first_seen, "last_seen": f.last_seen, "evidence": list(f.evidence or [])}
        for f in sorted(store.list_findings(incident_id=incident_id), key=lambda f: f.first_seen)
    ]  # fmt: skip
    return {
        "incident": {**inc.to_contract(), "id": inc.id, "status": inc.status, "campaign": inc.campaign},
        "device": device,
        "story": story,
        "policy_mode": policy.mode,
        "playbook": rp.playbook_for((device or {}).get("device_class"), load_playbooks()),
        "proposed": [p.to_dict() for p in proposed],
        "actions": [action_row(a, now) for a in store.list_actions(incident_id=incident_id)],
    }


def dry_run(store: Any, *, policy: rp.Policy, since: float | None = None, limit: int = 10_000) -> list[dict]:
    """What ``policy`` would have proposed for every stored incident (``last_seen >= since``),
    touching nothing: one row per incident with the rule, the actions and which would execute."""
    rows = []
    for inc in store.list_incidents(since=since, limit=limit):
        proposed, device = _decide(store, inc, policy, inc.last_seen)
        rows.append({
            "incident_id": inc.id, "device": (device or {}).get("device_id") or inc.entity, "category": inc.category,
            "risk": inc.risk, "criticality": (device or {}).get("criticality"), "rule": proposed[0].rule if proposed else None,
            "actions": [p.kind for p in proposed], "needs_approval": [p.kind for p in proposed if p.needs_approval],
            "would_execute": [p.kind for p in proposed if p.may_execute],
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------- face entry points


def adapter_config(
    *, broker: str | None = None, broker_admin: str | None = None, broker_password_file: Path | None = None,
    webhook_url: str | None = None, webhook_secret_file: Path | None = None, nft_dir: Path | None = None,
    apply_nft: bool = False, policy: rp.Policy | None = None,
) -> adapters.AdapterConfig:  # fmt: skip
    """The adapters' settings: options first, then ``FLEETWARDEN_BROKER_URL``,
    ``FLEETWARDEN_BROKER_ADMIN``, ``FLEETWARDEN_BROKER_PASSWORD``, ``FLEETWARDEN_WEBHOOK_URL``,
    ``FLEETWARDEN_WEBHOOK_SECRET``; nftables files in ``FLEETWARDEN_HOME/nftables``.
    ``apply_nft`` is honoured in enforce mode only."""
    import os

    if apply_nft and (policy is None or policy.mode != "enforce"):
        raise ResponseRefused("--apply-nft needs a policy in enforce mode")
    password = adapters.read_secret(broker_password_file, "FLEETWARDEN_BROKER_PASSWORD")
    return adapters.AdapterConfig(
        broker_url=broker or os.environ.get("FLEETWARDEN_BROKER_URL") or None,
        broker_admin=broker_admin or os.environ.get("FLEETWARDEN_BROKER_ADMIN") or None,
        broker_password=password.decode("utf-8", "replace") if password else None,
        webhook_url=webhook_url or os.environ.get("FLEETWARDEN_WEBHOOK_URL") or None,
        webhook_secret=adapters.read_secret(webhook_secret_file, "FLEETWARDEN_WEBHOOK_SECRET"),
        nft_dir=Path(nft_dir) if nft_dir else home() / "nftables", apply_nft=apply_nft,
    )  # fmt: skip


def execute_action(
    store: Any, action_id: int, *, policy_file: Path | None = None, actor: str = "cli", **settings: Any
) -> dict:
    """``actions execute``: load the policy and the adapters' settings, then :func:`execute`."""
    policy = load_policy(policy_file)
    return execute(
        store, action_id, policy=policy, config=adapter_config(policy=policy, **settings), actor=actor
    )


def rollback_action(
    store: Any, action_id: int, *, policy_file: Path | None = None, actor: str = "cli", **settings: Any
) -> dict:
    """``actions rollback``: load the adapters' settings, then :func:`rollback`."""
    policy = load_policy(policy_file)
    return rollback(store, action_id, config=adapter_config(policy=policy, **settings), actor=actor)


def propose_for(
    store: Any, incident_id: int, *, policy_file: Path | None = None, actor: str = "cli"
) -> list[dict]:
    return propose(store, incident_id, policy=load_policy(policy_file), actor=actor)


def show_incident(store: Any, incident_id: int, *, policy_file: Path | None = None) -> dict:
    return incident_view(store, incident_id, policy=load_policy(policy_file))


def dry_run_policy(store: Any, *, policy_file: Path | None = None, since: str | None = None) -> dict:
    """``response dry-run``: the policy (file or packaged + home override) over the stored incidents."""
    policy = load_policy(policy_file)
    from fleetwarden.app.export import parse_since  # the one --since reader of every command

    rows = dry_run(store, policy=policy, since=parse_since(since))
    return {"mode": policy.mode, "version": policy.version, "incidents": rows}
