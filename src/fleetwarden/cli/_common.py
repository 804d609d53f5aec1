"""What every command module shares: the consoles, the option types, and how a service's bad
input becomes one line on stderr and exit code 2 (the command-line contract)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text


def _console(stderr: bool = False) -> Console:
    """A console that, when piped or logged, is wide enough for an evidence column (Rich would fall
    back to 80 columns); ``COLUMNS`` still wins."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(stderr=stderr, width=wide, soft_wrap=stderr, highlight=False)


out = _console()
err = _console(stderr=True)

Files = Annotated[list[Path], typer.Argument(help="input files: pcap/pcapng, Zeek logs, IoT-23 CSV, JSONL")]
ModelDir = Annotated[Path, typer.Option("--model", help="model directory")]
OptModel = Annotated[Path | None, typer.Option("--model", help="flow model directory (optional)")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="skip malformed records and report how many")]
DbUrl = Annotated[str | None, typer.Option("--db", help="database URL (default: FLEETWARDEN_DB or SQLite)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
Limit = Annotated[int, typer.Option("--limit", min=1, help="rows to show in tables")]
ShowAll = Annotated[bool, typer.Option("--all", help="show every row (overrides --limit)")]
StreamMaxBytes = Annotated[
    int | None,
    typer.Option(
        "--stream-max-bytes",
        min=1 << 20,
        help="when this creates the stream: bytes it buffers for workers that fall behind (default 1 GiB); "
        "publishers wait when it is full, nothing is dropped",
    ),
]


class UsageError(Exception):
    """Raised by a command for bad usage; reported like bad input."""


def _fail(message: str) -> None:
    from fleetwarden.core.text import printable

    err.print(Text(f"fleetwarden: error: {printable(message)}"))
    raise typer.Exit(2)


def _run(fn, *args, **kwargs):
    """Call a service; turn bad input into one line and exit code 2 (everything else propagates)."""
    from fleetwarden.core.errors import InputError

    try:
        return fn(*args, **kwargs)
    except (InputError, UsageError) as exc:
        _fail(str(exc) or exc.__class__.__name__)
    except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError) as exc:
        name = exc.filename or ""
        _fail(f"{name}: {exc.strerror}" if name else str(exc))


def _check_inputs(files: list[Path]) -> None:
    for f in files:
        if not f.exists():
            raise UsageError(f"{f}: no such file")
        if f.is_dir():
            raise UsageError(f"{f}: is a directory, expected a capture or log file")


def _report_skips(stats_by_file: dict[str, object]) -> None:
    """One stderr line per input that had bad records skipped, with the first reasons."""
    from fleetwarden.core.text import printable

    for name, stats in stats_by_file.items():
        get = stats.get if isinstance(stats, dict) else lambda key, default, s=stats: getattr(s, key, default)
        skipped = get("skipped", 0)
        if skipped:
            err.print(Text(f"{printable(name)}: skipped {skipped} bad record(s)"))
            for problem in list(get("problems", []))[:3]:
                err.print(Text(f"  {printable(problem, 500)}"))


def _limit(limit: int, show_all: bool) -> int | None:
    return None if show_all else limit


