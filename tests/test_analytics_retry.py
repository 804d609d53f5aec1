"""C&C retries: persistent unanswered connection attempts (synthetic shapes, then real captures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import need_data, replay_batches
from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import CATEGORIES, Finding
from fleetwarden.detection.analytics.beacon import BeaconDetector
from fleetwarden.detection.analytics.retry import C2RetryDetector, retry_score
from fleetwarden.detection.engine import Engine
from fleetwarden.sources import read_events

T0 = 1_700_000_000.0
DEVICE = "192.168.1.50"
C2 = "185.100.87.7"  # public addresses: Python counts the TEST-NET ranges as private


def attempts(
    ts: np.ndarray,
    src: str = DEVICE,
    dst: str | list[str] = C2,
    port: int = 6667,
    state: str = "S0",
    rb: np.ndarray | int = 0,
    proto: str = "tcp",
) -> dict[str, np.ndarray]:
    """Columns of one flow per start time: unanswered attempts unless ``rb`` gives reply bytes."""
    n = len(ts)
    rb = np.broadcast_to(np.asarray(rb, dtype=np.int64), (n,))
    answered = rb > 0
    return {
        "ts": np.asarray(ts, dtype=float),
        "uid": np.array([f"C{src}-{i}-{t:.3f}" for i, t in enumerate(ts)], dtype=object),
        "id.orig_h": np.full(n, src, dtype=object),
        "id.orig_p": (40000 + np.arange(n) % 20000).astype(np.int64),
        "id.resp_h": np.asarray(dst if isinstance(dst, list) else [dst] * n, dtype=object),
        "id.resp_p": np.full(n, port, dtype=np.int64),
        "proto": np.full(n, proto, dtype=object),
        "conn_state": np.where(answered, "SF", state).astype(object),
        "orig_bytes": np.where(answered, 60, 0).astype(np.int64),
        "resp_bytes": rb.copy(),
        "orig_pkts": np.where(answered, 6, 2).astype(np.int64),
        "resp_pkts": np.where(answered, 5, 1 if state == "REJ" else 0).astype(np.int64),
    }


def run(det: C2RetryDetector, bs: list[EventBatch], ctx: Context | None = None) -> tuple[list, list]:
    """(findings of the updates, findings of flush)."""
    ctx = ctx or Context()
    live = [f for b in bs for f in det.update(b, ctx)]
    return live, det.flush(ctx)


def bot_retries(hours: float, seed: int = 1, start: float = T0) -> np.ndarray:
    """A bot's C2 loop: bursts of 3-4 SYNs a few seconds apart, then a sleep of 30-60 s."""
    rng = np.random.default_rng(seed)
    out, t = [], start
    while t < start + hours * 3600:
        for _ in range(int(rng.integers(3, 5))):
            out.append(t)
            t += rng.uniform(5, 9)
        t += rng.uniform(30, 60)
    return np.array(out)


def backoff_retries(hours: float, first: float = 2.0, cap: float = 1800.0, start: float = T0) -> np.ndarray:
    """A well-behaved client: exponential back-off from ``first`` seconds, capped at ``cap``."""
    out, t, gap = [], start, first
    while t < start + hours * 3600:
        out.append(t)
        t += gap
        gap = min(cap, gap * 2)
    return np.array(out)


def check(f: Finding) -> None:
    assert f.category == "c2-beacon" and f.category in CATEGORIES and f.detector == "retry"
    assert "T1071" in f.mitre and 0 <= f.score <= 1
    assert f.first_seen < f.last_seen and 0 < len(f.record_ids) <= 50
    assert f.evidence and any(ch.isdigit() for ch in f.evidence[0])


# scoring --------------------------------------------------------------------------------
def test_score_grows_with_persistence_speed_and_silence():
    base = retry_score(600, 4, 10.0, 1.0)["score"]
    assert retry_score(600, 12, 10.0, 1.0)["score"] > base  # more hours
    assert retry_score(6000, 4, 10.0, 1.0)["score"] > base  # more attempts
    assert retry_score(600, 4, 120.0, 1.0)["score"] < base  # slower retries
    assert retry_score(600, 4, 10.0, 0.8)["score"] < base  # sometimes answered
    assert retry_score(600, 4, 400.0, 1.0)["score"] < 0.4  # patient client: low at most
    assert retry_score(10_000, 24, 5.0, 1.0)["score"] == pytest.approx(0.85)


# synthetic shapes -----------------------------------------------------------------------
def test_bot_retrying_a_dead_c2_for_hours_is_high_and_reported_when_evidence_completes():
    ts = bot_retries(12)
    det = C2RetryDetector()
    bs = replay_batches(attempts(ts))
    ctx = Context()
    # Nothing within the first hour: a burst of failures is not persistence yet.
    early = [f for b in bs if b.np("ts")[-1] < T0 + 3000 for f in det.update(b, ctx)]
    assert early == []
    rest = [f for b in bs if b.np("ts")[-1] >= T0 + 3000 for f in det.update(b, ctx)]
    final = det.flush(ctx)
    assert rest, "a qualifying group is reported during the replay, not only at flush"
    first = rest[0]
    check(first)
    assert first.last_seen - first.first_seen < 2 * 3600  # as soon as it has an hour of retries
    assert first.entity == DEVICE and first.attributes["destinations"] == [C2]
    assert first.attributes["port"] == "tcp/6667" and first.mitre == ["T1071"]
    # Re-reported as it doubles, and confidence grows with the hours covered.
    scores = [f.score for f in rest + final]
    assert scores == sorted(scores) and len(scores) >= 3
    last = (rest + final)[-1]
    assert last.severity == "high" and first.severity == "medium"
    assert last.attributes["attempts"] == len(ts) and last.attributes["answered"] == 0
    assert f"{len(ts)} unanswered connection attempts to {C2} tcp/6667" in last.evidence[0]
    assert "never answered" in last.evidence[0] and "(no back-off)" in last.evidence[1]
    assert set(last.record_ids) <= {f"C{DEVICE}-{i}-{t:.3f}" for i, t in enumerate(ts)}


def test_fallback_addresses_on_one_port_make_one_finding_with_t1008():
    a = bot_retries(8, seed=2)
    b = a + 0.4  # the bot tries its second C2 address right after the first
    bs = replay_batches(attempts(a, dst=C2, port=50), attempts(b, dst="185.100.87.9", port=50))
    live, final = run(C2RetryDetector(), bs)
    found = live + final
    assert found and {f.entity for f in found} == {DEVICE}
    last = found[-1]
    check(last)
    assert "T1008" in last.mitre
    assert sorted(last.attributes["destinations"]) == sorted([C2, "185.100.87.9"])
    assert last.attributes["attempts"] == 2 * len(a)


def test_sometimes_answered_c2_scores_below_a_never_answered_one():
    ts = bot_retries(12, seed=3)
    rng = np.random.default_rng(0)
    rb = np.where(rng.random(len(ts)) < 0.3, 243, 0)  # 30 % of the connections get a reply
    never = run(C2RetryDetector(), replay_batches(attempts(ts)))[1][-1]
    some = run(C2RetryDetector(), replay_batches(attempts(ts, rb=rb)))[1][-1]
    assert some.score < never.score
    assert "answered" in some.evidence[0] and "never answered" not in some.evidence[0]
    assert some.attributes["answered"] == int((rb > 0).sum())


def test_benign_backoff_that_slows_to_minutes_is_not_reported():
    # Exponential back-off to a 30-minute cap for a whole day: 60 attempts, patient by design.
    ts = backoff_retries(24)
    live, final = run(C2RetryDetector(min_attempts=20), replay_batches(attempts(ts, port=8883)))
    assert live + final == []


@pytest.mark.parametrize("cap", [60.0, 128.0])
def test_client_library_reconnect_cap_is_medium_at_most(cap):
    # A client library doubling its reconnect delay up to a cap (Paho's C client: 60 s), all day
    # against a dead broker.
    ts = backoff_retries(24, cap=cap)
    live, final = run(C2RetryDetector(), replay_batches(attempts(ts, port=8883)))
    found = live + final
    assert found
    assert max(f.score for f in found) < 0.7


@pytest.mark.parametrize("failed", [0.01, 0.4])
def test_live_service_with_failures_is_not_a_dead_c2(failed):
    # One connection every few seconds for 6 hours, answered except for a share of the attempts.
    ts = T0 + np.arange(0, 6 * 3600, 5.0)
    rng = np.random.default_rng(4)
    rb = np.where(rng.random(len(ts)) < failed, 0, 400)
    live, final = run(C2RetryDetector(), replay_batches(attempts(ts, port=443, rb=rb)))
    assert live + final == []


@pytest.mark.parametrize(
    ("src", "dst", "proto"),
    [
        (DEVICE, "192.168.1.1", "tcp"),  # a hub or broker on the LAN
        (DEVICE, "239.255.255.250", "tcp"),  # multicast
        ("185.100.87.200", DEVICE, "tcp"),  # an outside host knocking on a device: inbound
        (DEVICE, C2, "udp"),  # no handshake to miss
    ],
)
def test_out_of_scope_peers_are_ignored(src, dst, proto):
    ts = bot_retries(12, seed=5)
    live, final = run(C2RetryDetector(), replay_batches(attempts(ts, src=src, dst=dst, proto=proto)))
    assert live + final == []


def test_many_hosts_on_one_port_are_left_to_the_scan_analytic():
    # Ten dead hosts on tcp/23, each retried for hours: a slow sweep or a pool, not a C2 and its fallback.
    parts = [attempts(bot_retries(4, seed=10 + i), dst=f"185.100.88.{10 + i}", port=23) for i in range(10)]
    det = C2RetryDetector()
    live, final = run(det, replay_batches(*parts))
    assert live + final == []
    assert (DEVICE, 23) in det.suppressed


def test_c2_on_the_port_a_bot_also_sweeps_is_still_followed():
    # A Mirai-like bot: a sweep of tcp/23 where 40 targets each get a few tries, and its C2,
    # also on tcp/23, retried for 8 hours from just after the sweep.
    sweep = [
        attempts(T0 + 5 * i + np.arange(4) * 2.0, dst=f"45.33.{i // 200}.{i % 200 + 1}", port=23)
        for i in range(40)
    ]
    c2 = attempts(bot_retries(8, seed=12, start=T0 + 900), dst=C2, port=23)
    det = C2RetryDetector(max_pairs_per_device=16)
    found = [f for part in run(det, replay_batches(*sweep, c2)) for f in part]
    assert found and found[-1].attributes["destinations"] == [C2]
    assert found[-1].severity == "high"


def test_refused_attempts_count_like_silent_ones():
    ts = bot_retries(12, seed=6)
    found = run(C2RetryDetector(), replay_batches(attempts(ts, state="REJ")))[1]
    assert found and found[-1].severity == "high" and "REJ" in found[-1].evidence[1]


def test_fleet_service_cut_off_from_one_device_is_an_outage_not_a_c2():
    cloud = "52.1.2.3"
    ctx = Context()
    fleet = [f"192.168.1.{100 + i}" for i in range(12)]
    for i, ip in enumerate(fleet):
        ctx.add_device(DeviceInfo(f"cam-{i}", ip=ip, vendor="acme", device_class="camera"))
    ctx.add_device(DeviceInfo("cam-x", ip=DEVICE, vendor="acme", device_class="camera"))
    ok = [
        attempts(T0 + np.arange(0, 12 * 3600, 300.0) + i, src=ip, dst=cloud, port=443, rb=800)
        for i, ip in enumerate(fleet)
    ]
    dead = attempts(bot_retries(12, seed=7), dst=cloud, port=443)
    det = C2RetryDetector()
    live, final = run(det, replay_batches(*ok, dead), ctx)
    assert live + final == []
    assert (DEVICE, cloud, 443) in det.suppressed
    # The same retries to an address nobody in the fleet uses are reported.
    det2 = C2RetryDetector()
    live, final = run(det2, replay_batches(*ok, attempts(bot_retries(12, seed=7), dst=C2, port=443)), ctx)
    assert [f.entity for f in live + final] and {f.entity for f in live + final} == {"cam-x"}


def test_findings_do_not_depend_on_batch_size():
    ts = bot_retries(10, seed=8)
    cols = attempts(ts)
    one = run(C2RetryDetector(), replay_batches(cols, seconds=1e9))
    small = run(C2RetryDetector(), replay_batches(cols, seconds=60.0))
    last_one, last_small = (one[0] + one[1])[-1], (small[0] + small[1])[-1]
    for k in ("attempts", "answered", "hours", "destinations"):
        assert last_one.attributes[k] == last_small.attributes[k]
    assert last_one.score == pytest.approx(last_small.score)


def test_state_is_bounded_and_idle_pairs_are_evicted():
    det = C2RetryDetector(max_pairs=100, max_pairs_per_device=8)
    ctx = Context()
    rng = np.random.default_rng(9)
    # A worm sweeping 20,000 addresses (one attempt each) and retrying 30 of them a few times.
    sweep = T0 + np.sort(rng.uniform(0, 3600, 20_000))
    hosts = [f"45.{33 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(20_000)]
    retried = [
        attempts(T0 + 60 * i + np.arange(5) * 10.0, dst=f"185.101.0.{i + 1}", port=23) for i in range(30)
    ]
    for b in replay_batches(attempts(sweep, dst=hosts, port=23), *retried):
        det.update(b, ctx)
    assert len(det._pairs) <= 8 and len(det._per_device[DEVICE]) <= 8
    assert len(det._counter.key) <= 4 * det.max_pairs + 20_000  # pruned at the next sweep at most
    # Seven quiet hours later the stream goes on: when that tick of event time is judged (a later
    # flow proves it over), the idle pairs and counters go.
    later = attempts(np.array([T0 + 8 * 3600.0, T0 + 8 * 3600.0 + 600]), src="192.168.1.77")
    for b in replay_batches(later, seconds=300):
        det.update(b, ctx)
    assert det._pairs == {} and det._per_device == {}
    assert len(det._counter.key) <= 4 * det.max_pairs


def test_engine_shares_prevalence_and_reports_retries():
    det = C2RetryDetector()
    engine = Engine(analytics=[BeaconDetector(), det])
    assert det.prevalence is engine.analytics[0].prevalence
    found = [
        f for b in replay_batches(attempts(bot_retries(8, seed=11))) for f in engine.process(b)
    ] + engine.flush()
    assert any(f.detector == "retry" for f in found)


# real captures -----------------------------------------------------------------------------
def replay(path: Path) -> list[Finding]:
    det, ctx = C2RetryDetector(), Context()
    return [f for b in read_events(path, batch_size=2000) for f in det.update(b, ctx)] + det.flush(ctx)


def test_hakai_retrying_its_two_dead_c2_addresses_is_high():
    found = replay(need_data("iot23", "CTU-Malware-Capture-8-1-labeled.csv"))
    assert found and {f.entity for f in found} == {"192.168.100.113"}
    last = found[-1]
    check(last)
    assert last.severity == "high" and last.mitre == ["T1071", "T1008"]
    assert sorted(last.attributes["destinations"]) == ["128.185.250.50", "178.128.185.250"]
    assert last.attributes["port"] == "tcp/50" and last.attributes["answered"] == 0
    assert last.attributes["attempts"] > 8000 and last.attributes["hours"] >= 20
    assert all("never answered" in e for e in last.evidence[:2])
    # Reported while the capture plays, not only at its end.
    assert found[0].last_seen < last.last_seen - 12 * 3600


def test_mirai_retrying_its_irc_c2_is_high():
    found = replay(need_data("iot23", "CTU-Malware-Capture-34-1-labeled.csv"))
    assert found and {f.attributes["port"] for f in found} == {"tcp/6667"}
    last = found[-1]
    check(last)
    assert last.severity == "high" and last.attributes["destinations"] == ["185.244.25.235"]
    assert (
        last.attributes["attempts"] > 5000 and 0 < last.attributes["answered"] < last.attributes["attempts"]
    )


def test_torii_sparse_c2_attempts_are_below_the_threshold():
    # 14 attempts to 66.85.157.90:443 in 12 hours: too sparse to call persistent.
    assert replay(need_data("iot23", "CTU-Malware-Capture-20-1-labeled.csv")) == []


@pytest.mark.parametrize(
    "name", ["CTU-Honeypot-Capture-4-1-labeled.csv", "CTU-Honeypot-Capture-5-1-labeled.csv"]
)
def test_benign_honeypots_stay_quiet(name):
    assert [f for f in replay(need_data("iot23", name)) if f.score >= 0.4] == []


@pytest.mark.parametrize("folder", ["iot-sentinel", "stratosphere"])
def test_benign_captures_stay_quiet(folder):
    root = need_data(folder)
    paths = sorted(p for p in root.rglob("*") if p.suffix in (".pcap", ".log") and "scan" not in p.name)
    assert paths
    loud = [(p.name, f.score) for p in paths for f in replay(p) if f.score >= 0.4]
    assert loud == []


def test_simulated_fleet_stays_quiet():
    from fleetwarden.control.inventory import context_from_fleet
    from fleetwarden.simulate import simulate_fleet

    fleet = simulate_fleet(devices=120, hours=12, seed=7)
    ctx = context_from_fleet(fleet)
    engine = Engine(ctx=ctx)  # the default analytics, retry among them
    assert any(isinstance(a, C2RetryDetector) for a in engine.analytics)
    found = [f for b in fleet.iter_batches(seconds=600) for f in engine.process(b)] + engine.flush()
    assert [f for f in found if f.detector == "retry" and f.score >= 0.4] == []
