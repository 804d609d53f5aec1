"""``fleetwarden ca``: the device certificate authority (init, export, issue, rotate, revoke, crl, list)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, Limit, ShowAll, _run, err, out

ca_app = typer.Typer(no_args_is_help=True, help="The device certificate authority (PEM throughout).")

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="file whose first line is the CA passphrase (default: env FLEETWARDEN_CA_PASSPHRASE)",
    ),
]
DeviceId = Annotated[str, typer.Argument(help="the device id (1-64 letters, digits, '.', '_', '-')")]
OutDir = Annotated[
    Path, typer.Option("--out-dir", help="writes DIR/DEVICE_ID.crt (and .key when it makes the key)")
]
Csr = Annotated[
    Path | None, typer.Option("--csr", help="PEM certificate request: certify its key (no .key written)")
]
Days = Annotated[int, typer.Option("--days", min=1, max=3650, help="validity in days")]
KeyType = Annotated[
    str, typer.Option("--key-type", help="key to generate without --csr: ecdsa-p256, ecdsa-p384 or ed25519")
]


def _in_store(db: str | None, fn, *args, **kwargs):
    """Open the store at ``db``, call the service ``fn(store, ...)``, close it."""
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


@ca_app.command("init")
def ca_init(
    db: DbUrl = None,
    passphrase_file: PassphraseFile = None,
    name: Annotated[str, typer.Option("--name", help="the CA's common name")] = "FleetWarden device CA",
    days: Annotated[int, typer.Option("--days", min=1, max=10950, help="CA validity in days")] = 3650,
) -> None:
    """Create the CA (ECDSA P-256) in FLEETWARDEN_HOME/ca; refuses when one exists."""
    from fleetwarden.app.identity import ca_init as init

    info = _in_store(db, init, passphrase_file=passphrase_file, name=name, days=days)
    out.print(Text(f"CA created: {info.subject}"))
    out.print(Text(f"certificate {info.cert_path}, key {info.key_path} (encrypted)"))
    out.print(Text(f"SHA-256 fingerprint {info.fingerprint}, valid until {info.not_after:%Y-%m-%d}"))
    if info.generated_passphrase is not None:
        err.print(
            Text(
                f"no passphrase given: generated one in {info.generated_passphrase} (mode 0600); "
                "in production keep it in a secret manager and pass FLEETWARDEN_CA_PASSPHRASE instead"
            )
        )


@ca_app.command("export")
def ca_export(
    out_file: Annotated[Path, typer.Option("--out", help="where to write the CA certificate (PEM)")],
) -> None:
    """Write the CA certificate (PEM), for devices, brokers and `openssl verify`."""
    from fleetwarden.app.identity import ca_export as export

    info = _run(export, out_file)
    out.print(Text(f"wrote {info.cert_path} (SHA-256 {info.fingerprint})"))


def _show_issued(result) -> None:
    written = f"{result.cert_path}" + (f" and {result.key_path}" if result.key_path else "")
    out.print(
        Text(
            f"{result.device_id}: serial {result.serial} ({result.key_type}), "
            f"valid until {result.not_after:%Y-%m-%d}: wrote {written}"
        )
    )
    if result.superseded:
        out.print(Text(f"superseded: {', '.join(result.superseded)}"))
    if not result.in_inventory:
        err.print(Text(f"note: {result.device_id} is not in the inventory (recorded in the audit log)"))


@ca_app.command("issue")
def ca_issue(
    device_id: DeviceId,
    out_dir: OutDir,
    csr: Csr = None,
    days: Days = 365,
    key_type: KeyType = "ecdsa-p256",
    db: DbUrl = None,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Issue a device certificate, for a CSR's key or for a key it generates."""
    from fleetwarden.app.identity import issue

    _show_issued(
        _in_store(
            db,
            issue,
            device_id,
            out_dir=out_dir,
            csr=csr,
            days=days,
            key_type=key_type,
            passphrase_file=passphrase_file,
        )
    )


@ca_app.command("rotate")
def ca_rotate(
    device_id: DeviceId,
    out_dir: OutDir,
    csr: Csr = None,
    days: Days = 365,
    key_type: KeyType = "ecdsa-p256",
    db: DbUrl = None,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Issue a new certificate and supersede the device's active ones (they go on the next CRL)."""
    from fleetwarden.app.identity import rotate

    _show_issued(
        _in_store(
            db,
            rotate,
            device_id,
            out_dir=out_dir,
            csr=csr,
            days=days,
            key_type=key_type,
            passphrase_file=passphrase_file,
        )
    )


@ca_app.command("revoke")
def ca_revoke(
    device_id: DeviceId,
    reason: Annotated[
        str,
        typer.Option(
            help="unspecified, key-compromise, ca-compromise, affiliation-changed, "
            "cessation-of-operation, certificate-hold or privilege-withdrawn"
        ),
    ] = "unspecified",
    db: DbUrl = None,
) -> None:
    """Revoke every active certificate of a device (published by the next `ca crl`)."""
    from fleetwarden.app.identity import revoke

    serials = _in_store(db, revoke, device_id, reason=reason)
    out.print(Text(f"{device_id}: revoked {len(serials)} certificate(s): {', '.join(serials)}"))


@ca_app.command("crl")
def ca_crl(
    out_file: Annotated[Path, typer.Option("--out", help="where to write the CRL (PEM)")],
    next_update: Annotated[
        int, typer.Option("--next-update-days", min=1, max=365, help="days until nextUpdate")
    ] = 7,
    db: DbUrl = None,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Sign and write the certificate revocation list (revoked and superseded certificates)."""
    from fleetwarden.app.identity import crl

    result = _in_store(db, crl, out_file, passphrase_file=passphrase_file, next_update_days=next_update)
    out.print(
        Text(
            f"wrote {result.path}: CRL number {result.number}, {result.entries} revoked, "
            f"next update {result.next_update:%Y-%m-%d %H:%M} UTC"
        )
    )


@ca_app.command("list")
def ca_list(
    device: Annotated[str | None, typer.Option("--device", help="only this device's certificates")] = None,
    status: Annotated[str | None, typer.Option(help="active, revoked, superseded or expired")] = None,
    db: DbUrl = None,
    as_json: AsJson = False,
    limit: Limit = 1000,
    show_all: ShowAll = False,
) -> None:
    """List the certificates the CA issued."""
    from fleetwarden.app.identity import list_certificates
    from fleetwarden.report import table_of, ts_text

    rows = _in_store(db, list_certificates, device_id=device, status=status)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    shown = rows if show_all else rows[:limit]
    table = table_of(
        ("device_id", "serial", "status", "key", "not_after", "sha256"),
        [
            (
                r["device_id"],
                r["serial"],
                r["status"],
                r["key_type"],
                ts_text(r["not_after"]),
                r["fingerprint"][:16],
            )
            for r in shown
        ],
    )
    if len(rows) > len(shown):
        table.caption = f"{len(rows) - len(shown)} more not shown (--limit N or --all shows more)"
    out.print(table)
