"""The scale-out worker's bookkeeping: how far each partition got, the events waiting for the
event-time merge, and the checkpoint that records both (:mod:`fleetwarden.app.worker` drives them).

A checkpoint is one store row: a small header (JSON: format, version, partition count, owned
partitions and, per partition, the stream sequence up to which every event is in the engine plus
the lines of later messages already in it) followed by the engine's state in the explicit state
format (:mod:`fleetwarden.detection.checkpoint`).  Nothing in it is a pickle.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import KINDS, EventBatch

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "EventBuffer", "PartitionState", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = "fleetwarden-worker-checkpoint"
CHECKPOINT_VERSION = 3  # 3: the engine state in the explicit state format (2: a pickle)
_HEADER = struct.Struct(">4sI")  # magic, header length
_MAGIC = b"FWCP"


def write_checkpoint(header: dict[str, Any], state: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return _HEADER.pack(_MAGIC, len(head)) + head + state


def read_checkpoint(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, engine state) of a stored checkpoint; :class:`InputError` when it is not one."""
    if len(blob) < _HEADER.size:
        raise InputError("checkpoint is truncated")
    magic, n = _HEADER.unpack_from(blob)
    if magic != _MAGIC or _HEADER.size + n > len(blob):
        raise InputError("not a FleetWarden worker checkpoint (or a truncated one)")
    try:
        header = json.loads(blob[_HEADER.size : _HEADER.size + n])
    except (ValueError, UnicodeDecodeError):
        raise InputError("checkpoint header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a FleetWarden worker checkpoint")
    if header.get("version") != CHECKPOINT_VERSION:
        raise InputError(
            f"checkpoint format version {header.get('version')!r}; this worker reads {CHECKPOINT_VERSION}"
        )
    return header, blob[_HEADER.size + n :]


@dataclass
class PartitionState:
    """One owned partition: its consumer and how far its events got."""

    index: int
    durable: str
    subject: str
    sub: Any = None
    done: int = 0  # every event of every message up to this stream sequence is in the engine
    fetched: int = 0  # newest stream sequence fetched
    # messages fetched and not yet wholly in the engine: seq -> [events still buffered, message]
    open: OrderedDict[int, list] = field(default_factory=OrderedDict)
    # lines of open messages already in the engine (what a checkpoint must remember)
    released: dict[int, set[int]] = field(default_factory=dict)
    # from a checkpoint: lines of messages after ``done`` already in the restored state
    skip: dict[int, set[int]] = field(default_factory=dict)
    # every delivered message not acknowledged yet: seq -> [its latest delivery, when we last told
    # the server we still hold it]; those up to ``done`` are acknowledged at the next checkpoint
    unacked: OrderedDict[int, list] = field(default_factory=OrderedDict)
    mark: float = -math.inf  # newest event time fetched
    caught_up: bool = False  # the last fetch came back short: nothing more waited on the server
    events: int = 0  # events of this partition in the engine
    resumed: bool = False

    def position(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "partial": {str(s): sorted(lines) for s, lines in self.released.items() if lines},
        }

    def advance(self) -> None:
        """Move ``done`` over the finished messages at the head of the open ones."""
        while self.open:
            seq, (left, msg) = next(iter(self.open.items()))
            if left > 0:
                break
            self.open.popitem(last=False)
            self.released.pop(seq, None)
            self.done = seq

    def hold(self, seq: int, msg: Any) -> None:
        """Remember a delivery until it is acknowledged (a redelivery replaces the older one)."""
        self.unacked[seq] = [msg, time.monotonic()]


class EventBuffer:
    """Decoded events waiting for the watermark, per kind, each row tagged (partition, seq, line)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[EventBatch, np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.size = 0

    def add(self, batch: EventBatch, part: int, seq: np.ndarray, line: np.ndarray) -> None:
        self.parts.setdefault(batch.kind, []).append(
            (batch, np.full(len(batch), part, dtype=np.int32), seq, line)
        )
        self.size += len(batch)

    def peek(self, lo: float, hi: float) -> dict[str, EventBatch]:
        """The buffered rows with ``lo <= ts < hi`` per kind, in time order, left in the buffer."""
        out: dict[str, EventBatch] = {}
        for kind in KINDS:
            chunks = self.parts.get(kind)
            if not chunks:
                continue
            batch = EventBatch.concat([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            ts = batch.np("ts")
            sel = (ts >= lo) & (ts < hi)
            if sel.any():
                out[kind] = batch.filter(sel).sort_by_time()
        return out

    def take(self, until: float) -> tuple[dict[str, EventBatch], list[np.ndarray]]:
        """The buffered rows with ``ts < until`` (per kind, in time order) and their tags
        (partition, seq, line arrays over all kinds); the rest stays buffered."""
        ready: dict[str, EventBatch] = {}
        tags: list[list[np.ndarray]] = [[], [], []]
        for kind in KINDS:
            chunks = self.parts.get(kind)
            if not chunks:
                continue
            batch = EventBatch.concat([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            part, seq, line = (np.concatenate([c[k] for c in chunks]) for k in (1, 2, 3))
            ts = batch.np("ts")
            order = np.argsort(ts, kind="stable")
            cut = len(order) if until == math.inf else int(np.searchsorted(ts[order], until, side="left"))
            if cut:
                taken = order[:cut]
                ready[kind] = EventBatch(kind, batch.table.take(taken))
                for k, arr in enumerate((part, seq, line)):
                    tags[k].append(arr[taken])
            rest = order[cut:]
            if len(rest):
                self.parts[kind] = [(EventBatch(kind, batch.table.take(rest)), part[rest], seq[rest], line[rest])]
            else:
                del self.parts[kind]
            self.size -= cut
        return ready, [np.concatenate(t) if t else np.zeros(0, dtype=np.int64) for t in tags]
