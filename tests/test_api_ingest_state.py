"""``POST /api/v1/events`` through the app's long-lived ingestion session, against a real SQLite
store: a failed-login burst sent in small batches is found as a whole, across an app restart too
(the engine state saved in ``engine_checkpoints`` at shutdown and resumed), pending findings are
recorded at shutdown and stored once, concurrent batches never run the engine at once, and the
inventory is re-read while the app runs."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from fleetwarden.api import close_app, create_app
from fleetwarden.app import identity
from fleetwarden.app.ingest import CHECKPOINT_KEY
from fleetwarden.app.partitions import read_checkpoint

T0 = 1_780_000_000.0
ATTACKER = "203.0.113.50"


def _failure(ts: float, src: str = ATTACKER, user: str = "admin") -> dict:
    return {"kind": "auth", "ts": ts, "user": user, "src_ip": src, "success": False, "service": "ssh",
            "device_id": "cam-1"}  # fmt: skip


def _burst(n: int, start: float = T0) -> list[dict]:
    """``n`` failed logins on cam-1 from one source, 4 s apart: a burst once 10 fall in 5 minutes."""
    return [_failure(start + 4 * i) for i in range(n)]


def _closing(after: float) -> list[dict]:
    """One failed login from elsewhere, 10 minutes on: moves event time past the burst's window."""
    return [_failure(after + 600, src="10.2.0.99", user="guest")]


def _chunks(events: list[dict], size: int) -> list[list[dict]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def _app(db: str, **settings):
    app = create_app(f"sqlite:///{db}", **settings)
    store = app.state.store
    token = identity.add_user(store, f"gw-{len(identity.list_users(store)) + 1}", "service")[1]
    return app, {"Authorization": f"Bearer {token}"}


def _post(client: TestClient, auth: dict, events: list[dict]) -> dict:
    r = client.post("/api/v1/events", json={"events": events}, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def _bursts(body: dict) -> list[dict]:
    return [f for f in body["findings"] if f["category"] == "brute-force"]


def _stored_bursts(store) -> list:
    return [f for f in store.list_findings(entity="cam-1") if f.category == "brute-force"]


# ---------------------------------------------------------------------------------- across requests


def test_a_burst_sent_in_small_batches_is_found_as_a_whole(tmp_path):
    events = _burst(30)
    chunks = [*_chunks(events, 6), _closing(events[-1]["ts"])]
    # each batch alone (a fresh app, flushed at its shutdown) holds too few failures for a finding
    for i, chunk in enumerate(chunks):
        app, auth = _app(str(tmp_path / f"alone-{i}.db"))
        try:
            assert _bursts(_post(TestClient(app), auth, chunk)) == []
            assert [f.category for f in app.state.ingestion.close()] == []
            assert _stored_bursts(app.state.store) == [], f"batch {i} alone"
        finally:
            close_app(app)
    # one app: the session keeps the burst across requests; the batch that closes it reports it
    app, auth = _app(str(tmp_path / "api.db"))
    client = TestClient(app)
    try:
        bodies = [_post(client, auth, chunk) for chunk in chunks]
        assert [len(_bursts(b)) for b in bodies] == [0, 0, 0, 0, 0, 1]
        found = _bursts(bodies[-1])[0]
        assert found["entity"] == "cam-1" and found["attributes"]["failures"] == 30
        assert bodies[-1]["incidents"] == 1
        store = app.state.store
        assert len(_stored_bursts(store)) == 1  # recorded at the end of that request, not at shutdown
        assert [i.category for i in store.list_incidents(entity="cam-1")] == ["brute-force"]
        assert sum(b["accepted"] for b in bodies) == 31
        assert sum(b.records for b in store.list_ingest_batches()) == 31
    finally:
        close_app(app)


def test_the_state_survives_an_app_restart(tmp_path):
    db = str(tmp_path / "api.db")
    events = _burst(16)  # 8 before the restart, 8 after: neither half reaches the threshold of 10
    app, auth = _app(db)
    with TestClient(app) as client:  # the context runs the lifespan: shutdown saves the state
        for chunk in _chunks(events[:8], 4):
            assert _bursts(_post(client, auth, chunk)) == []
    app, auth = _app(db)
    try:
        store = app.state.store
        assert _stored_bursts(store) == []  # 8 failures: the shutdown flush found nothing
        cp = store.load_checkpoint(CHECKPOINT_KEY)
        header, _state = read_checkpoint(cp.state)
        assert header["source"] == CHECKPOINT_KEY and header["events"] == 8 and cp.events == 8
        with TestClient(app) as client:
            bodies = [_post(client, auth, chunk) for chunk in _chunks(events[8:], 4)]
            assert app.state.ingestion.resumed
            bodies.append(_post(client, auth, _closing(events[-1]["ts"])))
        assert [len(_bursts(b)) for b in bodies] == [0, 0, 1]
        found = _bursts(bodies[-1])[0]
        assert found["attributes"]["failures"] == 16 and found["first_seen"] == T0
        assert len(_stored_bursts(store)) == 1
    finally:
        close_app(app)
    assert store.load_checkpoint(CHECKPOINT_KEY).events == 17  # saved again at the second shutdown


def test_pending_findings_are_recorded_at_shutdown_and_stored_once(tmp_path):
    db = str(tmp_path / "api.db")
    events = _burst(30)
    app, auth = _app(db)
    with TestClient(app) as client:
        for chunk in _chunks(events, 10):
            assert _bursts(_post(client, auth, chunk)) == []
    app, auth = _app(db)
    try:
        store = app.state.store
        assert len(_stored_bursts(store)) == 1  # the shutdown flush recorded the open burst
        # the saved state still holds the burst: it closes again, as the same finding, stored once
        body = _post(TestClient(app), auth, _closing(events[-1]["ts"]))
        assert [f["attributes"]["failures"] for f in _bursts(body)] == [30]
        assert len(_stored_bursts(store)) == 1
        assert len(store.list_incidents(entity="cam-1")) == 1
    finally:
        close_app(app)


def test_an_unreadable_checkpoint_is_replaced_not_fatal(tmp_path):
    db = str(tmp_path / "api.db")
    app, auth = _app(db, ingest_checkpoint_s=0)
    try:
        store = app.state.store
        store.save_checkpoint(CHECKPOINT_KEY, 5, b"not a checkpoint")
        assert _post(TestClient(app), auth, _burst(3))["accepted"] == 3
        assert not app.state.ingestion.resumed
        cp = store.load_checkpoint(CHECKPOINT_KEY)  # saved after the request (checkpoint_every 0)
        assert cp.stream_seq == 8 and read_checkpoint(cp.state)[0]["events"] == 3
    finally:
        close_app(app)


# ---------------------------------------------------------------------------------- concurrency


def test_concurrent_batches_never_run_the_engine_at_once(tmp_path):
    app, auth = _app(str(tmp_path / "api.db"))
    try:
        ingestion = app.state.ingestion
        _post(TestClient(app), auth, _telemetry("warm-up", 0, 1))
        engine = ingestion.session.engine
        inside, overlaps = [0], []
        real_process = engine.process

        def watched(batch):  # the engine's own process, with a check that it runs alone
            inside[0] += 1
            overlaps.append(inside[0] > 1)
            time.sleep(0.002)
            try:
                return real_process(batch)
            finally:
                inside[0] -= 1

        engine.process = watched
        accepted, errors = [], []

        def gateway(device: str) -> None:
            client = TestClient(app)
            try:
                for k in range(15):
                    accepted.append(_post(client, auth, _telemetry(device, k * 20, 20))["accepted"])
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=gateway, args=(f"dev-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(accepted) == 30 and sum(accepted) == 600
        assert overlaps and not any(overlaps)
        assert ingestion.events == 601 and ingestion.requests == 31
        assert ingestion.session.stats.events == 601
        assert sum(b.records for b in app.state.store.list_ingest_batches()) == 601
    finally:
        close_app(app)


def _telemetry(device: str, start: int, n: int) -> list[dict]:
    return [{"kind": "telemetry", "ts": T0 + start + i, "metric": "temperature", "value": 20.0 + i % 3,
             "device_id": device} for i in range(n)]  # fmt: skip


# ---------------------------------------------------------------------------------- the context


@pytest.mark.parametrize("every", [0.0, 3600.0])
def test_the_inventory_is_re_read_while_the_app_runs(tmp_path, every):
    app, auth = _app(str(tmp_path / "api.db"), ingest_context_s=every)
    try:
        client = TestClient(app)
        _post(client, auth, _telemetry("cam-1", 0, 2))
        app.state.store.upsert_devices([{"device_id": "cam-9", "ip": "10.9.0.9", "ips": ["10.9.0.9"]}])
        _post(client, auth, _telemetry("cam-1", 2, 2))
        ctx = app.state.ingestion.session.ctx
        assert ("cam-9" in ctx.devices) is (every == 0.0)
        assert app.state.ingestion.session.engine.ctx is ctx
    finally:
        close_app(app)


# ---------------------------------------------------------------------------------- flow model


def test_serve_model_scores_posted_flows_across_requests(tmp_path):
    """``serve --model``: flows posted to the API are scored by the flow model, one device's
    context carried across requests: Mirai's C&C retries (IoT-23 34-1, a model trained without
    that capture) become a flow-model finding although every request holds a few hundred flows."""
    from conftest import need_data
    from fleetwarden.app import modeling
    from fleetwarden.core.events import EventBatch
    from fleetwarden.sources import read_events
    from fleetwarden.sources.jsonl import encode_lines

    model_dir = tmp_path / "model"
    modeling.train([need_data("iot23", f"CTU-{n}-labeled.csv") for n in ("Honeypot-Capture-4-1",
                   "Honeypot-Capture-5-1", "Malware-Capture-8-1")], model_dir)  # fmt: skip
    flows = EventBatch.concat(read_events(need_data("iot23", "CTU-Malware-Capture-34-1-labeled.csv")))
    flows = flows.sort_by_time().slice(0, 1200)
    events = [json.loads(line) for line in encode_lines(flows)]
    for e in events:  # what a gateway sends: the flow, not IoT-23's labels
        for k in ("label", "detailed_label"):
            e.pop(k, None)
    app, auth = _app(str(tmp_path / "api.db"), ingest_model=str(model_dir))
    try:
        client = TestClient(app)
        found = [f for chunk in _chunks(events, 300) for f in _post(client, auth, chunk)["findings"]]
        assert any(f["detector"] == "flowmodel" for f in found), found
        assert app.state.ingestion.session.model is not None
    finally:
        close_app(app)
    # a model directory that cannot be read is refused when the app is made, naming it
    with pytest.raises(Exception, match="no-such-model"):
        create_app(f"sqlite:///{tmp_path / 'bad.db'}", ingest_model=str(tmp_path / "no-such-model"))


def test_an_event_dated_far_ahead_refuses_its_batch(tmp_path):
    """A sender's clock a day ahead (or a hostile one) would move the shared session's event time
    and age every device's context out of its windows: its batch is refused, naming the event."""
    app, auth = _app(str(tmp_path / "api.db"))
    try:
        client = TestClient(app)
        now = time.time()
        bad = [_failure(now - 10), _failure(now + 86_400), _failure(now + 60)]
        r = client.post("/api/v1/events", json={"events": bad}, headers=auth)
        assert r.status_code == 400 and "events [1]" in r.json()["detail"] and "clock" in r.json()["detail"]
        assert app.state.ingestion.events == 0  # nothing of it reached the engine
        assert _post(client, auth, [_failure(now - 10), _failure(now + 60)])["accepted"] == 2
    finally:
        close_app(app)
