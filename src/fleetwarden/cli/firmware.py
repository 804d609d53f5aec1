"""``fleetwarden firmware``: the signed firmware registry, patch compliance and priority."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import AsJson, DbUrl, Limit, ShowAll, _check_inputs, _limit, _run, err, out

firmware_app = typer.Typer(
    no_args_is_help=True, help="Signed firmware registry, patch compliance and priority."
)


def _with_store(db: str | None, fn, *args, **kwargs):
    from fleetwarden.app.stores import store_at

    def work():
        with store_at(db) as store:
            return fn(store, *args, **kwargs)

    return _run(work)


@firmware_app.command("add")
def firmware_add(
    vendor: Annotated[str, typer.Option("--vendor")],
    model: Annotated[str, typer.Option("--model")],
    version: Annotated[str, typer.Option("--version")],
    sha256: Annotated[str, typer.Option("--sha256", help="SHA-256 of the image, hex")],
    signature: Annotated[
        str, typer.Option("--signature", help="vendor's Ed25519 signature of the manifest, hex or base64")
    ],
    cve: Annotated[list[str] | None, typer.Option("--cve", help="a CVE id of this version (repeat)")] = None,
    cvss: Annotated[float | None, typer.Option("--cvss", help="highest CVSS score of its CVEs")] = None,
    released: Annotated[str | None, typer.Option("--released", help="release date, YYYY-MM-DD")] = None,
    db: DbUrl = None,
) -> None:
    """Register one signed image; refused unless the signature verifies against an active firmware
    key of the vendor (see `fleetwarden vendor key`)."""
    from fleetwarden.app.firmware import add_image

    row = {
        "vendor": vendor,
        "model": model,
        "version": version,
        "sha256": sha256,
        "signature": signature,
        "cves": cve or [],
        "cvss_max": cvss,
        "release_date": released,
    }
    img = _with_store(db, add_image, row)
    state = "added" if img["added"] else "already registered"
    out.print(
        Text(
            f"{state}: {img['vendor']} {img['model']} {img['version']} {img['sha256']} signed by {img['signed_by']}"
        )
    )


@firmware_app.command("import")
def firmware_import(
    file: Annotated[
        Path, typer.Argument(help="JSON list or CSV catalogue (vendor, model, version, sha256, signature, …)")
    ],
    db: DbUrl = None,
) -> None:
    """Register every image of a catalogue whose signature verifies; refused rows are listed on stderr
    (exit 2 when any row was refused)."""
    from fleetwarden.app.firmware import import_catalogue

    _run(_check_inputs, [file])
    res = _with_store(db, import_catalogue, file)
    out.print(
        Text(
            f"{res.read} images read, {res.added} added, {res.present} already registered, {len(res.errors)} refused"
        )
    )
    for line in res.errors[:20]:
        err.print(Text(f"  {line}"))
    if len(res.errors) > 20:
        err.print(Text(f"  … and {len(res.errors) - 20} more"))
    if res.errors:
        raise typer.Exit(2)


@firmware_app.command("list")
def firmware_list(
    db: DbUrl = None, as_json: AsJson = False, limit: Limit = 200, show_all: ShowAll = False
) -> None:
    """The registered images."""
    from fleetwarden.app.firmware import list_images
    from fleetwarden.report import table_of, ts_text

    images = _with_store(db, list_images)
    if as_json:
        sys.stdout.write(json.dumps(images, indent=2) + "\n")
        return
    n = _limit(limit, show_all)
    rows = [
        (
            i["vendor"],
            i["model"],
            i["version"],
            i["sha256"][:16],
            "yes" if i["verified"] else "NO",
            ", ".join(i["cves"] or []),
            "" if i["release_date"] is None else ts_text(i["release_date"])[:10],
        )
        for i in images[:n]
    ]
    out.print(table_of(("vendor", "model", "version", "sha256", "verified", "CVEs", "released"), rows))


@firmware_app.command("compliance")
def firmware_compliance(
    by: Annotated[str, typer.Option("--by", help="class, site or vendor")] = "class",
    db: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Patch compliance of the fleet per device class, site or vendor."""
    from fleetwarden.app.firmware import compliance_report
    from fleetwarden.report import table_of

    groups = _with_store(db, compliance_report, by)
    if as_json:
        sys.stdout.write(json.dumps(groups, indent=2) + "\n")
        return
    cols = ("group", "devices", "covered", "compliant", "outdated", "vulnerable", "unregistered")
    rows = [[g[c] for c in cols] + ["-" if g["rate"] is None else f"{100 * g['rate']:.1f} %"] for g in groups]
    out.print(table_of((by, *cols[1:], "compliant share"), rows))


@firmware_app.command("priority")
def firmware_priority(
    db: DbUrl = None, as_json: AsJson = False, limit: Limit = 50, show_all: ShowAll = False
) -> None:
    """Devices to patch first: a risk score from vulnerability severity, exposure, data and criticality."""
    from fleetwarden.app.firmware import priority_report
    from fleetwarden.report import table_of

    ranked = _with_store(db, priority_report)
    if as_json:
        sys.stdout.write(json.dumps(ranked, indent=2) + "\n")
        return
    rows = [
        (
            r["score"],
            r["device_id"],
            r["status"],
            r["version"] or "",
            r["target"] or "",
            "; ".join(r["reasons"]),
        )
        for r in ranked[: _limit(limit, show_all)]
    ]
    out.print(table_of(("score", "device", "status", "version", "target", "reasons"), rows))
