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
mosquitto      :mod:`fleetwarden.sources.mosquitto` (broker log: connections, refusals, denials)
=============  ==========================================================

Bad input raises :class:`SourceError` naming the file, the place (line, packet, byte
offset) and what was wrong.  With ``skip_bad=True`` a reader skips the bad record, counts
it in the :class:`ReadStats` it was given, and goes on; records already yielded are never
taken back.  A record holding a string longer than its field allows (the ``max_len`` of
:mod:`fleetwarden.core.events`) is such a bad record: every reader passes its typed columns
through :func:`drop_overlong` before they become batches.  A file lacking a required field
altogether (a CSV or Zeek header without ``id.orig_h``) is refused with one line naming it;
absent optional fields are nulls.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import EventBatch, overlong, schema_for
from fleetwarden.core.text import one_line, redact, truncate

__all__ = ["FORMATS", "ReadStats", "SourceError", "detect_format", "drop_overlong", "read_events"]

FORMATS = ("pcap", "pcapng", "zeek-tsv", "zeek-json", "iot23-csv", "jsonl", "mosquitto")
DEFAULT_BATCH = 65_536

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


# An error message quotes the input (a topic, a bad value, an unknown key): bounded, so a
# megabyte of hostile text is not copied into every report of it.
_PLACE_CHARS = 300
_WHAT_CHARS = 500


class SourceError(InputError):
    """Input that cannot be read: names the file, where in it, and what was wrong.

    The message quotes attacker-controlled text (a topic, a value, an unknown key) and ends up
    on terminals, in logs and in stored run summaries, so it is made safe here, once: one line,
    bounded in length, credentials masked (:func:`~fleetwarden.core.text.redact`) and control
    characters escaped (:func:`~fleetwarden.core.text.one_line`)."""

    def __init__(self, path: str | Path, where: str | None, what: str) -> None:
        self.path = _safe(str(path), _PLACE_CHARS)
        self.where = where
        self.what = _safe(what, _WHAT_CHARS)
        place = f"{self.path}: {where}" if where else self.path
        super().__init__(f"{place}: {self.what}")


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


def _safe(text: str, limit: int) -> str:
    # cut before masking (a megabyte is not scanned), with room so a credential at the cut is masked
    return truncate(one_line(redact(truncate(text, 4 * limit))), limit)


def drop_overlong(
    kind: str, columns: Mapping[str, pa.Array], length: int, places: np.ndarray
) -> tuple[dict[str, pa.Array], int, np.ndarray, list[tuple[int, str]]]:
    """Take the records holding an over-long string (:func:`fleetwarden.core.events.overlong`) out
    of a reader's typed columns: ``(columns, length, places)`` of the rest plus ``(place, problem)``
    for each record taken out, for the reader to refuse (SourceError) or skip and count like any
    other bad record.  ``places`` holds each row's place in the input (line number, packet index)."""
    rows, problems = overlong(kind, columns)
    if not len(rows):
        return dict(columns), length, places, []
    keep = np.ones(length, dtype=bool)
    keep[rows] = False
    mask = pa.array(keep)
    kept = {name: arr.filter(mask) for name, arr in columns.items()}
    bad = [(int(p), what) for p, what in zip(places[rows].tolist(), problems, strict=True)]
    return kept, int(keep.sum()), places[keep], bad


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
        from fleetwarden.sources.zeek import zeek_kind

        try:
            obj = json.loads(first)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and ("kind" in obj or "event" in obj):
            return "jsonl"
        if isinstance(obj, dict) and zeek_kind(None, list(obj)) is not None:
            return "zeek-json"
        return "jsonl"
    if _flow_header(first):
        return "iot23-csv"
    from fleetwarden.sources.mosquitto import looks_like_mosquitto

    if looks_like_mosquitto(text):
        return "mosquitto"
    raise SourceError(
        path,
        None,
        "unrecognised format: expected pcap/pcapng, a Zeek log (TSV or JSON), an IoT-23 CSV, JSON lines "
        "or a Mosquitto log",
    )


def _flow_header(line: str) -> bool:
    """A CSV header row of Zeek conn fields (IoT-23 style), even one lacking a required field, so
    that its reader can name what is missing instead of the file being called unrecognised."""
    sep = "," if "," in line else "|" if "|" in line else None
    if sep is None:
        return False
    names = {n.strip().strip('"') for n in line.split(sep)}
    if "id.orig_h" in names:
        return True
    from fleetwarden.sources.zeek import zeek_kind

    return zeek_kind(None, sorted(names)) == "flow" or len(names & _CONN_NAMES) >= 3


# Field names of a conn record that no other kind's header is made of: ts and the label and
# device columns are shared with everything, so they do not count.
_CONN_NAMES = frozenset(schema_for("flow").names) - {"ts", "label", "detailed_label", "device_id"}


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
    elif fmt == "mosquitto":
        from fleetwarden.sources import mosquitto

        yield from mosquitto.read(path, skip_bad=skip_bad, stats=stats, batch_size=batch_size)
    else:
        raise SourceError(path, None, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
