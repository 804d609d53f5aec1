"""Sources: every input format FleetWarden reads, each yielding :class:`EventBatch` objects.

``read_events(path)`` detects the format from the file's first bytes (not its name) and
dispatches to the reader of that format:

=============  ==========================================================
format         reader
=============  ==========================================================
pcap, pcapng   :mod:`fleetwarden.sources.pcap` (flows and DNS records)
zeek-tsv       :mod:`fleetwarden.sources.zeek` (conn.log, dns.log; gzip too)
zeek-json      :mod:`fleetwarden.sources.zeek` (JSON lines written by Zeek)
iot23-csv      :mod:`fleetwarden.sources.iot23` (conn fields + label columns)
jsonl          :mod:`fleetwarden.sources.jsonl` (any event kind, one object a line)
=============  ==========================================================

Bad input raises :class:`SourceError` naming the file, the place (line, packet, byte
offset) and what was wrong.  With ``skip_bad=True`` a reader skips the bad record, counts
it in the :class:`ReadStats` it was given, and goes on; records already yielded are never
taken back.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import EventBatch

__all__ = ["FORMATS", "ReadStats", "SourceError", "detect_format", "read_events"]

FORMATS = ("pcap", "pcapng", "zeek-tsv", "zeek-json", "iot23-csv", "jsonl")
DEFAULT_BATCH = 65_536

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class SourceError(InputError):
    """Input that cannot be read: names the file, where in it, and what was wrong."""

    def __init__(self, path: str | Path, where: str | None, what: str) -> None:
        self.path = str(path)
        self.where = where
        self.what = what
        place = f"{self.path}: {where}" if where else self.path
        super().__init__(f"{place}: {what}")


@dataclass
class ReadStats:
    """What a read accepted and skipped; ``problems`` keeps the first few reasons."""

    records: int = 0
    skipped: int = 0
    other_frames: int = 0  # captures: frames that are not IP (ARP, LLDP, EAPOL...), read but not flows
    problems: list[str] = field(default_factory=list)
    max_problems: int = 20

    def skip(self, error: SourceError | str, count: int = 1) -> None:
        self.skipped += count
        if len(self.problems) < self.max_problems:
            self.problems.append(str(error))


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(n)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(n)
        except (OSError, EOFError) as exc:
            raise SourceError(path, None, f"gzip stream is corrupt: {exc}") from None
    return head


def detect_format(path: str | Path) -> str:
    """Name the format of ``path`` from its content; raise SourceError when unknown."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(path, None, "no such file")
    head = _head(path)
    if not head:
        raise SourceError(path, None, "file is empty")
    if head[:4] in _PCAP_MAGICS:
        return "pcap"
    if head[:4] == _PCAPNG_MAGIC:
        return "pcapng"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if text.startswith("#separator") or text.startswith("#fields"):
        return "zeek-tsv"
    first = text.splitlines()[0].strip() if text.strip() else ""
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and ("kind" in obj or "event" in obj):
            return "jsonl"
        if isinstance(obj, dict) and ("id.orig_h" in obj or "query" in obj):
            return "zeek-json"
        return "jsonl"
    if "id.orig_h" in first and ("," in first or "|" in first):
        return "iot23-csv"
    raise SourceError(
        path,
        None,
        "unrecognised format: expected pcap/pcapng, a Zeek log (TSV or JSON), an IoT-23 CSV or JSON lines",
    )


def read_events(
    path: str | Path,
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    batch_size: int = DEFAULT_BATCH,
    fmt: str | None = None,
) -> Iterator[EventBatch]:
    """Yield event batches from ``path`` in file order.

    Raises SourceError on bad input unless ``skip_bad`` is set, in which case bad
    records are counted in ``stats`` and skipped.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    fmt = fmt or detect_format(path)
    if fmt in ("pcap", "pcapng"):
        from fleetwarden.sources import pcap

        yield from pcap.read(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size)
    elif fmt in ("zeek-tsv", "zeek-json"):
        from fleetwarden.sources import zeek

        yield from zeek.read(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size)
    elif fmt == "iot23-csv":
        from fleetwarden.sources import iot23

        yield from iot23.read(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size)
    elif fmt == "jsonl":
        from fleetwarden.sources import jsonl

        yield from jsonl.read(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size)
    else:
        raise SourceError(path, None, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
