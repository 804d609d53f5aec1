"""``fleetwarden vendor key``: vendors' public keys for firmware signing and device attestation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, _check_inputs, _run, out

vendor_key_app = typer.Typer(
    no_args_is_help=True, help="Vendors' public keys (firmware signing, attestation)."
)


def _ts(value: float | None) -> str:
    from fleetwarden.report import ts_text

    return "" if value is None else ts_text(value)


@vendor_key_app.command("add")
def key_add(
    vendor: Annotated[
        str, typer.Argument(help="vendor name, as in the inventory and the firmware catalogue")
    ],
    pem: Annotated[Path, typer.Option("--pem", help="PEM public key (SubjectPublicKeyInfo)")],
    purpose: Annotated[
        str, typer.Option("--purpose", help="firmware (Ed25519) or attestation (Ed25519, ECDSA P-256)")
    ] = "firmware",
    db: DbUrl = None,
) -> None:
    """Register a vendor's public key; prints its SHA-256 fingerprint."""
    from fleetwarden.app.firmware import add_vendor_key
    from fleetwarden.app.stores import store_at

    _run(_check_inputs, [pem])

    def work() -> dict:
        with store_at(db) as store:
            return add_vendor_key(store, vendor, purpose, pem)

    key = _run(work)
    out.print(
        Text(f"added {key['purpose']} key {key['fingerprint']} ({key['algorithm']}) for {key['vendor']}")
    )


@vendor_key_app.command("list")
def key_list(
    vendor: Annotated[str | None, typer.Option("--vendor", help="only this vendor's keys")] = None,
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Every registered key, revoked ones too."""
    from fleetwarden.app.firmware import list_vendor_keys
    from fleetwarden.app.stores import store_at
    from fleetwarden.report import table_of

    def work() -> list[dict]:
        with store_at(db) as store:
            return list_vendor_keys(store, vendor)

    keys = _run(work)
    if as_json:
        sys.stdout.write(json.dumps(keys, indent=2) + "\n")
        return
    rows = [
        (
            k["vendor"],
            k["purpose"],
            k["algorithm"],
            k["fingerprint"],
            _ts(k["added_at"]),
            _ts(k["revoked_at"]),
        )
        for k in keys
    ]
    out.print(
        table_of(
            ("vendor", "purpose", "algorithm", "fingerprint (SHA-256)", "added (UTC)", "revoked (UTC)"), rows
        )
    )


@vendor_key_app.command("revoke")
def key_revoke(
    fingerprint: Annotated[str, typer.Argument(help="the key's SHA-256 fingerprint (from `list`)")],
    db: DbUrl = None,
) -> None:
    """Revoke a key: no image it signs is accepted any more, and images it signed stop counting as verified."""
    from fleetwarden.app.firmware import revoke_vendor_key
    from fleetwarden.app.stores import store_at

    def work() -> dict:
        with store_at(db) as store:
            return revoke_vendor_key(store, fingerprint)

    key = _run(work)
    out.print(
        Text(
            f"revoked {key['purpose']} key {key['fingerprint']} of {key['vendor']}; "
            f"{key['images_unverified']} image(s) it signed are no longer verified"
        )
    )
