"""Campaigns across recordings: the live paths (a worker checkpointing, an API request, two processes)
record findings in many small steps, and their campaigns must be those of one uninterrupted run; a
campaign keeps its id as members join; the lookups read the related incidents only, within a bound.
Real SQLite stores throughout (:func:`fleetwarden.store.open_store`)."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from fleetwarden.app.session import DetectionSession, join_stories
from fleetwarden.core.context import Context
from fleetwarden.core.findings import Finding
from fleetwarden.detection.correlation import ATTACK_CATEGORIES, correlate
from fleetwarden.store import campaigns as store_campaigns
from fleetwarden.store import open_store
from fleetwarden.store.models import IncidentRecord

C2, C2B = "185.244.25.235", "45.33.32.156"  # global addresses: "external" counterparts


def f(entity, category, t, score=0.7, **attrs):
    return Finding(entity, category, "d", score, t, t + 60, [f"{category} at {t}"], [], ip=entity,
                   record_ids=[f"uid-{entity}-{category}-{t}"], attributes=attrs)  # fmt: skip


def record(store, found, ctx=None):
    incidents = join_stories(store, found, ctx or Context())
    return store.record_results("test", found, incidents, replace_stories=True)


def campaigns_of(rows) -> set[frozenset[str]]:
    """The campaigns as sets of member entities (ids aside)."""
    members: dict[str, set[str]] = {}
    for r in rows:
        if r.campaign:
            members.setdefault(r.campaign, set()).add(r.entity)
    return {frozenset(m) for m in members.values()}


def ids(store) -> dict[str, str | None]:
    return {r.entity: r.campaign for r in store.list_incidents()}


@pytest.fixture
def store(tmp_path):
    st = open_store(f"sqlite:///{tmp_path / 'fw.db'}")
    yield st
    st.close()


# ---------------------------------------------------------------------------- the simulated botnet


@pytest.fixture(scope="module")
def fleet():
    from fleetwarden.control.inventory import context_from_rows
    from fleetwarden.simulate import simulate_fleet

    fl = simulate_fleet(devices=60, hours=12, seed=3)
    return fl, context_from_rows(fl.inventory), list(fl.iter_batches(seconds=600))


def test_a_worker_recording_every_ten_minutes_links_the_campaigns_of_one_record(fleet, tmp_path):
    """The mirai camera's scan, C2 and flood and the hosts that accepted its telnet sessions, recorded
    after every 10-minute batch (a worker's checkpoints): the same campaigns, members and incidents
    as one record at the end."""
    fl, ctx, batches = fleet
    stores = {}
    for mode in ("once", "every batch"):
        st = stores[mode] = open_store(f"sqlite:///{tmp_path / (mode.replace(' ', '-') + '.db')}")
        session = DetectionSession(ctx=ctx, store=st, source="sim", keep_findings=False)
        for batch in batches:
            session.process(batch)
            if mode == "every batch":
                session.record()
        session.flush()
        session.record()
    once, live = (stores[m].list_incidents() for m in ("once", "every batch"))
    assert campaigns_of(live) == campaigns_of(once)
    cam = set(next(sc for sc in fl.scenarios if sc.name == "mirai-camera").device_ids)
    botnet = next(c for c in campaigns_of(live) if c & cam)
    assert len(botnet) > 50  # the camera and its victims
    (camp,) = {r.campaign for r in live if r.entity in cam and r.category in ATTACK_CATEGORIES}
    assert {r.entity for r in live if r.campaign == camp} == botnet
    # the related devices' incidents were renamed, never re-scored: risk and evidence as one record's
    shape = lambda rows: sorted((r.entity, r.category, r.risk, r.severity, tuple(r.evidence)) for r in rows)  # noqa: E731
    assert shape(live) == shape(once)
    for st in stores.values():
        st.close()


def test_two_processes_recording_into_one_store_link_across_them(fleet, tmp_path):
    """Two sessions (two processes, or a restarted worker) each recording its half of the day into one
    SQLite file: the stored campaigns are those of the union of their findings correlated at once."""
    fl, ctx, batches = fleet
    url = f"sqlite:///{tmp_path / 'fw.db'}"
    half = len(batches) // 2
    found = []
    for part in (batches[:half], batches[half:]):
        st = open_store(url)
        session = DetectionSession(ctx=ctx, store=st, source="sim")
        session.run(part)
        session.record()
        found += session.findings
        st.close()
    st = open_store(url)
    stored = st.list_incidents()
    cam = set(next(sc for sc in fl.scenarios if sc.name == "mirai-camera").device_ids)
    assert campaigns_of(stored) == campaigns_of(correlate(found, ctx))
    assert any(c & cam and len(c) > 50 for c in campaigns_of(stored))
    st.close()


# ---------------------------------------------------------------------------- ids


def test_a_campaign_keeps_the_id_of_its_first_record_as_attackers_and_victims_join(store):
    record(
        store, [f("10.0.0.1", "c2-beacon", 0, destination=C2), f("10.0.0.2", "c2-beacon", 10, destination=C2)]
    )
    first = ids(store)
    camp = first["10.0.0.1"]
    assert camp and first["10.0.0.2"] == camp
    evidence = {r.entity: r.evidence for r in store.list_incidents()}
    # ten minutes later a third device beacons to the same C2, then a host answers the first one
    record(store, [f("10.0.0.3", "c2-beacon", 600, destination=C2)])
    record(store, [f("10.0.0.9", "policy-violation", 700, score=0.3, peer="10.0.0.1")])
    assert ids(store) == dict.fromkeys(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"], camp)
    # one run over the same findings names the group after all three attackers: recording kept the first id
    assert correlate([f("10.0.0.1", "c2-beacon", 0, destination=C2), f("10.0.0.2", "c2-beacon", 10, destination=C2),
                      f("10.0.0.3", "c2-beacon", 600, destination=C2)])[0].campaign != camp  # fmt: skip
    # the earlier members were renamed only: their evidence is still their own findings'
    after = {r.entity: r.evidence for r in store.list_incidents()}
    assert all(after[e] == evidence[e] for e in evidence)
    assert not any("campaign" in line for lines in after.values() for line in lines)


def test_the_victims_recorded_before_the_scan_join_it(store):
    """A victim's finding (naming the scanner) recorded before the scanner's scan is found from the
    scan's side (the incidents naming the scanning device)."""
    record(store, [f("10.0.0.5", "policy-violation", 0, score=0.3, peer="10.0.0.4")])
    assert ids(store)["10.0.0.5"] is None  # nobody's victim yet
    record(store, [f("10.0.0.4", "scan", 100, score=0.9)])
    got = ids(store)
    assert got["10.0.0.4"] and got["10.0.0.5"] == got["10.0.0.4"]


def test_two_campaigns_that_merge_keep_the_older_id_on_every_member(store):
    record(
        store, [f("10.0.0.1", "c2-beacon", 0, destination=C2), f("10.0.0.2", "c2-beacon", 0, destination=C2)]
    )
    record(
        store,
        [f("10.0.0.3", "c2-beacon", 500, destination=C2B), f("10.0.0.4", "c2-beacon", 500, destination=C2B)],
    )
    record(store, [f("10.0.0.8", "policy-violation", 600, score=0.3, peer="10.0.0.4")])  # a victim of .4
    older, younger = ids(store)["10.0.0.1"], ids(store)["10.0.0.3"]
    assert older and younger and older != younger and ids(store)["10.0.0.8"] == younger
    # a device beaconing to both C2s: one campaign, the older id; .8 (linked to .4 only) follows
    record(store, [f("10.0.0.7", "c2-beacon", 900, destinations=[C2, C2B])])
    assert set(ids(store).values()) == {older}


# ---------------------------------------------------------------------------- cost and bound


def _scanner_and_unrelated(store, unrelated: int) -> None:
    record(store, [f(f"10.9.{i // 200}.{i % 200}", "c2-beacon", i, destination=f"8.8.{i // 200}.{i % 200}")
                   for i in range(unrelated)])  # fmt: skip
    record(store, [f("10.0.0.4", "scan", 5000, score=0.9)])


def test_the_lookup_reads_the_related_incidents_not_all_of_them(store):
    _scanner_and_unrelated(store, 400)
    loaded: list[str] = []
    statements: list[str] = []

    def on_load(target, _ctx) -> None:
        loaded.append(target.entity)

    def on_execute(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(IncidentRecord, "load", on_load)
    event.listen(store.engine, "before_cursor_execute", on_execute)
    try:
        incidents = join_stories(
            store, [f("10.0.0.5", "policy-violation", 6000, score=0.3, peer="10.0.0.4")], Context()
        )
    finally:
        event.remove(IncidentRecord, "load", on_load)
        event.remove(store.engine, "before_cursor_execute", on_execute)
    assert store.counts()["incidents"] == 401
    assert set(loaded) == {"10.0.0.4"}  # the scanner's incident, once per lookup that found it
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # one index lookup, the scanner's and victim's open incidents, their findings, the suppressions
    assert len(loaded) <= 3 and len(selects) <= 5
    # the victim's incident, and the scanner's, renamed into the campaign they now form
    assert sorted((i.entity, i.campaign is not None) for i in incidents) == [
        ("10.0.0.4", True),
        ("10.0.0.5", True),
    ]


def test_past_the_bound_the_least_recent_related_incidents_link_later(store, monkeypatch):
    monkeypatch.setattr(store_campaigns, "MAX_RELATED", 5)
    victims = [f"10.0.1.{i}" for i in range(12)]
    for i, v in enumerate(victims):
        record(store, [f(v, "policy-violation", 100 * i, score=0.3, peer="10.0.0.4")])
    record(store, [f("10.0.0.4", "scan", 2000, score=0.9)])
    got = ids(store)
    camp = got["10.0.0.4"]
    # the five victims seen last were pulled in; the others keep no campaign for now ...
    assert [v for v in victims if got[v] == camp] == victims[-5:]
    assert all(got[v] is None for v in victims[:7])
    # ... until a finding of their own is recorded: it names the scanner and joins its campaign
    record(store, [f(victims[0], "policy-violation", 3000, score=0.3, peer="10.0.0.4")])
    assert ids(store)[victims[0]] == camp


def test_a_campaign_link_never_overwrites_another_writers_newer_story(tmp_path):
    """Two writers: P1 correlates B with A's stored incident (read before its write), P2 records
    A's stronger findings meanwhile; P1's write gives A the campaign id and nothing else, so A keeps
    P2's risk, evidence and times (and a link whose id changed since is not written at all)."""
    c2 = "185.244.25.235"

    def beacon(entity, t, score=0.7, to=c2):
        return Finding(entity, "c2-beacon", "d", score, t, t + 60, [f"beacon at {t}"], [], ip=entity,
                       record_ids=[f"uid-{entity}-{t}"], attributes={"destination": to})  # fmt: skip

    def record(st, found):
        return st.record_results("t", found, join_stories(st, found, Context()), replace_stories=True)

    st = open_store(f"sqlite:///{tmp_path / 'fw.db'}")
    record(st, [beacon("10.0.0.1", 0)])
    found_b = [beacon("10.0.0.2", 100)]
    p1 = join_stories(st, found_b, Context())  # reads A's row now
    record(st, [beacon("10.0.0.1", 5000, 0.99), beacon("10.0.0.1", 9000, 0.99)])  # P2
    a_p2 = next(r for r in st.list_incidents() if r.entity == "10.0.0.1")
    st.record_results("t", found_b, p1, replace_stories=True)  # P1 writes
    a = next(r for r in st.list_incidents() if r.entity == "10.0.0.1")
    b = next(r for r in st.list_incidents() if r.entity == "10.0.0.2")
    assert (a.risk, a.last_seen, a.evidence) == (a_p2.risk, a_p2.last_seen, a_p2.evidence)
    assert a.campaign is not None and a.campaign == b.campaign
    # a stale link (the row's id changed since it was read) is refused: compare and set
    record(st, [beacon("10.0.1.1", 0, to="45.9.148.99")])
    links = join_stories(st, [beacon("10.0.1.2", 100, to="45.9.148.99")], Context())
    assert any(getattr(i, "was", "-") is None and i.entity == "10.0.1.1" for i in links)
    with st._write() as s:
        s.query(IncidentRecord).filter(IncidentRecord.entity == "10.0.1.1").update({"campaign": "C-other"})
    st.record_results("t", [beacon("10.0.1.2", 100, to="45.9.148.99")], links, replace_stories=True)
    assert next(r for r in st.list_incidents() if r.entity == "10.0.1.1").campaign == "C-other"
    st.close()
