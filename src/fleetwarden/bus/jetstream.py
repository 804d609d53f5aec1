"""Events on NATS JetStream: the stream, its device partitions, and a publisher.

Events travel as JSON lines exactly as :mod:`fleetwarden.sources.jsonl` writes and
:func:`~fleetwarden.sources.jsonl.decode_events` reads them (one object with ``kind`` per
line, many lines per message).  A stream (default ``FLEETWARDEN``) holds the subjects
``fleetwarden.events.>``; an event goes to ``fleetwarden.events.p<K>`` where ``K`` is the
:func:`~fleetwarden.detection.state.stable_hash` of its device (``device_id``, else the
originator address ``id.orig_h``, else the source address ``src_ip``) modulo the partition
count.  Every process computes the same ``K``, so one device's events always land on one
subject, in publish order, and one worker's engine holds all of that device's state.

Blind spots: the partition count is part of the data layout: changing it moves devices
between partitions, so checkpoints made under another count are refused (see
:mod:`fleetwarden.app.worker`).  Fleet-wide statistics that analytics keep across devices
(destination prevalence shared by beacon and exfil) are only partition-wide in a sharded
deployment; on the simulated fleets tested the findings are the same, but a destination
popular across the whole fleet and rare inside one partition can look rarer there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from fleetwarden.core.events import EventBatch
from fleetwarden.sources.jsonl import encode_lines

__all__ = [
    "DEFAULT_PARTITIONS",
    "DEFAULT_STREAM",
    "SUBJECT_PREFIX",
    "BusTarget",
    "ensure_stream",
    "parse_bus_url",
    "partition_of",
    "publish_batches_nats",
]

log = logging.getLogger(__name__)

DEFAULT_STREAM = "FLEETWARDEN"
SUBJECT_PREFIX = "fleetwarden.events"
DEFAULT_PARTITIONS = 8


@dataclass(frozen=True)
class BusTarget:
    url: str  # what nats-py connects to (nats://host:port, credentials kept)
    display: str  # host:port without credentials, for messages


def parse_bus_url(url: str) -> BusTarget:
    """``nats://[user[:pass]@]host[:port]`` (4222) or ``tls://…``; anything else is a ValueError."""
    parsed = urlparse(url)
    if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
        raise ValueError(f"bad bus URL {url!r}: expected nats://host[:port]")
    port = parsed.port or 4222
    return BusTarget(
        url=url if parsed.port else f"{url.rstrip('/')}:{port}", display=f"{parsed.hostname}:{port}"
    )


def subject_for(partition: int, prefix: str = SUBJECT_PREFIX) -> str:
    return f"{prefix}.p{int(partition)}"


def device_keys(batch: EventBatch) -> np.ndarray:
    """Per row: the device the record belongs to (``device_id``, else ``id.orig_h``, else ``src_ip``)."""
    names = batch.table.column_names
    key = batch.np("device_id", fill="")
    for col in ("id.orig_h", "src_ip"):
        if col in names:
            key = np.where(key == "", batch.np(col, fill=""), key)
    return key


def partition_of(batch: EventBatch, partitions: int) -> np.ndarray:
    """Partition number of every row of ``batch`` (stable across processes and runs)."""
    from fleetwarden.detection.state import stable_hash

    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    if len(batch) == 0:
        return np.zeros(0, dtype=np.int64)
    h = stable_hash(np.asarray(device_keys(batch), dtype=object))
    return (h % np.uint64(partitions)).astype(np.int64)


async def connect(url: str, **kwargs):
    """A nats-py connection; a clear one-line error when the server is not there."""
    try:
        import nats
    except ImportError:  # pragma: no cover - nats-py ships with the test extra
        raise ValueError("the NATS bus needs the nats-py package (pip install nats-py)") from None
    target = parse_bus_url(url)

    async def log_error(exc: Exception) -> None:
        # nats-py's default prints a traceback on stderr for every failed (re)connect attempt
        log.debug("nats %s: %s", target.display, exc)

    kwargs.setdefault("error_cb", log_error)
    try:
        return await nats.connect(
            target.url, connect_timeout=3, max_reconnect_attempts=2, allow_reconnect=True, **kwargs
        )
    except Exception as exc:  # nats-py raises several unrelated types for "not reachable"
        raise ValueError(
            f"cannot connect to NATS at {target.display}: {exc or exc.__class__.__name__}"
        ) from None


async def ensure_stream(js, stream: str = DEFAULT_STREAM, prefix: str = SUBJECT_PREFIX) -> None:
    """Create the stream for ``prefix.>`` unless it exists (file storage, limits retention)."""
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(name=stream, subjects=[f"{prefix}.>"])


def publish_batches_nats(
    batches: Iterable[EventBatch],
    url: str,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    per_message: int = 100,
    stream: str = DEFAULT_STREAM,
    prefix: str = SUBJECT_PREFIX,
    rate: float | None = None,
    window: int = 256,
) -> int:
    """Publish events to the partitioned stream; return the number of events stored.

    Each batch is split by partition and each partition's events are packed ``per_message``
    JSON lines to a message, in the order given, so every partition receives its devices'
    events in that order (with ``rate``, a partition's last lines wait until it fills a message
    or the input ends).  Up to
    ``window`` publishes are in flight at once on one connection (the server stores them in
    the order written); every one is acknowledged by JetStream before the call returns, so a
    returned count is durably stored.  ``rate`` caps events per second.
    """
    if per_message < 1:
        raise ValueError("per_message must be at least 1")
    return asyncio.run(_publish(batches, url, partitions, per_message, stream, prefix, rate, max(1, window)))


async def _publish(batches, url, partitions, per_message, stream, prefix, rate, window) -> int:
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream, prefix)
        inflight: list = []
        pending: dict[int, list[bytes]] = {}  # partition -> lines not yet sent
        sent = 0
        t0 = time.monotonic()

        async def send(p: int, lines: list[bytes]) -> None:
            # publishes are written to the connection in call order: ensure_stream already set up
            # the request multiplexer, so no task awaits before writing its message
            payload = b"\n".join(lines)
            inflight.append(asyncio.ensure_future(js.publish(subject_for(p, prefix), payload, stream=stream)))
            if len(inflight) >= window:
                await asyncio.gather(*inflight)
                inflight.clear()

        for batch in batches:
            if len(batch) == 0:
                continue
            lines = [line.encode() for line in encode_lines(batch)]
            parts = partition_of(batch, partitions)
            for p in np.unique(parts):
                buf = pending.setdefault(int(p), [])
                buf += [lines[r] for r in np.flatnonzero(parts == p)]
                while len(buf) >= per_message:
                    await send(int(p), buf[:per_message])
                    del buf[:per_message]
            sent += len(batch)
            if rate:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        for p, buf in pending.items():
            if buf:
                await send(p, buf)
        if inflight:
            await asyncio.gather(*inflight)
        return sent
    finally:
        await nc.close()
