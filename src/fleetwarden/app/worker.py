"""The scale-out engine worker: JetStream partitions in, findings out, state in the store.

``fleetwarden worker --bus nats://HOST:PORT`` consumes the device partitions it owns (default:
all of them; see :mod:`fleetwarden.bus.jetstream` for the layout), each through a durable pull
consumer ``<durable_prefix>-p<K>`` filtered on that partition's subject, so workers owning
disjoint partitions form the consumer group and every device's state lives in one worker.

**One engine per worker, fed in event time.**  The events of all owned partitions are decoded
per fetch (one :func:`~fleetwarden.sources.jsonl.decode_events` call, not one per event),
buffered, and handed to ONE engine a window of :data:`WINDOW` seconds of event time at a time,
once every partition that still has a backlog has moved :data:`LATENESS` seconds past the window
(a watermark; a partition the server says has nothing waiting is caught up and holds nothing
back).  So the
engine sees the fleet in time order, as ``analyze`` does, fleet-wide statistics (destination
prevalence, which discounts vendor clouds and NTP pools shared by many devices) cover every
owned partition, and per-call costs are paid once per window rather than once per partition.

**At least once, idempotent.**  Every ``checkpoint_every`` seconds and at shutdown the worker

1. records the findings made since the last checkpoint (``DetectionSession.record``: joined to
   the open stories of their devices in the store, stored once by fingerprint),
2. saves the engine state and, per partition, how far it got (``done``: every event of every
   message up to that stream sequence is in the state; ``partial``: the lines of later messages
   already in it) in ONE store row (table ``engine_checkpoints``), and only then
3. acknowledges the messages up to ``done`` (explicit acks; on a work-queue stream the server
   then deletes them).

A restarted worker loads the checkpoint, re-creates its consumers (on a work-queue stream they
deliver everything not acknowledged, in order), skips messages at or below ``done`` and the
already-counted lines of partial ones.  So a crash anywhere neither loses nor double-counts an
event in the engine's state; findings made after the last checkpoint come again after a restart
(printed twice, stored once).

**Back-pressure.**  The stream :func:`~fleetwarden.bus.jetstream.ensure_stream` creates is a work
queue with limits (``--max-bytes``/``--max-msgs``) that refuses new messages when full, and the
publisher waits and retries then: events are buffered within the limits and never dropped
silently.  How far the worker is behind (messages waiting on the server plus events buffered
here) is measured at every checkpoint: :attr:`WorkerResult.lag`, the ``on_status`` line, and
Prometheus gauges when ``metrics_port`` is set.

**Fleet-wide statistics across workers.**  Workers that share a stream's partitions (each owns
a set) share what the fleet-wide destination prevalence learns: each publishes, on
``<prefix>-fleet`` (stream ``<stream>-FLEET``), the observations its windows teach (answered
source/destination pairs, DNS answers) and how far its event time goes; each learns the others'
observations of a window just before processing its own batch of that window, and processes a
window only once every other worker has announced it.  So the workers move through event time
together and judge a destination against the whole fleet, as one engine would (exactly: the
test runs two workers against one engine on a 120-device fleet).  A worker missing at start (after
``peer_wait`` s) or silent (``peer_timeout`` s) is not waited for, and the worker says so.

Blind spots: the set of partitions a worker owns is part of its checkpoint (its engine holds
those devices' state together), so a restart must own the same set; a checkpoint covering other
sets of this stream's partitions is refused by name.  Other fleet-level state is per worker: the
command analytic's cohort and site profiles and operator sessions, the flood analytic's count of
local devices hitting one victim, and the time span a beacon's coverage is measured over.
Checkpoints hold the engine in the explicit state format of :mod:`fleetwarden.detection.checkpoint`
(never a pickle): whoever can write the checkpoint table can make a worker detect badly, not run
code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetwarden.app.fleetshare import FleetShare
from fleetwarden.app.partitions import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    EventBuffer,
    PartitionState,
    read_checkpoint,
    write_checkpoint,
)
from fleetwarden.app.session import DetectionSession
from fleetwarden.bus.jetstream import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PARTITIONS,
    DEFAULT_STREAM,
    SUBJECT_PREFIX,
    connect,
    ensure_fleet_stream,
    ensure_stream,
    fleet_subject,
    parse_bus_url,
    subject_for,
)
from fleetwarden.core.context import Context
from fleetwarden.core.errors import InputError
from fleetwarden.core.events import KINDS, time_windows
from fleetwarden.core.findings import Finding
from fleetwarden.detection.checkpoint import decode_engine, encode_engine
from fleetwarden.sources import ReadStats, SourceError

__all__ = [
    "CHECKPOINT_FORMAT",
    "WINDOW",
    "PartitionState",
    "Worker",
    "WorkerResult",
    "dump_engine",
    "load_engine",
    "read_checkpoint",
    "run_worker",
]

# Event-time seconds handed to the engine per call: what the file replay of the simulator and
# the reference tests use (findings depend on how much event time one call covers).
WINDOW = 60.0
# Event-time seconds an event may arrive after a later one of its partition and still be handed to
# the engine in its own window: a gateway or the simulator sends a minute of flows, then that
# minute's DNS records.  With it every window reaches the engine whole, whatever the fetch sizes,
# so a restarted worker makes exactly the calls an uninterrupted one makes.
LATENESS = 60.0
# A partition this far ahead (event-time seconds) of the slowest one with a backlog is not
# fetched until the others catch up: the buffer stays about one fetch deep per partition.
LOOKAHEAD = 600.0


def dump_engine(engine: Any) -> bytes:
    """The engine's detection state in the explicit state format
    (:mod:`fleetwarden.detection.checkpoint`), without its context (inventory) and flow model:
    those come from the store and ``--model`` when the worker starts, not from the checkpoint."""
    return encode_engine(engine)


def load_engine(blob: bytes, ctx: Context | None, flow_model: Any = None) -> Any:
    """An engine from :func:`dump_engine`'s bytes.  Nothing read is unpickled or executed: a blob
    that is not a FleetWarden engine state (a pickle, another version, a class off the
    allow-list, a damaged one) is refused with an :class:`~fleetwarden.core.errors.InputError`."""
    return decode_engine(blob, ctx, flow_model)


@dataclass
class WorkerResult:
    events: int = 0
    messages: int = 0
    redelivered_skipped: int = 0
    findings: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0  # size of the last checkpoint
    seconds: float = 0.0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> last stream seq done
    lag: dict[int, int] = field(default_factory=dict)  # partition -> messages waiting (last measure)
    lag_max: int = 0  # most messages waiting at any measure
    buffered: int = 0  # events fetched, waiting for the watermark (last measure)
    bus_errors: int = 0  # fetches, acks or queries that failed (server restart, reconnect) and were retried
    # events fetched behind what the engine had already been handed (event time before the released
    # watermark): judged as they come, so their findings can differ from an in-order run's
    late_events: int = 0
    stats: ReadStats = field(default_factory=ReadStats)


class Worker:
    """Consume owned partitions into one engine, checkpointing to ``store``.

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
        slice_seconds: float = WINDOW,
        lateness: float = LATENESS,
        on_finding: Callable[[Finding], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        metrics_port: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        peer_wait: float = 10.0,
        peer_timeout: float = 30.0,
    ) -> None:
        if partitions < 1:
            raise InputError("--partitions must be at least 1")
        owned = sorted(set(owned if owned else range(partitions)))
        bad = [k for k in owned if not 0 <= k < partitions]
        if bad:
            raise InputError(f"partition(s) {bad} outside 0..{partitions - 1}")
        self.target = parse_bus_url(url)
        self.store = store
        self.partitions = partitions
        self.owned = owned
        self.stream = stream
        self.prefix = prefix
        self.durable_prefix = durable_prefix
        self.record = record
        self.source = f"nats:{self.target.display}/{stream}"
        # one session: context, model, GC policy, recording, and the one engine of this worker
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
        self.engine = self.session.engine
        self.checkpoint_every = checkpoint_every
        self.ack_wait = ack_wait
        self.fetch_batch = fetch_batch
        self.window = slice_seconds
        self.lateness = lateness
        self._released = -math.inf  # event time up to which the engine has been handed events
        self.on_status = on_status
        self.max_bytes = max_bytes
        self.key = f"{stream}/{durable_prefix}-p{'.'.join(map(str, owned))}"
        self.result = WorkerResult()
        self.parts: list[PartitionState] = []
        self.resumed = False
        self._saved: tuple[int, int] | None = None  # (progress, events) of the last checkpoint
        self._buffer = EventBuffer()
        # shared fleet-wide statistics, when other workers own the other partitions
        self._fleet = (
            FleetShare(self.key, owned, partitions, peer_wait, peer_timeout) if len(owned) < partitions else None
        )
        self._metrics = _Metrics(metrics_port) if metrics_port is not None else None
        self._nc = None
        self._js = None
        self._workqueue = False
        self._stop = False

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> Worker:
        from fleetwarden.app.runtime import warm_up

        self._check_ownership()
        self._nc = await connect(self.target.url)
        self._js = self._nc.jetstream()
        info = await ensure_stream(self._js, self.stream, self.prefix, max_bytes=self.max_bytes)
        self._workqueue = str(getattr(info.config.retention, "value", info.config.retention)) == "workqueue"
        positions = self._restore()
        for k in self.owned:
            ps = PartitionState(k, f"{self.durable_prefix}-p{k}", subject_for(k, self.prefix))
            pos = positions.get(str(k))
            if pos is not None:
                ps.done = ps.fetched = int(pos["done"])
                ps.skip = {int(s): set(lines) for s, lines in pos.get("partial", {}).items()}
                ps.events = int(pos.get("events", 0))
                ps.resumed = True
            ps.sub = await self._bind(ps)
            self.parts.append(ps)
        if self._fleet is not None:
            self._fleet_stream = await ensure_fleet_stream(self._js, self.stream, self.prefix)
            await self._js.subscribe(
                fleet_subject(self.prefix),
                stream=self._fleet_stream,
                cb=self._fleet.on_message,
                ordered_consumer=True,
            )
        warm_up()
        return self

    def _check_ownership(self) -> None:
        """Refuse to start when another set of this stream's partitions holds any of ours."""
        prefix = f"{self.stream}/{self.durable_prefix}-p"
        mine = set(self.owned)
        for key in self.store.list_checkpoint_keys(prefix):
            if key == self.key:
                continue
            theirs = {int(p) for p in key[len(prefix) :].split(".") if p.isdigit()}
            if theirs & mine:
                raise InputError(
                    f"partition(s) {sorted(theirs & mine)} are in the checkpoint {key!r} of a worker that "
                    f"owned {sorted(theirs)}: start workers with the partition sets they had, or drain "
                    "them and remove their checkpoints first"
                )

    def _restore(self) -> dict[str, Any]:
        cp = self.store.load_checkpoint(self.key)
        if cp is None:
            return {}
        if cp.partitions and cp.partitions != self.partitions:
            raise InputError(
                f"checkpoint {self.key} was made with {cp.partitions} partitions, not {self.partitions}: "
                "devices map to other partitions now"
            )
        header, state = read_checkpoint(cp.state)
        engine = load_engine(state, self.ctx, self.flow_model)
        self.engine = self.session.engine = engine
        self.resumed = True
        if self._fleet is not None and header.get("fleet_applied"):
            self._fleet.applied = tuple(header["fleet_applied"])
        return header.get("positions", {})

    async def _bind(self, ps: PartitionState):
        """(Re)create the partition's durable consumer so it delivers, in order, everything after the
        checkpoint: a work queue delivers what was never acknowledged; another stream starts at
        ``done + 1``.  A consumer left with deliveries pending (a crash) would redeliver them only
        after ``ack_wait``, after newer ones: it is always re-created."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self.stream, ps.durable)
        if self._workqueue or not ps.done:
            start = {"deliver_policy": DeliverPolicy.ALL}
        else:
            start = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": ps.done + 1}
        await self._js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=ps.durable,
                filter_subject=ps.subject,
                ack_policy=AckPolicy.EXPLICIT,
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
        """Checkpoint, optionally emit pending findings (``drain``: the end of a replay; everything
        buffered goes to the engine first), and disconnect."""
        if drain:
            await self._await_peers_done()
            self._release(math.inf)
            self._learn_peers((2**62, len(KINDS)))
        await self.checkpoint(final=True)
        if drain:
            self.result.findings += len(self.session.flush(self.engine))
            self.session.record(final=True)
        if self._nc is not None:
            await self._nc.flush()  # the acks are out before the connection goes
            await self._nc.close()
            self._nc = None
        if self._metrics is not None:
            self._metrics.close()

    async def _await_peers_done(self) -> None:
        """At the end of a replay: wait (at most ``peer_timeout``) until every peer has announced all
        it will see, so the pending findings flushed here were judged on the whole fleet."""
        fleet = self._fleet
        if fleet is None:
            return
        await self._announce(math.inf)
        deadline = time.monotonic() + fleet.peer_timeout
        while time.monotonic() < deadline:
            fleet.drain()
            peers = [p for p in fleet.peers.values() if p["owned"] & fleet.needed]
            covered = set().union(*(p["owned"] for p in peers)) if peers else set()
            if covered >= fleet.needed and all(p["through"] >= 1e300 for p in peers):
                return
            await asyncio.sleep(0.05)

    async def abandon(self) -> None:
        """Drop the connection without checkpoint or ack: what a crash leaves behind."""
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
        self.session._unrecorded.clear()
        if self._metrics is not None:
            self._metrics.close()

    # work -------------------------------------------------------------------------------
    async def poll(self, timeout: float = 0.5) -> int:
        """Fetch once from the owned partitions that are not too far ahead in event time
        (concurrently), buffer what came, and hand the engine every window all partitions have
        passed; returns the number of messages fetched.  A fetch that fails (the server restarts,
        the connection is re-established) fetches nothing this time; nats-py reconnects."""
        slowest = min((ps.mark for ps in self.parts if not ps.caught_up), default=math.inf)
        wanted = [ps for ps in self.parts if ps.caught_up or ps.mark <= slowest + LOOKAHEAD]
        await self._keep_held()
        timeout = min(timeout, self.ack_wait / 4)  # back in time to keep holding what we hold
        fetched = await asyncio.gather(*(self._fetch(ps, timeout) for ps in wanted))
        handled = 0
        tails = []
        for ps, msgs in zip(wanted, fetched, strict=True):
            if msgs is None:
                continue
            handled += len(msgs)
            if msgs:
                # the server says how many messages are still waiting for this consumer; none
                # waiting is not yet caught up when deliveries lost in an outage will come again
                ps.caught_up = False
                if msgs[-1].metadata.num_pending == 0:
                    tails.append(ps)
            self._decode(ps, msgs)
        for ps in tails:
            await self._ask_caught_up(ps)
        until = self._watermark()
        if self._fleet is not None:
            self._fleet.drain()
            await self._announce(until)
            until = min(until, self._fleet.limit(self.on_status))
        self._release(until)
        return handled

    async def _announce(self, through: float) -> None:
        """Publish what our buffered windows before ``through`` teach the fleet-wide statistics, and
        how far our event time goes (a heartbeat every few seconds even when nothing moved)."""
        fleet = self._fleet
        prevalence = getattr(self.engine, "prevalence", None)
        obs: list[list[Any]] = []
        if prevalence is not None and through > fleet.announced:
            ready = self._buffer.peek(fleet.announced, through)
            for batch in time_windows(ready, self.window, origin=0.0) if ready else ():
                o = prevalence.observation(batch)
                if o:
                    w = int(math.floor(float(batch.np("ts")[0]) / self.window))
                    obs.append([w, KINDS.index(batch.kind), o])
            if math.isfinite(through):
                fleet.announced = through
            elif self._buffer.size:
                fleet.announced = math.nextafter(float(self._buffer_max_ts()), math.inf)
        now = time.monotonic()
        if not obs and through == fleet.last_through and now - fleet.last_publish < 5.0:
            return
        message = {"w": self.key, "owned": self.owned, "through": max(-1e300, min(1e300, through)), "obs": obs}
        try:
            await self._js.publish(fleet_subject(self.prefix), json.dumps(message).encode(), stream=self._fleet_stream)
            fleet.last_publish, fleet.last_through = now, through
        except Exception as exc:
            self._trouble("fleet statistics", exc)

    def _buffer_max_ts(self) -> float:
        return max(
            float(np.nanmax(b.np("ts"))) for chunks in self._buffer.parts.values() for b, *_ in chunks if len(b)
        )

    async def _fetch(self, ps: PartitionState, timeout: float) -> list | None:
        """Up to ``fetch_batch`` messages; [] when none came (then ``caught_up`` is asked of the
        server), None when the server could not be reached."""
        try:
            msgs = await ps.sub.fetch(self.fetch_batch, timeout=timeout)
        except TimeoutError:
            # nats-py raises its own or asyncio's TimeoutError; messages that arrive after a
            # client-side timeout stay queued on the subscription, in order, for the next fetch
            msgs = []
        except Exception as exc:  # disconnected, reconnecting, server restarting: try again later
            self._trouble(f"fetch from p{ps.index}", exc)
            return None
        if not msgs and not await self._ask_caught_up(ps):
            return None
        return msgs

    async def _ask_caught_up(self, ps: PartitionState) -> bool:
        """Ask the server whether ``ps`` is caught up: nothing waits on the server AND nothing it
        delivered is still on its way to us (a fetch that timed out, or a delivery lost while the
        server restarted, is redelivered later).  False when the server could not be asked (then
        ``caught_up`` is left as it was)."""
        try:
            info = await self._js.consumer_info(self.stream, ps.durable)
        except Exception as exc:
            self._trouble(f"state of p{ps.index}", exc)
            return False
        ps.caught_up = info.num_pending == 0 and info.num_ack_pending <= len(ps.unacked)
        return True

    def _trouble(self, what: str, exc: BaseException) -> None:
        self.result.bus_errors += 1
        if self.on_status is not None and self.result.bus_errors in (1, 10, 100, 1000):
            self.on_status(f"bus trouble ({what}: {exc.__class__.__name__}: {exc}); retrying")

    def _watermark(self) -> float:
        """Event time up to which every partition with a backlog has been fetched, less the
        allowed lateness, cut to a window (+inf when every partition is caught up)."""
        marks = [ps.mark for ps in self.parts if not ps.caught_up]
        if not marks:
            return math.inf
        low = min(marks) - self.lateness
        return math.floor(low / self.window) * self.window if math.isfinite(low) else -math.inf

    def _decode(self, ps: PartitionState, msgs: list) -> None:
        from fleetwarden.sources.jsonl import decode_events

        self.result.messages += len(msgs)
        fresh = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq <= ps.fetched:  # redelivered: already buffered or in the engine's state
                self.result.redelivered_skipped += 1
            else:
                fresh.append(m)
                ps.fetched = seq
            ps.hold(seq, m)
        if not fresh:
            return
        payloads = [m.data.strip() for m in fresh]
        seqs = np.array([m.metadata.sequence.stream for m in fresh], dtype=np.int64)
        counts = np.array([p.count(b"\n") + 1 if p else 0 for p in payloads], dtype=np.int64)
        starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
        for m, seq in zip(fresh, seqs.tolist(), strict=True):
            ps.open[seq] = [0, m]
        data = b"\n".join(p for p in payloads if p) + b"\n"
        groups, errors = decode_events(data)
        for line, problem in errors:
            k = int(np.searchsorted(starts, line, side="right") - 1)
            where = f"message {int(seqs[k])} line {line - int(starts[k]) + 1}"
            self.result.stats.skip(SourceError(f"{self.source} p{ps.index}", where, problem))
        for batch, lines in groups.values():
            msg = np.searchsorted(starts, lines, side="right") - 1
            seq, line = seqs[msg], lines - starts[msg]
            keep = self._not_counted(ps, seq, line)
            if not keep.all():
                batch, seq, line = batch.filter(keep), seq[keep], line[keep]
            if not len(batch):
                continue
            for s, n in zip(*np.unique(seq, return_counts=True), strict=True):
                ps.open[int(s)][0] += int(n)
            ps.mark = max(ps.mark, float(np.nanmax(batch.np("ts"))))
            self.result.late_events += int((batch.np("ts") < self._released).sum())
            self._buffer.add(batch, ps.index, seq, line)
            self.result.stats.records += len(batch)
        ps.advance()

    @staticmethod
    def _not_counted(ps: PartitionState, seq: np.ndarray, line: np.ndarray) -> np.ndarray:
        """Rows not already in a restored engine (lines a checkpoint listed as in its state)."""
        keep = np.ones(len(seq), dtype=bool)
        if ps.skip:
            for s, lines in ps.skip.items():
                hit = seq == s
                if hit.any():
                    keep[hit] = ~np.isin(line[hit], list(lines))
        return keep

    def _release(self, until: float) -> None:
        """Hand the engine every buffered event before ``until``, a window at a time."""
        if self._buffer.size == 0 or until == -math.inf:
            return
        ready, (part, seq, line) = self._buffer.take(until)
        if not ready:
            return
        self._released = max(self._released, min(until, max(float(b.np("ts").max()) for b in ready.values())))
        for batch in time_windows(ready, self.window, origin=0.0):
            self._learn_peers((int(math.floor(float(batch.np("ts")[0]) / self.window)), KINDS.index(batch.kind)))
            self.result.findings += len(self.session.process(batch, self.engine))
            self.result.events += len(batch)
        # what the peers saw in the windows released here, where this worker had nothing of a kind
        last = int(math.floor(until / self.window)) - 1 if math.isfinite(until) else 2**62
        self._learn_peers((last, len(KINDS)))
        by_index = {ps.index: ps for ps in self.parts}
        for p in np.unique(part).tolist():
            ps = by_index[p]
            mine = part == p
            ps.events += int(mine.sum())
            for s, n in zip(*np.unique(seq[mine], return_counts=True), strict=True):
                ps.open[int(s)][0] -= int(n)
            for s, ln in zip(seq[mine].tolist(), line[mine].tolist(), strict=True):
                if ps.open[s][0] > 0:
                    ps.released.setdefault(s, set()).add(ln)
            ps.advance()

    def _learn_peers(self, key: tuple[int, int]) -> None:
        """Teach the engine's fleet-wide statistics what the peers saw up to (window, kind) ``key``."""
        if self._fleet is None:
            return
        prevalence = getattr(self.engine, "prevalence", None)
        for obs in self._fleet.due(key):
            if prevalence is not None:
                prevalence.learn(obs, self.ctx)

    async def checkpoint(self, *, ack: bool = True, final: bool = False) -> bool:
        """Record findings, save the engine and every partition's position, then acknowledge;
        returns whether anything was saved.  ``ack=False`` leaves the acks out (a test's crash
        between checkpoint and ack); ``final`` (at shutdown) also saves every drift count."""
        self.session.record(final=final)
        await self._measure_lag()
        progress = sum(ps.done for ps in self.parts)
        if self._saved == (progress, int(self.engine.events)):
            if ack:
                await self._ack()  # acknowledgements that failed before
            return False
        header = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "partitions": self.partitions,
            "owned": self.owned,
            "events": int(self.engine.events),
            "positions": {str(ps.index): {**ps.position(), "events": ps.events} for ps in self.parts},
            "fleet_applied": list(self._fleet.applied) if self._fleet is not None else None,
        }
        blob = write_checkpoint(header, dump_engine(self.engine))
        # a sum of positions never goes back while the worker moves on: the store refuses a
        # checkpoint older than the one it holds (two workers that both believe they own it)
        self.store.save_checkpoint(self.key, progress, blob, partitions=self.partitions, events=self.engine.events)
        self._saved = progress, int(self.engine.events)
        self.result.checkpoints += 1
        self.result.checkpoint_bytes = len(blob)
        self.result.partitions = {ps.index: ps.done for ps in self.parts}
        if ack:
            await self._ack()
        if self._metrics is not None:
            self._metrics.update(self)
        return True

    async def _ack(self) -> None:
        """Acknowledge the messages in the saved state; one that cannot be acknowledged now (the
        server is restarting) is tried again at the next checkpoint, and if it is redelivered in
        the meantime it is recognised and skipped."""
        for ps in self.parts:
            for seq in [s for s in ps.unacked if s <= ps.done]:
                try:
                    await ps.unacked[seq][0].ack()
                    del ps.unacked[seq]
                except Exception as exc:
                    self._trouble(f"ack on p{ps.index}", exc)
                    break

    async def _keep_held(self) -> None:
        """Tell the server we still hold the messages fetched but not yet acknowledged (buffered for
        the event-time merge, or waiting for the next checkpoint) before ``ack_wait`` runs out, so
        it does not deliver them again while we work."""
        due = time.monotonic() - self.ack_wait / 3
        for ps in self.parts:
            for entry in ps.unacked.values():
                if entry[1] < due:
                    try:
                        await entry[0].in_progress()
                    except Exception as exc:
                        self._trouble(f"progress on p{ps.index}", exc)
                        return
                    entry[1] = time.monotonic()

    async def _measure_lag(self) -> None:
        """Messages waiting on the server per partition (undelivered), plus events buffered here."""
        if self._js is None:
            return
        lag: dict[int, int] = {}
        for ps in self.parts:
            try:
                info = await self._js.consumer_info(self.stream, ps.durable)
            except Exception:  # a transient server hiccup must not stop a checkpoint
                continue
            lag[ps.index] = int(info.num_pending)
        self.result.lag = lag
        self.result.buffered = self._buffer.size
        waiting = sum(lag.values())
        self.result.lag_max = max(self.result.lag_max, waiting)
        if self.on_status is not None and (waiting or self._buffer.size > 10 * self.fetch_batch):
            worst = sorted(lag.items(), key=lambda kv: -kv[1])[:4]
            parts = ", ".join(f"p{k} {n:,}" for k, n in worst if n)
            self.on_status(
                f"behind: {waiting:,} messages waiting in the stream ({parts or 'none'}), "
                f"{self._buffer.size:,} events buffered for the event-time merge"
            )

    async def caught_up(self) -> bool:
        """True when the server holds nothing undelivered for any owned partition and a last poll
        brings nothing (a fetch that timed out on a busy event loop leaves messages queued)."""
        for ps in self.parts:
            try:
                info = await self._js.consumer_info(self.stream, ps.durable)
            except Exception as exc:
                self._trouble(f"state of p{ps.index}", exc)
                return False
            if info.num_pending:
                return False
        return await self.poll(timeout=0.2) == 0 and self._buffer.size == 0

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
        self.result.partitions = {ps.index: ps.done for ps in self.parts}
        return self.result


class _Metrics:
    """Prometheus gauges and counters of one worker, served on ``port`` (``/metrics``)."""

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.events = Counter("fleetwarden_worker_events", "events processed", registry=self.registry)
        self.findings = Counter("fleetwarden_worker_findings", "findings made", registry=self.registry)
        self.checkpoints = Counter("fleetwarden_worker_checkpoints", "checkpoints saved", registry=self.registry)
        self.lag = Gauge(
            "fleetwarden_worker_lag_messages",
            "messages waiting in the stream for this worker",
            ["partition"],
            registry=self.registry,
        )
        self.buffered = Gauge(
            "fleetwarden_worker_buffered_events", "events waiting for the event-time merge", registry=self.registry
        )
        self._seen = (0, 0, 0)
        try:
            self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        except OSError as exc:
            raise InputError(f"--metrics-port {port}: {exc.strerror or exc}") from None

    def update(self, worker: Worker) -> None:
        r = worker.result
        events, findings, cps = self._seen
        self.events.inc(r.events - events)
        self.findings.inc(r.findings - findings)
        self.checkpoints.inc(r.checkpoints - cps)
        self._seen = (r.events, r.findings, r.checkpoints)
        for k, n in r.lag.items():
            self.lag.labels(partition=str(k)).set(n)
        self.buffered.set(r.buffered)

    def close(self) -> None:
        self.server.shutdown()


def run_worker(url: str, store: Any, *, duration=None, idle_exit=None, drain=False, **kwargs) -> WorkerResult:
    """Synchronous entry point (the CLI's): build a :class:`Worker` and :meth:`Worker.run` it."""
    import signal
    import threading

    if kwargs.get("ctx") is None:  # recording (--db) or not, the store's inventory is the context
        from fleetwarden.app.firmware import with_registry
        from fleetwarden.app.inventory import context_from_store

        # the store's inventory names and classes devices; its signed firmware registry is the catalogue
        kwargs["ctx"] = with_registry(context_from_store(store), store)
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
