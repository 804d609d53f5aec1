"""Graduated response: the policy's decisions, the action lifecycle in a real store (SQLite and
PostgreSQL) with approvals, expiry and the audit, the SOAR webhook against a real local HTTP server
that checks the HMAC signature, the nftables rule set checked by ``nft -c`` (never applied here),
dry-run and ``incident show`` through the CLI.  The Mosquitto quarantine is tests/test_adapters.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.conftest import need, program
from typer.testing import CliRunner

from fleetwarden.app import response as svc
from fleetwarden.app import response_adapters as ad
from fleetwarden.control import response as rp
from fleetwarden.core.findings import Finding, Incident
from fleetwarden.store import open_store

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1] / "src" / "fleetwarden" / "control"
T0 = 1_780_000_000.0
ENFORCE = 'mode = "enforce"\n'


def _policy(extra: str = "") -> rp.Policy:
    return rp.parse_policy((ROOT / "response_policy.toml").read_bytes(), extra or None)


def _need_nft() -> str:
    nft = program("nft")
    need(nft is not None, "nft is not installed (Debian package nftables)")
    return nft


# ---------------------------------------------------------------------------------- policy (pure)


def test_packaged_policy_and_playbooks_parse():
    policy = _policy()
    assert policy.mode == "observe" and policy.version == 1 and policy.approval_ttl_hours == 4.0
    books = rp.parse_playbooks((ROOT / "playbooks.toml").read_bytes())
    assert set(books["playbooks"]) == set(rp.PLAYBOOK_CLASSES) and books["version"]
    assert rp.playbook_for("PLC", books)["class"] == "controller"
    assert rp.playbook_for("toaster", books)["class"] == "default"
    assert "engineering" in rp.playbook_for("medical", books)["escalation"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('mode = "yolo"', "mode: expected 'observe' or 'enforce'"),
        ('[[rules]]\nname = "x"\nactions = ["nuke"]', "rule 'x'.actions: unknown value 'nuke'"),
        (
            '[[rules]]\nname = "x"\nmin_risk = 101\nactions = ["alert"]',
            "rule 'x'.min_risk: expected an integer 0-100",
        ),
        (
            '[[rules]]\nname = "x"\nactions = ["alert"]\n[[rules]]\nname = "x"\nactions = ["alert"]',
            "duplicate rule name 'x'",
        ),
        ('colour = "red"', "unknown field 'colour'"),
        ("approval_ttl_hours = -1", "approval_ttl_hours"),
        ("mode = ", "not valid TOML"),
        ('[[rules]]\nname = "x"\nactions = ["alert"]\nwhen = 1', "rules[0]: unknown field 'when'"),
    ],
)
def test_policy_errors_name_the_field(override, message):
    with pytest.raises(
        rp.PolicyError,
        match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ):
        _policy(override)


def _inc(risk: int, category: str = "c2-beacon", severity: str = "critical") -> dict:
    return {"id": 7, "entity": "d1", "risk": risk, "category": category, "severity": severity}


def test_decide_first_rule_fires_with_reason_and_approvals():
    policy = _policy(ENFORCE)
    critical = {"device_id": "d1", "criticality": "critical", "device_class": "sensor"}
    acts = rp.decide(_inc(90), critical, policy, T0)
    assert [a.kind for a in acts] == ["ticket", "quarantine"]
    assert {a.rule for a in acts} == {"confirmed-compromise"}
    assert "risk 90 >= 85" in acts[1].reason and "criticality critical" in acts[1].reason
    ticket, quarantine = acts
    assert not ticket.needs_approval and ticket.may_execute
    assert (
        quarantine.needs_approval and not quarantine.may_execute and "critical" in quarantine.approval_reason
    )
    # a low-criticality medical device is safety-critical by class
    medical = {"device_id": "d1", "criticality": "low", "device_class": "medical"}
    q = rp.decide(_inc(90), medical, policy, T0)[1]
    assert q.needs_approval and "safety-critical" in q.approval_reason
    # a low-criticality sensor: the policy may contain it at once in enforce mode
    low = {"device_id": "d1", "criticality": "low", "device_class": "sensor"}
    assert rp.decide(_inc(90), low, policy, T0)[1].may_execute
    # below every threshold: the default rule (alert)
    assert [a.kind for a in rp.decide(_inc(5, "scan", "low"), low, policy, T0)] == ["alert"]
    # a revocation always waits for a human (irreversible), even on a low device
    revoke = _policy(ENFORCE + '[[rules]]\nname = "r"\nactions = ["revoke"]')
    r = rp.decide(_inc(10), low, revoke, T0)[0]
    assert r.needs_approval and not r.reversible and "irreversible" in r.approval_reason


def test_observe_mode_never_may_execute():
    acts = rp.decide(_inc(90), {"device_id": "d1", "criticality": "low"}, _policy(), T0)
    assert acts and not any(a.may_execute for a in acts)
    assert all("observe" in a.notes[0] for a in acts)


def test_approval_expiry():
    assert not rp.approval_expired(T0, 3600, T0 + 3600)
    assert rp.approval_expired(T0, 3600, T0 + 3601)
    assert rp.approval_expired(None, 3600, T0)


# ---------------------------------------------------------------------------------- nftables (nft -c)


def test_nft_accepts_generated_ruleset_and_rejects_broken(tmp_path):
    nft = _need_nft()
    text = rp.nft_ruleset([
        rp.NftEntry("cam-1", "isolate", ("10.0.0.5", "fd00::5")),
        rp.NftEntry("pos-1", "restrict", ("10.0.0.6",), ("203.0.113.7", "10.1.0.0/16", "2001:db8::/32")),
    ])  # fmt: skip
    assert "table inet fleetwarden {" in text and 'comment "fleetwarden isolate cam-1"' in text
    good = tmp_path / "good.nft"
    good.write_text(text)
    assert ad.check_nft(good, nft) == (True, "")
    broken = tmp_path / "broken.nft"
    broken.write_text(text.replace("drop", "dorp", 1))
    ok, message = ad.check_nft(broken, nft)
    assert not ok and "syntax error" in message
    empty = tmp_path / "empty.nft"
    empty.write_text(rp.nft_ruleset([]))  # undoing the last device removes the table
    assert ad.check_nft(empty, nft)[0] and "delete table inet fleetwarden" in empty.read_text()


def test_nft_refuses_hostile_values():
    with pytest.raises(rp.PolicyError, match="bad address"):
        rp.nft_ruleset([rp.NftEntry("d1", "isolate", ("10.0.0.1; flush ruleset",))])
    with pytest.raises(rp.PolicyError, match="bad device id"):
        rp.nft_ruleset([rp.NftEntry('d1" drop', "isolate", ("10.0.0.1",))])


# ---------------------------------------------------------------------------------- webhook


class _Receiver(BaseHTTPRequestHandler):
    secret = b""
    got: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 1 << 20))
        stamp = self.headers.get(ad.TIMESTAMP_HEADER, "")
        want = "sha256=" + hmac.new(self.secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, self.headers.get(ad.SIGNATURE_HEADER, ""))
        if ok:
            type(self).got.append(json.loads(body))
        self.send_response(202 if ok else 401)
        self.end_headers()

    def log_message(self, *_a):
        return


@pytest.fixture
def soar():
    _Receiver.secret, _Receiver.got = b"soar-shared-secret-123", []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver
    server.shutdown()
    server.server_close()


def test_webhook_signature_verified_by_server(soar):
    url, receiver = soar
    good = ad.AdapterConfig(webhook_url=url, webhook_secret=receiver.secret)
    assert ad.webhook_post(good, {"incident": 1}) == {"webhook": url, "status": 202}
    assert receiver.got == [{"incident": 1}]
    bad = ad.AdapterConfig(webhook_url=url, webhook_secret=b"wrong")
    with pytest.raises(ad.AdapterError, match="HTTP 401"):
        ad.webhook_post(bad, {"incident": 2})
    assert len(receiver.got) == 1
    assert receiver.secret.decode() not in repr(good)


# ---------------------------------------------------------------------------------- lifecycle in a store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fw.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        schema = f"fw_resp_{uuid.uuid4().hex[:10]}"
    st = open_store(url, schema=schema)
    yield st
    st.close()
    if schema:
        eng = sa.create_engine(url)
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        eng.dispose()


def _seed(
    store, device_id: str, criticality: str, device_class: str = "sensor", risk_score: float = 0.97
) -> int:
    store.upsert_devices([{
        "device_id": device_id, "criticality": criticality, "device_class": device_class, "ip": "10.9.0.5",
        "ips": ["10.9.0.5"], "attributes": {"allowed_destinations": ["10.9.0.1", "203.0.113.0/24"]},
    }])  # fmt: skip
    f = Finding(
        device_id,
        "c2-beacon",
        "beacon",
        risk_score,
        T0,
        T0 + 600,
        ["beacon every 60 s to 198.51.100.9"],
        device_id=device_id,
    )
    store.record_results(
        "test",
        [f],
        [
            Incident(
                device_id, "c2-beacon", "critical", 92, T0, T0 + 600, ["beacon to 198.51.100.9"], findings=[f]
            )
        ],
    )
    return next(i.id for i in store.list_incidents(entity=device_id))


def _config(tmp_path, url=None, secret=None):
    return ad.AdapterConfig(webhook_url=url, webhook_secret=secret, nft_dir=tmp_path / "nft")


def test_observe_mode_proposes_and_never_executes(store, tmp_path):
    inc = _seed(store, "d-low", "low")
    rows = svc.propose(store, inc, policy=_policy(), actor="analyst")
    assert [r["kind"] for r in rows] == ["ticket", "quarantine"] and rows[0]["requested_by"] == "analyst"
    assert svc.propose(store, inc, policy=_policy(), actor="analyst") == []  # one live action per kind
    for r in rows:
        with pytest.raises(svc.ResponseRefused, match="observe mode"):
            svc.execute(store, r["id"], policy=_policy(), config=_config(tmp_path))
    assert {a.status for a in store.list_actions()} == {"proposed"}
    assert not (tmp_path / "nft").exists()


def test_critical_device_waits_for_approval_and_approval_expires(store, tmp_path, soar):
    url, receiver = soar
    policy = _policy(ENFORCE)
    inc = _seed(store, "d-crit", "critical")
    ticket, quarantine = svc.propose(store, inc, policy=policy, actor="analyst")
    config = _config(tmp_path, url, receiver.secret)
    # the ticket needs no human: the policy clears it and the webhook gets the incident
    done = svc.execute(store, ticket["id"], policy=policy, config=config, actor="analyst")
    assert done["status"] == "executed" and done["approved_by"] == "policy:confirmed-compromise"
    assert receiver.got[0]["incident"]["entity"] == "d-crit" and receiver.got[0]["action_id"] == ticket["id"]
    # the quarantine of a critical device waits for a human
    with pytest.raises(svc.ResponseRefused, match="waits for a human approval"):
        svc.execute(store, quarantine["id"], policy=policy, config=config)
    with pytest.raises(svc.ResponseRefused, match="cannot approve it too"):
        svc.approve(store, quarantine["id"], approver="analyst")
    approved = svc.approve(store, quarantine["id"], approver="alice")
    assert approved["approved_by"] == "alice" and approved["status"] == "approved"
    # past the TTL the approval is refused and the action closed as expired
    late = approved["approved_at"] + policy.approval_ttl_seconds + 1
    assert svc.list_actions(store, status="expired", now=late)[0]["id"] == quarantine["id"]
    with pytest.raises(svc.ResponseRefused, match="approval by alice expired"):
        svc.execute(store, quarantine["id"], policy=policy, config=config, now=late)
    assert svc.list_actions(store, status="expired")[0]["id"] == quarantine["id"]
    with pytest.raises(svc.ResponseRefused, match="is rejected"):
        svc.execute(store, quarantine["id"], policy=policy, config=config)
    audit = [(e.action, e.actor) for e in store.audit_entries() if e.action.startswith("action.")]
    assert ("action.approved", "alice") in audit and ("action.executed", "analyst") in audit
    assert ("action.rejected", "cli") in audit
    assert store.audit_verify() == (True, None)
    assert receiver.secret.decode() not in json.dumps([e.details for e in store.audit_entries()])


def test_restrict_writes_checked_ruleset_and_rollback_removes_it(store, tmp_path):
    _need_nft()
    policy = _policy(ENFORCE + '[[rules]]\nname = "fence"\nactions = ["restrict"]')
    inc = _seed(store, "d-pos", "medium", "pos")
    (act,) = svc.propose(store, inc, policy=policy)
    done = svc.execute(store, act["id"], policy=policy, config=_config(tmp_path))
    nft = done["result"]["nft"]
    assert done["status"] == "executed" and nft["checked"] == "nft -c: ok" and nft["applied"] is False
    text = Path(nft["ruleset"]).read_text()
    assert "ip saddr { 10.9.0.5 } ip daddr { 10.9.0.1, 203.0.113.0/24 } accept" in text
    back = svc.rollback(store, act["id"], config=_config(tmp_path))
    assert back["status"] == "reverted"
    assert "10.9.0.5" not in Path(nft["ruleset"]).read_text()
    with pytest.raises(svc.ResponseRefused, match="only executed actions roll back"):
        svc.rollback(store, act["id"], config=_config(tmp_path))


def test_failed_adapter_leaves_action_failed(store, tmp_path):
    policy = _policy(ENFORCE)
    inc = _seed(store, "d-x", "low")
    ticket = svc.propose(store, inc, policy=policy)[0]
    with pytest.raises(ad.AdapterError, match="no webhook configured"):
        svc.execute(store, ticket["id"], policy=policy, config=_config(tmp_path))
    row = svc.list_actions(store, status="failed")[0]
    assert row["id"] == ticket["id"] and "no webhook" in row["error"]


def test_revocation_is_irreversible(store, tmp_path):
    policy = _policy(ENFORCE + '[[rules]]\nname = "burn"\nactions = ["revoke"]')
    inc = _seed(store, "d-rev", "low")
    (act,) = svc.propose(store, inc, policy=policy)
    assert act["needs_approval"] and "irreversible" in act["approval_reason"]
    with pytest.raises(svc.ResponseRefused, match="waits for a human approval"):
        svc.execute(store, act["id"], policy=policy, config=_config(tmp_path))


# ---------------------------------------------------------------------------------- CLI


def _cli(*args: str, code: int = 0) -> str:
    from fleetwarden.cli import app

    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (args, result.output)
    return result.output


def test_cli_lifecycle_dry_run_and_incident_show(tmp_path, soar):
    from fleetwarden.app.stores import store_at

    url, receiver = soar
    with store_at(None) as st:
        inc = _seed(st, "cam-9", "critical", "camera")
    enforce = tmp_path / "enforce.toml"
    enforce.write_text(ENFORCE)
    secret = tmp_path / "secret"
    secret.write_bytes(receiver.secret + b"\n")

    dry = json.loads(_cli("response", "dry-run", "--policy", str(enforce), "--json"))
    assert dry["mode"] == "enforce" and dry["incidents"][0]["would_execute"] == ["ticket"]
    assert dry["incidents"][0]["needs_approval"] == ["quarantine"]
    assert "would execute" in _cli("response", "dry-run")
    assert _cli("actions", "list", "--json").strip() == "[]"  # dry-run touched nothing

    shown = _cli("incident", "show", str(inc))
    assert f"incident {inc}: cam-9 c2-beacon risk 92 (critical), open" in shown
    assert "playbook camera" in shown and "beacon every 60 s" in shown and "quarantine" in shown

    rows = json.loads(_cli("actions", "propose", str(inc), "--as", "bob", "--policy", str(enforce), "--json"))
    ticket, quarantine = (r["id"] for r in rows)
    out = _cli(
        "actions",
        "execute",
        str(ticket),
        "--policy",
        str(enforce),
        "--webhook-url",
        url,
        "--webhook-secret-file",
        str(secret),
    )
    assert "executed" in out and receiver.got
    assert receiver.secret.decode() not in out
    err = _cli("actions", "execute", str(quarantine), "--policy", str(enforce), code=2)
    assert "waits for a human approval" in err
    assert "approved by carol" in _cli("actions", "approve", str(quarantine), "--as", "carol")
    assert "rejected" in _cli("actions", "deny", str(quarantine), "--note", "plant running")
    listed = _cli("actions", "list", "--status", "rejected")
    assert "carol" in listed and "quarantine" in listed
    assert "unknown action 999" in _cli("actions", "approve", "999", "--as", "x", code=2)
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "maybe"')
    assert "mode: expected 'observe' or 'enforce'" in _cli(
        "response", "dry-run", "--policy", str(bad), code=2
    )
    assert "--apply-nft needs a policy in enforce mode" in _cli(
        "actions", "rollback", str(ticket), "--apply-nft", code=2
    )
