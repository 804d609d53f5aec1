"""ICMP tunnels: the real ICMP-tunnelled SSH capture, benign captures, then synthetic ping and tunnel shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, need_data, replay_batches
from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.detection.analytics.tunnel import ANALYTICS, IcmpTunnelDetector
from fleetwarden.detection.engine import Engine
from fleetwarden.sources import read_events

T0 = 1_700_000_000.0
DEVICE = "192.168.1.40"
SERVER = "185.100.87.7"  # public: Python counts the TEST-NET ranges as private


def run(det: IcmpTunnelDetector, batches: list[EventBatch], ctx: Context | None = None) -> list:
    ctx = ctx or Context()
    return [f for b in batches if b.kind == "flow" for f in det.update(b, ctx)] + det.flush(ctx)


def echo_flows(
    ts: np.ndarray,
    req_sizes: np.ndarray,
    rep_sizes: np.ndarray | None = None,
    src: str = DEVICE,
    dst: str = SERVER,
    slot: float = 60.0,
    reply_only: bool = False,
) -> dict[str, np.ndarray]:
    """One echo flow record per ``slot`` seconds of packets (request at ``ts``, its reply just after).

    ``rep_sizes`` None: the replies mirror the requests (ping); -1 in it: that request is lost.
    ``reply_only``: the records hold replies only, as a source that saw no request keeps them.
    """
    ts = np.asarray(ts, dtype=float)
    req_sizes = np.asarray(req_sizes, dtype=np.int64)
    rep = req_sizes.copy() if rep_sizes is None else np.asarray(rep_sizes, dtype=np.int64)
    key = ((ts - ts[0]) // slot).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    answered = rep >= 0
    op = np.add.reduceat(np.ones_like(req_sizes), starts)
    ob = np.add.reduceat(req_sizes, starts)
    rp = np.add.reduceat(answered.astype(np.int64), starts)
    rb = np.add.reduceat(np.where(answered, rep, 0), starts)
    n = len(starts)
    last = np.maximum.reduceat(ts, starts)
    if reply_only:
        op, ob = np.zeros_like(op), np.zeros_like(ob)
    return {
        "ts": ts[starts],
        "uid": np.array([f"C{src}-{dst}-{t:.3f}" for t in ts[starts]], dtype=object),
        "id.orig_h": np.full(n, dst if reply_only else src, dtype=object),
        "id.orig_p": np.full(n, 0 if reply_only else 8, dtype=np.int64),
        "id.resp_h": np.full(n, src if reply_only else dst, dtype=object),
        "id.resp_p": np.full(n, 8 if reply_only else 0, dtype=np.int64),
        "proto": np.full(n, "icmp", dtype=object),
        "duration": last - ts[starts] + 0.001,
        "orig_bytes": rb if reply_only else ob,
        "resp_bytes": ob if reply_only else rb,
        "orig_pkts": rp if reply_only else op,
        "resp_pkts": op if reply_only else rp,
        "conn_state": np.full(n, "OTH", dtype=object),
    }


def tunnel_traffic(minutes: float, rate: float = 1.0, seed: int = 1, start: float = T0) -> tuple:
    """A tunnel's packets: request and reply payloads each of their own, variable, often large size."""
    rng = np.random.default_rng(seed)
    ts = start + np.sort(rng.uniform(0, minutes * 60, int(minutes * 60 * rate)))
    sizes = lambda: np.clip(rng.lognormal(np.log(120), 0.9, len(ts)), 28, 1400).astype(np.int64)  # noqa: E731
    return ts, sizes(), sizes()


# real captures ----------------------------------------------------------------------------
def test_finds_the_ssh_session_tunnelled_through_icmp():
    path = need_data("protocols", "ndpi", "icmp-tunnel.pcap")
    found = run(IcmpTunnelDetector(), list(read_events(path)))
    assert len(found) == 1
    (f,) = found
    # Both ends are on the LAN: the requester (the tunnel client) is named.
    assert (f.entity, f.attributes["peer"], f.attributes["role"]) == (
        "192.168.154.131",
        "192.168.154.132",
        "requester",
    )
    assert f.category == "exfiltration" and f.mitre == ["T1095", "T1048.003"]
    assert f.severity == "medium" and 0.6 <= f.score < 0.7
    # nDPI's result file: 863 packets over 1122.5 s; payload is the ICMP data after its header.
    assert f.attributes["packets"] == 863 and f.attributes["duration"] == pytest.approx(1122.5, abs=0.5)
    assert 150 <= f.attributes["mean_payload"] <= 200
    assert "18.7 min" in f.evidence[0] and "a tunnel, not ping" in f.evidence[1]
    assert f.mac == "00:0c:29:cf:0c:c1" and len(f.record_ids) == 2


def test_the_tunnel_capture_through_the_engine_flow_by_flow():
    # One flow per batch, as a live stream hands them: the pair's sums carry across batches.
    path = need_data("protocols", "ndpi", "icmp-tunnel.pcap")
    engine = Engine()  # the default analytics, the tunnel detector among them
    assert any(isinstance(a, IcmpTunnelDetector) for a in engine.analytics)
    found = [f for b in read_events(path, batch_size=1) for f in engine.process(b)] + engine.flush()
    mine = [f for f in found if f.detector == "icmp-tunnel"]
    assert [f.entity for f in mine] == ["192.168.154.131"]
    assert mine[0].attributes["packets"] == 863


def _benign_files() -> list[Path]:
    need_data()
    files = [
        p
        for folder in ("iot-sentinel", "protocols", "stratosphere", "ddos")
        for p in sorted((DATA / folder).rglob("*"))
        if p.suffix in (".pcap", ".pcapng") and p.name != "icmp-tunnel.pcap"
    ]
    return files + sorted((DATA / "iot23").glob("*.csv"))


def test_quiet_on_every_benign_capture():
    # Pings of IoT devices at setup (56-76 B), the honeypots' pings of their gateway every few
    # minutes (IoT-23 5-1), an ICMP scan, DDoS backscatter with ICMP errors.
    files = _benign_files()
    assert len(files) > 400
    loud = []
    for path in files:
        for f in run(IcmpTunnelDetector(), list(read_events(path, skip_bad=True))):
            loud.append((path.name, f.entity, f.score))
    assert loud == []


def test_honeypot_pings_are_counted_and_judged_ping():
    # IoT-23 5-1 holds 60 ping flows (600 echo pairs of 56 B) from one device to its gateway.
    path = need_data("iot23", "CTU-Honeypot-Capture-5-1-labeled.csv")
    det = IcmpTunnelDetector(min_packets=10, min_bytes=1_000, min_duration=1)
    assert run(det, list(read_events(path))) == []
    ep = det._pairs[("192.168.2.3", "192.168.2.1")]
    assert (ep.req_pkts, ep.rep_pkts, ep.req_bytes, ep.varied_pkts) == (600, 600, 33_600, 0)
    # The same pings at a tunnel's size would still be one fixed, mirrored size.
    assert ep.payload / ep.packets == 56


# synthetic shapes --------------------------------------------------------------------------
def test_ping_shapes_are_not_tunnels():
    hour = np.arange(0, 6 * 3600, 1.0) + T0
    shapes = {
        "linux ping, 6 h at 1/s": echo_flows(hour, np.full(len(hour), 56)),
        "windows ping with losses": echo_flows(hour, np.full(len(hour), 32), np.where(hour % 7 == 0, -1, 32)),
        "large fixed-size ping for 30 min": echo_flows(hour[:1800], np.full(1800, 1400)),
        "path-MTU sweep": echo_flows(T0 + np.arange(24.0), np.repeat(np.arange(1472, 272, -100), 2)),
        "ping flood": echo_flows(T0 + np.arange(0, 120, 0.01), np.full(12_000, 56)),
    }
    for name, cols in shapes.items():
        assert run(IcmpTunnelDetector(), replay_batches(cols)) == [], name


def test_a_tunnel_to_an_outside_server_names_the_device():
    ts, up, down = tunnel_traffic(minutes=15)
    found = run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up, down)))
    # reported when the episode first qualifies, again when its payload has grown fourfold
    assert {(f.entity, f.attributes["peer"]) for f in found} == {(DEVICE, SERVER)}
    assert found[0].severity in ("medium", "high")
    assert "T1048.003" in found[0].mitre
    # Rows out of time order in one batch give the same episode and the same reports.
    (whole,) = replay_batches(echo_flows(ts, up, down), seconds=1e6)
    shuffled = whole.table.take(np.arange(len(whole))[::-1])
    det = IcmpTunnelDetector()
    again = run(det, [EventBatch("flow", shuffled)])
    assert [(f.evidence, f.first_seen, f.last_seen) for f in again] == [
        (f.evidence, f.first_seen, f.last_seen) for f in found
    ]
    ep = det._pairs[(DEVICE, SERVER)]
    assert ep.packets == len(ts) * 2 and ep.last - ep.first == pytest.approx(ts[-1] - ts[0], abs=1)


def test_a_local_tunnel_server_is_named_when_the_requester_is_outside():
    ts, up, down = tunnel_traffic(minutes=15)
    found = run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up, down, src=SERVER, dst=DEVICE)))
    assert found and {(f.entity, f.attributes["role"]) for f in found} == {(DEVICE, "replier")}


def test_reply_only_records_keep_the_requester():
    ts, up, down = tunnel_traffic(minutes=15)
    ctx = Context()
    det = IcmpTunnelDetector()
    found = run(det, replay_batches(echo_flows(ts, up, down, reply_only=True)), ctx)
    # No request was seen, so the replies' sizes alone must show the variation.
    assert [(f.entity, f.attributes["role"]) for f in found] == [(DEVICE, "requester")]
    assert list(det._pairs) == [(DEVICE, SERVER)]


def test_mirrored_replies_of_variable_requests_are_exfiltration_too():
    # Data in the requests, the kernel's replies mirror them (hping3/DET-style exfiltration).
    ts, up, _ = tunnel_traffic(minutes=15)
    found = run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up)))
    assert found and {f.entity for f in found} == {DEVICE}


def test_small_tunnel_traffic_and_short_bursts_are_quiet_unless_large():
    ts, up, down = tunnel_traffic(minutes=15)
    # Keystrokes only: variable but small payloads (under the mean threshold).
    assert run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up // 4 + 8, down // 4 + 8))) == []
    # 40 s of tunnel at 10 packets a second: ~100 KB, too short; at 100 a second (MBs) a burst.
    ts, up, down = tunnel_traffic(minutes=40 / 60, rate=10)
    assert run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up, down))) == []
    ts, up, down = tunnel_traffic(minutes=40 / 60, rate=100)
    found = run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up, down)))
    assert len(found) == 1 and found[0].attributes["payload_bytes"] >= 1_000_000


def test_an_idle_gap_ends_the_episode():
    a = tunnel_traffic(minutes=1.5, seed=1)
    b = tunnel_traffic(minutes=1.5, seed=2, start=T0 + 90 + 3600)
    parts = [echo_flows(*a), echo_flows(*b)]
    # Each half alone is under the 2-minute minimum; an hour apart they are two episodes.
    assert run(IcmpTunnelDetector(), replay_batches(*parts)) == []
    # The same traffic in one batch is cut at the gap too.
    assert run(IcmpTunnelDetector(), replay_batches(*parts, seconds=1e6)) == []
    # A gap under the idle timeout joins them.
    assert len(run(IcmpTunnelDetector(idle_timeout=7200), replay_batches(*parts))) == 1


def test_reported_again_only_when_the_volume_grows_fourfold():
    ts, up, down = tunnel_traffic(minutes=240)
    found = run(IcmpTunnelDetector(), replay_batches(echo_flows(ts, up, down)))
    volumes = [f.attributes["payload_bytes"] for f in found]
    assert len(found) >= 2
    assert all(b >= 4 * a for a, b in zip(volumes, volumes[1:], strict=False))
    assert [f.score for f in found] == sorted(f.score for f in found)
    assert found[-1].severity == "high"


def test_state_is_bounded_under_an_icmp_sweep():
    # A scanner pings 60,000 hosts once each: one tiny pair each.
    n = 60_000
    ts = T0 + np.arange(n) * 0.01
    cols = echo_flows(ts, np.zeros(n, dtype=np.int64), slot=1e-9)
    cols["id.resp_h"] = np.array(
        [f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(n)], dtype=object
    )
    det = IcmpTunnelDetector(max_pairs=10_000)
    assert run(det, replay_batches(cols, seconds=60)) == []
    assert len(det._pairs) <= 10_000


def test_module_contract():
    (cls,) = ANALYTICS
    det = cls()
    assert (det.name, det.kinds) == ("icmp-tunnel", ("flow",))
    assert det.update(EventBatch.empty("flow"), Context()) == [] and det.flush(Context()) == []
