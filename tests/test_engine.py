"""The detection engine: dispatch, model alerts as anomaly findings, the analyze service."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need_data
from fleetwarden.app.analyze import analyze as analyze_paths
from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.detection.analytics.scan import ScanDetector
from fleetwarden.detection.correlation import correlate
from fleetwarden.detection.engine import MODEL_ONLY_CONFIDENCE, Engine, default_analytics
from fleetwarden.sources import SourceError


def scan_batch(t0: float, n: int, src: str = "10.0.0.5") -> EventBatch:
    return EventBatch.from_columns(
        "flow",
        {
            "ts": t0 + np.arange(n) * 0.01,
            "uid": [f"U{t0}-{i}" for i in range(n)],
            "id.orig_h": [src] * n,
            "id.resp_h": [f"198.18.{i // 200}.{i % 200 + 1}" for i in range(n)],
            "id.resp_p": [23] * n,
            "proto": ["tcp"] * n,
            "conn_state": ["S0"] * n,
            "orig_pkts": [1] * n,
        },
    )


def test_default_analytics_cover_network_and_control_plane():
    names = {type(a).__name__ for a in default_analytics()}
    assert {
        "ScanDetector",
        "BruteForceDetector",
        "BeaconDetector",
        "FloodDetector",
        "DnsDetector",
        "ExfilDetector",
        "NoveltyDetector",
    } <= names
    kinds = {k for a in default_analytics() for k in a.kinds}
    assert {"flow", "dns"} <= kinds


def test_engine_dispatches_by_kind_and_counts():
    from fleetwarden.detection.analytics.tunnel import IcmpTunnelDetector

    engine = Engine(analytics=[ScanDetector(), IcmpTunnelDetector()])
    auth = EventBatch.from_columns("auth", {"ts": [0.5], "user": ["maint"], "src_ip": ["10.0.0.5"]})
    assert engine.process(auth) == []  # neither analytic takes auth
    dns = EventBatch.from_columns(
        "dns", {"ts": [1.0], "id.orig_h": ["10.0.0.5"], "id.resp_h": ["10.0.0.1"], "query": ["example.com"]}
    )
    assert engine.process(dns) == []  # the scan analytic reads DNS answers (the addresses they name)
    # a scan's flows wait until the DNS answers up to their time are in: told at the end here
    found = engine.process(scan_batch(100.0, 15)) + engine.flush()
    assert [f.category for f in found] == ["scan"]
    assert engine.events == 17 and engine.findings == 1


class _ThresholdModel:
    """A minimal flow model with the load_model(...).score_batch contract: alert on big uploads."""

    def score_batch(self, batch):
        ob = batch.np("orig_bytes")
        scores = np.clip(ob / 1e6, 0, 1)
        alerts = (scores >= 0.5).astype(int)
        reasons = [
            f"orig_bytes {int(b)} vs baseline 1200" if a else "" for b, a in zip(ob, alerts, strict=True)
        ]
        return scores, alerts, reasons


def test_model_alerts_become_one_story_per_device_episode():
    n = 50
    batch = EventBatch.from_columns(
        "flow",
        {
            "ts": np.arange(n, dtype=float),
            "uid": [f"C{i}" for i in range(n)],
            "id.orig_h": ["10.0.0.2" if i % 2 else "10.0.0.3" for i in range(n)],
            "id.resp_h": ["52.1.2.3"] * n,
            "proto": ["tcp"] * n,
            "orig_bytes": [900_000 if i % 2 else 1_000 for i in range(n)],
        },
    )
    engine = Engine(analytics=[], flow_model=_ThresholdModel())
    found = engine.process(batch) + engine.flush()
    # one device's episode, told at its 1st, 2nd, 4th … alert and at its end
    assert {f.entity for f in found} == {"10.0.0.2"}
    assert [f.attributes["alerts"] for f in found] == [1, 2, 4, 8, 16, 25]
    f = found[-1]
    assert f.category == "anomaly" and f.attributes["alerts"] == 25
    # the first line says what happened, to what, how much and over what time; the destination is
    # named to block; the model's own reasons come last
    assert f.evidence[0].startswith("25 unusual flows over 48 s: 25 to 52.1.2.3 tcp/0 (21,973 KB)")
    assert f.attributes["block"] == ["52.1.2.3 tcp/0"]
    assert "orig_bytes 900000 vs baseline 1200" in f.evidence[-1]
    assert len(f.record_ids) == 25
    # the flows score 0.9, but a model outlier that no behaviour analytic names is a medium lead
    assert "highest score 0.90" in f.evidence[-1] and f.score == MODEL_ONLY_CONFIDENCE
    assert [i.severity for i in correlate([f])] == ["medium"]


def test_analyze_paths_on_a_capture_and_stats():
    path = need_data("stratosphere", "arp-scan.test8-malicious.pcap")
    result = analyze_paths([path])
    assert result.incidents[0].category == "scan" and result.incidents[0].mac
    assert result.stats["files"][str(path)]["format"] == "pcap"
    assert result.stats["incidents"] == len(result.incidents)
    d = result.incidents[0].to_dict()
    assert d["first_seen"].endswith("Z") and d["severity"] in ("medium", "high", "critical")


def test_analyze_bad_input_names_file(tmp_path):
    bad = tmp_path / "junk.bin"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(SourceError, match="junk.bin"):
        analyze_paths([bad])


def test_iot_sentinel_benign_captures_raise_no_high_incident():
    """All 386 benign setup captures, one analyze run per device folder."""
    base = need_data("iot-sentinel")
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    total = 0
    high = []
    for folder in folders:
        files = sorted(folder.glob("*.pcap"))
        total += len(files)
        result = analyze_paths(files, skip_bad=True)
        high += [
            (folder.name, i.entity, i.category, i.risk)
            for i in result.incidents
            if i.severity in ("high", "critical")
        ]
    assert total == 386
    assert high == []


def test_context_names_inventory_device():
    from fleetwarden.core.context import DeviceInfo

    ctx = Context()
    ctx.add_device(
        DeviceInfo(device_id="cam-7", ip="10.0.0.5", mac="aa:bb:cc:dd:ee:07", device_class="camera")
    )
    engine = Engine(analytics=[ScanDetector()], ctx=ctx)
    found = engine.process(scan_batch(0.0, 12)) + engine.flush()
    assert (
        found[0].entity == "cam-7" and found[0].device_id == "cam-7" and found[0].mac == "aa:bb:cc:dd:ee:07"
    )


def test_engine_shares_one_prevalence_learned_once_per_batch():
    from fleetwarden.detection.analytics.beacon import BeaconDetector
    from fleetwarden.detection.analytics.exfil import ExfilDetector

    engine = Engine()
    beacon = next(a for a in engine.analytics if isinstance(a, BeaconDetector))
    exfil = next(a for a in engine.analytics if isinstance(a, ExfilDetector))
    assert beacon.prevalence is exfil.prevalence
    n = 30
    batch = EventBatch.from_columns(
        "flow",
        {
            "ts": 1000.0 + np.arange(n),
            "uid": [f"P{i}" for i in range(n)],
            "id.orig_h": [f"10.0.1.{i % 12 + 1}" for i in range(n - 1)] + ["10.0.1.99"],
            "id.resp_h": [f"52.7.0.{i % 3 + 1}" for i in range(n)],
            "id.resp_p": [443] * n,
            "proto": ["tcp"] * n,
            "conn_state": ["SF"] * n,
            "orig_pkts": [4] * n,
            "resp_pkts": [3] * (n - 1) + [0],  # the last one unanswered: not learned from
            "orig_bytes": [300] * n,
            "resp_bytes": [900] * (n - 1) + [0],
        },
    )
    engine.process(batch)
    # Same prevalence as a detector alone learns from the batch, though two analytics fed it.
    alone = BeaconDetector()
    alone.update(batch, Context())
    shared = beacon.prevalence
    assert len(shared.population) == len(alone.prevalence.population) == 12
    assert {k: len(v) for k, v in shared.by_key.items()} == {
        k: len(v) for k, v in alone.prevalence.by_key.items()
    }
    assert shared.devices("52.7.0.1") == 4 and "10.0.1.99" not in shared.population
    # Analytics handed to two engines keep separate tables per engine (none pre-filled is shared).
    other = Engine()
    assert other.analytics[0] is not engine.analytics[0]
    assert next(a for a in other.analytics if isinstance(a, BeaconDetector)).prevalence is not shared


def test_engines_in_two_threads_find_what_they_find_alone():
    # the analytics' per-batch column cache is per thread: two engines on two fleets at once
    # report exactly what each reports run alone
    import threading

    from fleetwarden.control.inventory import context_from_fleet
    from fleetwarden.simulate import simulate_fleet

    fleets = [simulate_fleet(devices=40, hours=3, seed=s) for s in (1, 2)]

    def run(fleet):
        engine = Engine(ctx=context_from_fleet(fleet))
        out = [f for b in fleet.iter_batches(seconds=60) for f in engine.process(b)] + engine.flush()
        return sorted((f.entity, f.category, f.detector, round(f.score, 4), f.last_seen) for f in out)

    alone = [run(f) for f in fleets]
    assert all(alone)
    together: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(fleets[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
