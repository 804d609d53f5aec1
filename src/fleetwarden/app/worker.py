"""The scale-out engine worker: JetStream partitions in, findings out, state in the store.

``fleetwarden worker --bus nats://HOST:PORT`` runs one :class:`~fleetwarden.detection.engine.Engine`
per partition it owns (default: all of them; see :mod:`fleetwarden.bus.jetstream` for the
layout).  Each partition is read by a durable pull consumer named ``<prefix>-p<K>`` filtered
on that partition's subject, so workers owning disjoint partitions form the consumer group
and every device's state lives in exactly one engine.  Messages are decoded together per
fetch (:func:`~fleetwarden.sources.jsonl.decode_events`: one Python call per fetch, not per
event) and run through the engine in stream order; findings go to ``on_finding`` at once.

Delivery is at least once and processing is idempotent:

* every ``checkpoint_every`` seconds and at shutdown the worker first saves the findings
  made since the last checkpoint (``Store.record_results``, idempotent by fingerprint, when
  ``record``), then each partition's pickled engine and the last stream sequence it covers
  (``Store.save_checkpoint``), and only then acknowledges that sequence (the consumer's ack
  policy is "all": one ack covers everything before it).  Acking before the checkpoint would
  lose state: an acked message is never redelivered, yet the crashed engine had not saved it;
* on start it loads each partition's checkpoint and skips any message at or below its
  sequence.  If the consumer's position is not exactly the checkpoint (a crash left
  messages delivered but unacked), the consumer is re-created at checkpoint + 1: JetStream
  would redeliver those messages only after ``ack_wait``, after newer ones, and a device's
  events must reach its engine in order.

So a crash anywhere (mid-batch, after processing before the checkpoint, after the checkpoint
before the ack) neither double-counts nor loses an event in the engine's state.  Findings
emitted after the last checkpoint are emitted again after a restart (printed twice, stored
once).

Blind spots: a partition must be owned by one worker at a time (a second owner resets the
consumer; the store refuses a checkpoint that moves backwards, which catches the common
mistake).  The checkpoint is a pickle of the whole engine: it is as trusted as the database,
and its size grows with the fleet (about 2 MB for 30 simulated devices, mostly fixed-size
analytic tables).  ``drain`` emits the findings still pending at exit (what ``analyze`` does
at the end of a file); the checkpoint keeps the state before that, so after a restart those
findings can come again, possibly extended.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetwarden.app.session import DetectionSession
from fleetwarden.bus.jetstream import (
    DEFAULT_PARTITIONS,
    DEFAULT_STREAM,
    SUBJECT_PREFIX,
    connect,
    ensure_stream,
    parse_bus_url,
    subject_for,
)
from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch, time_windows
from fleetwarden.core.findings import Finding
from fleetwarden.sources import ReadStats, SourceError

__all__ = [
    "PartitionState",
    "Worker",
    "WorkerResult",
    "dump_engine",
    "load_engine",
    "run_worker",
    "time_slices",
]


def dump_engine(engine: Any) -> bytes:
    """Pickle an engine's detection state, without its context (inventory) and flow model: those
    come from the store and ``--model`` when the worker starts, not from the checkpoint."""
    model, ctx = engine.flow_model, engine.ctx
    engine.flow_model, engine.ctx = None, None
    try:
        return pickle.dumps(engine, protocol=5)
    finally:
        engine.flow_model, engine.ctx = model, ctx


def load_engine(blob: bytes, ctx: Context, flow_model: Any = None) -> Any:
    engine = pickle.loads(blob)
    engine.ctx, engine.flow_model = ctx, flow_model
    return engine


def time_slices(batches: Sequence[EventBatch], seconds: float) -> Iterator[EventBatch]:
    """The records of ``batches`` (any kinds) in windows of ``seconds`` of event time, in time
    order, one batch per kind per window (kinds in :data:`~fleetwarden.core.events.KINDS` order).

    The engine's findings depend on how much event time one call covers (novelty learns within
    a batch: an hour in one call finds "new" services that minute-sized calls have already
    learnt), so a backlog fetched in one go is handed over the way ``fleet.iter_batches`` and
    the file readers hand it: a minute at a time.
    """
    by_kind = {b.kind: b.sort_by_time() for b in batches if len(b)}
    yield from time_windows(by_kind, seconds, origin=0.0)


@dataclass
class PartitionState:
    """One owned partition: its consumer, engine and how far it got."""

    index: int
    durable: str
    key: str  # checkpoint key in the store: "<stream>/<durable>"
    engine: Any
    seq: int = 0  # last stream sequence processed
    saved_seq: int = 0  # last stream sequence checkpointed
    last_msg: Any = None  # newest processed message, acked (policy "all") after the checkpoint
    sub: Any = None
    events: int = 0
    resumed: bool = False  # state came from a checkpoint


@dataclass
class WorkerResult:
    events: int = 0
    messages: int = 0
    redelivered_skipped: int = 0
    findings: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0  # size of the last checkpoint, all partitions
    seconds: float = 0.0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> last stream seq
    stats: ReadStats = field(default_factory=ReadStats)


class Worker:
    """Consume owned partitions into per-partition engines, checkpointing to ``store``.

    Drive it with :meth:`run` (the CLI) or step by step (:meth:`start`, :meth:`poll`,
    :meth:`checkpoint`, :meth:`close`, :meth:`abandon` to simulate a crash).
    """

    def __init__(
        self,
        url: str,
        store: Any,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        owned: Sequence[int] | None = None,
        stream: str = DEFAULT_STREAM,
        prefix: str = SUBJECT_PREFIX,
        durable_prefix: str = "fw",
        record: bool = False,
        ctx: Context | None = None,
        flow_model: Any = None,
        checkpoint_every: float = 10.0,
        ack_wait: float = 60.0,
        fetch_batch: int = 256,
        slice_seconds: float = 60.0,
        on_finding: Callable[[Finding], None] | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("--partitions must be at least 1")
        owned = sorted(set(owned if owned else range(partitions)))
        bad = [k for k in owned if not 0 <= k < partitions]
        if bad:
            raise ValueError(f"partition(s) {bad} outside 0..{partitions - 1}")
        self.target = parse_bus_url(url)
        self.store = store
        self.partitions = partitions
        self.owned = owned
        self.stream = stream
        self.prefix = prefix
        self.durable_prefix = durable_prefix
        self.record = record
        self.source = f"nats:{self.target.display}/{stream}"
        # one session: context, model, GC policy, recording; one engine per owned partition
        self.session = DetectionSession(
            ctx=ctx,
            model=flow_model,
            store=store if record else None,
            source=self.source,
            on_finding=on_finding,
            keep_findings=False,
        )
        self.ctx = self.session.ctx
        self.flow_model = self.session.model
        self.checkpoint_every = checkpoint_every
        self.ack_wait = ack_wait
        self.fetch_batch = fetch_batch
        self.slice_seconds = slice_seconds
        self.result = WorkerResult()
        self.parts: list[PartitionState] = []
        self._nc = None
        self._js = None
        self._stop = False

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> Worker:
        from fleetwarden.app.runtime import warm_up

        self._nc = await connect(self.target.url)
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, self.stream, self.prefix)
        for k in self.owned:
            durable = f"{self.durable_prefix}-p{k}"
            ps = PartitionState(k, durable, f"{self.stream}/{durable}", engine=None)
            cp = self.store.load_checkpoint(ps.key)
            if cp is not None:
                if cp.partitions and cp.partitions != self.partitions:
                    raise ValueError(
                        f"checkpoint {ps.key} was made with {cp.partitions} partitions, not {self.partitions}: "
                        "devices map to other partitions now"
                    )
                ps.engine = load_engine(cp.state, self.ctx, self.flow_model)
                ps.seq = ps.saved_seq = int(cp.stream_seq)
                ps.events = int(cp.events)
                ps.resumed = True
            else:
                ps.engine = self.session.new_engine()
            ps.sub = await self._bind(ps)
            self.parts.append(ps)
        warm_up()
        return self

    async def _bind(self, ps: PartitionState):
        """Bind the partition's durable consumer, re-created at checkpoint + 1 unless it is exactly there."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            info = await self._js.consumer_info(self.stream, ps.durable)
        except NotFoundError:
            info = None
        subject = subject_for(ps.index, self.prefix)
        if info is not None:
            at_checkpoint = (
                info.config.filter_subject == subject
                and info.delivered.stream_seq == ps.seq
                and info.ack_floor.stream_seq == ps.seq
                and not info.num_ack_pending
            )
            if not at_checkpoint:
                await self._js.delete_consumer(self.stream, ps.durable)
                info = None
        if info is None:
            start = {}
            if ps.seq:
                start = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": ps.seq + 1}
            else:
                start = {"deliver_policy": DeliverPolicy.ALL}
            await self._js.add_consumer(
                self.stream,
                ConsumerConfig(
                    durable_name=ps.durable,
                    filter_subject=subject,
                    ack_policy=AckPolicy.ALL,
                    ack_wait=self.ack_wait,
                    max_ack_pending=-1,  # flow control is the checkpoint interval, not a message count
                    **start,
                ),
            )
        return await self._js.pull_subscribe_bind(durable=ps.durable, stream=self.stream)

    def stop(self) -> None:
        """Ask :meth:`run` to finish (checkpoint and close) after the current poll."""
        self._stop = True

    async def close(self, *, drain: bool = False) -> None:
        """Checkpoint, optionally emit pending findings (``drain``), and disconnect."""
        await self.checkpoint()
        if drain:
            for ps in self.parts:
                self.result.findings += len(self.session.flush(ps.engine))
            self._record()
        if self._nc is not None:
            await self._nc.flush()  # the acks are out before the connection goes
            await self._nc.close()
            self._nc = None

    async def abandon(self) -> None:
        """Drop the connection without checkpoint or ack: what a crash leaves behind."""
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
        self.session._unrecorded.clear()

    # work -------------------------------------------------------------------------------
    async def poll(self, timeout: float = 0.5) -> int:
        """Fetch once from every owned partition (concurrently) and process what came, partition by
        partition; returns the number of messages handled."""

        async def fetch(ps: PartitionState):
            # nats-py raises its own or asyncio's TimeoutError; messages that arrive after a
            # client-side timeout stay queued on the subscription, in order, for the next fetch
            try:
                return await ps.sub.fetch(self.fetch_batch, timeout=timeout)
            except TimeoutError:
                return []

        fetched = await asyncio.gather(*(fetch(ps) for ps in self.parts))
        handled = 0
        for ps, msgs in zip(self.parts, fetched, strict=True):
            handled += len(msgs)
            self._process(ps, msgs)
        return handled

    def _process(self, ps: PartitionState, msgs: list) -> None:
        from fleetwarden.sources.jsonl import decode_events

        fresh = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq <= ps.seq:  # redelivered: already in this engine's state
                self.result.redelivered_skipped += 1
            else:
                fresh.append(m)
                ps.seq = seq
        self.result.messages += len(msgs)
        if not fresh:
            return
        ps.last_msg = fresh[-1]
        payloads = [m.data.strip() for m in fresh]
        data = b"\n".join(p for p in payloads if p) + b"\n"
        groups, errors = decode_events(data)
        for line, problem in errors:
            self.result.stats.skip(
                SourceError(f"{self.source} p{ps.index}", f"line {line} of a fetch", problem)
            )
        for batch in time_slices([b for b, _lines in groups.values()], self.slice_seconds):
            self.result.findings += len(self.session.process(batch, ps.engine))
            ps.events += len(batch)
            self.result.events += len(batch)
            self.result.stats.records += len(batch)

    def _record(self) -> None:
        """Store the findings made since the last checkpoint, joined to their devices' open stories."""
        self.session.record()

    async def checkpoint(self, *, ack: bool = True) -> int:
        """Record findings, save every partition that moved, then ack; returns partitions saved.
        ``ack=False`` leaves the acks out (a test's crash between checkpoint and ack)."""
        self._record()
        saved = 0
        size = 0
        for ps in self.parts:
            if ps.seq == ps.saved_seq:
                continue
            blob = dump_engine(ps.engine)
            size += len(blob)
            self.store.save_checkpoint(ps.key, ps.seq, blob, partitions=self.partitions, events=ps.events)
            ps.saved_seq = ps.seq
            saved += 1
            if ack and ps.last_msg is not None:
                await ps.last_msg.ack()
                ps.last_msg = None
        if saved:
            self.result.checkpoints += 1
            self.result.checkpoint_bytes = size
        return saved

    async def caught_up(self) -> bool:
        """True when the server holds nothing undelivered for any owned partition and a last poll
        brings nothing (a fetch that timed out on a busy event loop leaves messages queued)."""
        for ps in self.parts:
            info = await self._js.consumer_info(self.stream, ps.durable)
            if info.num_pending:
                return False
        return await self.poll(timeout=0.2) == 0

    async def run(
        self, *, duration: float | None = None, idle_exit: float | None = None, drain: bool = False
    ) -> WorkerResult:
        """Consume until ``duration`` seconds pass, :meth:`stop` is called, or (``idle_exit``) nothing
        came for that many seconds and the partitions are caught up."""
        t0 = time.monotonic()
        await self.start()
        try:
            last_work = last_cp = time.monotonic()
            while not self._stop:
                n = await self.poll()
                now = time.monotonic()
                if n:
                    last_work = now
                if now - last_cp >= self.checkpoint_every:
                    await self.checkpoint()
                    last_cp = now
                if duration is not None and now - t0 >= duration:
                    break
                if idle_exit is not None and now - last_work >= idle_exit:
                    if await self.caught_up():
                        break
                    last_work = now
            await self.close(drain=drain)
        except BaseException:
            await self.abandon()
            raise
        self.result.seconds = time.monotonic() - t0
        self.result.partitions = {ps.index: ps.seq for ps in self.parts}
        return self.result


def run_worker(url: str, store: Any, *, duration=None, idle_exit=None, drain=False, **kwargs) -> WorkerResult:
    """Synchronous entry point (the CLI's): build a :class:`Worker` and :meth:`Worker.run` it."""
    import signal
    import threading

    worker = Worker(url, store, **kwargs)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C / SIGTERM end the worker cleanly: checkpoint, ack, disconnect.
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda *_: worker.stop())
    try:
        return asyncio.run(worker.run(duration=duration, idle_exit=idle_exit, drain=drain))
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
