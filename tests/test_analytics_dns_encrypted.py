"""Encrypted DNS to public resolvers (DoH, DoT, DoQ): synthetic streams, then real captures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import need_data
from fleetwarden.app.analyze import analyze as analyze_paths
from fleetwarden.core.context import Context
from fleetwarden.core.events import EventBatch
from fleetwarden.detection.analytics import dns as dns_module
from fleetwarden.detection.analytics.dns import (
    DnsDetector,
    EncryptedDnsDetector,
    doh_endpoint,
    public_resolver,
)
from fleetwarden.detection.engine import Engine
from fleetwarden.sources import read_events

DEVICE = "192.168.1.20"


def flows(rows: list[dict]) -> EventBatch:
    cols = {k: [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r})}
    return EventBatch.from_columns("flow", cols, len(rows))


def conn(ts, dst, dport=443, src=DEVICE, proto="tcp", ob=400, rb=900, rp=4, state="SF", dur=1.0) -> dict:
    return {
        "ts": ts,
        "uid": f"C{ts:.3f}-{src}-{dst}-{dport}",
        "id.orig_h": src,
        "id.orig_p": 40000 + int(ts) % 20000,
        "id.resp_h": dst,
        "id.resp_p": dport,
        "proto": proto,
        "duration": dur,
        "orig_bytes": ob,
        "resp_bytes": rb,
        "orig_pkts": 5,
        "resp_pkts": rp,
        "conn_state": state,
    }


def lookups(rows: list[tuple]) -> EventBatch:
    ts, client, query, answers = zip(*rows, strict=True)
    return EventBatch.from_columns(
        "dns",
        {
            "ts": ts,
            "uid": [f"D{t}" for t in ts],
            "id.orig_h": client,
            "id.resp_h": ["192.168.1.1"] * len(rows),
            "query": query,
            "qtype_name": ["A"] * len(rows),
            "rcode_name": ["NOERROR"] * len(rows),
            "answers": answers,
        },
    )


def feed(det, ctx, *batches) -> list:
    """Batches through the detector, then the end of the input.  Flows and lookups are judged one by
    one in event time once both kinds are in up to their time (a lookup at the same time may teach
    a flow's address): a flow batch alone is judged when the next batch or the end comes."""
    out = []
    for b in batches:
        out += det.update(b, ctx)
    return out + det.flush(ctx)


def check(f, entity=DEVICE):
    assert f.category == "policy-violation" and f.detector == "encrypted-dns"
    assert f.entity == entity
    assert set(f.mitre) == {"T1071.004", "T1572"}
    assert f.first_seen <= f.last_seen and f.record_ids


# the curated tables -------------------------------------------------------------------------
def test_resolver_table_matches_any_spelling_and_only_resolvers():
    assert public_resolver("1.1.1.1") == "Cloudflare"
    assert public_resolver("2606:4700:4700:0:0:0:0:1111") == "Cloudflare"  # uncompressed IPv6
    assert public_resolver("8.8.4.4") == "Google Public DNS"
    assert public_resolver("149.112.112.112") == "Quad9"
    assert public_resolver("45.90.28.77") == "NextDNS"  # a per-customer address in NextDNS's block
    for other in ("1.1.1.4", "8.8.8.9", "52.94.236.248", "192.168.1.1", "not-an-ip", ""):
        assert public_resolver(other) is None, other
    assert doh_endpoint("dns.google") == "Google Public DNS"
    assert doh_endpoint("mozilla.cloudflare-dns.com.") == "Cloudflare"
    assert doh_endpoint("ab12cd.dns.nextdns.io") == "NextDNS"
    assert doh_endpoint("DOH.OpenDNS.com") == "OpenDNS"
    # the operators' web sites and look-alikes are not endpoints
    for other in ("google.com", "quad9.net", "www.quad9.net", "opendns.com", "notdns.google.example"):
        assert doh_endpoint(other) is None, other


# flows --------------------------------------------------------------------------------------
def test_doh_and_dot_reported_once_per_device_and_resolver():
    det, ctx = EncryptedDnsDetector(), Context()
    first = flows([conn(10, "1.1.1.1"), conn(20, "1.0.0.1"), conn(30, "9.9.9.9", 853)])
    # more of the same, later: nothing new to say; another device using the same resolver is its own
    # finding
    again = flows([conn(100 + i, "1.1.1.1") for i in range(20)] + [conn(200, "9.9.9.9", 853)])
    other = flows([conn(300, "1.1.1.1", src="192.168.1.21")])
    found = feed(det, ctx, first, again, other)
    assert [(f.entity, f.attributes["resolver_service"]) for f in found] == [
        (DEVICE, "Cloudflare"),  # 1.1.1.1 and 1.0.0.1: one Cloudflare finding, at the first flow
        (DEVICE, "Quad9"),
        ("192.168.1.21", "Cloudflare"),
    ]
    cf, q9 = found[0], found[1]
    for f in (cf, q9):
        check(f)
        assert f.severity == "medium" and f.score == pytest.approx(0.55)
    assert cf.evidence[0] == (
        "TLS to 1.1.1.1 tcp/443, a public DNS-over-HTTPS resolver (Cloudflare): "
        "name lookups bypass the fleet's DNS monitoring"
    )
    assert cf.attributes["resolver"] == "1.1.1.1" and cf.attributes["connections"] == 1
    assert q9.evidence[0].startswith("tcp/853 DNS-over-TLS to 9.9.9.9 (Quad9)")


def test_dot_to_unlisted_public_address_but_not_to_a_local_resolver():
    found = feed(
        EncryptedDnsDetector(),
        Context(),
        flows([conn(1, "51.15.124.208", 853), conn(2, "10.0.0.53", 853), conn(3, "192.168.1.1", 853)]),
    )
    assert len(found) == 1
    check(found[0])
    assert found[0].attributes["resolver"] == "51.15.124.208"
    assert "tcp/853 DNS-over-TLS to 51.15.124.208 (not a listed resolver" in found[0].evidence[0]
    quic = feed(EncryptedDnsDetector(), Context(), flows([conn(1, "94.140.14.14", 853, proto="udp")]))
    assert quic and quic[0].evidence[0].startswith("udp/853 DNS-over-QUIC to 94.140.14.14 (AdGuard DNS)")
    h3 = feed(EncryptedDnsDetector(), Context(), flows([conn(1, "8.8.8.8", 443, proto="udp")]))
    assert h3 and h3[0].evidence[0].startswith("QUIC (HTTP/3) to 8.8.8.8 udp/443")


def test_plain_dns_ordinary_https_and_resolvers_as_clients_are_not_reported():
    rows = [
        conn(1, "8.8.8.8", 53, proto="udp", ob=40, rb=120),  # plaintext DNS: the DNS analytic's job
        conn(2, "1.1.1.1", 80),  # not an encrypted-DNS port
        conn(3, "52.94.236.248", 443),  # ordinary HTTPS to a cloud
        conn(4, "1.1.1.2", 443, src="1.1.1.1"),  # a resolver as the client is not a device
        conn(5, "8.8.8.8", 443, proto="icmp"),
    ]
    assert feed(EncryptedDnsDetector(), Context(), flows(rows)) == []


def test_fleet_resolvers_are_allowed():
    ctx = Context()
    ctx.expected_resolvers = {"8.8.8.8", "2606:4700:4700:0:0:0:0:1111"}  # spelled unlike the flows
    rows = [conn(1, "8.8.8.8"), conn(2, "2606:4700:4700::1111"), conn(3, "9.9.9.9")]
    found = feed(EncryptedDnsDetector(), ctx, flows(rows))
    assert [f.attributes["resolver"] for f in found] == ["9.9.9.9"]
    assert any("the fleet's resolvers are" in e for e in found[0].evidence)


def test_unanswered_attempts_are_weaker_than_use():
    det, ctx = EncryptedDnsDetector(), Context()
    blocked = [conn(i, "1.1.1.1", ob=0, rb=0, rp=0, state="S0") for i in range(3)]
    # then it got through: reported again, higher
    (f, f2) = feed(det, ctx, flows(blocked), flows([conn(10, "1.1.1.1")]))
    assert f.score == pytest.approx(0.45) and f.severity == "medium"
    assert "none answered" in f.evidence[1]
    assert f2.score > f.score and "none answered" not in " ".join(f2.evidence)


def test_bulk_over_doh_escalates_once():
    det, ctx = EncryptedDnsDetector(), Context()
    # a tunnel: 400 kB up and 800 kB down in 30 s sessions over the next 20 minutes; then more,
    # which says nothing new
    tunnel = [conn(60 + 30 * i, "8.8.8.8", ob=10_000, rb=20_000, dur=30) for i in range(40)]
    more = [conn(3000, "8.8.8.8", ob=10**6)]
    (first, bulk) = feed(det, ctx, flows([conn(0, "8.8.8.8", ob=2_000, rb=5_000, dur=60)]), flows(tunnel), flows(more))
    assert first.severity == "medium" and not first.attributes["bulk"]
    check(bulk)
    assert bulk.attributes["bulk"] and bulk.score == pytest.approx(0.7) and bulk.severity == "high"
    # reported at the session that takes the hour past a megabyte
    assert any(e.startswith("bulk: up to 1027000 bytes and 35 connections") for e in bulk.evidence)


def test_many_connections_in_an_hour_is_bulk_but_the_same_spread_out_is_not():
    burst = [conn(i * 9.0, "1.1.1.1", ob=200, rb=300) for i in range(380)]  # one every 9 s for an hour
    (use, f) = feed(EncryptedDnsDetector(), Context(), flows(burst))
    assert not use.attributes["bulk"]  # at the first session; bulk at the 360th within the hour
    assert f.attributes["bulk"] and "360 connections" in " ".join(f.evidence)
    spread = [conn(i * 40.0, "1.1.1.1", ob=200, rb=300) for i in range(380)]  # ~90 an hour
    (g,) = feed(EncryptedDnsDetector(), Context(), flows(spread))
    assert not g.attributes["bulk"] and g.severity == "medium"


# DNS lookups of DoH endpoints ---------------------------------------------------------------
def test_lookup_of_an_endpoint_then_use_of_it():
    det, ctx = EncryptedDnsDetector(), Context()
    # looked up an endpoint, and then used it
    (f, g) = feed(det, ctx, lookups([(5.0, DEVICE, "dns.google", "8.8.8.8,8.8.4.4")]), flows([conn(6, "8.8.8.8")]))
    check(f)
    assert f.score == pytest.approx(0.45)
    assert "looked up dns.google, a DNS-over-HTTPS/TLS endpoint of Google Public DNS" in f.evidence[0]
    assert f.attributes["addresses"] == ["8.8.8.8", "8.8.4.4"]
    assert g.score == pytest.approx(0.6)
    assert g.evidence[0].startswith("TLS to 8.8.8.8 tcp/443") and any("looked up" in e for e in g.evidence)
    # the same flow and lookup the other way round in one window (flows come first): the same story
    det2 = EncryptedDnsDetector()
    same = feed(det2, ctx, flows([conn(6, "8.8.8.8")]), lookups([(5.0, DEVICE, "dns.google", "8.8.8.8,8.8.4.4")]))
    assert [(x.score, x.evidence) for x in same] == [(x.score, x.evidence) for x in (f, g)]
    # ordinary names, and an endpoint the fleet uses, are not reported
    ctx.expected_resolvers = {"dns.quad9.net"}
    quiet = [(7.0, DEVICE, "time.google.com", "216.239.35.0"), (8.0, DEVICE, "dns.quad9.net", "9.9.9.9")]
    assert feed(EncryptedDnsDetector(), ctx, lookups(quiet)) == []


def test_endpoint_addresses_learned_from_answers():
    # Apple's DoH endpoint is not in the address table: its answered address is learned, so a later
    # flow of another device to it is found (an address nobody looked up stays unknown).
    det, ctx = EncryptedDnsDetector(), Context()
    found = feed(
        det,
        ctx,
        lookups([(1.0, "192.168.1.30", "doh.dns.apple.com", "17.253.7.201")]),
        flows([conn(2, "17.253.7.201"), conn(3, "17.253.7.202")]),
    )
    found = [f for f in found if f.entity == DEVICE]  # the looker-up's intent is its own finding
    assert [(f.entity, f.attributes["resolver"]) for f in found] == [(DEVICE, "17.253.7.201")]
    assert "(Apple iCloud Private Relay)" in found[0].evidence[0]


def test_engine_dispatches_flows_and_lookups_to_it():
    assert EncryptedDnsDetector in dns_module.ANALYTICS
    engine = Engine()
    found = engine.process(lookups([(1.0, DEVICE, "cloudflare-dns.com", "104.16.248.249")]))
    found += engine.process(flows([conn(2, "9.9.9.9", 853)]))
    found += engine.flush()
    assert sorted(f.attributes["resolver_service"] for f in found if f.detector == "encrypted-dns") == [
        "Cloudflare",
        "Quad9",
    ]


# real data ----------------------------------------------------------------------------------
def test_dns2tcp_over_doh_capture_is_found():
    # nDPI's dns2tcp_tunnel.pcap: dns2tcp tunnelled through DoH, one TLS session to 1.1.1.1:443
    result = analyze_paths([need_data("protocols", "ndpi", "dns2tcp_tunnel.pcap")])
    mine = [f for f in result.findings if f.detector == "encrypted-dns"]
    assert len(mine) == 1
    f = mine[0]
    check(f, entity="192.168.20.211")
    assert f.attributes["resolver"] == "1.1.1.1" and f.attributes["resolver_service"] == "Cloudflare"
    assert f.evidence[0].startswith("TLS to 1.1.1.1 tcp/443, a public DNS-over-HTTPS resolver (Cloudflare)")
    assert f.severity == "medium"  # one 8-second session of 6 kB: not bulk
    top = result.incidents[0]
    assert (top.entity, top.category) == ("192.168.20.211", "policy-violation")


def _encrypted_dns_findings(path: Path) -> list:
    det, ctx, out = EncryptedDnsDetector(), Context(), []
    for batch in read_events(path):
        if batch.kind in det.kinds:
            out += det.update(batch, ctx)
    return out + det.flush(ctx)


def _captures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".pcap", ".pcapng", ".csv", ".log"))


@pytest.mark.parametrize("folder", ["iot-sentinel", "iot23", "stratosphere", "ddos", "protocols"])
def test_captures_without_encrypted_dns_stay_quiet(folder):
    # The benign sets (IoT Sentinel, IoT-23 honeypots 4-1 and 5-1), the IoT-23 malware captures and
    # the other traces: no device uses DoH/DoT (checked flow by flow: no tcp/853, no 443 to a listed
    # resolver, no endpoint lookups).  Several do send plaintext DNS to 8.8.8.8, 1.1.1.1,
    # 2606:4700:4700::1111 and 2620:fe::fe (honeypot 5-1, amp.dns.RRSIG, dns-edns-ecs), and the
    # IoT-23 Mirai capture probes 1.1.1.1 on tcp/1: none of that is encrypted DNS.
    paths = [p for p in _captures(need_data(folder)) if p.name != "dns2tcp_tunnel.pcap"]
    assert paths
    noisy = {p.name: [(f.entity, f.evidence[0]) for f in _encrypted_dns_findings(p)] for p in paths}
    assert {k: v for k, v in noisy.items() if v} == {}


def test_simulated_fleet_raises_none_and_an_injected_doh_device_is_named():
    from fleetwarden.control.inventory import context_from_fleet
    from fleetwarden.simulate import simulate_fleet

    fleet = simulate_fleet(devices=100, hours=6, seed=3)
    ctx = context_from_fleet(fleet)
    # the simulator generates no encrypted DNS: no port 853, no resolver address, no endpoint name
    fl = fleet.batches["flow"]
    assert not any(
        p == 853 or public_resolver(d) for d, p in zip(fl.np("id.resp_h"), fl.np("id.resp_p"), strict=True)
    )
    assert not any(doh_endpoint(q) for q in fleet.batches["dns"].np("query"))
    engine = Engine(ctx=ctx)
    found = []
    for batch in fleet.iter_batches(seconds=600):
        found += engine.process(batch)
    found += engine.flush()
    assert [f for f in found if f.detector == "encrypted-dns"] == []
    # one device of that fleet then resolves over DoH: named by its inventory id
    device = fleet.inventory[0]
    t = fleet.end + 60
    later = engine.process(flows([conn(t, "1.1.1.1", src=device["ip"])])) + engine.flush()
    doh = [f for f in later if f.detector == "encrypted-dns"]
    assert [f.entity for f in doh] == [device["device_id"]]


def test_plaintext_resolver_check_is_unchanged():
    # the DNS analytic still reports plaintext queries to an unexpected resolver on its own
    ctx = Context()
    ctx.expected_resolvers = {"10.0.0.1"}
    batch = EventBatch.from_columns(
        "dns",
        {
            "ts": [1.0],
            "id.orig_h": [DEVICE],
            "id.resp_h": ["8.8.8.8"],
            "query": ["example.com"],
            "qtype_name": ["A"],
            "rcode_name": ["NOERROR"],
        },
    )
    (f,) = DnsDetector().update(batch, ctx)
    assert f.category == "policy-violation" and f.attributes["resolver"] == "8.8.8.8"
    assert feed(EncryptedDnsDetector(), ctx, batch) == []


def test_state_is_bounded_and_forgetting_does_not_repeat_a_report():
    det, ctx = EncryptedDnsDetector(max_keys=4), Context()
    devices = [f"192.168.2.{i}" for i in range(1, 11)]
    first = feed(det, ctx, flows([conn(i, "1.1.1.1", src=d) for i, d in enumerate(devices)]))
    assert len(first) == 10 and len(det._keys) <= 4
    # the devices whose state was forgotten are still not reported again for the same evidence
    assert feed(det, ctx, flows([conn(100 + i, "1.1.1.1", src=d) for i, d in enumerate(devices)])) == []
