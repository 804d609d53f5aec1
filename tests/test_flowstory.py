"""The flow model's story: alerted flows become what an analyst acts on (detection/flowstory.py)."""

from __future__ import annotations

import numpy as np

from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.detection.engine import Engine


class _AlertAll:
    """A stand-in flow model that alerts on every flow (the story is what is under test)."""

    def score_batch(self, batch):
        n = len(batch)
        return np.full(n, 0.95), np.ones(n, dtype=int), ["pair_tcp_failed_600s=40 vs baseline 0"] * n


def _flows(ts, dst, port, state="S0", proto="tcp", src="10.0.0.7", orig_bytes=0, resp_bytes=0) -> EventBatch:
    n = len(ts)
    col = lambda v: v if isinstance(v, list) else [v] * n  # noqa: E731
    return EventBatch.from_columns(
        "flow",
        {
            "ts": np.asarray(ts, dtype=float),
            "uid": [f"C{i}" for i in range(n)],
            "id.orig_h": col(src),
            "id.resp_h": col(dst),
            "id.resp_p": col(port),
            "proto": col(proto),
            "conn_state": col(state),
            "orig_bytes": col(orig_bytes),
            "resp_bytes": col(resp_bytes),
        },
    )


def _story(batch: EventBatch):
    engine = Engine(analytics=[], flow_model=_AlertAll(), ctx=Context())
    found = engine.process(batch) + engine.flush()
    # an episode is told at its 1st, 2nd, 4th … alert and at its end, each story the whole episode
    # so far: the last one tells it all
    assert [f.attributes["alerts"] for f in found] == _doublings(len(batch))
    return found[-1]


def _doublings(n: int) -> list[int]:
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    return out + ([n] if out[-1] != n else [])


def test_unanswered_attempts_to_one_external_service_are_a_c2_retry_naming_what_to_block():
    f = _story(_flows(np.arange(0, 3600, 30.0), "185.199.108.9", 50))
    assert f.category == "c2-beacon" and "T1008" in f.mitre
    assert f.evidence[0] == (
        "120 attempts to 185.199.108.9 tcp/50 over 60 min (one every 30 s), 100% unanswered: the device keeps "
        "calling one external service that does not answer, as a bot does when its command-and-control "
        "server is down or blocked (C2 retry)"
    )
    assert f.evidence[1] == "block 185.199.108.9 tcp/50"
    assert f.attributes["block"] == ["185.199.108.9 tcp/50"]
    assert "pair_tcp_failed_600s" in f.evidence[-1]


def test_dozens_of_attempts_a_second_to_one_destination_are_a_flood():
    f = _story(_flows(np.linspace(0, 10, 2000), "151.101.1.69", 80))
    assert f.category == "ddos"
    assert f.evidence[0].startswith("2000 connections to 151.101.1.69 tcp/80 in 10 s (200 a second), 100% unanswered")


def test_unanswered_attempts_to_many_hosts_are_a_scan():
    hosts = [f"203.0.113.{i}" for i in range(1, 41)]
    f = _story(_flows(np.arange(40.0), hosts, 23))
    assert f.category == "scan"
    assert f.evidence[0] == "unanswered attempts to 40 hosts on tcp/23 over 39 s: a horizontal scan, as worms look for their next victims"


def test_answered_unusual_flows_stay_an_anomaly_listing_destinations():
    dst = ["52.1.2.3"] * 5 + ["10.0.0.1"] * 3
    f = _story(_flows(np.arange(8.0), dst, 443, state="SF", orig_bytes=2_000_000, resp_bytes=1_000))
    assert f.category == "anomaly"
    assert f.evidence[0] == "8 unusual flows over 7 s: 5 to 52.1.2.3 tcp/443 (9,771 KB); 3 to 10.0.0.1 tcp/443 (5,862 KB)"
    # only the external destination is one to block
    assert f.attributes["block"] == ["52.1.2.3 tcp/443"]


def test_stories_are_the_same_whatever_the_batching():
    """Episodes are decided alert by alert in event time: cutting the same flows into other batches
    tells the same stories; an hour without alerts starts a new episode."""
    ts = np.concatenate([np.arange(0, 600, 7.0), np.arange(5000, 5100, 3.0)])
    dst = ["185.199.108.9" if t < 1000 else "151.101.1.69" for t in ts]
    whole = _flows(ts, dst, 50)

    def told(cuts) -> list:
        engine = Engine(analytics=[], flow_model=_AlertAll(), ctx=Context())
        found = [f for a, b in zip(cuts[:-1], cuts[1:], strict=True) for f in engine.process(whole.slice(a, b - a))]
        found += engine.flush()
        return [(f.category, f.first_seen, f.last_seen, f.evidence[0]) for f in found]

    n = len(whole)
    one = told([0, n])
    # first episode: 86 alerts told at 1, 2, 4 … 64 and 86; second: 34 alerts at 1, 2 … 32 and 34
    assert len(one) == 8 + 7
    assert told(list(range(0, n, 7)) + [n]) == one
    assert told([0, 1, 2, 50, n - 1, n]) == one
