"""``fleetwarden fingerprint``: device-type identification from traffic."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.cli._common import DbUrl, ModelDir, _check_inputs, _run

fingerprint_app = typer.Typer(no_args_is_help=True, help="Device-type identification from traffic.")


@fingerprint_app.command("train")
def fingerprint_train(
    data_dir: Annotated[
        Path,
        typer.Argument(
            help="one folder per device type, named after it, with its captures (and optionally "
            "_iotdevice-mac.txt naming the device's MAC)"
        ),
    ],
    model: ModelDir,
) -> None:
    """Train a device-type model from captures of known types; print a JSON summary."""
    from fleetwarden.app.fingerprinting import train as train_fingerprint

    summary = _run(train_fingerprint, data_dir, model)
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")


@fingerprint_app.command("identify")
def fingerprint_identify(
    files: Annotated[list[Path], typer.Argument(help="captures (pcap/pcapng), one device's traffic each")],
    model: ModelDir,
    mac: Annotated[
        str | None,
        typer.Option("--mac", help="the device to identify (default: the capture's busiest endpoint)"),
    ] = None,
) -> None:
    """One line per capture, tab-separated: path, device type (or unknown), confidence in [0, 1]
    (the calibrated probability that the capture is of its best-matching trained type)."""
    from fleetwarden.app.fingerprinting import identify
    from fleetwarden.core.text import printable

    _run(_check_inputs, files)
    for r in _run(identify, files, model, mac=mac):
        sys.stdout.write(f"{printable(r.path)}\t{printable(r.device_type)}\t{r.confidence:.4f}\n")


@fingerprint_app.command("check")
def fingerprint_check(
    files: Annotated[list[Path], typer.Argument(help="captures (pcap/pcapng), one device's traffic each")],
    model: ModelDir,
    db: DbUrl = None,
    mac: Annotated[
        str | None,
        typer.Option("--mac", help="the device to check (default: the capture's busiest endpoint)"),
    ] = None,
) -> None:
    """Compare each capture's device type with the inventory's registration (by MAC) and record a
    cloned-device finding and incident for a confident mismatch.  One line per capture,
    tab-separated: path, identified type (or unknown), confidence, verdict (match, mismatch, unsure,
    unknown-device, no-registered-type, untrained-type), the device (inventory id, else its
    address), the registered type (or -)."""
    from fleetwarden.app.fingerprinting import check_types
    from fleetwarden.app.stores import store_at
    from fleetwarden.core.text import printable

    _run(_check_inputs, files)

    def work():
        with store_at(db) as store:
            return check_types(files, model, store, mac=mac)

    for c in _run(work):
        r = c.identification
        cells = [
            r.path,
            r.device_type,
            f"{r.confidence:.4f}",
            c.verdict,
            c.device_id or r.device,
            c.registered or "-",
        ]
        sys.stdout.write("\t".join(printable(str(x)) for x in cells) + "\n")
