"""pcap / pcapng source: packets -> Zeek ``conn.log``-compatible flows and ``dns.log`` records.

How it works (and why it is shaped this way): decoding every packet into Python objects costs
tens of microseconds a packet, far too slow for the >= 96 k packets/s budget of the
pcap -> scored flows path.  So the reader

1. walks the container once (classic pcap: the record headers; pcapng: the blocks, with
   dpkt parsing the interface blocks' options) and keeps only each packet's byte offset,
   lengths, timestamp and link type; the packet bytes stay in the file's own buffer;
2. decodes link, IP and transport headers for all packets at once with numpy gathers
   (one code path per link type), leaving to dpkt / Python only the odd cases: IPv6
   extension headers, IP fragments (reassembled into one datagram as Zeek does) and
   DNS payloads;
3. assembles bidirectional connections with numpy: sort by 5-tuple (stable, so file
   order is kept inside a connection), split on inactivity timeouts and on a new SYN
   after a closed TCP connection, aggregate with ``reduceat``; even the history string
   is built column-wise.

Zeek conventions kept: originator = TCP SYN sender (a SYN-ACK first flips the roles,
``^`` in the history), first sender otherwise with a flip when the first packet goes from a
likely server port to a non-server port; ICMP ``id.orig_p`` = type and ``id.resp_p`` = the
counterpart type for request/reply pairs (echo 8 <-> 0 ...) or the code for one-way types;
``conn_state`` per ``base/protocols/conn/main.zeek``; history letters once per direction;
TCP ``orig_bytes``/``resp_bytes`` from sequence-number ranges (retransmissions are not
counted twice), UDP payload lengths, ICMP payload after the 8-byte ICMP header; inactivity
timeouts tcp 300 s, udp 60 s, icmp 60 s.

Blind spots: TCP endpoint states are judged from which flags each side sent, not from a
full per-packet state machine (rare orderings such as data after RST may be labelled
differently from Zeek); retransmission/gap/zero-window letters (t, g, w, c) are not
produced and ``missed_bytes`` is 0; ``service`` comes from ports plus a few payload
signatures, not Zeek's full dynamic protocol detection; the whole capture is held in
memory (one pass, no streaming across files); tunnels (GRE, VXLAN, Teredo) are not
decapsulated.

``read_arp(path)`` returns ARP packets as a columnar table for ARP-sweep detection.
"""

from __future__ import annotations

import gzip
import ipaddress
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np
import pyarrow as pa

from fleetwarden.core.events import EventBatch
from fleetwarden.sources import ReadStats, SourceError, drop_overlong

__all__ = ["SUPPORTED_LINKTYPES", "read", "read_arp", "read_packets"]

# link types: Ethernet, null/loopback (BSD AF in host order), OpenBSD loop, raw IP variants,
# Linux cooked v1 and v2.
LT_NULL, LT_ETHERNET, LT_LOOP, LT_SLL, LT_SLL2 = 0, 1, 108, 113, 276
LT_RAW = (101, 12, 14)
LT_IPV4, LT_IPV6 = 228, 229
SUPPORTED_LINKTYPES = frozenset({LT_NULL, LT_ETHERNET, LT_LOOP, LT_SLL, LT_SLL2, *LT_RAW, LT_IPV4, LT_IPV6})

# libpcap's and Wireshark's ceiling for one record; a larger length is a corrupt file.
MAX_RECORD = 262_144

TIMEOUTS = {6: 300.0, 17: 60.0, 1: 60.0, 58: 60.0}  # Zeek's tcp/udp/icmp inactivity timeouts
DNS_PORTS = (53, 5353, 5355)
# lookup tables instead of np.isin: a capture of a few packets should not pay isin's set-up
DNS_PORT = np.zeros(65536, dtype=bool)
DNS_PORT[list(DNS_PORTS)] = True
_IPV6_EXT = np.zeros(256, dtype=bool)
_IPV6_EXT[[0, 43, 44, 60, 51, 135, 139, 140]] = True
_FLOW_PROTO = np.zeros(256, dtype=bool)
_FLOW_PROTO[[6, 17, 1, 58]] = True
_BIG = np.iinfo(np.int64).max  # "never" in first-row matrices

# reasons a packet is unusable (code -> text); 0 = fine
_BAD = {
    1: "shorter than its link-layer header",
    2: "shorter than its IPv4 header",
    3: "IPv4 header with a bad version or header length",
    4: "shorter than its IPv6 header",
    5: "IPv6 header with a bad version",
    6: "shorter than its TCP header",
    7: "shorter than its UDP header",
    8: "shorter than its ICMP header",
    9: "TCP header with a data offset below 5",
    10: "IPv4 total length smaller than its header",
    11: "malformed IPv6 extension header",
}

# Likely server ports (Zeek's likely_server_ports is the ports its analyzers register):
# every port below 1024 plus registered service ports common on IoT / OT / enterprise networks.
_SERVER_PORTS_HIGH = (
    1080, 1194, 1433, 1521, 1701, 1723, 1812, 1813, 1883, 1900, 2049, 2082, 2083, 2222, 2323, 2404,
    2598, 3128, 3260, 3268, 3306, 3389, 3478, 3702, 4500, 4840, 5000, 5001, 5060, 5061, 5222, 5349,
    5353, 5355, 5432, 5671, 5672, 5683, 5684, 5800, 5900, 5985, 5986, 6379, 6443, 6665, 6666, 6667,
    6668, 6669, 6697, 7547, 8000, 8008, 8080, 8081, 8088, 8443, 8883, 8888, 9000, 9092, 9100, 9200,
    11211, 17500, 18245, 20000, 27017, 44818, 47808, 49152,
)  # fmt: skip
SERVER_PORT = np.zeros(65536, dtype=bool)
SERVER_PORT[:1024] = True
SERVER_PORT[0] = False
SERVER_PORT[list(_SERVER_PORTS_HIGH)] = True

# ICMP request/reply counterparts (Zeek's ICMP4_counterpart / ICMP6_counterpart); -1 = one-way
_ICMP4_PAIR = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIR = {
    128: 129,
    129: 128,
    133: 134,
    134: 133,
    135: 136,
    136: 135,
    139: 140,
    140: 139,
    130: 131,
    131: 130,
}
_ICMP4_REPLY = (0, 14, 16, 9, 18)
_ICMP6_REPLY = (129, 134, 136, 140, 131)
ICMP4_COUNTER = np.full(256, -1, dtype=np.int32)
ICMP6_COUNTER = np.full(256, -1, dtype=np.int32)
for _k, _v in _ICMP4_PAIR.items():
    ICMP4_COUNTER[_k] = _v
for _k, _v in _ICMP6_PAIR.items():
    ICMP6_COUNTER[_k] = _v
ICMP4_IS_REPLY = np.zeros(256, dtype=bool)
ICMP4_IS_REPLY[list(_ICMP4_REPLY)] = True
ICMP6_IS_REPLY = np.zeros(256, dtype=bool)
ICMP6_IS_REPLY[list(_ICMP6_REPLY)] = True

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


# ---------------------------------------------------------------------------------------------
# container
# ---------------------------------------------------------------------------------------------
@dataclass
class Capture:
    """Packets of one capture as columns; packet bytes stay in ``buf`` (the file's content)."""

    path: Path
    buf: np.ndarray  # uint8, the whole file (decompressed when gzip)
    off: np.ndarray  # int64 offset of each packet's first byte in buf
    caplen: np.ndarray  # int64 captured length
    wirelen: np.ndarray  # int64 length on the wire
    ts: np.ndarray  # float64 seconds since the epoch
    linktype: np.ndarray  # int32 per packet (pcapng interfaces may differ)
    rec_off: np.ndarray  # int64 byte offset of the record / block (for error messages)

    def __len__(self) -> int:
        return len(self.off)

    def where(self, i: int) -> str:
        return f"packet {i + 1} (byte offset {int(self.rec_off[i])})"


def _load(path: Path, skip_bad: bool, stats: ReadStats) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            if not skip_bad:
                raise SourceError(path, None, f"gzip stream is corrupt: {exc}") from None
            # keep what decompresses before the damage
            dec = zlib.decompressobj(wbits=47)
            try:
                data = dec.decompress(data)
            except zlib.error:
                data = b""
            stats.skip(SourceError(path, None, f"gzip stream is corrupt, kept the readable part: {exc}"))
    return data


def read_packets(path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None) -> Capture:
    """Walk a pcap or pcapng file and return its packets as columns (see :class:`Capture`)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    data = _load(path, skip_bad, stats)
    if len(data) < 4:
        raise SourceError(path, None, "file too short to be a capture")
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        return _walk_pcapng(path, data, skip_bad, stats)
    if magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return _walk_pcap(path, data, skip_bad, stats)
    raise SourceError(path, "byte offset 0", f"not a pcap or pcapng file (magic {magic.hex()})")


def _fail(path: Path, where: str | None, what: str, skip_bad: bool, stats: ReadStats, count: int = 1) -> None:
    err = SourceError(path, where, what)
    if not skip_bad:
        raise err
    stats.skip(err, count)


def _walk_pcap(path: Path, data: bytes, skip_bad: bool, stats: ReadStats) -> Capture:
    if len(data) < 24:
        raise SourceError(path, "byte offset 0", "truncated pcap file header")
    le = data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    nano = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    hdr = dpkt.pcap.LEFileHdr(data[:24]) if le else dpkt.pcap.FileHdr(data[:24])
    linktype = hdr.linktype & 0xFFFF  # upper bits may carry FCS information
    limit = max(MAX_RECORD, hdr.snaplen if hdr.snaplen < 1 << 26 else 0)
    u32 = struct.Struct("<I" if le else ">I").unpack_from
    n = len(data)
    pos = 24
    positions: list[int] = []
    append = positions.append
    last = n - 16
    # The record walk is inherently sequential, so this loop does the least it can: note the
    # record and jump over it.  Lengths are checked afterwards, vectorised; records after the
    # first bad one are dropped there (the walk past it only costs time on a broken file).
    while pos <= last:
        append(pos)
        pos += 16 + u32(data, pos + 8)[0]
    buf = np.frombuffer(data, dtype=np.uint8)
    rec = np.asarray(positions, dtype=np.int64)
    fields = np.ascontiguousarray(buf[rec[:, None] + np.arange(16)]).view("<u4" if le else ">u4")
    fields = fields.reshape(-1, 4).astype(np.int64)
    incl_all = fields[:, 2]
    broken = np.flatnonzero((incl_all > limit) | (rec + 16 + incl_all > n))
    if len(broken):  # stop at the first bad record and say why
        k = int(broken[0])
        rec, fields, pos = rec[:k], fields[:k], int(positions[k])
    elif len(rec):
        pos = int(rec[-1] + 16 + incl_all[-1])
    if pos < n:
        where = f"packet {len(rec) + 1} (byte offset {pos})"
        if pos + 16 > n:
            what = f"file truncated inside a record header ({n - pos} of 16 bytes)"
        else:
            incl = u32(data, pos + 8)[0]
            if incl > limit:
                what = f"record length {incl} is implausible (limit {limit}): corrupt or not a capture"
            else:
                what = f"file truncated: record says {incl} bytes, only {n - pos - 16} remain"
        _fail(path, where, what, skip_bad, stats)
    ts = fields[:, 0].astype(np.float64) + fields[:, 1] / (1e9 if nano else 1e6)
    return Capture(
        path=path,
        buf=buf,
        off=rec + 16,
        caplen=fields[:, 2],
        wirelen=fields[:, 3],
        ts=ts,
        linktype=np.full(len(rec), linktype, dtype=np.int32),
        rec_off=rec,
    )


def _tsresol(idb: dpkt.pcapng.InterfaceDescriptionBlock) -> tuple[float, float]:
    """(units per second, offset seconds) from an interface block's options."""
    per_sec, offset = 1e6, 0.0
    for opt in getattr(idb, "opts", []):
        if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
            v = opt.data[0]
            per_sec = float(2 ** (v & 0x7F)) if v & 0x80 else float(10 ** (v & 0x7F))
        elif opt.code == 14 and len(opt.data) >= 8:  # if_tsoffset, seconds
            offset = float(int.from_bytes(opt.data[:8], "little" if idb.__byte_order__ == "<" else "big"))
    return per_sec, offset


def _walk_pcapng(path: Path, data: bytes, skip_bad: bool, stats: ReadStats) -> Capture:
    n = len(data)
    pos = 0
    e = "<"
    ifaces: list[tuple[int, float, float, int]] = []  # linktype, per_sec, offset, snaplen
    off: list[int] = []
    cap: list[int] = []
    wire: list[int] = []
    ts: list[float] = []
    lts: list[int] = []
    recs: list[int] = []
    last_ts = 0.0
    while pos < n:
        where = f"packet {len(off) + 1} (byte offset {pos})"
        if pos + 12 > n:
            _fail(path, where, "file truncated inside a pcapng block header", skip_bad, stats)
            break
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":  # section header: byte order may change
            bom = data[pos + 8 : pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                e = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                e = ">"
            else:
                _fail(path, where, "pcapng section header with an unknown byte-order magic", skip_bad, stats)
                break
            ifaces = []
        btype, blen = struct.unpack_from(e + "II", data, pos)
        if blen < 12 or blen % 4 or blen > MAX_RECORD * 4 + 64:
            _fail(path, where, f"pcapng block length {blen} is invalid: corrupt file", skip_bad, stats)
            break
        if pos + blen > n:
            _fail(
                path,
                where,
                f"file truncated: block says {blen} bytes, only {n - pos} remain",
                skip_bad,
                stats,
            )
            break
        if struct.unpack_from(e + "I", data, pos + blen - 4)[0] != blen:
            _fail(
                path, where, "pcapng block trailer does not repeat its length: corrupt file", skip_bad, stats
            )
            break
        if btype == 1:  # interface description
            try:
                cls = (
                    dpkt.pcapng.InterfaceDescriptionBlockLE
                    if e == "<"
                    else dpkt.pcapng.InterfaceDescriptionBlock
                )
                idb = cls(data[pos : pos + blen])
                per_sec, tsoff = _tsresol(idb)
                ifaces.append((idb.linktype, per_sec, tsoff, idb.snaplen))
            except (dpkt.dpkt.Error, struct.error, ValueError, IndexError) as exc:
                _fail(path, where, f"malformed pcapng interface block: {exc}", skip_bad, stats)
                if not ifaces or len(ifaces) == 0:
                    ifaces.append((-1, 1e6, 0.0, 0))
        elif btype in (6, 2):  # enhanced packet / obsolete packet block
            if blen < 32:
                _fail(path, where, "pcapng packet block too short", skip_bad, stats)
            else:
                if btype == 6:
                    iface, hi, lo, incl, orig = struct.unpack_from(e + "IIIII", data, pos + 8)
                else:
                    iface, _drops, hi, lo, incl, orig = struct.unpack_from(e + "HHIIII", data, pos + 8)
                if iface >= len(ifaces):
                    _fail(
                        path,
                        where,
                        f"packet names interface {iface}, which was never described",
                        skip_bad,
                        stats,
                    )
                elif 28 + incl > blen - 4:
                    _fail(path, where, f"captured length {incl} exceeds its block", skip_bad, stats)
                else:
                    lt, per_sec, tsoff, _snap = ifaces[iface]
                    last_ts = ((hi << 32) | lo) / per_sec + tsoff
                    off.append(pos + 28)
                    cap.append(incl)
                    wire.append(orig)
                    ts.append(last_ts)
                    lts.append(lt)
                    recs.append(pos)
        elif btype == 3:  # simple packet block: no timestamp, interface 0
            if not ifaces:
                _fail(path, where, "simple packet block before any interface block", skip_bad, stats)
            else:
                orig = struct.unpack_from(e + "I", data, pos + 8)[0]
                snap = ifaces[0][3] or MAX_RECORD
                off.append(pos + 12)
                cap.append(min(orig, snap, blen - 16))
                wire.append(orig)
                ts.append(last_ts)
                lts.append(ifaces[0][0])
                recs.append(pos)
        pos += blen
    return Capture(
        path=path,
        buf=np.frombuffer(data, dtype=np.uint8),
        off=np.asarray(off, dtype=np.int64),
        caplen=np.asarray(cap, dtype=np.int64),
        wirelen=np.asarray(wire, dtype=np.int64),
        ts=np.asarray(ts, dtype=np.float64),
        linktype=np.asarray(lts, dtype=np.int32),
        rec_off=np.asarray(recs, dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------------
# header decoding (vectorised)
# ---------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    """Per-packet header fields; ``flowable`` marks packets that belong to a tcp/udp/icmp flow."""

    cap: Capture
    bad: np.ndarray  # int8 reason code, 0 = fine
    net: np.ndarray  # uint8: 4 IPv4, 6 IPv6, 8 ARP, 0 other
    l3: np.ndarray  # int64 offset of the network header inside the packet
    src_mac: np.ndarray  # uint64 (0 when the link layer has none)
    dst_mac: np.ndarray
    has_mac: np.ndarray  # bool
    src_hi: np.ndarray  # uint64 pairs: IPv6, or IPv4 mapped as ::ffff:a.b.c.d
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray  # int32 IP protocol (after IPv6 extension headers)
    ip_len: np.ndarray  # int64 IP datagram length (reassembled for fragments)
    l4: np.ndarray  # int64 offset of the transport header inside the packet
    l4_len: np.ndarray  # int64 transport bytes (header + payload) in the datagram
    sport: np.ndarray  # int32 (ICMP: type)
    dport: np.ndarray  # int32 (ICMP: counterpart type or code)
    flags: np.ndarray  # int32 TCP flags
    seq: np.ndarray  # int64 TCP sequence number
    plen: np.ndarray  # int64 payload bytes (TCP/UDP payload, ICMP after its 8-byte header)
    pay: np.ndarray  # int64 offset of the payload inside the packet
    flowable: np.ndarray  # bool


def _gather(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    # mode='clip' keeps wild offsets of short packets in bounds; such values are masked later.
    return np.take(buf, pos, mode="clip").astype(np.int64)


def _u16(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (_gather(buf, pos) << 8) | _gather(buf, pos + 1)


def _u32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (_u16(buf, pos) << 16) | _u16(buf, pos + 2)


def _bytes_be(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Big-endian unsigned integer of ``width`` <= 8 bytes at each position, as uint64."""
    idx = np.clip(pos[:, None] + np.arange(width), 0, len(buf) - 1)
    block = np.zeros((len(pos), 8), dtype=np.uint8)
    block[:, 8 - width :] = buf[idx]
    return block.view(">u8").reshape(-1).astype(np.uint64)


_V4_MAPPED = np.uint64(0xFFFF00000000)


def decode(cap: Capture) -> Decoded:
    """Decode link, network and transport headers of every packet of ``cap``."""
    n = len(cap)
    buf = cap.buf
    off, caplen, lt = cap.off, cap.caplen, cap.linktype
    bad = np.zeros(n, dtype=np.int8)
    net = np.zeros(n, dtype=np.uint8)
    l3 = np.zeros(n, dtype=np.int64)
    src_mac = np.zeros(n, dtype=np.uint64)
    dst_mac = np.zeros(n, dtype=np.uint64)
    has_mac = np.zeros(n, dtype=bool)
    ethertype = np.full(n, -1, dtype=np.int64)

    # --- link layer -------------------------------------------------------------------------
    m = lt == LT_ETHERNET
    if m.any():
        short = m & (caplen < 14)
        bad[short] = 1
        m &= ~short
        et = _u16(buf, off + 12)
        hl = np.full(n, 14, dtype=np.int64)
        for _ in range(2):  # 802.1Q / 802.1ad, up to two tags
            tag = m & ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100))
            if not tag.any():
                break
            short = tag & (caplen < hl + 4)
            bad[short] = 1
            m &= ~short
            tag &= ~short
            et = np.where(tag, _u16(buf, off + hl + 2), et)
            hl = np.where(tag, hl + 4, hl)
        # PPPoE session (PPP carrying IPv4 0x0021 / IPv6 0x0057) and MPLS label stacks
        pppoe = m & (et == 0x8864) & (caplen >= hl + 8)
        if pppoe.any():
            ppp = _u16(buf, off + hl + 6)
            et = np.where(pppoe, np.select([ppp == 0x21, ppp == 0x57], [0x0800, 0x86DD], -1), et)
            hl = np.where(pppoe, hl + 8, hl)
        mpls = m & (et == 0x8847)
        for _ in range(4):
            if not mpls.any():
                break
            mpls &= caplen >= hl + 5
            bottom = mpls & ((_gather(buf, off + hl + 2) & 1) == 1)
            hl = np.where(mpls, hl + 4, hl)
            ver = _gather(buf, off + hl) >> 4
            et = np.where(bottom, np.select([ver == 4, ver == 6], [0x0800, 0x86DD], -1), et)
            mpls &= ~bottom
        ethertype[m] = et[m]
        l3[m] = hl[m]
        dst_mac[m] = _bytes_be(buf, off[m], 6)
        src_mac[m] = _bytes_be(buf, off[m] + 6, 6)
        has_mac |= m
    for code, hlen, addr_len_at, addr_at, proto_at in ((LT_SLL, 16, 4, 6, 14), (LT_SLL2, 20, 11, 12, 0)):
        m = lt == code
        if m.any():
            short = m & (caplen < hlen)
            bad[short] = 1
            m &= ~short
            ethertype[m] = _u16(buf, off[m] + proto_at)
            l3[m] = hlen
            six = (
                m & (_gather(buf, off + addr_len_at) == 6)
                if code == LT_SLL2
                else m & (_u16(buf, off + 4) == 6)
            )
            src_mac[six] = _bytes_be(buf, off[six] + addr_at, 6)
            has_mac |= six
    for code in (LT_NULL, LT_LOOP):
        m = lt == code
        if m.any():
            short = m & (caplen < 4)
            bad[short] = 1
            m &= ~short
            be = _u32(buf, off)
            # LT_NULL stores the family in the capturing host's byte order: accept either
            fam = be if code == LT_LOOP else np.where(be > 0xFFFF, _bswap32(be), be)
            ethertype[m & (fam == 2)] = 0x0800
            ethertype[m & np.isin(fam, (10, 24, 28, 30))] = 0x86DD
            l3[m] = 4
    m = (lt == LT_RAW[0]) | (lt == LT_RAW[1]) | (lt == LT_RAW[2]) | (lt == LT_IPV4) | (lt == LT_IPV6)
    if m.any():
        short = m & (caplen < 1)
        bad[short] = 1
        m &= ~short
        ver = _gather(buf, off) >> 4
        ethertype[m & (ver == 4) & (lt != LT_IPV6)] = 0x0800
        ethertype[m & (ver == 6) & (lt != LT_IPV4)] = 0x86DD
        # raw IPv4/IPv6 link types promise the version: a mismatch is a malformed header
        ethertype[m & (lt == LT_IPV4) & (ver != 4)] = 0x0800
        ethertype[m & (lt == LT_IPV6) & (ver != 6)] = 0x86DD
        l3[m] = 0
    ok = bad == 0
    net[ok & (ethertype == 0x0800)] = 4
    net[ok & (ethertype == 0x86DD)] = 6
    net[ok & (ethertype == 0x0806)] = 8

    # --- network layer ----------------------------------------------------------------------
    src_hi = np.zeros(n, dtype=np.uint64)
    src_lo = np.zeros(n, dtype=np.uint64)
    dst_hi = np.zeros(n, dtype=np.uint64)
    dst_lo = np.zeros(n, dtype=np.uint64)
    proto = np.full(n, -1, dtype=np.int32)
    ip_len = np.zeros(n, dtype=np.int64)
    l4 = np.zeros(n, dtype=np.int64)
    l4_len = np.zeros(n, dtype=np.int64)
    frag = np.zeros(n, dtype=bool)  # part of a fragmented datagram
    first_frag = np.zeros(n, dtype=bool)
    frag_id = np.zeros(n, dtype=np.int64)
    frag_off = np.zeros(n, dtype=np.int64)
    frag_more = np.zeros(n, dtype=bool)

    rows4 = np.flatnonzero(net == 4)
    rows6 = np.flatnonzero(net == 6)
    for _depth in range(3):  # outer IP, then IP-in-IP / 6in4 tunnels (Zeek decapsulates these)
        if len(rows4):
            i = rows4
            p = off[i] + l3[i]
            a = caplen[i] - l3[i]
            b0 = _gather(buf, p)
            ihl = (b0 & 15) * 4
            e_short = a < 20
            e_hdr = ~e_short & (((b0 >> 4) != 4) | (ihl < 20) | (a < ihl))
            tot = _u16(buf, p + 2)
            tot = np.where(tot == 0, a, tot)  # TSO captures on the sending host report 0
            e_tot = ~e_short & ~e_hdr & (tot < ihl)
            bad[i[e_short]] = 2
            bad[i[e_hdr]] = 3
            bad[i[e_tot]] = 10
            good = ~(e_short | e_hdr | e_tot)
            i, p, ihl, tot = i[good], p[good], ihl[good], tot[good]
            fo = _u16(buf, p + 6)
            proto[i] = _gather(buf, p + 9)
            src_hi[i] = 0
            dst_hi[i] = 0
            src_lo[i] = _bytes_be(buf, p + 12, 4) | _V4_MAPPED
            dst_lo[i] = _bytes_be(buf, p + 16, 4) | _V4_MAPPED
            ip_len[i] = tot
            l4[i] = l3[i] + ihl
            l4_len[i] = tot - ihl
            frag[i] = (fo & 0x3FFF) != 0
            frag_off[i] = (fo & 0x1FFF) * 8
            frag_more[i] = (fo & 0x2000) != 0
            frag_id[i] = _u16(buf, p + 4)
            rows4 = i
        if len(rows6):
            i = rows6
            p = off[i] + l3[i]
            a = caplen[i] - l3[i]
            e_short = a < 40
            e_ver = ~e_short & ((_gather(buf, p) >> 4) != 6)
            bad[i[e_short]] = 4
            bad[i[e_ver]] = 5
            good = ~(e_short | e_ver)
            i, p, a = i[good], p[good], a[good]
            pl = _u16(buf, p + 4)
            pl = np.where(pl == 0, a - 40, pl)  # jumbograms / TSO
            proto[i] = _gather(buf, p + 6)
            src_hi[i] = _bytes_be(buf, p + 8, 8)
            src_lo[i] = _bytes_be(buf, p + 16, 8)
            dst_hi[i] = _bytes_be(buf, p + 24, 8)
            dst_lo[i] = _bytes_be(buf, p + 32, 8)
            ip_len[i] = 40 + pl
            l4[i] = l3[i] + 40
            l4_len[i] = pl
            frag[i] = False
            ext = _IPV6_EXT[proto[i]]
            for j in i[ext]:  # rare: walk IPv6 extension headers in Python
                _ipv6_ext(cap, int(j), l3, proto, l4, l4_len, bad, frag, frag_off, frag_more, frag_id)
            rows6 = i
        outer = np.concatenate([rows4, rows6])
        outer = outer[(bad[outer] == 0) & ~frag[outer]]
        inner = outer[(proto[outer] == 4) | (proto[outer] == 41)]
        l3[inner] = l4[inner]
        # GTP-U (UDP 2152) G-PDUs carry the subscriber's IP packet; like nDPI we keep only the
        # inner flow (Zeek would also log the outer tunnel connection)
        gtp = outer[(proto[outer] == 17) & (caplen[outer] - l4[outer] >= 20)]
        if len(gtp):
            g = off[gtp] + l4[gtp]
            gflags = _gather(buf, g + 8)
            is_gtp = (
                ((_u16(buf, g) == 2152) | (_u16(buf, g + 2) == 2152))
                & ((gflags >> 5) == 1)
                & ((gflags & 0x10) != 0)
                & (_gather(buf, g + 9) == 0xFF)
                & ((gflags & 0x04) == 0)  # no extension-header chain
            )
            gtp, g, gflags = gtp[is_gtp], g[is_gtp], gflags[is_gtp]
            hl = 16 + np.where((gflags & 0x03) != 0, 4, 0)
            ver = _gather(buf, g + hl) >> 4
            keep = ((ver == 4) | (ver == 6)) & (caplen[gtp] - l4[gtp] > hl)
            gtp, hl, ver = gtp[keep], hl[keep], ver[keep]
            l3[gtp] = l4[gtp] + hl
            proto[gtp] = np.where(ver == 4, 4, 41)
            inner = np.concatenate([inner, gtp])
        if not len(inner):
            break
        rows4 = inner[proto[inner] == 4]
        rows6 = inner[proto[inner] == 41]
        net[rows4] = 4
        net[rows6] = 6

    # --- IP fragments: reassemble to one datagram as Zeek does -------------------------------
    absorbed = np.zeros(n, dtype=bool)
    fr = np.flatnonzero(frag & (bad == 0))
    if len(fr):
        first_frag[fr[frag_off[fr] == 0]] = True
        _reassemble(fr, src_hi, src_lo, dst_hi, dst_lo, frag_id, proto, frag_off, l4_len, ip_len, absorbed)

    # --- transport layer ----------------------------------------------------------------------
    sport = np.zeros(n, dtype=np.int32)
    dport = np.zeros(n, dtype=np.int32)
    flags = np.zeros(n, dtype=np.int32)
    seq = np.zeros(n, dtype=np.int64)
    plen = np.zeros(n, dtype=np.int64)
    pay = np.zeros(n, dtype=np.int64)
    ipok = (bad == 0) & ((net == 4) | (net == 6)) & ~absorbed & (~frag | first_frag)
    p4 = off + l4
    avail4 = caplen - l4

    t = np.flatnonzero(ipok & (proto == 6))
    if len(t):
        short = avail4[t] < 14
        bad[t[short]] = 6
        t = t[~short]
        doff = (_gather(buf, p4[t] + 12) >> 4) * 4
        e_doff = doff < 20
        bad[t[e_doff]] = 9
        t, doff = t[~e_doff], doff[~e_doff]
        sport[t] = _u16(buf, p4[t])
        dport[t] = _u16(buf, p4[t] + 2)
        seq[t] = _u32(buf, p4[t] + 4)
        flags[t] = _gather(buf, p4[t] + 13)
        plen[t] = np.maximum(l4_len[t] - doff, 0)
        pay[t] = l4[t] + doff
    u = np.flatnonzero(ipok & (proto == 17))
    if len(u):
        short = avail4[u] < 8
        bad[u[short]] = 7
        u = u[~short]
        sport[u] = _u16(buf, p4[u])
        dport[u] = _u16(buf, p4[u] + 2)
        ulen = _u16(buf, p4[u] + 4)
        # the UDP length covers the whole datagram even when only its first fragment is here
        ulen = np.where((ulen >= 8) & (ulen <= l4_len[u]), ulen, l4_len[u])
        plen[u] = np.maximum(ulen - 8, 0)
        pay[u] = l4[u] + 8
    c = np.flatnonzero(ipok & ((proto == 1) | (proto == 58)))
    if len(c):
        short = avail4[c] < 2
        bad[c[short]] = 8
        c = c[~short]
        typ = _gather(buf, p4[c])
        code = _gather(buf, p4[c] + 1)
        counter = np.where(proto[c] == 1, ICMP4_COUNTER[typ], ICMP6_COUNTER[typ])
        sport[c] = typ
        dport[c] = np.where(counter >= 0, counter, code)
        plen[c] = np.maximum(l4_len[c] - 8, 0)
        pay[c] = l4[c] + 8
    flowable = ipok & (bad == 0) & _FLOW_PROTO[proto & 0xFF] & (proto >= 0)
    return Decoded(
        cap, bad, net, l3, src_mac, dst_mac, has_mac, src_hi, src_lo, dst_hi, dst_lo, proto, ip_len,
        l4, l4_len, sport, dport, flags, seq, plen, pay, flowable,
    )  # fmt: skip


def _bswap32(x: np.ndarray) -> np.ndarray:
    return ((x & 0xFF) << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | ((x >> 24) & 0xFF)


def _ipv6_ext(cap, j, l3, proto, l4, l4_len, bad, frag, frag_off, frag_more, frag_id) -> None:
    """Follow IPv6 extension headers of packet ``j`` (Python; they are rare)."""
    start = int(cap.off[j])
    end = start + int(cap.caplen[j])
    data = cap.buf
    nh = int(proto[j])
    pos = start + int(l3[j]) + 40
    remaining = int(l4_len[j])
    for _ in range(8):
        if nh not in (0, 43, 44, 60, 51, 135, 139, 140):
            break
        if pos + 8 > end:
            bad[j] = 11
            return
        nxt = int(data[pos])
        if nh == 44:  # fragment header: fixed 8 bytes
            hlen = 8
            fo = (int(data[pos + 2]) << 8) | int(data[pos + 3])
            frag[j] = True
            frag_off[j] = fo & 0xFFF8
            frag_more[j] = bool(fo & 1)
            frag_id[j] = int.from_bytes(bytes(data[pos + 4 : pos + 8]), "big")
        elif nh == 51:  # AH: length in 4-byte units minus 2
            hlen = (int(data[pos + 1]) + 2) * 4
        else:
            hlen = (int(data[pos + 1]) + 1) * 8
        nh = nxt
        pos += hlen
        remaining -= hlen
    if remaining < 0:
        bad[j] = 11
        return
    proto[j] = nh
    l4[j] = pos - start
    l4_len[j] = remaining


def _reassemble(
    fr, src_hi, src_lo, dst_hi, dst_lo, frag_id, proto, frag_off, l4_len, ip_len, absorbed
) -> None:
    """Fold each fragmented datagram into its first fragment (one packet, full length)."""
    groups: dict[tuple, list[int]] = {}
    keys = zip(
        src_hi[fr].tolist(), src_lo[fr].tolist(), dst_hi[fr].tolist(), dst_lo[fr].tolist(),
        frag_id[fr].tolist(), proto[fr].tolist(), strict=True,
    )  # fmt: skip
    for j, key in zip(fr.tolist(), keys, strict=True):
        groups.setdefault(key, []).append(j)
    for members in groups.values():
        firsts = [j for j in members if frag_off[j] == 0]
        if not firsts:
            absorbed[members] = True  # no first fragment: no transport header, no flow (as Zeek)
            continue
        head = firsts[0]
        total = max(int(frag_off[j] + l4_len[j]) for j in members)
        extra = total - int(l4_len[head])
        l4_len[head] = total
        ip_len[head] += extra
        absorbed[[j for j in members if j != head]] = True


# ---------------------------------------------------------------------------------------------
# flow assembly (vectorised)
# ---------------------------------------------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash of uint64 values."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _hash(*cols: np.ndarray) -> np.ndarray:
    h = np.zeros(len(cols[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in cols:
            h = _mix(h ^ c.astype(np.uint64))
    return h


def _first_of_runs(keys: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    out = np.empty(len(keys), dtype=bool)
    out[0] = True
    np.not_equal(keys[1:], keys[:-1], out=out[1:])
    return out


@dataclass
class Flows:
    """Assembled connections: columns per flow plus the flow index of every packet."""

    columns: dict[str, np.ndarray | pa.Array]
    pkt_flow: np.ndarray  # flow index per packet (-1: not part of a flow)
    uid: pa.Array  # uid strings per flow


def assemble(d: Decoded) -> Flows:
    """Group flowable packets into Zeek-style connections."""
    n = len(d.cap)
    idx = np.flatnonzero(d.flowable)
    pkt_flow = np.full(n, -1, dtype=np.int64)
    if len(idx) == 0:
        return Flows({}, pkt_flow, pa.array([], type=pa.string()))
    proto = d.proto[idx].astype(np.int64)
    shi, slo, sp = d.src_hi[idx], d.src_lo[idx], d.sport[idx].astype(np.uint64)
    dhi, dlo, dp = d.dst_hi[idx], d.dst_lo[idx], d.dport[idx].astype(np.uint64)
    # canonical endpoint order so both directions share a key
    swap = (shi > dhi) | ((shi == dhi) & ((slo > dlo) | ((slo == dlo) & (sp > dp))))
    ahi, alo, ap = np.where(swap, dhi, shi), np.where(swap, dlo, slo), np.where(swap, dp, sp)
    bhi, blo, bp = np.where(swap, shi, dhi), np.where(swap, slo, dlo), np.where(swap, sp, dp)
    is_a = ~swap
    key = _hash(proto.astype(np.uint64), ahi, alo, ap, bhi, blo, bp)
    order = np.argsort(key, kind="stable")  # stable: file order inside a connection
    cols = (proto, ahi, alo, ap, bhi, blo, bp)
    newgrp = _first_of_runs(key[order])
    # A 64-bit hash collision would merge two 5-tuples: compare the tuples of rows that share
    # their predecessor's hash (only those; a full compare would gather every column twice).
    rep = np.flatnonzero(~newgrp)
    cur, prev = order[rep], order[rep - 1]
    if any((c[cur] != c[prev]).any() for c in cols):  # fall back to a full sort
        order = np.lexsort((np.arange(len(idx)), bp, blo, bhi, ap, alo, ahi, proto))
        newgrp = np.zeros(len(order), dtype=bool)
        newgrp[0] = True
        for c in cols:
            cs = c[order]
            newgrp[1:] |= cs[1:] != cs[:-1]
    del cur, prev, rep
    pk = idx[order]  # packet index per sorted row
    ts = d.cap.ts[pk]
    pr = proto[order]
    isa = is_a[order]
    fl = d.flags[pk]
    tcp = pr == 6
    timeout = np.where(tcp, TIMEOUTS[6], TIMEOUTS[17])
    start = newgrp.copy()
    start[1:] |= (ts[1:] - ts[:-1]) > timeout[1:]
    start[0] = True
    _split_reused(start, tcp, fl, isa)

    fid = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    nf = len(starts)

    # Flows are emitted by start time (file order for ties... of the key order): number them in
    # that order now, so per-flow columns are built in their final order instead of permuted later.
    t_first = ts[starts]
    perm = np.argsort(t_first, kind="stable")
    rank = np.empty(nf, dtype=np.int64)
    rank[perm] = np.arange(nf)
    fidr = rank[fid]  # final flow number of every sorted row
    pkt_flow[pk] = fidr
    sfirst = starts[perm]  # sorted row of each flow's first packet, final order
    t_first = t_first[perm]

    # --- roles --------------------------------------------------------------------------------
    f_pk = pk[sfirst]
    f_pr = pr[sfirst]
    f_isa = isa[sfirst]
    f_fl = fl[sfirst]
    f_sp = d.sport[f_pk]
    f_dp = d.dport[f_pk]
    syn, ack = (f_fl & _SYN) != 0, (f_fl & _ACK) != 0
    port_flip = SERVER_PORT[f_sp] & ~SERVER_PORT[f_dp]
    flip_tcp = (syn & ack) | (~syn & port_flip)
    icmp_reply = np.where(f_pr == 1, ICMP4_IS_REPLY[f_sp & 255], ICMP6_IS_REPLY[f_sp & 255])
    flip = np.where(f_pr == 6, flip_tcp, np.where(f_pr == 17, port_flip, icmp_reply))
    orig_is_a = f_isa ^ flip
    is_orig = isa == orig_is_a[fidr]

    # --- counts (reduceat runs over the sorted rows, in key order: permute its results) ------
    def per_flow(ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(values, starts)[perm]

    pkts = np.diff(starts, append=len(pk))[perm]
    orig_pkts = per_flow(np.add, is_orig.astype(np.int64))
    ipb = d.ip_len[pk]
    all_ipb = per_flow(np.add, ipb)
    orig_ipb = per_flow(np.add, np.where(is_orig, ipb, 0))
    pl = d.plen[pk]
    orig_bytes = per_flow(np.add, np.where(is_orig, pl, 0))
    resp_bytes = per_flow(np.add, np.where(is_orig, 0, pl))
    _tcp_seq_bytes(d, pk, fidr, is_orig, tcp & (pl > 0), orig_bytes, resp_bytes)
    t_last = per_flow(np.maximum, ts)

    # --- history and state --------------------------------------------------------------------
    letters = _letters(fl, pl, tcp, pr == 17)
    first = np.full((nf, 13), _BIG, dtype=np.int64)
    for li in range(6):
        for di, dmask in enumerate((is_orig, ~is_orig)):
            rows = np.flatnonzero(letters[li] & dmask)
            if len(rows):
                fr = fidr[rows]
                keep = _first_of_runs(fr)  # rows of one flow are contiguous
                first[fr[keep], 1 + di * 6 + li] = rows[keep]
    flipped_hist = flip & (f_pr != 1) & (f_pr != 58)
    first[flipped_hist, 0] = -1
    seen = first < _BIG
    conn_state = _conn_state(seen, f_pr, orig_pkts, pkts - orig_pkts, orig_bytes, resp_bytes)

    # --- addresses ----------------------------------------------------------------------------
    fo = order[sfirst]  # index into the per-packet key columns of each flow's first packet
    o_hi = np.where(orig_is_a, ahi[fo], bhi[fo])
    o_lo = np.where(orig_is_a, alo[fo], blo[fo])
    o_p = np.where(orig_is_a, ap[fo], bp[fo]).astype(np.int32)
    r_hi = np.where(orig_is_a, bhi[fo], ahi[fo])
    r_lo = np.where(orig_is_a, blo[fo], alo[fo])
    r_p = np.where(orig_is_a, bp[fo], ap[fo]).astype(np.int32)
    # MACs of the first packet, swapped when the roles were flipped
    smac, dmac, hm = d.src_mac[f_pk], d.dst_mac[f_pk], d.has_mac[f_pk]
    o_mac = np.where(flip, dmac, smac)
    r_mac = np.where(flip, smac, dmac)
    o_mac_ok = hm & (o_mac != 0)
    r_mac_ok = hm & (r_mac != 0)

    history = _history_strings(first)
    service = _service(d, f_pr, o_p, r_p, first, pk)
    uid = _uids(f_pr, o_hi, o_lo, o_p, r_hi, r_lo, r_p, t_first)
    proto_code = np.where(f_pr == 6, 0, np.where(f_pr == 17, 1, 2))
    columns = {
        "ts": t_first,
        "uid": uid,
        "id.orig_h": _ip_strings(o_hi, o_lo),
        "id.orig_p": o_p,
        "id.resp_h": _ip_strings(r_hi, r_lo),
        "id.resp_p": r_p,
        "proto": _PROTO_NAMES.take(pa.array(proto_code)),
        "service": service,
        "duration": t_last - t_first,
        "orig_bytes": orig_bytes,
        "resp_bytes": resp_bytes,
        "conn_state": _CONN_STATES.take(pa.array(conn_state)),
        "local_orig": _is_local(o_hi, o_lo),
        "local_resp": _is_local(r_hi, r_lo),
        "missed_bytes": np.zeros(nf, dtype=np.int64),
        "history": history,
        "orig_pkts": orig_pkts,
        "orig_ip_bytes": orig_ipb,
        "resp_pkts": pkts - orig_pkts,
        "resp_ip_bytes": all_ipb - orig_ipb,
        "orig_l2_addr": _mac_strings(o_mac, o_mac_ok),
        "resp_l2_addr": _mac_strings(r_mac, r_mac_ok),
    }
    return Flows(columns, pkt_flow, uid)


_PROTO_NAMES = pa.array(["tcp", "udp", "icmp"], type=pa.string())
_CONN_STATES = pa.array(
    ["REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0", "S1", "OTH"],
    type=pa.string(),
)
_CS = {name: i for i, name in enumerate(_CONN_STATES.to_pylist())}


def _split_reused(start: np.ndarray, tcp: np.ndarray, fl: np.ndarray, isa: np.ndarray) -> None:
    """Start a new flow at a SYN that follows a closed (FIN both ways, or RST) TCP connection."""
    syn_only = tcp & ((fl & (_SYN | _ACK)) == _SYN)
    if not syn_only.any():
        return
    rst = tcp & ((fl & _RST) != 0)
    fin = tcp & ((fl & _FIN) != 0)
    seg = np.cumsum(start) - 1
    seg_first = np.flatnonzero(start)

    def before(x: np.ndarray) -> np.ndarray:  # events earlier in the same segment
        c = np.cumsum(x) - x
        return c - c[seg_first][seg]

    closed = (before(rst) > 0) | ((before(fin & isa) > 0) & (before(fin & ~isa) > 0))
    cand = syn_only & closed & ~start
    if not cand.any():
        return
    # Walk the affected segments in Python: each split resets the closed state, which a
    # single vectorised pass cannot express; these segments are few.
    for s in np.unique(seg[cand]).tolist():
        lo = seg_first[s]
        hi = seg_first[s + 1] if s + 1 < len(seg_first) else len(start)
        r = fa = fb = False
        for i in range(lo, hi):
            if i > lo and syn_only[i] and (r or (fa and fb)):
                start[i] = True
                r = fa = fb = False
            if rst[i]:
                r = True
            if fin[i]:
                if isa[i]:
                    fa = True
                else:
                    fb = True


def _tcp_seq_bytes(d: Decoded, pk, fid, is_orig, data_rows, orig_bytes, resp_bytes) -> None:
    """TCP payload bytes per direction from the sequence-number range, as Zeek counts them."""
    rows = np.flatnonzero(data_rows)
    if not len(rows):
        return
    grp = fid[rows] * 2 + (~is_orig[rows]).astype(np.int64)
    o = np.argsort(grp, kind="stable")
    rows, grp = rows[o], grp[o]
    seq = d.seq[pk[rows]]
    pl = d.plen[pk[rows]]
    gs = np.flatnonzero(_first_of_runs(grp))
    base = np.repeat(seq[gs], np.diff(gs, append=len(grp)))
    rel = (seq - base) & 0xFFFFFFFF
    rel = np.where(rel >= 1 << 31, rel - (1 << 32), rel)  # packets a little before the first
    lo = np.minimum.reduceat(rel, gs)
    hi = np.maximum.reduceat(rel + pl, gs)
    g = grp[gs]
    f, is_resp = g // 2, (g % 2).astype(bool)
    orig_bytes[f[~is_resp]] = (hi - lo)[~is_resp]
    resp_bytes[f[is_resp]] = (hi - lo)[is_resp]


def _letters(fl, pl, tcp, udp) -> list[np.ndarray]:
    """Per-packet masks of Zeek's history letters S H A D F R (in that column order)."""
    syn, ack, fin, rst = (fl & _SYN) != 0, (fl & _ACK) != 0, (fl & _FIN) != 0, (fl & _RST) != 0
    data = pl > 0
    return [
        tcp & syn & ~ack,
        tcp & syn & ack,
        tcp & ack & ~syn & ~fin & ~rst & ~data,
        (tcp | udp) & data,
        tcp & fin,
        tcp & rst,
    ]


_HIST_CODES = np.frombuffer(b"^SHADFRshadfr", dtype=np.uint8)


def _history_strings(first: np.ndarray) -> pa.Array:
    """History text per flow: the letters present, ordered by the packet row that first showed them.

    Rows of one flow are contiguous and ascending, so ordering the (flow, row, column) cells of the
    present letters gives every flow's string at once; cells come out of ``nonzero`` flow-major,
    so the stable sort below only reorders inside flows (nearly sorted input: cheap for timsort).
    """
    nf = len(first)
    big = _BIG
    f, col = np.nonzero(first != big)
    pos = first[f, col]  # packet row; '^' is -1 and sorts first
    span = int(pos.max()) + 2 if len(pos) else 1
    if nf * span * 16 < 1 << 62:  # one int64 key: flow, then row, then column
        order = np.argsort(f * (span * 16) + (pos + 1) * 16 + col, kind="stable")
    else:
        order = np.lexsort((col, pos, f))
    counts = np.bincount(f, minlength=nf)
    chars = _HIST_CODES[col[order]]
    offsets = np.zeros(nf + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    bufs = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))]
    empty = counts == 0
    if empty.any():
        bufs[0] = pa.py_buffer(np.packbits(~empty, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), nf, bufs, null_count=int(empty.sum()))


def _conn_state(seen, f_pr, orig_pkts, resp_pkts, orig_bytes, resp_bytes) -> np.ndarray:
    """Zeek's conn_state (index into ``_CONN_STATES``) from per-direction endpoint states.

    Reference: base/protocols/conn/main.zeek.
    """
    # endpoint state codes
    INACTIVE, PARTIAL, SYN_SENT, SYN_ACK_SENT, ESTABLISHED, CLOSED, RESET = range(7)  # noqa: N806
    # columns: 0 '^', then orig S H A D F R at 1..6, resp s h a d f r at 7..12
    s_o, h_o, f_o, r_o = seen[:, 1], seen[:, 2], seen[:, 5], seen[:, 6]
    s_r, h_r, f_r, r_r = seen[:, 7], seen[:, 8], seen[:, 11], seen[:, 12]
    syn_o, syn_r = s_o | h_o, s_r | h_r

    def state(syn_x, s_x, h_x, f_x, r_x, syn_y, pkts_x):
        return np.select(
            [r_x, f_x, syn_x & syn_y, s_x, h_x, pkts_x > 0],
            [RESET, CLOSED, ESTABLISHED, SYN_SENT, SYN_ACK_SENT, PARTIAL],
            INACTIVE,
        )

    os_ = state(syn_o, s_o, h_o, f_o, r_o, syn_r, orig_pkts)
    rs = state(syn_r, s_r, h_r, f_r, r_r, syn_o, resp_pkts)
    o_inactive = (os_ == INACTIVE) | (os_ == PARTIAL)
    r_inactive = (rs == INACTIVE) | (rs == PARTIAL)
    nodata = (orig_bytes == 0) & (resp_bytes == 0)
    tcp_state = np.select(
        [
            (rs == RESET) & ((os_ == SYN_SENT) | (os_ == SYN_ACK_SENT) | ((os_ == RESET) & nodata)),
            (rs == RESET) & o_inactive,
            rs == RESET,
            (os_ == RESET) & r_inactive,
            os_ == RESET,
            (rs == CLOSED) & (os_ == CLOSED),
            (os_ == CLOSED) & r_inactive,
            os_ == CLOSED,
            (rs == CLOSED) & o_inactive,
            rs == CLOSED,
            (os_ == SYN_SENT) & (rs == INACTIVE),
            (os_ == ESTABLISHED) & (rs == ESTABLISHED),
        ],
        [
            _CS[s]
            for s in ("REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0", "S1")
        ],
        _CS["OTH"],
    )
    udp_state = np.select(
        [(orig_pkts > 0) & (resp_pkts > 0), orig_pkts > 0, resp_pkts > 0],
        [_CS["SF"], _CS["S0"], _CS["SHR"]],
        _CS["OTH"],
    )
    return np.where(f_pr == 6, tcp_state, np.where(f_pr == 17, udp_state, _CS["OTH"]))


# --- service detection --------------------------------------------------------------------
_TCP_PORT_SERVICE = {
    21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 80: "http", 102: "s7comm", 110: "pop3", 143: "imap",
    443: "ssl", 445: "smb", 502: "modbus", 587: "smtp", 993: "ssl", 1883: "mqtt", 2323: "telnet",
    2404: "iec104", 3389: "rdp", 5672: "amqp", 5900: "rfb", 6667: "irc", 8080: "http", 8443: "ssl",
    8883: "ssl", 20000: "dnp3", 44818: "enip",
}  # fmt: skip
_UDP_PORT_SERVICE = {
    53: "dns", 67: "dhcp", 68: "dhcp", 69: "tftp", 123: "ntp", 137: "netbios-ns", 161: "snmp", 162: "snmp",
    500: "isakmp", 514: "syslog", 1900: "ssdp", 3478: "stun", 3702: "ws-discovery", 4500: "isakmp",
    5353: "dns", 5355: "dns", 5683: "coap", 5684: "dtls", 20000: "dnp3", 47808: "bacnet",
}  # fmt: skip
_SIGNATURES = {"dns", "ntp", "dhcp", "coap", "telnet", "dnp3", "modbus", "mqtt", "ssh", "dtls", "ssl", "http"}
_PREFIX = 16


def _payload_prefix(d: Decoded, rows_pk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First ``_PREFIX`` payload bytes (zero padded) and their captured count for packets."""
    start = d.cap.off[rows_pk] + d.pay[rows_pk]
    avail = np.clip(np.minimum(d.cap.caplen[rows_pk] - d.pay[rows_pk], d.plen[rows_pk]), 0, _PREFIX)
    idx = np.clip(start[:, None] + np.arange(_PREFIX), 0, len(d.cap.buf) - 1)
    pre = d.cap.buf[idx]
    pre = np.where(np.arange(_PREFIX) < avail[:, None], pre, 0).astype(np.uint8)
    return pre, avail


def _word(pre: np.ndarray, at: int = 0) -> np.ndarray:
    """Bytes ``at..at+7`` of each prefix as one big-endian uint64 (prefix tests become one compare)."""
    return np.ascontiguousarray(pre[:, at : at + 8]).view(">u8").reshape(-1).astype(np.uint64)


def _starts_with(word: np.ndarray, avail: np.ndarray, token: bytes) -> np.ndarray:
    """Payloads that begin with ``token`` (at most 8 bytes); ``word`` from :func:`_word`."""
    shift = 64 - 8 * len(token)
    value = np.uint64(int.from_bytes(token, "big") << shift)
    mask = np.uint64(((1 << (8 * len(token))) - 1) << shift)
    return (avail >= len(token)) & ((word & mask) == value)


def _service(d: Decoded, f_pr, o_p, r_p, first, pk) -> pa.Array:
    """Service per flow: payload signatures first, then the responder's port when data flowed."""
    nf = len(f_pr)
    big = _BIG
    names = [None, *sorted(set(_TCP_PORT_SERVICE.values()) | set(_UDP_PORT_SERVICE.values()) | _SIGNATURES)]
    code_of = {name: i for i, name in enumerate(names)}
    out = np.zeros(nf, dtype=np.int32)  # index into names; 0 = no service
    d_o, d_r = first[:, 4], first[:, 10]  # first data packet of each side (sorted row index)
    has_o, has_r = d_o < big, d_r < big
    pre_o = np.zeros((nf, _PREFIX), dtype=np.uint8)
    av_o = np.zeros(nf, dtype=np.int64)
    pre_r = np.zeros((nf, _PREFIX), dtype=np.uint8)
    av_r = np.zeros(nf, dtype=np.int64)
    if has_o.any():
        pre_o[has_o], av_o[has_o] = _payload_prefix(d, pk[d_o[has_o]])
    if has_r.any():
        pre_r[has_r], av_r[has_r] = _payload_prefix(d, pk[d_r[has_r]])
    tcp, udp = f_pr == 6, f_pr == 17
    either = has_o | has_r

    # port fallback first, signatures overwrite it (Zeek names what it confirmed in payload)
    for table, pmask in ((_TCP_PORT_SERVICE, tcp), (_UDP_PORT_SERVICE, udp)):
        lut = np.zeros(65536, dtype=np.int32)
        for port, name in table.items():
            lut[port] = code_of[name]
        by_resp = lut[r_p]
        pick = np.where(by_resp > 0, by_resp, lut[o_p])
        m = pmask & either
        out[m] = pick[m]

    w_o, w_r = _word(pre_o), _word(pre_r)
    http_req = np.zeros(nf, dtype=bool)
    for verb in (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ", b"PATCH "):
        http_req |= _starts_with(w_o, av_o, verb)
    http = tcp & (http_req | _starts_with(w_r, av_r, b"HTTP/1."))
    tls_o = (av_o >= 3) & (pre_o[:, 0] == 0x16) & (pre_o[:, 1] == 3) & (pre_o[:, 2] <= 4)
    tls_r = (av_r >= 3) & (pre_r[:, 0] == 0x16) & (pre_r[:, 1] == 3) & (pre_r[:, 2] <= 4)
    ssl = tcp & (tls_o | tls_r)
    dtls = udp & (av_o >= 3) & (pre_o[:, 0] == 0x16) & (pre_o[:, 1] == 0xFE)
    ssh = tcp & (_starts_with(w_o, av_o, b"SSH-") | _starts_with(w_r, av_r, b"SSH-"))
    w8 = _word(pre_o, 8)  # CONNECT's protocol name follows a 1- or 2-byte remaining length
    mqtt_name = _starts_with(w8, av_o - 8, b"MQTT") | _starts_with(w8 << np.uint64(8), av_o - 9, b"MQTT")
    mqtt = tcp & (av_o >= 12) & (pre_o[:, 0] == 0x10) & mqtt_name
    modbus = tcp & ((r_p == 502) | (o_p == 502)) & (av_o >= 8) & (pre_o[:, 2] == 0) & (pre_o[:, 3] == 0)
    dnp3 = (av_o >= 2) & (pre_o[:, 0] == 0x05) & (pre_o[:, 1] == 0x64) | (av_r >= 2) & (
        pre_r[:, 0] == 0x05
    ) & (pre_r[:, 1] == 0x64)
    telnet = tcp & (((av_o >= 2) & (pre_o[:, 0] == 0xFF)) | ((av_r >= 2) & (pre_r[:, 0] == 0xFF)))
    telnet &= (pre_o[:, 1] >= 0xFB) | (pre_r[:, 1] >= 0xFB)  # IAC WILL/WONT/DO/DONT
    coap = udp & ((r_p == 5683) | (o_p == 5683)) & (av_o >= 4) & ((pre_o[:, 0] >> 6) == 1)
    ntp_v = (pre_o[:, 0] >> 3) & 7
    ntp = udp & ((r_p == 123) | (o_p == 123)) & (av_o >= 48) & (ntp_v >= 1) & (ntp_v <= 4)
    dhcp = udp & ((r_p == 67) | (r_p == 68)) & (av_o >= 1) & ((pre_o[:, 0] == 1) | (pre_o[:, 0] == 2))
    dns_ports = DNS_PORT[r_p] | DNS_PORT[o_p]
    dns = dns_ports & (av_o >= 12) & ((pre_o[:, 2] & 0x78) == 0)  # opcode QUERY in the flags
    dns_tcp = tcp & dns_ports & (av_o >= 14)
    for mask, name in (
        (dns | dns_tcp, "dns"), (ntp, "ntp"), (dhcp, "dhcp"), (coap, "coap"), (telnet, "telnet"),
        (dnp3, "dnp3"), (modbus, "modbus"), (mqtt, "mqtt"), (ssh, "ssh"), (dtls, "dtls"), (ssl, "ssl"),
        (http, "http"),
    ):  # fmt: skip
        out[mask] = code_of[name]
    return pa.array(names, type=pa.string()).take(pa.array(out))


# --- identifiers and strings --------------------------------------------------------------
# Strings are built as Arrow buffers straight from numpy byte matrices (offsets + data), never
# one Python object per flow: formatting 800k addresses this way takes milliseconds.
_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_B62_5 = 62**5  # five base-62 digits fit an int32: most digits come from cheap int32 arithmetic


def _strings(chars: np.ndarray, lens: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Arrow strings from the first ``lens[i]`` bytes of each row of a uint8 matrix."""
    n = len(lens)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    data = chars[np.arange(chars.shape[1]) < lens[:, None]]  # row-major: rows concatenated
    bufs = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    nulls = 0
    if valid is not None and not valid.all():
        bufs[0] = pa.py_buffer(np.packbits(valid, bitorder="little"))
        nulls = int(n - valid.sum())
    return pa.Array.from_buffers(pa.string(), n, bufs, null_count=nulls)


def _base62(h: np.ndarray, ndigits: int, out: np.ndarray) -> None:
    """Least significant first base-62 digits of uint64 ``h`` into the columns of ``out``."""
    # numpy divides by a scalar fast (libdivide) but its modulo is slow: x % m as x - (x // m) * m
    k = 0
    while k < ndigits:
        q = h // np.uint64(_B62_5)
        chunk = (h - q * np.uint64(_B62_5)).astype(np.int32)
        h = q
        for _ in range(min(5, ndigits - k)):
            q32 = chunk // 62
            out[:, k] = _B62[chunk - q32 * 62]
            chunk = q32
            k += 1


def _uids(pr, o_hi, o_lo, o_p, r_hi, r_lo, r_p, ts) -> pa.Array:
    """Deterministic Zeek-style uids: 'C' + 17 base62 characters from a hash of 5-tuple and start."""
    ts_bits = np.ascontiguousarray(ts, dtype=np.float64).view(np.uint64)
    h1 = _hash(
        pr.astype(np.uint64), o_hi, o_lo, o_p.astype(np.uint64), r_hi, r_lo, r_p.astype(np.uint64), ts_bits
    )
    with np.errstate(over="ignore"):
        h2 = _mix(h1 ^ np.uint64(0x9E3779B97F4A7C15))
    n = len(ts)
    chars = np.empty((n, 18), dtype=np.uint8)
    chars[:, 0] = ord("C")
    _base62(h1, 11, chars[:, 1:12])
    _base62(h2, 6, chars[:, 12:18])
    offsets = np.arange(0, 18 * n + 1, 18, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


# dotted-quad text of each octet value followed by '.', and its length with the dot
_OCTET_TXT = np.zeros((256, 4), dtype=np.uint8)
_OCTET_LEN = np.zeros(256, dtype=np.int64)
for _o in range(256):
    _t = f"{_o}.".encode()
    _OCTET_TXT[_o, : len(_t)] = np.frombuffer(_t, dtype=np.uint8)
    _OCTET_LEN[_o] = len(_t)


def _v4_chars(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dotted-quad text of uint32 addresses as a (n, 16) byte matrix (left packed) and lengths."""
    n = len(a)
    chars = np.zeros(n * 16 + 4, dtype=np.uint8)
    row = np.arange(0, n * 16, 16, dtype=np.int64)
    pos = row.copy()
    for s in (24, 16, 8, 0):  # each octet's 4-byte piece lands where the previous one ended
        o = ((a >> s) & 0xFF).astype(np.intp)
        txt = _OCTET_TXT[o]
        for j in range(4):
            chars[pos + j] = txt[:, j]
        pos += _OCTET_LEN[o]
    return chars[: n * 16].reshape(n, 16), pos - row - 1  # the last octet's dot is not counted


def _ip_list(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """Text of addresses as Python strings, each distinct address formatted once (few rows)."""
    text: dict[tuple[int, int], str] = {}
    out = []
    for h, low in zip(hi.tolist(), lo.tolist(), strict=True):
        s = text.get((h, low))
        if s is None:
            if h == 0 and low >> 32 == 0xFFFF:
                s = f"{(low >> 24) & 255}.{(low >> 16) & 255}.{(low >> 8) & 255}.{low & 255}"
            else:
                s = str(ipaddress.IPv6Address((h << 64) | low))
            text[(h, low)] = s
        out.append(s)
    return out


def _ip_strings(hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """Text of addresses: IPv4 formatted column-wise, IPv6 through ipaddress once per distinct address."""
    n = len(hi)
    if n < 64:  # small captures: a dozen numpy calls would cost more than formatting in Python
        return pa.array(_ip_list(hi, lo), type=pa.string())
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    if v4.all():
        chars, lens = _v4_chars((lo & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        return _strings(chars, lens)
    chars = np.zeros((n, 40), dtype=np.uint8)
    lens = np.zeros(n, dtype=np.int64)
    if v4.any():
        c4, l4 = _v4_chars((lo[v4] & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        chars[v4, :16] = c4
        lens[v4] = l4
    six = ~v4
    pairs = np.stack([hi[six], lo[six]], axis=1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)  # few distinct IPv6 addresses
    text = [str(ipaddress.IPv6Address((int(h) << 64) | int(lw))).encode() for h, lw in uniq.tolist()]
    utxt = np.array(text, dtype="S40").view(np.uint8).reshape(len(text), 40)
    chars[six] = utxt[inv.reshape(-1)]
    lens[six] = np.array([len(t) for t in text], dtype=np.int64)[inv.reshape(-1)]
    return _strings(chars, lens)


def _mac_strings(mac: np.ndarray, ok: np.ndarray) -> pa.Array:
    uniq, inv = np.unique(mac, return_inverse=True)  # a capture has few distinct MACs
    text = [":".join(f"{(m >> s) & 0xFF:02x}" for s in range(40, -8, -8)) for m in uniq.tolist()]
    return pa.array(text, type=pa.string()).take(pa.array(inv.reshape(-1), mask=~ok))


def _is_local(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """RFC 1918, link-local (IPv4 and IPv6) and unique-local (fc00::/7) addresses."""
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    a = (lo & np.uint64(0xFFFFFFFF)).astype(np.int64)
    local4 = ((a >> 24) == 10) | ((a >> 20) == 0xAC1) | ((a >> 16) == 0xC0A8) | ((a >> 16) == 0xA9FE)
    top = (hi >> np.uint64(48)).astype(np.int64)
    local6 = ((top & 0xFFC0) == 0xFE80) | ((top & 0xFE00) == 0xFC00)
    return np.where(v4, local4, local6)


# ---------------------------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------------------------
_QTYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 37: "CERT",
    39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 250: "TSIG", 251: "IXFR", 252: "AXFR", 255: "*", 256: "URI",
    257: "CAA",
}  # fmt: skip
_RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
    7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}  # fmt: skip


def _unpack_name(msg: bytes, off: int) -> tuple[str, int]:
    """A (possibly compressed) domain name at ``off``: (text, offset after it).

    Same rules as ``dpkt.dns.unpack_name`` (pointers only backwards, names <= 255 bytes, UTF-8),
    without its per-byte helper calls: DNS decoding is the one per-packet Python loop left.
    """
    labels = []
    saved = 0
    start = off
    total = 0
    end = len(msg)
    while True:
        if off >= end:
            raise ValueError("name runs past the message")
        n = msg[off]
        if n == 0:
            off += 1
            break
        if n >= 0xC0:
            if off + 1 >= end:
                raise ValueError("truncated compression pointer")
            ptr = ((n & 0x3F) << 8) | msg[off + 1]
            if ptr >= start:
                raise ValueError("invalid label compression pointer")
            off += 2
            if not saved:
                saved = off
            start = off = ptr
        elif n < 0x40:
            off += 1
            labels.append(msg[off : off + n])
            total += n + 1
            if total > 255:
                raise ValueError("name longer than 255 bytes")
            off += n
        else:
            raise ValueError(f"invalid label length {n:02x}")
    return b".".join(labels).decode("utf-8"), saved or off


def _rdata_text(msg: bytes, rtype: int, at: int, rdlen: int) -> str:
    rdata = msg[at : at + rdlen]
    if rtype == 1 and rdlen == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == 28 and rdlen == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (2, 5, 12, 39):
        return _unpack_name(msg, at)[0]
    if rtype == 15:
        return _unpack_name(msg, at + 2)[0]
    if rtype == 33:
        return _unpack_name(msg, at + 6)[0]
    if rtype == 16:
        parts, i = [], 0
        while i < len(rdata):
            parts.append(rdata[i + 1 : i + 1 + rdata[i]].decode("utf-8", "replace"))
            i += 1 + rdata[i]
        return "TXT " + " ".join(parts)
    return _QTYPE_NAMES.get(rtype, str(rtype))


@dataclass
class _DnsMessage:
    trans_id: int
    is_response: bool
    rcode: int
    query: str
    qtype: str | None
    answers: list[str]


def _parse_dns(msg: bytes) -> _DnsMessage | None:
    """Header, first question and answer section of a DNS message.

    dpkt.dns.DNS refuses whole messages with record types it does not know (RRSIG, NSEC,
    HTTPS...), so the sections are walked here with dpkt's name decoder; a damaged answer
    section keeps the answers before the damage.
    """
    try:
        tid, flags, qdcount, ancount = struct.unpack_from(">HHHH", msg, 0)
        at = 12
        query, qtype = "", None
        for q in range(qdcount):
            name, at = _unpack_name(msg, at)
            t = struct.unpack_from(">H", msg, at)[0]
            at += 4
            if q == 0:
                query, qtype = name, _QTYPE_NAMES.get(t, str(t))
    except (struct.error, dpkt.dpkt.Error, IndexError, ValueError, UnicodeError):
        return None
    answers: list[str] = []
    try:
        for _ in range(ancount):
            _name, at = _unpack_name(msg, at)
            rtype, _cls, _ttl, rdlen = struct.unpack_from(">HHIH", msg, at)
            at += 10
            if at + rdlen > len(msg):
                break
            answers.append(_rdata_text(msg, rtype, at, rdlen))
            at += rdlen
    except (struct.error, dpkt.dpkt.Error, IndexError, ValueError, UnicodeError):
        pass
    return _DnsMessage(tid, bool(flags & 0x8000), flags & 0xF, query, qtype, answers)


_UNPARSED = object()


def _dns_records(d: Decoded, flows: Flows) -> tuple[dict[str, list], list[int]]:
    """Decode DNS messages (dpkt.dns) and pair queries with responses like Zeek's dns.log; with
    each record, the packet (index) its last part came from, to name it when it is refused."""
    cap = d.cap
    udp_tcp = d.flowable & ((d.proto == 6) | (d.proto == 17)) & (d.plen > 0)
    ports = DNS_PORT[d.sport & 0xFFFF] | DNS_PORT[d.dport & 0xFFFF]
    rows = np.flatnonzero(udp_tcp & ports)
    cols: dict[str, list] = {
        k: []
        for k in (
            "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "trans_id", "query",
            "qtype_name", "rcode_name", "answers", "rejected",
        )
    }  # fmt: skip
    packets: list[int] = []
    if not len(rows):
        return cols, packets
    fidx = flows.pkt_flow[rows]
    uids = flows.uid.take(pa.array(np.maximum(fidx, 0), mask=fidx < 0)).to_pylist() if len(flows.uid) else []
    src = _ip_list(d.src_hi[rows], d.src_lo[rows])
    dst = _ip_list(d.dst_hi[rows], d.dst_lo[rows])
    raw = cap.buf.data  # memoryview: slicing it copies nothing
    starts = (cap.off[rows] + d.pay[rows]).tolist()
    ends = (cap.off[rows] + np.minimum(cap.caplen[rows], d.pay[rows] + d.plen[rows])).tolist()
    tcps = (d.proto[rows] == 6).tolist()
    sports, dports, tss = d.sport[rows].tolist(), d.dport[rows].tolist(), cap.ts[rows].tolist()
    # Devices repeat the same messages (mDNS/LLMNR announcements, retries): parse each once.
    parsed: dict[bytes, _DnsMessage | None] = {}
    pending: dict[tuple, list[int]] = {}
    for k in range(len(rows)):
        payload = bytes(raw[starts[k] : ends[k]])
        is_tcp = tcps[k]
        if is_tcp:
            if len(payload) < 2:
                continue
            payload = payload[2 : 2 + int.from_bytes(payload[:2], "big")]
        msg = parsed.get(payload, _UNPARSED)
        if msg is _UNPARSED:
            msg = parsed[payload] = _parse_dns(payload)
        if msg is None:  # not DNS after all, or damaged: not a fault of the capture
            continue
        query, qtype, answers = msg.query, msg.qtype, msg.answers
        sp, dp = sports[k], dports[k]
        uid = uids[k] if uids else None
        is_response = msg.is_response
        client = (dst[k], dp) if is_response else (src[k], sp)
        server = (src[k], sp) if is_response else (dst[k], dp)
        key = (client, server, is_tcp, msg.trans_id)
        if is_response:
            queue = pending.get(key)
            if queue:
                r = queue.pop(0)
                cols["rcode_name"][r] = _RCODES.get(msg.rcode, str(msg.rcode))
                cols["answers"][r] = ",".join(answers) if answers else None
                cols["rejected"][r] = msg.rcode == 5
                packets[r] = int(rows[k])
                continue
        r = len(cols["ts"])
        packets.append(int(rows[k]))
        cols["ts"].append(tss[k])
        cols["uid"].append(uid)
        cols["id.orig_h"].append(client[0])
        cols["id.orig_p"].append(client[1])
        cols["id.resp_h"].append(server[0])
        cols["id.resp_p"].append(server[1])
        cols["proto"].append("tcp" if is_tcp else "udp")
        cols["trans_id"].append(msg.trans_id)
        cols["query"].append(query)
        cols["qtype_name"].append(qtype)
        if is_response:
            cols["rcode_name"].append(_RCODES.get(msg.rcode, str(msg.rcode)))
            cols["answers"].append(",".join(answers) if answers else None)
            cols["rejected"].append(msg.rcode == 5)
        else:
            cols["rcode_name"].append(None)
            cols["answers"].append(None)
            cols["rejected"].append(False)
            pending.setdefault(key, []).append(r)
    return cols, packets


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def _check(d: Decoded, skip_bad: bool, stats: ReadStats) -> None:
    cap = d.cap
    lts = np.unique(cap.linktype)
    unknown = [int(x) for x in lts if int(x) not in SUPPORTED_LINKTYPES]
    if unknown:
        um = np.isin(cap.linktype, unknown)
        first = int(np.flatnonzero(um)[0])
        what = f"unsupported link type {unknown[0]} (supported: {sorted(SUPPORTED_LINKTYPES)})"
        _fail(cap.path, cap.where(first), what, skip_bad, stats, count=int(um.sum()))
    badrows = np.flatnonzero(d.bad)
    if len(badrows):
        j = int(badrows[0])
        what = f"packet too short or malformed: {_BAD[int(d.bad[j])]} (captured {int(cap.caplen[j])} bytes)"
        if not skip_bad:
            raise SourceError(cap.path, cap.where(j), what)
        for j in badrows.tolist():
            stats.skip(SourceError(cap.path, cap.where(j), _BAD[int(d.bad[j])]))


def read(
    path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None, batch_size: int = 65_536
) -> Iterator[EventBatch]:
    """Yield ``flow`` batches (sorted by start time) then ``dns`` batches from a capture."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    cap = read_packets(path, skip_bad=skip_bad, stats=stats)
    d = decode(cap)
    _check(d, skip_bad, stats)
    # frames of a supported link type that decoded fine but carry no IP (ARP, LLDP, EAPOL...)
    lt_ok = np.isin(cap.linktype, list(SUPPORTED_LINKTYPES)) if len(cap) else np.zeros(0, dtype=bool)
    stats.other_frames += int((lt_ok & (d.bad == 0) & (d.net != 4) & (d.net != 6)).sum())
    flows = assemble(d)
    batch_size = max(1, int(batch_size))
    if flows.columns:
        table = EventBatch.from_columns("flow", flows.columns).table  # already in start order
        for s in range(0, table.num_rows, batch_size):
            part = table.slice(s, batch_size)
            stats.records += part.num_rows
            yield EventBatch("flow", part)
    dns, packets = _dns_records(d, flows)
    if not dns["ts"]:
        return
    table = EventBatch.from_columns("dns", dns).table
    columns = dict(zip(table.column_names, table.columns, strict=True))
    columns, n, kept, bad = drop_overlong("dns", columns, len(table), np.asarray(packets, dtype=np.int64))
    stop = None
    if bad:
        if skip_bad:
            for j, what in bad:
                stats.skip(SourceError(path, cap.where(j), what))
        else:  # the records of packets before the bad one are delivered, then the error
            stop = min(bad)
            keep = kept < stop[0]
            columns = {k: v.filter(pa.array(keep)) for k, v in columns.items()}
            n, kept = int(keep.sum()), kept[keep]
        table = pa.Table.from_arrays([columns[f] for f in table.column_names], schema=table.schema)
    if n:
        table = table.take(pa.array(np.argsort(table.column("ts").to_numpy(), kind="stable")))
        for s in range(0, table.num_rows, batch_size):
            part = table.slice(s, batch_size)
            stats.records += part.num_rows
            yield EventBatch("dns", part)
    if stop is not None:
        raise SourceError(path, cap.where(stop[0]), stop[1])


def read_arp(path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None) -> pa.Table:
    """ARP packets of a capture as a table: ts, src_mac, src_ip, dst_ip, op (1 request, 2 reply).

    For ARP-sweep detection: one row per Ethernet/IPv4 ARP packet, file order.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    cap = read_packets(path, skip_bad=skip_bad, stats=stats)
    d = decode(cap)
    _check(d, skip_bad, stats)
    p = np.flatnonzero((d.net == 8) & (cap.caplen - d.l3 >= 28))
    base = cap.off[p] + d.l3[p]
    ok = (
        (_u16(cap.buf, base + 2) == 0x0800)
        & (_gather(cap.buf, base + 4) == 6)
        & (_gather(cap.buf, base + 5) == 4)
    )
    p, base = p[ok], base[ok]
    spa = _bytes_be(cap.buf, base + 14, 4) | _V4_MAPPED
    tpa = _bytes_be(cap.buf, base + 24, 4) | _V4_MAPPED
    zero = np.zeros(len(p), dtype=np.uint64)
    sha = _bytes_be(cap.buf, base + 8, 6)
    return pa.table(
        {
            "ts": pa.array(cap.ts[p], pa.float64()),
            "src_mac": _mac_strings(sha, np.ones(len(p), dtype=bool)),
            "src_ip": _ip_strings(zero, spa) if len(p) else pa.array([], pa.string()),
            "dst_ip": _ip_strings(zero, tpa) if len(p) else pa.array([], pa.string()),
            "op": pa.array(_u16(cap.buf, base + 6), pa.int32()),
        }
    )
