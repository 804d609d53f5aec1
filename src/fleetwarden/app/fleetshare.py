"""Fleet-wide statistics shared by the workers of one stream (docs/architecture.md).

Each worker owns a set of a stream's device partitions and runs one engine over them; what the
engine's destination prevalence learns (answered source/destination pairs, DNS answers) must cover
the whole fleet, or a vendor cloud polled by many devices looks rare to every worker and its
heartbeats look like beacons.  :class:`FleetShare` is the worker's side of the exchange on the bus
subject ``<prefix>-fleet``: what the others announced, and what is due to be learnt when.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["FleetShare"]


class FleetShare:
    """What the other workers of this stream share: which partitions each owns, how far its event
    time goes (``through``), and what its batches taught the fleet-wide statistics (destination
    prevalence: :meth:`~fleetwarden.detection.analytics.netcommon.Prevalence.observation`), keyed by
    (window, kind).  A worker learns every peer observation of a (window, kind) just before it
    processes its own batch of that (window, kind), as one engine over the whole fleet would have
    learnt it, and processes a window only once every peer has announced it: workers move through
    event time together.  A peer that is missing when the worker starts (after ``peer_wait`` s) or
    that falls silent (``peer_timeout`` s) is not waited for, and the worker says so."""

    def __init__(self, me: str, owned: Sequence[int], partitions: int, peer_wait: float, peer_timeout: float) -> None:
        self.me = me
        self.needed = set(range(partitions)) - set(owned)
        self.peer_wait = peer_wait
        self.peer_timeout = peer_timeout
        self.inbox: deque[bytes] = deque()
        self.peers: dict[str, dict[str, Any]] = {}
        self.pending: list[tuple[int, int, int, dict]] = []  # heap of (window, kind, arrival, observation)
        self.applied: tuple[int, int] = (-(2**62), -1)  # newest (window, kind) learnt
        self.announced = -math.inf  # event time up to which our own observations went out
        self.last_publish = -math.inf
        self.last_through = -math.inf
        self.started = time.monotonic()
        self.warned: set[str] = set()
        self._arrivals = 0

    async def on_message(self, msg: Any) -> None:
        self.inbox.append(msg.data)

    def drain(self) -> None:
        """Take in what the peers published since the last poll."""
        while self.inbox:
            try:
                m = json.loads(self.inbox.popleft())
                key, owned, through = str(m["w"]), {int(p) for p in m["owned"]}, float(m["through"])
            except (ValueError, KeyError, TypeError):
                continue  # not ours to understand; never fatal
            if key == self.me:
                continue
            peer = self.peers.setdefault(key, {"owned": owned, "through": -math.inf})
            peer.update(owned=owned, through=max(peer["through"], through), seen=time.monotonic())
            for w, k, obs in m.get("obs", ()):
                if (int(w), int(k)) > self.applied and isinstance(obs, dict):
                    self._arrivals += 1
                    heapq.heappush(self.pending, (int(w), int(k), self._arrivals, obs))

    def limit(self, say: Callable[[str], None] | None) -> float:
        """Event time every needed peer has announced (+inf when no peer is needed)."""
        if not self.needed:
            return math.inf
        now = time.monotonic()
        live = {k: p for k, p in self.peers.items() if now - p.get("seen", now) <= self.peer_timeout}
        covered = set().union(*(p["owned"] for p in live.values())) if live else set()
        missing = self.needed - covered
        if missing and now - self.started < self.peer_wait:
            return -math.inf  # give the other workers a moment to show up
        for key in set(self.peers) - set(live):
            self._warn(say, f"peer {key} silent for over {self.peer_timeout:.0f} s: not waiting for it")
        if missing:
            self._warn(
                say,
                f"no worker announces partition(s) {sorted(missing)}: fleet-wide statistics leave them out",
            )
        throughs = [p["through"] for p in live.values() if p["owned"] & self.needed]
        return min(throughs) if throughs else math.inf

    def due(self, key: tuple[int, int]) -> Iterator[dict]:
        """Peer observations of (window, kind) up to ``key``, oldest first."""
        while self.pending and (self.pending[0][0], self.pending[0][1]) <= key:
            w, k, _n, obs = heapq.heappop(self.pending)
            yield obs
        self.applied = max(self.applied, key)

    def _warn(self, say: Callable[[str], None] | None, text: str) -> None:
        if text not in self.warned:
            self.warned.add(text)
            if say is not None:
                say(text)
