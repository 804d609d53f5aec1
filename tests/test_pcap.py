"""pcap/pcapng source: flows and DNS records from real captures, checked against dpkt and nDPI."""

from __future__ import annotations

import re
import struct
from collections import Counter
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, need_data
from fleetwarden.core.events import EventBatch
from fleetwarden.sources import ReadStats, SourceError, read_events
from fleetwarden.sources import pcap as pcapsrc


def _read(path: Path, **kw) -> tuple[EventBatch | None, EventBatch | None, ReadStats]:
    stats = kw.pop("stats", None) or ReadStats()
    batches = list(read_events(path, stats=stats, **kw))
    flows = [b for b in batches if b.kind == "flow"]
    dns = [b for b in batches if b.kind == "dns"]
    return (
        EventBatch.concat(flows) if flows else None,
        EventBatch.concat(dns) if dns else None,
        stats,
    )


def _captures() -> list[str]:
    if not DATA.exists():
        return []
    files = sorted(p for p in (DATA / "protocols").glob("*/*") if p.suffix in (".pcap", ".pcapng"))
    files += sorted((DATA / "stratosphere").glob("*.pcap")) + sorted((DATA / "ddos").glob("*.pcap"))
    sentinel = sorted((DATA / "iot-sentinel").glob("*/*.pcap"))
    files += sentinel[:: max(1, len(sentinel) // 20)]  # an even sample of ~20 devices' captures
    return [str(p.relative_to(DATA)) for p in files]


# --------------------------------------------------------------------------------------------
# every capture reads, with sane flows
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", _captures() or ["protocols"])
def test_capture_reads(rel: str) -> None:
    path = need_data(*Path(rel).parts)
    flows, dns, stats = _read(path)
    assert stats.skipped == 0
    assert flows is not None and len(flows) > 0
    assert stats.records == len(flows) + (len(dns) if dns else 0)
    t = flows
    pkts = t.np("orig_pkts") + t.np("resp_pkts")
    assert (pkts > 0).all()
    assert (t.np("orig_ip_bytes") >= t.np("orig_bytes")).all() or (t.np("proto") == "tcp").any()
    assert (t.np("duration") >= 0).all()
    assert set(t.np("proto")) <= {"tcp", "udp", "icmp"}
    assert all(re.fullmatch(r"C[0-9A-Za-z]{17}", u) for u in t.np("uid"))
    assert len(set(t.np("uid"))) == len(t)
    assert (np.diff(t.np("ts")) >= 0).all()
    states = set(t.np("conn_state"))
    assert states <= {
        "S0",
        "S1",
        "SF",
        "REJ",
        "S2",
        "S3",
        "RSTO",
        "RSTR",
        "RSTOS0",
        "RSTRH",
        "SH",
        "SHR",
        "OTH",
    }
    # history letters appear at most once per direction
    for h in t.np("history", fill=""):
        assert len(set(h)) == len(h), h


# --------------------------------------------------------------------------------------------
# known flows, truth established with dpkt independently
# --------------------------------------------------------------------------------------------
def _dpkt_packets(path: Path):
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        return list(reader), reader.datalink()


def test_syn_then_rst_is_rstos0() -> None:
    path = need_data("protocols", "zeek", "tcp_syn-then-rst.pcap")
    pkts, _ = _dpkt_packets(path)
    segs = [dpkt.ethernet.Ethernet(b).data.data for _, b in pkts]
    # truth: the same side sends a SYN and then a RST, the other side never answers
    assert [s.flags for s in segs] == [dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST]
    assert len({(s.sport, s.dport) for s in segs}) == 1
    flows, _, _ = _read(path)
    (row,) = flows.to_pylist()
    assert row["conn_state"] == "RSTOS0"  # Zeek: originator sent SYN then RST, no SYN-ACK seen
    assert row["history"] == "SR"
    assert (row["orig_pkts"], row["resp_pkts"]) == (2, 0)
    assert (row["id.orig_p"], row["id.resp_p"]) == (segs[0].sport, segs[0].dport)


def test_icmp_five_pings() -> None:
    path = need_data("protocols", "zeek", "icmp_5-pings.pcap")
    pkts, _ = _dpkt_packets(path)
    icmps = [dpkt.ethernet.Ethernet(b).data for _, b in pkts]
    req = [ip for ip in icmps if ip.data.type == 8]
    rep = [ip for ip in icmps if ip.data.type == 0]
    flows, _, _ = _read(path)
    (row,) = flows.to_pylist()
    assert row["proto"] == "icmp"
    assert (row["id.orig_p"], row["id.resp_p"]) == (8, 0)  # echo request type, counterpart reply type
    assert (row["orig_pkts"], row["resp_pkts"]) == (len(req), len(rep)) == (5, 5)
    assert row["orig_bytes"] == sum(len(ip.data.data) - 4 for ip in req)  # after the 8-byte ICMP header
    assert row["orig_ip_bytes"] == sum(ip.len for ip in req)
    assert row["conn_state"] == "OTH"
    assert row["orig_l2_addr"] == ":".join(f"{b:02x}" for b in dpkt.ethernet.Ethernet(pkts[0][1]).src)


def test_dns53_query_names() -> None:
    path = need_data("protocols", "zeek", "dns53.pcap")
    truth = set()
    for _, b in _dpkt_packets(path)[0]:
        msg = dpkt.dns.DNS(dpkt.ethernet.Ethernet(b).data.data.data)
        truth |= {q.name for q in msg.qd}
    _, dns, _ = _read(path)
    assert set(dns.np("query")) == truth == {"us.v27.distributed.net"}
    row = dns.to_pylist()[0]
    assert row["rcode_name"] == "NOERROR" and row["qtype_name"] == "A"
    assert len(row["answers"].split(",")) == 8


def test_dns_queries_paired_with_responses() -> None:
    path = need_data("protocols", "zeek", "dns-edns-ecs.pcap")
    pkts, _ = _dpkt_packets(path)
    queries = 0
    for _, b in pkts:
        ip = dpkt.ethernet.Ethernet(b).data
        if isinstance(ip.data, dpkt.udp.UDP) and 53 in (ip.data.sport, ip.data.dport):
            queries += not ip.data.data[2] & 0x80  # QR bit clear: a query
    flows, dns, _ = _read(path)
    udp = dns.filter(dns.np("proto") == "udp")
    assert len(udp) >= queries  # one record per query (plus responses that had no query)
    answered = udp.filter(udp.np("rcode_name") != "")
    assert len(answered) > 0
    assert set(dns.np("uid")) <= set(flows.np("uid"))


def test_new_syn_after_close_and_timeouts_split_flows(tmp_path: Path) -> None:
    src = dpkt.ethernet.Ethernet(dst=b"\x02" * 6, src=b"\x04" * 6)

    def tcp(flags: int, fwd: bool, seq: int, data: bytes = b"") -> bytes:
        seg = dpkt.tcp.TCP(
            sport=40000 if fwd else 80, dport=80 if fwd else 40000, flags=flags, seq=seq, data=data
        )
        a, b = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
        ip = dpkt.ip.IP(src=a if fwd else b, dst=b if fwd else a, p=6, data=seg)
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(dst=src.dst, src=src.src, data=ip))

    S, A, F, R, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH
    seq = [
        (S, True, 100), (S | A, False, 500), (A, True, 101), (P | A, True, 101, b"hello"),
        (A, False, 501), (F | A, True, 106), (F | A, False, 501), (A, True, 107),
        (S, True, 9000), (R | A, False, 0),  # same 5-tuple re-used: a new, rejected connection
    ]  # fmt: skip
    path = tmp_path / "reuse.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, p in enumerate(seq):
            w.writepkt(tcp(*p), ts=1000.0 + i * 0.01)
        w.writepkt(tcp(S, True, 7), ts=1000.0 + 400)  # after the 300 s TCP inactivity timeout
    flows, _, _ = _read(path)
    rows = flows.to_pylist()
    assert [r["conn_state"] for r in rows] == ["SF", "REJ", "S0"]
    assert rows[0]["history"] == "ShADaFf"  # the responder sent no data: no d
    assert rows[0]["orig_bytes"] == 5 and rows[0]["resp_bytes"] == 0
    assert [r["orig_pkts"] for r in rows] == [5, 1, 1]
    assert rows[0]["id.orig_h"] == "10.0.0.1" and rows[0]["local_orig"]


def test_syn_ack_first_flips_roles() -> None:
    path = need_data("ddos", "amp.TCP.reflection.SYNACK.pcap")
    pkts, _ = _dpkt_packets(path)
    first = dpkt.ethernet.Ethernet(pkts[0][1]).data
    assert first.data.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK) == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    flows, _, _ = _read(path)
    rows = flows.filter(flows.np("history", fill="").astype(str) != "").to_pylist()
    flipped = [r for r in rows if r["history"].startswith("^h")]
    assert len(flipped) > 0.5 * len(rows)
    # the SYN-ACK sender is the responder: it sends from the service port
    assert all(r["resp_pkts"] >= 1 and r["orig_pkts"] == 0 for r in flipped)
    assert {r["conn_state"] for r in flipped} <= {"OTH", "SHR", "RSTRH"}


# --------------------------------------------------------------------------------------------
# numpy decoding agrees with dpkt, packet by packet
# --------------------------------------------------------------------------------------------
_DL = {
    1: dpkt.ethernet.Ethernet,
    113: dpkt.sll.SLL,
    0: dpkt.loopback.Loopback,
}


@pytest.mark.parametrize(
    "rel",
    [
        "protocols/zeek/dns-edns-ecs.pcap",  # Ethernet, IPv4, TCP+UDP
        "protocols/ndpi/dns2tcp_tunnel.pcap",  # Linux SLL
        "protocols/ndpi/opc-ua.pcap",  # null/loopback
        "protocols/ndpi/alexa-app.pcapng",  # pcapng
        "protocols/zeek/dns_mdns.pcap",  # IPv6
        "ddos/amp.UDP.isakmp.pcap",
        "stratosphere/ssh-bruteforce.test19.pcap",
    ],
)
def test_numpy_decode_matches_dpkt(rel: str) -> None:
    path = need_data(*rel.split("/"))
    pkts, dl = _dpkt_packets(path)
    d = pcapsrc.decode(pcapsrc.read_packets(path))
    assert len(pkts) == len(d.cap)
    compared = 0
    for j, (ts, b) in enumerate(pkts):
        assert abs(d.cap.ts[j] - ts) < 1e-5
        frame = _DL[dl](b)
        ip = frame.data
        if dl == 0 and isinstance(ip, bytes):
            continue
        if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) or not d.flowable[j]:
            continue
        l4 = ip.data
        if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
            assert (int(d.sport[j]), int(d.dport[j])) == (l4.sport, l4.dport)
            assert int(d.plen[j]) == len(l4.data) or isinstance(l4, dpkt.udp.UDP)
        if isinstance(l4, dpkt.tcp.TCP):
            assert int(d.flags[j]) == l4.flags and int(d.seq[j]) == l4.seq
        assert int(d.proto[j]) == ip.p  # for IPv6: after the extension headers
        src = pcapsrc._ip_strings(d.src_hi[j : j + 1], d.src_lo[j : j + 1])[0].as_py()
        assert src == (dpkt.utils.inet_to_str(ip.src))
        compared += 1
    assert compared > 0.8 * len(pkts)


# --------------------------------------------------------------------------------------------
# cross-check against nDPI's own per-flow results
# --------------------------------------------------------------------------------------------
_NDPI_FLOW = re.compile(
    r"^\s+\d+\s+(TCP|UDP)\s+(\S+)\s+(?:<->|->)\s+(\S+)\s+\[.*?\[(\d+) pkts/\d+ bytes"
    r"(?: (?:<->|->) (\d+) pkts/\d+ bytes)?\]"
)


def _ndpi_results() -> list[str]:
    if not DATA.exists():
        return []
    return sorted(p.name for p in (DATA / "protocols" / "ndpi").glob("*.ndpi-result.txt"))


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@pytest.mark.parametrize("name", _ndpi_results() or ["none"])
def test_flows_agree_with_ndpi(name: str) -> None:
    """Same TCP/UDP conversations and packet counts as nDPI.

    Tolerance: nDPI and Zeek split a 5-tuple differently (nDPI has its own idle timeouts and
    ends TCP flows on FIN/RST bookkeeping; Zeek uses 60 s UDP / 300 s TCP inactivity and
    SYN-after-close), and nDPI decapsulates GTP-U, which Zeek-style flows do not.  So per
    capture: conversation (endpoint pair) sets must overlap in >= 90 % of nDPI's, the
    number of flows may differ by max(2, 10 %), and the total packets over the shared
    conversations by at most 6 %.
    """
    res = need_data("protocols", "ndpi", name)
    nd_flows: Counter = Counter()
    nd_pkts: Counter = Counter()
    for line in res.read_text().splitlines():
        m = _NDPI_FLOW.match(line)
        if m:
            key = (m[1].lower(), *sorted([_endpoint(m[2]), _endpoint(m[3])]))
            nd_flows[key] += 1
            nd_pkts[key] += int(m[4]) + int(m[5] or 0)
    flows, _, _ = _read(res.with_name(name.removesuffix(".ndpi-result.txt")))
    my_flows: Counter = Counter()
    my_pkts: Counter = Counter()
    for r in flows.to_pylist() if flows is not None else []:
        if r["proto"] == "icmp":
            continue
        key = (r["proto"], *sorted([(r["id.orig_h"], r["id.orig_p"]), (r["id.resp_h"], r["id.resp_p"])]))
        my_flows[key] += 1
        my_pkts[key] += r["orig_pkts"] + r["resp_pkts"]
    shared = set(nd_flows) & set(my_flows)
    assert len(shared) >= 0.9 * len(nd_flows)
    n_nd, n_my = sum(nd_flows.values()), sum(my_flows.values())
    assert abs(n_nd - n_my) <= max(2, 0.1 * n_nd)
    p_nd = sum(nd_pkts[k] for k in shared)
    p_my = sum(my_pkts[k] for k in shared)
    assert abs(p_nd - p_my) <= 0.06 * p_nd


# --------------------------------------------------------------------------------------------
# ARP
# --------------------------------------------------------------------------------------------
def test_read_arp_matches_dpkt() -> None:
    path = need_data("stratosphere", "arp-scan.test8-malicious.pcap")
    truth = []
    for ts, b in _dpkt_packets(path)[0]:
        eth = dpkt.ethernet.Ethernet(b)
        if isinstance(eth.data, dpkt.arp.ARP):
            truth.append(
                (ts, dpkt.utils.inet_to_str(eth.data.spa), dpkt.utils.inet_to_str(eth.data.tpa), eth.data.op)
            )
    table = pcapsrc.read_arp(path)
    got = list(zip(table["ts"].to_pylist(), table["src_ip"].to_pylist(), table["dst_ip"].to_pylist(),
                   table["op"].to_pylist(), strict=True))  # fmt: skip
    assert len(got) == len(truth) > 100
    assert [g[1:] for g in got] == [t[1:] for t in truth]
    requests = table.filter(np.asarray(table["op"]) == 1)
    assert len(set(requests["dst_ip"].to_pylist())) > 100  # it is a sweep


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def _copy(tmp_path: Path, *parts: str) -> bytes:
    return need_data(*parts).read_bytes()


def test_truncated_pcap(tmp_path: Path) -> None:
    data = _copy(tmp_path, "stratosphere", "ssh-bruteforce.test19.pcap")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])  # mid-record
    with pytest.raises(SourceError) as err:
        list(read_events(cut))
    assert "cut.pcap" in str(err.value) and "truncated" in str(err.value) and "packet" in str(err.value)
    flows, _, stats = _read(cut, skip_bad=True)
    assert stats.skipped == 1 and "truncated" in stats.problems[0]
    full, _, _ = _read(need_data("stratosphere", "ssh-bruteforce.test19.pcap"))
    got = int((flows.np("orig_pkts") + flows.np("resp_pkts")).sum())
    n_before = len(pcapsrc.read_packets(cut, skip_bad=True))
    assert got <= n_before and got > 0.9 * n_before
    # flows from before the cut are kept: their earliest starts match the full read
    assert set(flows.np("ts")[:5]) <= set(full.np("ts"))


def test_truncated_pcapng(tmp_path: Path) -> None:
    data = _copy(tmp_path, "protocols", "ndpi", "alexa-app.pcapng")
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SourceError, match=r"cut\.pcapng: packet \d+ \(byte offset \d+\): file truncated"):
        list(read_events(cut))
    flows, _, stats = _read(cut, skip_bad=True)
    assert stats.skipped == 1 and len(flows) > 100


def test_unknown_linktype(tmp_path: Path) -> None:
    data = bytearray(_copy(tmp_path, "protocols", "zeek", "dns53.pcap"))
    data[20:24] = struct.pack("<I", 147)  # a user-defined DLT
    path = tmp_path / "dlt147.pcap"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"dlt147\.pcap: packet 1 .*unsupported link type 147"):
        list(read_events(path))
    flows, _, stats = _read(path, skip_bad=True)
    assert flows is None and stats.skipped == 1


def test_garbage(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    path = tmp_path / "garbage.pcap"
    path.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="garbage.pcap"):
        list(read_events(path))
    with pytest.raises(SourceError, match="not a pcap or pcapng"):
        list(pcapsrc.read(path, skip_bad=False, stats=ReadStats(), batch_size=10))
    # valid header followed by garbage records
    head = _copy(tmp_path, "protocols", "zeek", "dns53.pcap")[:24]
    path.write_bytes(head + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"packet 1 \(byte offset 24\)"):
        list(read_events(path))


def test_packet_too_short(tmp_path: Path) -> None:
    good = _dpkt_packets(need_data("protocols", "zeek", "icmp_5-pings.pcap"))[0]
    path = tmp_path / "short.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, (ts, b) in enumerate(good):
            w.writepkt(b[:30] if i == 3 else b, ts=ts)  # packet 4: Ethernet + 16 bytes of IPv4
    with pytest.raises(SourceError, match=r"short\.pcap: packet 4 \(byte offset \d+\): .*IPv4 header"):
        list(read_events(path))
    flows, _, stats = _read(path, skip_bad=True)
    assert stats.skipped == 1
    assert int(flows.np("orig_pkts").sum() + flows.np("resp_pkts").sum()) == len(good) - 1


_SEED = [
    "protocols/zeek/dns53.pcap",
    "protocols/zeek/tcp_syn-then-rst.pcap",
    "protocols/ndpi/mqtt.pcap",
    "protocols/zeek/telnet-auth-missing-name.pcap",
    "protocols/ndpi/tcp_scan.pcapng",
]


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    return [need_data(*s.split("/")).read_bytes() for s in _SEED]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_captures_fail_cleanly(seeds: list[bytes], tmp_path: Path, data) -> None:
    blob = bytearray(data.draw(st.sampled_from(seeds)))
    op = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif op == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    else:
        other = data.draw(st.sampled_from(seeds))
        i, j = data.draw(st.integers(0, len(blob))), data.draw(st.integers(0, len(other)))
        blob = blob[:i] + other[j:]
    path = tmp_path / "mutant.pcap"
    path.write_bytes(bytes(blob))
    for skip in (False, True):
        try:
            for batch in read_events(path, skip_bad=skip):
                assert len(batch) >= 0
        except SourceError as exc:  # the one exception type allowed, and it names the file
            assert "mutant.pcap" in str(exc)


# --------------------------------------------------------------------------------------------
# fast paths agree with dpkt: record walk, DNS names, non-IP frame count
# --------------------------------------------------------------------------------------------
_WALK = [
    "ddos/amp.dns.RRSIG.fragmented.pcap",
    "stratosphere/arp-scan.test8-malicious.pcap",
    "protocols/zeek/dns-edns-ecs.pcap",
    "protocols/ndpi/dns2tcp_tunnel.pcap",
    "protocols/ndpi/alexa-app.pcapng",
]


@pytest.mark.parametrize("rel", _WALK)
def test_record_walk_matches_dpkt(rel: str) -> None:
    path = need_data(*rel.split("/"))
    pkts, _ = _dpkt_packets(path)
    cap = pcapsrc.read_packets(path)
    assert len(cap) == len(pkts)
    assert cap.caplen.tolist() == [len(b) for _, b in pkts]
    assert np.allclose(cap.ts, [ts for ts, _ in pkts], rtol=0, atol=1e-6)
    heads = zip(cap.off[:50].tolist(), cap.caplen[:50].tolist(), strict=True)
    first = [cap.buf[o : o + c].tobytes() for o, c in heads]
    assert first == [b for _, b in pkts[:50]]


def test_corrupt_record_length_mid_file(tmp_path: Path) -> None:
    data = bytearray(need_data("stratosphere", "ssh-bruteforce.test19.pcap").read_bytes())
    good = pcapsrc.read_packets(need_data("stratosphere", "ssh-bruteforce.test19.pcap"))
    k = len(good) // 3
    at = int(good.rec_off[k])
    data[at + 8 : at + 12] = struct.pack("<I", 10_000_000)  # record k+1 claims 10 MB
    path = tmp_path / "badlen.pcap"
    path.write_bytes(bytes(data))
    with pytest.raises(
        SourceError, match=rf"badlen\.pcap: packet {k + 1} \(byte offset {at}\): record length"
    ):
        list(read_events(path))
    stats = ReadStats()
    cap = pcapsrc.read_packets(path, skip_bad=True, stats=stats)
    assert len(cap) == k and stats.skipped == 1  # everything before the damage, nothing after
    assert cap.rec_off.tolist() == good.rec_off[:k].tolist()


def _dns_payloads(rel: str) -> list[bytes]:
    out = []
    path = need_data(*rel.split("/"))
    pkts, dl = _dpkt_packets(path)
    for _, b in pkts:
        ip = _DL[dl](b).data
        l4 = getattr(ip, "data", None)
        if isinstance(l4, dpkt.udp.UDP) and {l4.sport, l4.dport} & {53, 5353, 5355}:
            out.append(bytes(l4.data))
    return out


def _names_dpkt(msg: bytes, offsets: list[int]) -> list:
    res = []
    for off in offsets:
        try:
            res.append(dpkt.dns.unpack_name(msg, off))
        except (dpkt.dpkt.Error, struct.error, IndexError, ValueError, UnicodeError):
            res.append("error")
    return res


def _names_fast(msg: bytes, offsets: list[int]) -> list:
    res = []
    for off in offsets:
        try:
            res.append(pcapsrc._unpack_name(msg, off))
        except (ValueError, IndexError, UnicodeError):
            res.append("error")
    return res


@pytest.fixture(scope="module")
def dns_messages() -> list[bytes]:
    msgs = []
    for rel in (
        "protocols/zeek/dns53.pcap",
        "protocols/zeek/dns-edns-ecs.pcap",
        "protocols/zeek/dns_mdns.pcap",
    ):
        msgs += _dns_payloads(rel)
    return msgs


def test_dns_name_decoder_matches_dpkt(dns_messages: list[bytes]) -> None:
    assert len(dns_messages) > 10
    compared = 0
    for msg in dns_messages:
        offsets = list(range(12, min(len(msg), 200)))  # every offset: names, pointers and junk
        fast, ref = _names_fast(msg, offsets), _names_dpkt(msg, offsets)
        assert fast == ref
        compared += sum(r != "error" for r in ref)
    assert compared > 100


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_dns_name_decoder_on_damaged_messages(dns_messages: list[bytes], data) -> None:
    msg = bytearray(data.draw(st.sampled_from(dns_messages)))
    for _ in range(data.draw(st.integers(1, 8))):
        msg[data.draw(st.integers(0, len(msg) - 1))] = data.draw(st.integers(0, 255))
    msg = bytes(msg[: data.draw(st.integers(12, len(msg)))])
    offsets = list(range(12, len(msg)))
    assert _names_fast(msg, offsets) == _names_dpkt(msg, offsets)


def test_other_frames_counts_non_ip() -> None:
    path = need_data("stratosphere", "arp-scan.test8-malicious.pcap")
    pkts, _ = _dpkt_packets(path)
    non_ip = sum(not isinstance(dpkt.ethernet.Ethernet(b).data, dpkt.ip.IP | dpkt.ip6.IP6) for _, b in pkts)
    stats = ReadStats()
    list(read_events(path, stats=stats))
    assert stats.other_frames == non_ip > 500
