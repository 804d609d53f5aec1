"""The detection session: one run of the pure engine, with everything around it that is not pure.

Every face that detects goes through a :class:`DetectionSession`: ``analyze`` (files), ``watch``
(a live MQTT stream), the scale-out ``worker`` (one engine per partition), the ``demo``, and the
coming API.  It owns

* the **flow model** (loaded from its directory once) and the inventory **context**;
* **warm-up** of first-use costs before a live stream's first event (:func:`~.runtime.warm_up`);
* the **garbage-collector policy** (:class:`~.runtime.GcPolicy`), applied after every batch;
* the **process/flush loop** and every finding made, handed to ``on_finding`` the moment it is
  complete;
* **correlation** into incidents, and **recording** to the store, where open incidents live: a
  later finding joins the stored story of its device (:meth:`DetectionSession.record`), so a
  scan, a C2 beacon and a flood raise each other's risk however many runs or checkpoints lie
  between them, and campaigns link across recordings: the new findings are correlated with the
  stored open incidents campaign-related to them too (:func:`join_stories`), so a scanner
  recorded in one checkpoint and its victims in a later one share one campaign id, kept as
  members join;
* **rollout progress**: the latest ``firmware_report`` of each device, applied to the running
  staged rollouts at each record (:func:`fleetwarden.app.rollout.record_reports`), so a device
  that reports the target image becomes ``updated`` whichever path brought its report.

The engine itself (:class:`~fleetwarden.detection.engine.Engine`) stays pure: batches in,
findings out (docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.app.drift import metered
from fleetwarden.app.models import resolve_model
from fleetwarden.app.runtime import GcPolicy, warm_up
from fleetwarden.control.discovery import Sightings, device_mac
from fleetwarden.core.context import Context
from fleetwarden.core.counterparts import counterparts, is_external, subjects
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import CampaignLink, Finding, Incident
from fleetwarden.core.text import redact
from fleetwarden.detection.analytics.base import Analytic
from fleetwarden.detection.correlation import ATTACK_CATEGORIES, correlate
from fleetwarden.detection.engine import Engine

__all__ = [
    "MAX_REPORT_DEVICES",
    "NEVER_EXPECTED",
    "DetectionSession",
    "SessionStats",
    "join_stories",
    "mark_expected",
    "related_stories",
]

# devices whose firmware reports a session holds between two record() calls; past it, the reports
# of devices not yet held are dropped (counted in SessionStats.reports_dropped) until the next record
MAX_REPORT_DEVICES = 100_000
# correlations one join_stories call makes at most: the first, then one per merge of stored
# campaigns that pulled in the other members of the campaign whose id gave way
MERGE_ROUNDS = 3
# findings read of each related (other) device's open incident: a flood or a beacon that went on for
# days holds thousands, and every record (every API request) would read them all
RELATED_STORY_FINDINGS = 200


@dataclass
class SessionStats:
    """What a session has done so far."""

    events: int = 0
    batches: int = 0
    findings: int = 0
    seconds: float = 0.0  # wall time spent in the engine
    # wall seconds from a batch's hand-over to the engine until its findings were out, per batch
    engine_latency: list[float] = field(default_factory=list)
    events_by_kind: dict[str, int] = field(default_factory=dict)
    rollout_updates: int = 0  # rollout devices that became ``updated`` through this session's reports
    reports_dropped: int = 0  # firmware reports not held: more than MAX_REPORT_DEVICES devices reported


class DetectionSession:
    """One detection run: context, flow model, engine(s), findings, and where they are recorded.

    ``model`` is a model directory or a loaded model; ``store`` (optional) is where
    :meth:`record` writes, under the name ``source`` (also the actor of the rollout progress its
    firmware reports make).  ``keep_findings`` (default True) keeps every finding in
    :attr:`findings` for :meth:`incidents`; a long-running worker turns it off and relies on the
    store.
    """

    max_report_devices = MAX_REPORT_DEVICES

    def __init__(
        self,
        *,
        ctx: Context | None = None,
        model: Any = None,
        analytics: Sequence[Analytic] | None = None,
        store: Any = None,
        source: str = "",
        on_finding: Callable[[Finding], None] | None = None,
        gc_policy: GcPolicy | None = None,
        warm: bool = False,
        keep_findings: bool = True,
        keep_latency: bool = False,
    ) -> None:
        self.ctx = ctx if ctx is not None else Context()
        # a flow model counts what it scores (model drift, saved with each record())
        self.model, self.drift = metered(model, resolve_model(model))
        self.store = store
        self.source = source
        self.on_finding = on_finding
        self.gc = gc_policy if gc_policy is not None else GcPolicy()
        self.keep_findings = keep_findings
        self.keep_latency = keep_latency
        self.stats = SessionStats()
        self.findings: list[Finding] = []
        self._unrecorded: list[Finding] = []
        # passive discovery: the devices the traffic shows, written with each record() call
        self.sightings = Sightings() if store is not None else None
        # rollout progress: device -> (image it reported last, first report of it, last report),
        # since the last record() call
        self._reports: dict[str, tuple[str, float, float]] | None = {} if store is not None else None
        self.engine = self.new_engine(analytics)
        if warm:
            warm_up()  # before the first event: its findings should not wait for data files to load

    def new_engine(self, analytics: Sequence[Analytic] | None = None) -> Engine:
        """A fresh engine with this session's context and model (a worker makes one per partition)."""
        return Engine(analytics=analytics, flow_model=self.model, ctx=self.ctx)

    # ---- the loop -------------------------------------------------------------------------------
    def process(self, batch: EventBatch, engine: Engine | None = None) -> list[Finding]:
        """Run one batch through ``engine`` (default: the session's); returns and emits its findings."""
        if not len(batch):
            return []
        if self.sightings is not None and batch.kind in ("flow", "dns"):
            self.sightings.observe_flows(batch.table)
        if self._reports is not None and batch.kind == "firmware_report":
            self._hold_reports(batch.table)
        t = time.perf_counter()
        found = (engine or self.engine).process(batch)
        self.gc.settle()
        elapsed = time.perf_counter() - t
        self.stats.seconds += elapsed
        if self.keep_latency:
            self.stats.engine_latency.append(elapsed)
        self.stats.events += len(batch)
        self.stats.batches += 1
        self.stats.events_by_kind[batch.kind] = self.stats.events_by_kind.get(batch.kind, 0) + len(batch)
        self._emit(found)
        return found

    def process_arp(self, table: pa.Table, engine: Engine | None = None) -> list[Finding]:
        if self.sightings is not None:
            self.sightings.observe_arp(table)
        found = (engine or self.engine).process_arp(table)
        self._emit(found)
        return found

    def flush(self, engine: Engine | None = None) -> list[Finding]:
        """The findings still pending at the end of the input."""
        found = (engine or self.engine).flush()
        self._emit(found)
        return found

    def run(self, batches: Iterable[EventBatch], *, flush: bool = True) -> list[Finding]:
        """Process every batch, then (by default) flush; returns the findings of this call."""
        out: list[Finding] = []
        for batch in batches:
            out += self.process(batch)
        if flush:
            out += self.flush()
        return out

    def _emit(self, found: list[Finding]) -> None:
        if not found:
            return
        self.stats.findings += len(found)
        if self.keep_findings:
            self.findings += found
        if self.store is not None:
            self._unrecorded += found
        if self.on_finding is not None:
            for f in found:
                self.on_finding(f)

    # ---- correlation and recording --------------------------------------------------------------
    def incidents(self) -> list[Incident]:
        """This session's findings correlated into incidents (highest risk first); findings
        :func:`mark_expected` marked as a planned rollout's (at :meth:`record`) open none."""
        return correlate([f for f in self.findings if not f.attributes.get("expected")], self.ctx)

    @property
    def unrecorded(self) -> int:
        return len(self._unrecorded)

    def record(
        self, *, batches: Sequence[tuple[str, int, float | None, float | None]] | None = None, final: bool = False
    ) -> Any:
        """Write the findings made since the last call to the store, each joined to the open story of
        its device there (:func:`join_stories`), and the devices seen since the last call (passive
        discovery, :mod:`fleetwarden.control.discovery`) in the same transaction.  A finding that
        belongs to a planned rollout's change window is stored marked and joins no story
        (:func:`mark_expected`).

        First, the firmware reports seen since the last call are applied to the running staged
        rollouts (:func:`fleetwarden.app.rollout.record_reports`, actor ``source``): per device, the
        image it reported last, as of its first report of that image since the last call; a device
        updating to the target hash becomes ``updated``.  That comes first so the findings of this
        call are judged against the windows the reports just closed.  It costs nothing without
        reports and one query without a running rollout.

        Returns the store's summary (None without a store, or when there were no findings, devices
        or batches to write).  When a write fails the error is raised and what it did not write
        stays pending for the next call: the findings and sightings, and the reports unless they
        were applied (in their own transaction; applying a report twice changes nothing)."""
        if self.store is None:
            return None
        if self.drift is not None:
            self.drift.save(self.store, force=final)  # the last record of a run saves them all
        found, self._unrecorded = self._unrecorded, []
        reports = self._take_reports()
        devices = self._sighted_devices()
        if not found and not batches and not devices and not reports:
            return None
        applied = False
        try:
            self._apply_reports(reports)
            applied = True
            if not found and not batches and not devices:
                return None
            incidents = join_stories(self.store, mark_expected(self.store, found), self.ctx)
            return self.store.record_results(
                self.source, found, incidents, devices=devices, batches=batches, replace_stories=True
            )
        except BaseException:
            # the findings' transaction wrote nothing: the next call records these findings and
            # sightings with its own, and the reports if they were not applied either, so a failed
            # write (the database restarting) loses nothing
            self._unrecorded = found + self._unrecorded
            if self.sightings is not None:
                self.sightings.put_back()
            if not applied:
                for device, held in reports.items():
                    self._hold(device, *held)
            raise

    # ---- firmware reports for the running rollouts ----------------------------------------------
    def _hold_reports(self, table: pa.Table) -> None:
        """Keep, per device of a ``firmware_report`` batch, the image it reported last and the times
        of the first report of its last unbroken run of that image and of its last report (columnar
        over the batch, then one dict step per device).  Reports without a device or a hash say nothing about a rollout."""
        dev, ts = table.column("device_id"), table.column("ts")
        sha = pc.utf8_lower(table.column("image_sha256"))
        keep = pc.and_(
            pc.and_(pc.greater(pc.utf8_length(dev), 0), pc.greater(pc.utf8_length(sha), 0)), pc.is_valid(ts)
        )
        t = pa.table({"d": dev, "h": sha, "t": ts}).filter(keep)  # a null in `keep` drops the row
        if not t.num_rows:
            return
        t = t.sort_by([("d", "ascending"), ("t", "ascending")])
        d = np.asarray(t.column("d").to_numpy(zero_copy_only=False), dtype=object)
        h = np.asarray(t.column("h").to_numpy(zero_copy_only=False), dtype=object)
        when = t.column("t").to_numpy()
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        ends = np.r_[starts[1:], len(d)] - 1
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(d)]))
        # each device's last unbroken run of the image it reports last (A, B, A: since the second A,
        # as three batches would say): the row after its last report of another image
        other = np.where(h != h[ends][group], np.arange(len(d)), -1)
        last_other = np.maximum.reduceat(other, starts)
        first = np.where(last_other >= starts, last_other + 1, starts)
        for device, image, since, last in zip(
            d[ends].tolist(), h[ends].tolist(), when[first].tolist(), when[ends].tolist(), strict=True
        ):
            self._hold(device, image, since, last)

    def _hold(self, device: str, image: str, since: float, last: float) -> None:
        reports = self._reports
        if reports is None:  # no store: nothing to apply them to
            return
        held = reports.get(device)
        if held is None:
            if len(reports) >= self.max_report_devices:
                self.stats.reports_dropped += 1  # the device's next report after a record() counts
                return
            reports[device] = (image, since, last)
        elif held[0] == image:
            reports[device] = (image, min(held[1], since), max(held[2], last))
        elif last >= held[2]:  # a newer image; an older report of another image changes nothing
            reports[device] = (image, since, last)

    def _take_reports(self) -> dict[str, tuple[str, float, float]]:
        if not self._reports:
            return {}
        reports, self._reports = self._reports, {}
        return reports

    def _apply_reports(self, reports: dict[str, tuple[str, float, float]]) -> None:
        if not reports:
            return
        from fleetwarden.app.rollout import record_reports

        moved = record_reports(
            self.store,
            [(device, image, since) for device, (image, since, _last) in reports.items()],
            actor=redact(self.source or "engine")[:200],  # the audit's actor column holds 200
        )
        self.stats.rollout_updates += moved

    def _sighted_devices(self) -> list[dict[str, Any]]:
        """Rows of the devices seen since the last record: registered ones (by MAC, else address, in
        the context) refreshed, the others as unknown devices."""
        if self.sightings is None:
            return []
        macs = {m: d for d, info in self.ctx.devices.items() if (m := device_mac(info.mac))}
        return self.sightings.take_rows(macs, self.ctx.ip_to_device)


# what a firmware rollout cannot explain: an identity or integrity problem is never "the update"
NEVER_EXPECTED = frozenset({"firmware-tamper", "cloned-device", "credential-misuse"})


def mark_expected(store: Any, found: Sequence[Finding]) -> list[Finding]:
    """Mark the findings that belong to a planned rollout and return the others (those that may
    open or raise an incident).

    A finding is expected when its device (``device_id``, else ``entity``) is updating or updated
    in a running or completed rollout and the finding began inside that update's change window
    (:func:`fleetwarden.app.rollout.expected_changes`: one store query for all the devices of
    ``found``).  It gets ``attributes["expected"] = "rollout NAME (#ID)"`` and an evidence line
    saying so, and is still stored.  Categories in :data:`NEVER_EXPECTED` are never expected.

    *Blind spots.* An attack that starts inside a device's window is marked too (the rollout's
    regression rule, which reads these stored findings, is what catches it); a finding about a
    device known only by its address (no inventory id) is never expected.
    """
    from fleetwarden.app.rollout import expected_changes

    candidates = [f for f in found if f.category not in NEVER_EXPECTED]
    if not candidates:
        return list(found)
    windows = expected_changes(store, {f.device_id or f.entity for f in candidates})
    if not windows:
        return list(found)
    expected: set[int] = set()
    for f in candidates:
        win = next((w for w in windows.get(f.device_id or f.entity, ()) if w.covers(f.first_seen)), None)
        if win is not None:
            if "expected" not in f.attributes:  # once, also when a failed record() is retried
                f.attributes["expected"] = win.label
                f.evidence.append(f"expected change: inside the update window of {win.label}, no incident")
            expected.add(id(f))
    return [f for f in found if id(f) not in expected]


def join_stories(store: Any, found: Sequence[Finding], ctx: Context) -> list[Incident]:
    """The incidents to record for ``found``: correlated over those findings, the findings of the
    entities' open incidents in ``store`` AND those of the stored open incidents campaign-related to
    them, so the stories and campaigns are what an uninterrupted run over all the events would tell
    (the correlator is a function of the whole set of findings).  Findings a suppression rule in
    force explains (:func:`fleetwarden.app.suppression.drop_suppressed`: a maintenance window, an
    approved exception) are marked and count towards no incident.

    *Campaigns across recordings.*  The related incidents (:func:`related_stories`) are found in
    the store's campaign index (:mod:`fleetwarden.store.campaigns`): the open attack incidents that
    name one of the new attack findings' external counterparts (one C2), the open attack incidents
    about a device a new finding names as its counterpart (the scanner its victim answered), and
    the open incidents naming a new attack finding's device (its victims).  Each brings its
    device's whole open story, so its incidents correlate as when they were recorded.  Returned are
    the incidents of ``found``'s entities and, of the related devices, only the incidents whose
    campaign id changed, with their stored risk, severity and evidence (an incident's evidence is a
    function of its own device's findings) and no findings to save: the store's
    ``record_results(..., replace_stories=True)`` replaces what it is given.  A campaign keeps the
    id its stored members already carry (the oldest when two merge: the members of the younger are
    pulled in and renamed).

    *Bound.*  The lookups return at most :data:`~fleetwarden.store.campaigns.MAX_RELATED`
    incidents (the most recently seen), and a merge pulls in members of the campaign that gave way
    only while the other devices' incidents loaded stay under it (at most :data:`MERGE_ROUNDS`
    correlations).  What is left out is left out of this call only: its incidents keep their
    campaign id, and link when a later recording finds them (a member left out of a merge keeps the
    id that gave way until then)."""
    from fleetwarden.app.suppression import drop_suppressed
    from fleetwarden.store import campaigns as store_campaigns

    if not found:
        return []
    own = {f.entity for f in found}
    stored, prior, known = related_stories(store, found)
    incidents: list[Incident] = []
    for _ in range(MERGE_ROUNDS):
        incidents = correlate(drop_suppressed(store, _unique(prior, found, store), ctx), ctx, known=known)
        budget = store_campaigns.MAX_RELATED - sum(1 for r in stored if r.entity not in own)
        more = _renamed_members(store, incidents, stored, known, budget) if budget > 0 else set()
        if not more:
            break
        stored, prior, known = _with_stories(store, stored, prior, more, own)
    rows = {(r.entity, r.category): r for r in stored}  # the newest open incident of each pair wins
    out: list[Incident] = []
    for inc in incidents:
        row = rows.get((inc.entity, inc.category))
        if inc.entity in own:
            out.append(inc)
        elif row is not None and inc.campaign and inc.campaign != row.campaign:
            out.append(_with_campaign(row, inc))
    return out


def related_stories(store: Any, found: Sequence[Finding]) -> tuple[list[Any], list[Finding], dict]:
    """The open incidents and story findings of ``found``'s entities and of the devices whose open
    incidents are campaign-related to ``found`` (:func:`join_stories`), and the campaign ids the
    stored incidents carry, by (entity, category)."""
    from fleetwarden.store import campaigns as store_campaigns

    shared: set[str] = set()  # external counterparts of the new attack findings
    named: set[str] = set()  # every counterpart a new finding names
    attacking: set[str] = set()  # the devices of the new attack findings
    for f in found:
        cps = counterparts(f)
        named.update(cps)
        if f.category in ATTACK_CATEGORIES:
            shared.update(cp for cp in cps if is_external(cp))
            attacking.update(subjects(f))
    related = store_campaigns.related_incidents(
        store,
        shared=shared,
        subjects_of=named,
        named=attacking,
        categories=ATTACK_CATEGORIES,
        limit=store_campaigns.MAX_RELATED,
    )
    own = {f.entity for f in found}
    return _with_stories(store, [], [], own | {r.entity for r in related}, own)


def _with_stories(
    store: Any, stored: list[Any], prior: list[Finding], entities: set[str], own: set[str]
) -> tuple[list[Any], list[Finding], dict]:
    """``stored`` and ``prior`` plus the open incidents and story findings of ``entities``: the
    whole stories of ``own`` (the devices being recorded), the newest
    :data:`RELATED_STORY_FINDINGS` findings of each other incident (only their campaign id is
    written, and their links come from what they recently did)."""
    from fleetwarden.store import campaigns as store_campaigns

    ids = {r.id for r in stored}
    new = sorted(entities - {r.entity for r in stored})
    stored = stored + [r for r in store_campaigns.open_incidents(store, new) if r.id not in ids]
    stored.sort(key=lambda r: r.id)
    prior = (
        prior
        + store.story_findings([e for e in new if e in own])
        + store.story_findings([e for e in new if e not in own], per_incident=RELATED_STORY_FINDINGS)
    )
    known = {(r.entity, r.category): r.campaign for r in stored if r.campaign}
    return stored, prior, known


def _renamed_members(
    store: Any, incidents: Sequence[Incident], stored: Sequence[Any], known: dict, limit: int
) -> set[str]:
    """The devices not yet correlated whose open incidents (at most ``limit``) carry a campaign id
    that gave way in ``incidents`` (a merge): they follow the kept id, so they are pulled in."""
    gave_way = {
        known[(i.entity, i.category)]
        for i in incidents
        if i.campaign and known.get((i.entity, i.category), i.campaign) != i.campaign
    }
    if not gave_way:
        return set()
    from fleetwarden.store import campaigns as store_campaigns

    loaded = {r.entity for r in stored}
    rows = store_campaigns.campaign_incidents(store, gave_way, limit=limit)
    return {r.entity for r in rows} - loaded


def _with_campaign(row: Any, inc: Incident) -> CampaignLink:
    """A related device's stored incident (``row``, as read), with the campaign id the correlation
    gave it: the store writes that id alone, and only if the row still holds the id read here
    (:class:`~fleetwarden.core.findings.CampaignLink`), never the rest of this possibly stale copy."""
    fields = {k: getattr(inc, k) for k in Incident.__dataclass_fields__}
    fields.update(
        risk=row.risk,
        severity=row.severity,
        evidence=list(row.evidence or []),
        mitre=list(row.mitre or []),
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        ip=row.ip,
        mac=row.mac,
        findings=[],  # already stored: nothing to save again
    )
    return CampaignLink(**fields, incident_id=int(row.id), was=row.campaign)


def _unique(prior: Sequence[Finding], found: Sequence[Finding], store: Any) -> list[Finding]:
    """``prior`` then ``found``, each finding once (a redelivered stream message or a re-analysed file
    brings findings the store already holds)."""
    seen: set[str] = set()
    out: list[Finding] = []
    for f in [*prior, *found]:
        fp = store.fingerprint(f)
        if fp not in seen:
            seen.add(fp)
            out.append(f)
    return out
