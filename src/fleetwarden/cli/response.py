"""``fleetwarden actions`` / ``response`` / ``incident show``: graduated response (propose, approve,
execute, roll back), the policy's dry-run over stored incidents, and an incident with its story,
playbook and proposed actions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.cli._common import AsJson, DbUrl, _run, out
from fleetwarden.cli.incident import incident_app
from fleetwarden.report import safe

actions_app = typer.Typer(
    no_args_is_help=True, help="Response actions: list, approve, deny, execute, roll back."
)
response_app = typer.Typer(no_args_is_help=True, help="The response policy: dry-run over stored incidents.")
# `incident show` joins the `incident` group of cli/incident.py (verdicts, labels)
__all__ = ["actions_app", "incident_app", "response_app"]

ActionId = Annotated[int, typer.Argument(min=1, help="action id")]
IncidentId = Annotated[int, typer.Argument(min=1, help="incident id")]
PolicyFile = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="policy TOML overriding the packaged one (default: FLEETWARDEN_HOME/response_policy.toml)",
    ),
]
Actor = Annotated[str, typer.Option("--as", help="who does this (recorded in the audit log)")]
Broker = Annotated[
    str | None,
    typer.Option("--broker", help="broker admin listener, mqtt://host:port (or FLEETWARDEN_BROKER_URL)"),
]
BrokerAdmin = Annotated[
    str | None, typer.Option("--broker-admin", help="dynsec admin user (or FLEETWARDEN_BROKER_ADMIN)")
]
BrokerPw = Annotated[
    Path | None,
    typer.Option(
        "--broker-password-file", help="file holding the admin password (or FLEETWARDEN_BROKER_PASSWORD)"
    ),
]
WebhookUrl = Annotated[
    str | None, typer.Option("--webhook-url", help="SOAR webhook (or FLEETWARDEN_WEBHOOK_URL)")
]
WebhookSecret = Annotated[
    Path | None,
    typer.Option("--webhook-secret-file", help="HMAC secret file (or FLEETWARDEN_WEBHOOK_SECRET)"),
]
NftDir = Annotated[
    Path | None,
    typer.Option(
        "--nft-dir", help="where the nftables rule set is written (default FLEETWARDEN_HOME/nftables)"
    ),
]
ApplyNft = Annotated[
    bool, typer.Option("--apply-nft", help="apply the rule set with nft -f (enforce mode only)")
]


def _with_store(db: str | None, fn, *args, **kwargs):
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


def _json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _actions_table(rows: list[dict]) -> None:
    from fleetwarden.report import table_of, ts_text

    if not rows:
        out.print("No actions.")
        return
    cells = [
        (r["id"], r["kind"], r["status"], r["incident_id"] or "", r["device"] or "", r["rule"] or "",
         "yes" if r["needs_approval"] else "", r["requested_by"], r["approved_by"] or "", ts_text(r["requested_at"]))
        for r in rows
    ]  # fmt: skip
    columns = (
        "id",
        "kind",
        "status",
        "incident",
        "device",
        "rule",
        "approval",
        "requested by",
        "approved by",
        "requested",
    )
    out.print(table_of(columns, cells))


def _one(row: dict, as_json: bool) -> None:
    if as_json:
        _json(row)
        return
    line = f"action {row['id']} {row['kind']} on {row['device'] or '-'}: {row['status']}"
    if row.get("approved_by"):
        line += f" (approved by {row['approved_by']})"
    out.print(safe(line))


@actions_app.command("list")
def actions_list(
    status: Annotated[
        str | None,
        typer.Option("--status", help="proposed, approved, expired, executed, reverted, rejected, failed"),
    ] = None,
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Response actions with who requested and who approved them."""
    from fleetwarden.app.response import list_actions

    rows = _with_store(db, list_actions, status=status)
    _json(rows) if as_json else _actions_table(rows)


@actions_app.command("propose")
def actions_propose(
    incident_id: IncidentId,
    policy: PolicyFile = None,
    actor: Actor = "cli",
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Record the actions the policy proposes for an incident."""
    from fleetwarden.app.response import propose_for

    rows = _with_store(db, propose_for, incident_id, policy_file=policy, actor=actor)
    _json(rows) if as_json else _actions_table(rows)


@actions_app.command("approve")
def actions_approve(
    action_id: ActionId,
    actor: Annotated[str, typer.Option("--as", help="the approver's name")],
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Approve a proposed action (the approval expires after the policy's TTL)."""
    from fleetwarden.app.response import approve

    _one(_with_store(db, approve, action_id, approver=actor), as_json)


@actions_app.command("deny")
def actions_deny(
    action_id: ActionId,
    note: Annotated[str, typer.Option("--note", help="why")] = "",
    actor: Actor = "cli",
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Reject a proposed or approved action."""
    from fleetwarden.app.response import deny

    _one(_with_store(db, deny, action_id, actor=actor, note=note), as_json)


@actions_app.command("execute")
def actions_execute(
    action_id: ActionId, policy: PolicyFile = None, actor: Actor = "cli", broker: Broker = None,
    broker_admin: BrokerAdmin = None, broker_password_file: BrokerPw = None, webhook_url: WebhookUrl = None,
    webhook_secret_file: WebhookSecret = None, nft_dir: NftDir = None, apply_nft: ApplyNft = False,
    db: DbUrl = None, as_json: AsJson = False,
) -> None:  # fmt: skip
    """Execute an action (enforce mode; approved when the policy requires a human)."""
    from fleetwarden.app.response import execute_action

    row = _with_store(
        db, execute_action, action_id, policy_file=policy, actor=actor, broker=broker, broker_admin=broker_admin,
        broker_password_file=broker_password_file, webhook_url=webhook_url, webhook_secret_file=webhook_secret_file,
        nft_dir=nft_dir, apply_nft=apply_nft,
    )  # fmt: skip
    _one(row, as_json)


@actions_app.command("rollback")
def actions_rollback(
    action_id: ActionId, policy: PolicyFile = None, actor: Actor = "cli", broker: Broker = None,
    broker_admin: BrokerAdmin = None, broker_password_file: BrokerPw = None, nft_dir: NftDir = None,
    apply_nft: ApplyNft = False, db: DbUrl = None, as_json: AsJson = False,
) -> None:  # fmt: skip
    """Undo an executed action (a revocation is irreversible)."""
    from fleetwarden.app.response import rollback_action

    row = _with_store(
        db, rollback_action, action_id, policy_file=policy, actor=actor, broker=broker, broker_admin=broker_admin,
        broker_password_file=broker_password_file, nft_dir=nft_dir, apply_nft=apply_nft,
    )  # fmt: skip
    _one(row, as_json)


@response_app.command("dry-run")
def response_dry_run(
    policy: PolicyFile = None,
    since: Annotated[
        str | None, typer.Option("--since", help="incidents last seen at or after this ISO 8601 time")
    ] = None,
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """What a policy would have done over the stored incidents; touches nothing."""
    from fleetwarden.app.response import dry_run_policy
    from fleetwarden.report import table_of

    result = _with_store(db, dry_run_policy, policy_file=policy, since=since)
    if as_json:
        _json(result)
        return
    out.print(
        safe(
            f"policy version {result['version']}, mode {result['mode']}: {len(result['incidents'])} incident(s)"
        )
    )
    cells = [
        (r["incident_id"], r["device"], r["category"], r["risk"], r["criticality"] or "", r["rule"] or "",
         ", ".join(r["actions"]), ", ".join(r["needs_approval"]), ", ".join(r["would_execute"]))
        for r in result["incidents"]
    ]  # fmt: skip
    out.print(
        table_of(
            (
                "incident",
                "device",
                "category",
                "risk",
                "criticality",
                "rule",
                "actions",
                "approval",
                "would execute",
            ),
            cells,
        )
    )


@incident_app.command("show")
def incident_show(
    incident_id: IncidentId, policy: PolicyFile = None, db: DbUrl = None, as_json: AsJson = False
) -> None:
    """An incident: its story, evidence, playbook and the actions proposed."""
    from fleetwarden.app.response import show_incident

    view = _with_store(db, show_incident, incident_id, policy_file=policy)
    _json(view) if as_json else _render_incident(view)


def _render_incident(view: dict) -> None:
    from fleetwarden.report import table_of, ts_text

    inc = view["incident"]
    out.print(
        safe(
            f"incident {inc.get('id')}: {inc.get('entity')} {inc.get('category')} risk {inc.get('risk')} ({inc.get('severity')}), {inc.get('status')}"
        )
    )
    out.print(safe("story:"))
    for step in view["story"]:
        out.print(
            safe(
                f"  {ts_text(step['first_seen'])} {step['detector']} {step['category']} {step['severity']}: {'; '.join(step['evidence'][:3])}"
            )
        )
    out.print(safe("evidence:"))
    for line in (inc.get("evidence") or [])[:20]:
        out.print(safe(f"  - {line}"))
    book = view["playbook"]
    out.print(safe(f"playbook {book['class']} (version {book['version']}):"))
    for n, step in enumerate(book["containment"], 1):
        out.print(safe(f"  {n}. {step}"))
    out.print(
        safe(
            "  escalation: "
            + " -> ".join(f"{lvl} ({book['owners'].get(lvl, '?')})" for lvl in book["escalation"])
        )
    )
    out.print(safe(f"proposed actions (policy mode {view['policy_mode']}):"))
    rows = [
        (p["kind"], p["rule"], "yes: " + p["approval_reason"] if p["needs_approval"] else "no", p["reason"])
        for p in view["proposed"]
    ]
    out.print(table_of(("action", "rule", "approval", "why"), rows))
    if view["actions"]:
        _actions_table(view["actions"])
