"""Input files as one event stream: what ``analyze`` (and the coming API's upload) feeds a session.

Files given together are one network's view: a Zeek ``conn.log`` and ``dns.log``, or the pcaps of
one site, cut at different times.  :func:`merge_in_time` interleaves them in event time, a
window of :data:`MERGE_WINDOW` seconds at a time, so analytics that read several kinds (beacon,
exfil and encrypted DNS read flows and DNS answers) see them together.  Captures of unrelated
networks belong in separate runs.  A single file passes through as its reader yields it.

Memory stays bounded by the readers' batches: each file is read ahead only until every other
file has caught up in event time (a watermark merge), except a pcap, whose reader yields all its
flows and then all its DNS records and is therefore read whole before any of it is merged (the
reader holds the capture in memory anyway).  A record that arrives behind the watermark (a file
that is not in time order) is not lost: it goes out with the next window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fleetwarden.core.events import KINDS, EventBatch, time_windows
from fleetwarden.sources import ReadStats, SourceError, detect_format, read_events

__all__ = ["MERGE_WINDOW", "FileInput", "InputSet", "describe", "merge_in_time"]

# Event-time seconds per merged call: what the worker and the live source hand the engine.
MERGE_WINDOW = 60.0
# Formats whose readers yield one kind after another (all flows, then all DNS records).
_SEQUENTIAL = frozenset({"pcap", "pcapng"})


@dataclass
class FileInput:
    """One input file and what reading it gave."""

    path: Path
    fmt: str
    stats: ReadStats = field(default_factory=ReadStats)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            "records": self.stats.records,
            "skipped": self.stats.skipped,
            "problems": list(self.stats.problems),
            "seconds": round(self.seconds, 4),
        }


class InputSet:
    """Files read together as one stream (see the module docstring)."""

    def __init__(self, paths: Sequence[str | Path], *, skip_bad: bool = False) -> None:
        if not paths:
            raise SourceError("(no input)", None, "no input files given")
        self.skip_bad = skip_bad
        self.files = [FileInput(Path(p), detect_format(p)) for p in paths]

    def batches(self) -> Iterator[EventBatch]:
        """Every event of every file, merged in event time (one file: as its reader yields it)."""
        streams = [self._read(f) for f in self.files]
        if len(streams) == 1 and self.files[0].fmt not in _SEQUENTIAL:
            yield from streams[0]  # one file in time order: as its reader yields it
            return
        # several files, or a capture (its reader yields all flows, then all DNS records): one
        # stream in event time, so a flow meets the DNS answer that named its destination
        yield from merge_in_time(streams, [f.fmt in _SEQUENTIAL for f in self.files])

    def arp_tables(self) -> Iterator[pa.Table]:
        """ARP records of the captures among the files (for sweep detection)."""
        from fleetwarden.sources import pcap

        for f in self.files:
            if f.fmt in _SEQUENTIAL:
                yield pcap.read_arp(f.path, skip_bad=self.skip_bad, stats=ReadStats())

    def _read(self, f: FileInput) -> Iterator[EventBatch]:
        it = read_events(f.path, skip_bad=self.skip_bad, stats=f.stats, fmt=f.fmt)
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            f.seconds += time.perf_counter() - t
            if batch is None:
                return
            yield batch

    @property
    def records(self) -> int:
        return sum(f.stats.records for f in self.files)


def merge_in_time(
    streams: Sequence[Iterator[EventBatch]], sequential: Sequence[bool] | None = None, window: float = MERGE_WINDOW
) -> Iterator[EventBatch]:
    """Interleave ``streams`` (each roughly in time order) into windows of ``window`` seconds of event
    time, one batch per kind per window, kinds in :data:`~fleetwarden.core.events.KINDS` order.

    A window goes out once every stream has moved past its end (the watermark), so memory holds
    about one reader batch per stream.  A ``sequential`` stream yields its kinds one after another
    and only counts as moved on once it is exhausted."""
    n = len(streams)
    sequential = list(sequential) if sequential is not None else [False] * n
    marks = [-np.inf] * n
    done = [False] * n
    pending: dict[str, list[EventBatch]] = {}
    while not all(done):
        i = min((k for k in range(n) if not done[k]), key=lambda k: marks[k])
        batch = next(streams[i], None)
        if batch is None:
            done[i] = True
            marks[i] = np.inf
        elif len(batch):
            pending.setdefault(batch.kind, []).append(batch)
            if not sequential[i]:
                marks[i] = max(marks[i], float(np.nanmax(batch.np("ts"))))
        watermark = min(marks)
        if all(done):
            yield from _release(pending, np.inf, window)
        elif np.isfinite(watermark):
            yield from _release(pending, np.floor(watermark / window) * window, window)


def _release(pending: dict[str, list[EventBatch]], until: float, window: float) -> Iterator[EventBatch]:
    """Yield the pending records before ``until`` in windows; keep the rest pending."""
    ready: dict[str, EventBatch] = {}
    for kind in KINDS:
        parts = pending.get(kind)
        if not parts:
            continue
        merged = (EventBatch.concat(parts) if len(parts) > 1 else parts[0]).sort_by_time()
        cut = len(merged) if until == np.inf else int(np.searchsorted(merged.np("ts"), until, side="left"))
        if cut:
            ready[kind] = merged.slice(0, cut)
        pending[kind] = [merged.slice(cut)] if cut < len(merged) else []
    if ready:
        yield from time_windows(ready, window, origin=0.0)


def describe(paths: Sequence[str | Path], *, skip_bad: bool = False) -> list[dict[str, Any]]:
    """What each file holds (the ``inspect`` service): per file and event kind, records and time span,
    plus the file's skipped records and their first reasons."""
    out: list[dict[str, Any]] = []
    for p in paths:
        f = FileInput(Path(p), detect_format(p))
        kinds: dict[str, list[float]] = {}
        for batch in read_events(f.path, skip_bad=skip_bad, stats=f.stats, fmt=f.fmt):
            if not len(batch):
                continue
            ts = batch.np("ts")
            c = kinds.setdefault(batch.kind, [0, float("inf"), float("-inf")])
            c[0] += len(batch)
            c[1] = min(c[1], float(np.nanmin(ts)))
            c[2] = max(c[2], float(np.nanmax(ts)))
        out.append(
            {
                "path": str(f.path),
                "format": f.fmt,
                "kinds": {k: {"records": int(n), "first": lo, "last": hi} for k, (n, lo, hi) in kinds.items()},
                "skipped": f.stats.skipped,
                "problems": list(f.stats.problems),
            }
        )
    return out
