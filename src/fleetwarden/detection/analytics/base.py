"""The contract every behaviour analytic keeps.

An analytic consumes event batches of the kinds it names, in time order, and returns
findings as soon as its evidence is complete.  It keeps its own bounded state between
batches, so the same object serves file replay (one call per file chunk) and live
streams (one call per bus message batch).  ``flush`` is called at the end of a replay
(or when a stream window closes) to emit what is still pending.

Discovery convention: each analytics module exposes a module-level ``ANALYTICS`` list of
its analytic classes, each constructible without arguments (defaults are the production
thresholds).  :func:`fleetwarden.detection.engine.default_analytics` imports the modules
it knows by name and instantiates every class listed; a module that is absent is skipped.
An analytic that also takes ARP records (``ts, src_mac, src_ip, dst_ip, op``) offers
``update_arp(table, ctx) -> list[Finding]``.
"""

from __future__ import annotations

from typing import Protocol

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding


class Analytic(Protocol):
    """A behaviour analytic: scan, beacon, flood, DNS abuse, exfiltration, auth…"""

    name: str
    kinds: tuple[str, ...]

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Consume one batch (records in time order); return findings now complete."""
        ...

    def flush(self, ctx: Context) -> list[Finding]:
        """Emit what is still pending at the end of the input."""
        ...
