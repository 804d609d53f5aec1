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

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import EventBatch
from fleetwarden.core.hashing import stable_hash
from fleetwarden.core.text import redact, redact_url
from fleetwarden.sources.jsonl import encode_lines

__all__ = [
    "BusError",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_PARTITIONS",
    "DEFAULT_STREAM",
    "SUBJECT_PREFIX",
    "BusTarget",
    "ensure_fleet_stream",
    "ensure_stream",
    "fleet_subject",
    "parse_bus_url",
    "partition_of",
    "publish_batches_nats",
]

log = logging.getLogger(__name__)

DEFAULT_STREAM = "FLEETWARDEN"
SUBJECT_PREFIX = "fleetwarden.events"
DEFAULT_PARTITIONS = 8
# What the stream buffers for workers that fall behind before publishers must wait (discard
# "new": the server refuses a message rather than drop an old one).  One GiB is hours of a
# large fleet's events at the ~150 bytes an event takes as a JSON line.
DEFAULT_MAX_BYTES = 1 << 30
# how long a publisher waits for room in a full stream before it gives up (and says so)
FULL_STREAM_PATIENCE = 300.0
RECONNECT_ATTEMPTS = 120  # half a second apart: a minute for a restarting server
# JetStream's "maximum messages / bytes exceeded" and "insufficient resources" error codes
_FULL_CODES = frozenset({10077, 10047, 10023, 10028})


class BusError(InputError):
    """The bus cannot be used as asked: a bad URL, an unreachable server, a stream full for too long."""


@dataclass(frozen=True)
class BusTarget:
    url: str  # what nats-py connects to (nats://host:port, credentials kept)
    display: str  # host:port without credentials, for messages


def parse_bus_url(url: str) -> BusTarget:
    """``nats://[user[:pass]@]host[:port]`` (4222) or ``tls://…``; anything else is a ValueError."""
    parsed = urlparse(url)
    if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
        raise BusError(f"bad bus URL {redact_url(url)!r}: expected nats://host[:port]")
    port = parsed.port or 4222
    return BusTarget(
        url=url if parsed.port else f"{url.rstrip('/')}:{port}", display=f"{parsed.hostname}:{port}"
    )


def subject_for(partition: int, prefix: str = SUBJECT_PREFIX) -> str:
    return f"{prefix}.p{int(partition)}"


def fleet_subject(prefix: str = SUBJECT_PREFIX) -> str:
    """Where the workers of one stream share what the fleet-wide statistics learn (outside
    ``prefix.>``, so the event stream's work-queue consumers never see it)."""
    return f"{prefix}-fleet"


async def ensure_fleet_stream(js, stream: str = DEFAULT_STREAM, prefix: str = SUBJECT_PREFIX, max_age: float = 86_400.0):
    """The stream ``<stream>-FLEET`` holding :func:`fleet_subject` (limits retention: every worker
    reads all of it; a day of it is kept, enough to rebuild after a restart).  Returns its name."""
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    name = f"{stream}-FLEET"
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(StreamConfig(name=name, subjects=[fleet_subject(prefix)], max_age=max_age))
        except Exception as exc:
            raise BusError(f"cannot create the stream {name!r}: {exc}") from None
    return name


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
    if partitions < 1:
        raise BusError("partitions must be at least 1")
    if len(batch) == 0:
        return np.zeros(0, dtype=np.int64)
    h = stable_hash(np.asarray(device_keys(batch), dtype=object))
    return (h % np.uint64(partitions)).astype(np.int64)


async def connect(url: str, **kwargs):
    """A nats-py connection; a clear one-line error when the server is not there."""
    try:
        import nats
    except ImportError:  # pragma: no cover - nats-py ships with the test extra
        raise BusError("the NATS bus needs the nats-py package (pip install nats-py)") from None
    target = parse_bus_url(url)

    async def log_error(exc: Exception) -> None:
        # nats-py's default prints a traceback on stderr for every failed (re)connect attempt
        log.debug("nats %s: %s", target.display, exc)

    kwargs.setdefault("error_cb", log_error)
    try:
        nc = await nats.connect(
            target.url,
            connect_timeout=3,
            allow_reconnect=True,
            max_reconnect_attempts=2,  # a server that is not there is said at once
            reconnect_time_wait=0.5,
            **kwargs,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "not reachable"
        raise BusError(
            f"cannot connect to NATS at {target.display}: {redact(str(exc)) or exc.__class__.__name__}"
        ) from None
    # once connected, a server restart is survived: reconnect for up to a minute (nats-py
    # re-subscribes); the worker retries what failed meanwhile
    nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS
    return nc


async def ensure_stream(
    js, stream: str = DEFAULT_STREAM, prefix: str = SUBJECT_PREFIX, *, max_bytes: int = DEFAULT_MAX_BYTES, max_msgs: int = -1
):
    """The stream for ``prefix.>``, created when missing: file storage, a work queue (a message is
    deleted once the worker owning its partition acknowledged it after a checkpoint), at most
    ``max_bytes`` / ``max_msgs`` waiting, and new messages refused (not old ones dropped) when
    full.  An existing stream is used as it is.  Returns the stream's info."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(stream)
    except NotFoundError:
        config = StreamConfig(
            name=stream,
            subjects=[f"{prefix}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            max_bytes=max_bytes,
            max_msgs=max_msgs,
        )
        try:
            return await js.add_stream(config)
        except Exception as exc:
            raise BusError(f"cannot create the stream {stream!r}: {exc}") from None


def _stream_full(exc: BaseException) -> bool:
    return getattr(exc, "err_code", None) in _FULL_CODES


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
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> int:
    """Publish events to the partitioned stream; return the number of events stored.

    Each batch is split by partition and each partition's events are packed ``per_message``
    JSON lines to a message, in the order given, so every partition receives its devices'
    events in that order (with ``rate``, a partition's last lines wait until it fills a message
    or the input ends).  Each partition's messages are published one after another, each
    acknowledged by JetStream before the next (:class:`_OrderedSender`), the partitions
    concurrently, with up to ``window`` messages queued: so a partition's order holds through a
    server restart, and a returned count is durably stored.  ``rate`` caps events per second.
    A stream it creates buffers at most ``max_bytes``; when the stream is full the publisher
    waits for the workers instead of losing events.
    """
    if per_message < 1:
        raise BusError("per_message must be at least 1")
    return asyncio.run(
        _publish(batches, url, partitions, per_message, stream, prefix, rate, max(1, window), max_bytes)
    )


async def _publish(batches, url, partitions, per_message, stream, prefix, rate, window, max_bytes) -> int:
    import secrets

    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream, prefix, max_bytes=max_bytes)
        out = _OrderedSender(js, stream, window)
        run = secrets.token_hex(6)
        pending: dict[int, list[bytes]] = {}  # partition -> lines not yet sent
        counts: dict[int, int] = {}  # partition -> messages sent
        sent = 0
        t0 = time.monotonic()

        async def send(p: int, lines: list[bytes]) -> None:
            counts[p] = counts.get(p, 0) + 1
            # a message id per message: a publish retried after a lost reply (a server restart)
            # is stored once (JetStream's duplicate window)
            headers = {"Nats-Msg-Id": f"{run}-{p}-{counts[p]}"}
            await out.put(p, (subject_for(p, prefix), b"\n".join(lines), headers))

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
        await out.close()
        return sent
    finally:
        await nc.close()


class _OrderedSender:
    """Publishes each partition's messages strictly in the order given, the partitions concurrently.

    One task per partition publishes its messages one after another, each acknowledged by
    JetStream (retried through a restart or a full stream, :func:`_publish_retrying`) before the
    next is sent, so a message that fails is never overtaken by a later one of its partition: the
    workers' event-time watermark relies on a partition arriving in the order it was published.
    (A window of publishes in flight on one subject would store the ones written after a server
    restart before the ones lost in it, which are then retried: minutes of event time late.)  At
    most ``window`` messages are queued or in flight in all; the first failure that gives up stops
    every partition and is raised by the next :meth:`put` or by :meth:`close`."""

    def __init__(self, js, stream: str, window: int) -> None:
        self.js, self.stream = js, stream
        self.room = asyncio.Semaphore(window)
        self.queues: dict[int, asyncio.Queue] = {}
        self.tasks: list[asyncio.Task] = []
        self.failure: BaseException | None = None

    async def put(self, partition: int, msg: tuple[str, bytes, dict]) -> None:
        await self.room.acquire()
        if self.failure is not None:
            raise self.failure
        q = self.queues.get(partition)
        if q is None:
            q = self.queues[partition] = asyncio.Queue()
            self.tasks.append(asyncio.ensure_future(self._drain(q)))
        q.put_nowait(msg)

    async def _drain(self, q: asyncio.Queue) -> None:
        while (msg := await q.get()) is not None:
            try:
                if self.failure is None:
                    await _publish_retrying(self.js, *msg, self.stream)
            except Exception as exc:  # raised to the caller by put / close
                self.failure = self.failure or exc
            finally:
                self.room.release()

    async def close(self) -> None:
        """Wait until every message is stored (or the first failure, raised)."""
        for q in self.queues.values():
            q.put_nowait(None)
        await asyncio.gather(*self.tasks)
        if self.failure is not None:
            raise self.failure


async def _publish_retrying(js, subject: str, payload: bytes, headers: dict, stream: str) -> None:
    """Publish one message, waiting (with back-off) while the stream is full or the server is
    unreachable (restarting); gives up with a :class:`BusError` after :data:`FULL_STREAM_PATIENCE`."""
    delay, waited = 0.05, 0.0
    while True:
        try:
            await js.publish(subject, payload, stream=stream, headers=headers)
            return
        except Exception as exc:
            full = _stream_full(exc)
            if not full and not _transient(exc):
                raise BusError(f"publishing to {stream} failed: {exc}") from None
            if waited >= FULL_STREAM_PATIENCE:
                why = "stayed full" if full else "was unreachable"
                raise BusError(
                    f"stream {stream} {why} for {waited:.0f} s"
                    + (": the workers are not consuming (start them, or raise its limits)" if full else "")
                ) from None
            if waited == 0.0:
                log.warning("stream %s %s: waiting", stream, "is full" if full else "is unreachable")
            await asyncio.sleep(delay)
            waited += delay
            delay = min(2.0, delay * 2)


def _transient(exc: BaseException) -> bool:
    """A failure that a reconnect cures: timeouts, no responders, a closed or reconnecting connection."""
    import nats.errors

    return isinstance(
        exc,
        TimeoutError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | ConnectionError,
    ) or getattr(exc, "code", None) == 503
