"""Device-type identification from traffic: the pure model (features, fit, predict, state).

What a device says while it is set up (or while it runs) names its type: which protocols it uses
and in which order, how large its packets are, which cloud names it resolves, which ports it
serves and calls, how its TCP/IP stack fills its headers.  IoT Sentinel (Miettinen et al.,
ICDCS 2017) fingerprinted the first packets of a device's set-up with 23 header features each and
classified them with one random forest per type; this module keeps that idea and adds what the
whole capture shows.  One capture of one device becomes one fixed-length vector
(:func:`featurize`, :data:`FEATURE_NAMES`):

- **sequence**: the first :data:`SEQ_PACKETS` packets of the device's traffic, with consecutive
  repeats collapsed as IoT Sentinel did: direction, link/network/transport/application protocol
  classes, size, payload present, group destination and the destination counter (is the peer new);
- **mix**: per direction, the share of packets per link, transport and application protocol class
  and per peer scope (local, multicast/broadcast, internet), and a size histogram with its moments;
- **stack**: the device's own IPv4 TTL / IPv6 hop limit, TCP SYN window and header length
  (options), and the share of its IP packets with each initial-TTL class;
- **services**: the share of the device's packets per service port, hashed into
  :data:`PORT_BUCKETS` buckets (port numbers name services; no address is ever a feature);
- **names**: the DNS / mDNS / LLMNR names the device asks for or announces, hashed into
  :data:`NAME_BUCKETS` buckets by registered domain (``.local`` names: by service type) and by
  whole name, with serial-like runs (hex with a digit and a letter, long digit runs: a MAC or
  serial fragment such as ``dcs-935l5b0e``) folded to ``#`` so that another unit of the model
  gives the same name while a model number (``DCH-S150``) stays;
- **self-description**: what the device says about itself in clear text, folded the same way and
  hashed: its DHCP parameter request list, option order, vendor class and host name (Fingerbank's
  classic signals), the User-Agent and Server headers of its HTTP and SSDP messages;
- **shapes**: which (direction, application class, exact size) packets the capture holds, hashed
  into :data:`SHAPE_BUCKETS` buckets: set-up exchanges repeat byte for byte;
- **timing**: packets, duration, inter-arrival quantiles.

Addresses (MAC, IP) are never features: a model must name the type of a device it has never seen,
not remember the units it was trained on.

The classifier is a random forest (scikit-learn, imported inside :meth:`FingerprintModel.fit`
only).  Its state is plain arrays: per node the feature, threshold and children, per leaf the class
distribution; prediction walks all trees at once with numpy, so loading and identifying never
import scikit-learn or unpickle anything.

**Confidence** is a calibrated probability that the best type is right: the forest's top class
probability is mapped through an isotonic regression fitted on out-of-fold predictions of the
training captures (stratified k-fold by capture, inside the training data only), each step
smoothed by Laplace's rule so that a few right answers never read as certainty.  The answer is
:data:`UNKNOWN` below :attr:`FingerprintModel.unknown_below` (0.5, fixed a priori: name a type
only when the answer is more likely right than wrong), or when the capture is *novel*: farther
(Gower distance) from every training capture of its best type than both the farthest a training
capture held out in the same inner folds lay from its own type, and the nearest capture of another
type lies from that type.  A forest names the nearest known type even for a device type it never
saw; this distance test is what lets the model say ``unknown`` then.

Blind spots: the features describe one device's traffic in one capture; a capture holding several
devices is cut to one of them by the caller (``app.fingerprinting``).  Units of the same hardware
that differ only by firmware or by the sensor attached look alike on the wire and are confused
(the bench reports them separately); a device whose own traffic is carried by a hub (a ZigBee or
Z-Wave sensor) shows only the hub's traffic.  A device type never trained on that resembles a
trained one (a sibling model of the same platform) is named as that one.
"""

from __future__ import annotations

import re
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "UNKNOWN",
    "DeviceTraffic",
    "FingerprintFormatError",
    "FingerprintModel",
    "Identified",
    "featurize",
    "gower_distances",
]

UNKNOWN = "unknown"
FORMAT = "fleetwarden-fingerprint"
VERSION = 1

# Constants fixed a priori (not fitted to any capture): IoT Sentinel used the first 12 distinct
# packets; the size bins follow common IoT packet sizes on a log-like scale up to the Ethernet MTU.
SEQ_PACKETS = 12
PORT_BUCKETS = 64
NAME_BUCKETS = 64
SHAPE_BUCKETS = 128
SIZE_EDGES = np.array([0, 61, 71, 81, 101, 131, 161, 201, 261, 341, 441, 601, 801, 1101, 1401, 1515, 1 << 30])

# link-layer classes
L2_IPV4, L2_IPV6, L2_ARP, L2_EAPOL, L2_LLC, L2_OTHER = range(6)
L2_NAMES = ("ipv4", "ipv6", "arp", "eapol", "llc", "other_l2")
# transport classes (IP packets only)
L4_TCP, L4_UDP, L4_ICMP, L4_ICMP6, L4_IGMP, L4_OTHER, L4_NONE = range(7)
L4_NAMES = ("tcp", "udp", "icmp", "icmp6", "igmp", "other_ip", "not_ip")
# application classes by service port (the lower port of the pair)
APP_NAMES = (
    "dns", "mdns", "llmnr", "dhcp", "ntp", "ssdp", "http", "https", "mqtt", "coap", "netbios",
    "well_known", "registered", "dynamic", "no_port",
)  # fmt: skip
_APP_OF_PORT = np.full(65536, -1, dtype=np.int8)
for _ports, _code in (
    ((53,), 0),
    ((5353,), 1),
    ((5355,), 2),
    ((67, 68, 546, 547), 3),
    ((123,), 4),
    ((1900,), 5),
    ((80, 8080, 8000, 8008, 8081), 6),
    ((443, 8443), 7),
    ((1883, 8883), 8),
    ((5683, 5684), 9),
    ((137, 138, 139), 10),
):
    _APP_OF_PORT[list(_ports)] = _code
_APP_OF_PORT[(_APP_OF_PORT < 0) & (np.arange(65536) < 1024)] = 11
_APP_OF_PORT[(_APP_OF_PORT < 0) & (np.arange(65536) < 49152)] = 12
_APP_OF_PORT[_APP_OF_PORT < 0] = 13
_APP_OF_PORT[0] = 14
# peer scopes
SCOPE_NAMES = ("local", "group", "internet", "no_ip")


class FingerprintFormatError(ValueError):
    """A saved fingerprint model's state is not one this code wrote (or it is damaged)."""


@dataclass
class DeviceTraffic:
    """One device's frames in one capture, as columns in capture order: what the application
    layer reads from a capture for :func:`featurize`.  ``peer_hi``/``peer_lo`` hold the other end's
    IP address (IPv4 as ``::ffff:a.b.c.d``, 0 when the frame is not IP); they are used only to count
    and order peers and to tell local from internet peers, never as values."""

    ts: np.ndarray  # float64 seconds
    sent: np.ndarray  # bool: the device sent the frame (else it received it)
    size: np.ndarray  # int64 bytes on the wire
    ethertype: np.ndarray  # int32; below 0x0600 an 802.3 length (LLC frame); -1 unknown
    proto: np.ndarray  # int32 IP protocol, -1 when not IP
    sport: np.ndarray  # int32 TCP/UDP source port (0 otherwise)
    dport: np.ndarray  # int32
    tcp_flags: np.ndarray  # int32
    payload: np.ndarray  # int64 transport payload bytes
    group_dst: np.ndarray  # bool: the destination MAC (or IP) is a broadcast/multicast address
    peer_hi: np.ndarray  # uint64
    peer_lo: np.ndarray  # uint64
    ttl: np.ndarray  # int32 IPv4 TTL / IPv6 hop limit, -1 when not IP
    tcp_window: np.ndarray  # int32, -1 when not TCP
    tcp_header: np.ndarray  # int32 TCP header bytes (20 + options), -1 when not TCP
    names: tuple[str, ...] = field(default_factory=tuple)  # names the device asked for or announced
    # what the device says about itself in clear text: DHCP parameter list, vendor class and host
    # name, HTTP User-Agent... as ``kind:value`` strings (folded like names before hashing)
    tokens: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.ts)
        for name in (
            "sent", "size", "ethertype", "proto", "sport", "dport", "tcp_flags", "payload", "group_dst",
            "peer_hi", "peer_lo", "ttl", "tcp_window", "tcp_header",
        ):  # fmt: skip
            if len(getattr(self, name)) != n:
                raise ValueError(f"DeviceTraffic.{name} has {len(getattr(self, name))} rows, ts has {n}")

    def __len__(self) -> int:
        return len(self.ts)


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
def _names() -> list[str]:
    names = ["packets_log", "sent_share", "duration_log", "peers_local_log", "peers_internet_log",
             "service_ports_log", "names_log", "gap_p10_log", "gap_p50_log", "gap_p90_log",
             "first_sent_gap_log"]  # fmt: skip
    for d in ("sent", "recv"):
        names += [f"{d}_l2_{x}" for x in L2_NAMES]
        names += [f"{d}_l4_{x}" for x in L4_NAMES]
        names += [f"{d}_app_{x}" for x in APP_NAMES]
        names += [f"{d}_scope_{x}" for x in SCOPE_NAMES]
        names += [f"{d}_size_bin{i}" for i in range(len(SIZE_EDGES) - 1)]
        names += [f"{d}_size_{s}" for s in ("mean", "std", "min", "p50", "max")]
        names += [f"{d}_tcp_syn_share", f"{d}_tcp_rst_share", f"{d}_payload_share"]
    names += ["ttl_p50", "ttl_min", "ttl_max", "ttl_init_64", "ttl_init_128", "ttl_init_255",
              "syn_window", "syn_header", "tcp_window_p50", "tcp_header_p50"]  # fmt: skip
    names += [f"port_bucket{i}" for i in range(PORT_BUCKETS)]
    names += [f"domain_bucket{i}" for i in range(NAME_BUCKETS)]
    names += [f"name_bucket{i}" for i in range(NAME_BUCKETS)]
    names += [f"token_bucket{i}" for i in range(NAME_BUCKETS)]
    names += [f"shape_bucket{i}" for i in range(SHAPE_BUCKETS)]
    for i in range(SEQ_PACKETS):
        names += [
            f"seq{i}_{x}"
            for x in ("sent", "l2", "l4", "app", "size", "payload", "group", "new_peer", "scope")
        ]
    return names


FEATURE_NAMES: tuple[str, ...] = tuple(_names())
N_FEATURES = len(FEATURE_NAMES)


def _l2_class(ethertype: np.ndarray) -> np.ndarray:
    return np.select(
        [ethertype == 0x0800, ethertype == 0x86DD, ethertype == 0x0806, ethertype == 0x888E,
         (ethertype >= 0) & (ethertype < 0x0600)],
        [L2_IPV4, L2_IPV6, L2_ARP, L2_EAPOL, L2_LLC],
        L2_OTHER,
    )  # fmt: skip


def _l4_class(proto: np.ndarray) -> np.ndarray:
    return np.select(
        [proto == 6, proto == 17, proto == 1, proto == 58, proto == 2, proto >= 0],
        [L4_TCP, L4_UDP, L4_ICMP, L4_ICMP6, L4_IGMP, L4_OTHER],
        L4_NONE,
    )


def _service_port(t: DeviceTraffic, l4: np.ndarray) -> np.ndarray:
    """The service a TCP/UDP packet belongs to: the lower of its two ports (clients call from
    ephemeral ports); 0 for other packets."""
    tu = (l4 == L4_TCP) | (l4 == L4_UDP)
    lo = np.minimum(t.sport, t.dport)
    lo = np.where(lo > 0, lo, np.maximum(t.sport, t.dport))
    return np.where(tu, np.clip(lo, 0, 65535), 0).astype(np.int64)


def _scope(t: DeviceTraffic) -> np.ndarray:
    """0 local (RFC 1918, link-local, unique-local), 1 multicast/broadcast, 2 internet, 3 not IP."""
    hi, lo = t.peer_hi.astype(np.uint64), t.peer_lo.astype(np.uint64)
    ip = t.proto >= 0
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    a = (lo & np.uint64(0xFFFFFFFF)).astype(np.int64)
    local4 = ((a >> 24) == 10) | ((a >> 20) == 0xAC1) | ((a >> 16) == 0xC0A8) | ((a >> 16) == 0xA9FE)
    group4 = ((a >> 28) == 0xE) | (a == 0xFFFFFFFF) | ((a & 0xFF) == 0xFF) & local4
    top = (hi >> np.uint64(48)).astype(np.int64)
    local6 = ((top & 0xFFC0) == 0xFE80) | ((top & 0xFE00) == 0xFC00) | ((hi == 0) & (lo <= 1))
    group6 = (top & 0xFF00) == 0xFF00
    group = np.where(v4, group4, group6) | t.group_dst
    local = np.where(v4, local4, local6)
    return np.where(~ip, 3, np.where(group, 1, np.where(local, 0, 2)))


def _shares(codes: np.ndarray, n_codes: int, mask: np.ndarray) -> np.ndarray:
    total = int(mask.sum())
    if not total:
        return np.zeros(n_codes)
    return np.bincount(codes[mask], minlength=n_codes)[:n_codes] / total


def _size_stats(size: np.ndarray) -> np.ndarray:
    if not len(size):
        return np.full(5, -1.0)
    return np.array([size.mean(), size.std(), size.min(), np.median(size), size.max()], dtype=float)


# serial numbers and MAC fragments are folded to '#': hex runs of four or more with a digit and a
# letter, digit runs of five or more; shorter numbers (a model number, "0.pool") are kept
_SERIALISH = re.compile(r"(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{4,}|\d{5,}")


def fold(text: str) -> str:
    """Lower case, serial-like runs folded to ``#``."""
    return _SERIALISH.sub("#", text.strip().lower())


def _bucket(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode("utf-8", "replace")) % buckets


def name_keys(name: str) -> tuple[str, str] | None:
    """(registered domain, whole name) of a queried name, digits folded to ``#``; ``.local`` names
    keep their service type only (``_hap._tcp.local``), never an instance name.  None for nothing."""
    n = fold(name.strip("."))
    labels = [x for x in n.split(".") if x]
    if not labels:
        return None
    if labels[-1] == "arpa":  # reverse look-ups name an address: keep only the zone
        key = ".".join(labels[-2:])
        return key, key
    if labels[-1] == "local":  # the service type, and the folded instance name (it can hold the model)
        svc = [x for x in labels if x.startswith("_")]
        return ".".join([*svc[-2:], "local"]) if svc else "local", n
    # registered domain: the last two labels, three under a two-letter country code with a short
    # second level (co.uk, com.au): a heuristic, no public-suffix list in a pure layer
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3 else 2
    return ".".join(labels[-keep:]), n


def featurize(t: DeviceTraffic) -> np.ndarray:
    """The feature vector (:data:`FEATURE_NAMES`) of one device's traffic in one capture."""
    out = np.full(N_FEATURES, -1.0)
    n = len(t)
    if n == 0:
        return out
    order = np.argsort(t.ts, kind="stable")
    if not np.array_equal(order, np.arange(n)):
        t = DeviceTraffic(**{k: (v[order] if isinstance(v, np.ndarray) else v) for k, v in vars(t).items()})
    sent = t.sent.astype(bool)
    size = t.size.astype(np.int64)
    l2 = _l2_class(t.ethertype.astype(np.int64))
    l4 = _l4_class(t.proto.astype(np.int64))
    svc = _service_port(t, l4)
    app = _APP_OF_PORT[svc].astype(np.int64)
    scope = _scope(t)
    peer = t.peer_hi.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ t.peer_lo.astype(np.uint64)
    ip = t.proto >= 0
    syn = (l4 == L4_TCP) & ((t.tcp_flags & 0x02) != 0)
    rst = (l4 == L4_TCP) & ((t.tcp_flags & 0x04) != 0)

    v: list[float] = []
    duration = float(t.ts[-1] - t.ts[0])
    gaps = np.diff(t.ts) if n > 1 else np.zeros(1)
    first_sent = np.flatnonzero(sent)
    v += [
        np.log1p(n),
        sent.mean(),
        np.log1p(max(duration, 0.0)),
        np.log1p(len(np.unique(peer[ip & (scope == 0)]))),
        np.log1p(len(np.unique(peer[ip & (scope == 2)]))),
        np.log1p(len(np.unique(svc[svc > 0]))),
        np.log1p(len(set(t.names))),
        *np.log10(np.maximum(np.quantile(gaps, [0.1, 0.5, 0.9]), 1e-6)),
        np.log10(max(float(t.ts[first_sent[0]] - t.ts[0]), 1e-6)) if len(first_sent) else 7.0,
    ]
    for d in (sent, ~sent):
        v += list(_shares(l2, len(L2_NAMES), d))
        v += list(_shares(l4, len(L4_NAMES), d))
        v += list(_shares(app, len(APP_NAMES), d))
        v += list(_shares(scope, len(SCOPE_NAMES), d))
        hist = np.histogram(size[d], bins=SIZE_EDGES)[0].astype(float)
        v += list(hist / max(hist.sum(), 1.0))
        v += list(_size_stats(size[d]))
        nd = max(int(d.sum()), 1)
        v += [(syn & d).sum() / nd, (rst & d).sum() / nd, ((t.payload > 0) & d).sum() / nd]
    # the device's own stack
    own_ip = sent & ip & (t.ttl >= 0)
    ttl = t.ttl[own_ip].astype(float)
    if len(ttl):
        init = np.select([ttl <= 64, ttl <= 128], [0, 1], 2)
        v += [np.median(ttl), ttl.min(), ttl.max(), *(np.bincount(init, minlength=3) / len(ttl))]
    else:
        v += [-1.0] * 6
    own_syn = sent & syn & ((t.tcp_flags & 0x10) == 0)
    v += [float(np.median(t.tcp_window[own_syn])) if own_syn.any() else -1.0]
    v += [float(np.median(t.tcp_header[own_syn])) if own_syn.any() else -1.0]
    own_tcp = sent & (l4 == L4_TCP) & (t.tcp_window >= 0)
    v += [float(np.median(t.tcp_window[own_tcp])) if own_tcp.any() else -1.0]
    v += [float(np.median(t.tcp_header[own_tcp])) if own_tcp.any() else -1.0]
    # services, hashed (a fixed multiplicative hash: stable across processes and platforms)
    has = svc > 0
    ports = np.zeros(PORT_BUCKETS)
    if has.any():
        b = ((svc[has] * 2654435761) >> 7) % PORT_BUCKETS
        ports = np.bincount(b, minlength=PORT_BUCKETS) / has.sum()
    v += list(ports)
    # names
    dom = np.zeros(NAME_BUCKETS)
    whole = np.zeros(NAME_BUCKETS)
    for name in set(t.names):
        keys = name_keys(name)
        if keys is None:
            continue
        dom[_bucket(keys[0], NAME_BUCKETS)] = 1.0
        whole[_bucket(keys[1], NAME_BUCKETS)] = 1.0
    v += list(dom) + list(whole)
    tok = np.zeros(NAME_BUCKETS)
    for token in set(t.tokens):
        tok[_bucket(fold(token), NAME_BUCKETS)] = 1.0
    v += list(tok)
    # packet shapes: which (direction, size, application class) the capture holds, hashed
    shape_key = (sent.astype(np.int64) * 16 + app) * 4096 + np.minimum(size, 4095)
    shapes = np.zeros(SHAPE_BUCKETS)
    shapes[((np.unique(shape_key) * 2654435761) >> 9) % SHAPE_BUCKETS] = 1.0
    v += list(shapes)
    # IoT Sentinel's sequence: the first packets, consecutive repeats collapsed
    seen_peer = np.zeros(n, dtype=bool)
    _, first_idx = np.unique(peer, return_index=True)
    seen_peer[first_idx] = True
    new_peer = seen_peer & ip
    sig = np.stack([sent, l2, l4, app, size, t.payload > 0, t.group_dst, new_peer, scope], axis=1).astype(
        np.int64
    )
    keep = np.ones(n, dtype=bool)
    keep[1:] = (sig[1:] != sig[:-1]).any(axis=1)
    seq = sig[keep][:SEQ_PACKETS].astype(float)
    block = np.full((SEQ_PACKETS, sig.shape[1]), -1.0)
    block[: len(seq)] = seq
    v += list(block.reshape(-1))
    out[:] = np.asarray(v, dtype=float)
    return out


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
@dataclass
class Forest:
    """A fitted forest as arrays: node ``i`` tests ``X[:, feature[i]] <= threshold[i]`` (as float32,
    like scikit-learn) and goes to ``left[i]`` or ``right[i]``; a leaf (``feature < 0``) holds the
    class distribution ``leaf_value[leaf_row[i]]``; tree ``k`` starts at ``roots[k]``."""

    feature: np.ndarray  # int32
    threshold: np.ndarray  # float64
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    leaf_row: np.ndarray  # int32
    leaf_value: np.ndarray  # float32 (leaves, classes)
    roots: np.ndarray  # int32
    depth: int

    @classmethod
    def from_sklearn(cls, estimators: list[Any], n_classes: int) -> Forest:
        feats, thrs, lefts, rights, leaf_rows, values, roots = [], [], [], [], [], [], []
        base = leaves = depth = 0
        for est in estimators:
            tr = est.tree_
            k = tr.node_count
            left = tr.children_left.astype(np.int64)
            right = tr.children_right.astype(np.int64)
            is_leaf = left < 0
            feats.append(np.where(is_leaf, -1, tr.feature).astype(np.int32))
            thrs.append(np.where(is_leaf, 0.0, tr.threshold).astype(np.float64))
            lefts.append(np.where(is_leaf, -1, left + base).astype(np.int32))
            rights.append(np.where(is_leaf, -1, right + base).astype(np.int32))
            row = np.full(k, -1, dtype=np.int64)
            row[is_leaf] = leaves + np.arange(int(is_leaf.sum()))
            leaf_rows.append(row.astype(np.int32))
            val = tr.value[is_leaf, 0, :].astype(np.float64)
            val = val / np.maximum(val.sum(axis=1, keepdims=True), 1e-12)
            full = np.zeros((len(val), n_classes))
            full[:, est.classes_.astype(np.int64)] = val  # a tree may have seen fewer classes
            values.append(full.astype(np.float32))
            roots.append(base)
            base += k
            leaves += int(is_leaf.sum())
            depth = max(depth, int(tr.max_depth))
        return cls(
            np.concatenate(feats),
            np.concatenate(thrs),
            np.concatenate(lefts),
            np.concatenate(rights),
            np.concatenate(leaf_rows),
            np.concatenate(values),
            np.asarray(roots, dtype=np.int32),
            depth,
        )

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        n = len(X)
        node = np.broadcast_to(self.roots.astype(np.int64), (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        # children come after their parent (checked on load), so this ends within len(nodes) steps
        for _ in range(len(self.feature) + 1):
            f = self.feature[node]
            inner = f >= 0
            if not inner.any():
                break
            x = X[rows, np.where(inner, f, 0)]
            nxt = np.where(x <= self.threshold[node], self.left[node], self.right[node])
            node = np.where(inner, nxt, node)
        return self.leaf_value[self.leaf_row[node]].astype(np.float64).mean(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "left": self.left,
            "right": self.right,
            "leaf_row": self.leaf_row,
            "leaf_value": self.leaf_value,
            "roots": self.roots,
        }


def gower_distances(
    A: np.ndarray, B: np.ndarray, lo: np.ndarray, span: np.ndarray, chunk: int = 32
) -> np.ndarray:
    """Gower distance between the rows of ``A`` and ``B``: the mean over features of the absolute
    difference scaled by the feature's training range (``span``; features without a range are
    left out), each term capped at 1.  Computed in chunks of ``A``'s rows to bound memory."""
    used = span > 0
    if not used.any():
        return np.zeros((len(A), len(B)))
    a = (np.clip(A[:, used], lo[used], lo[used] + span[used]) - lo[used]) / span[used]
    b = (B[:, used] - lo[used]) / span[used]
    out = np.empty((len(A), len(B)))
    for s in range(0, len(a), chunk):
        out[s : s + chunk] = np.minimum(np.abs(a[s : s + chunk, None, :] - b[None, :, :]), 1.0).mean(axis=2)
    return out


def calibration_map(score: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a non-decreasing map from a score to the probability of being right: isotonic
    regression (pool adjacent violators) of ``right`` on ``score``, each pooled block's share
    smoothed with one right and one wrong pseudo-answer (Laplace's rule, fixed a priori) so that a
    handful of right answers never becomes a certainty, then made non-decreasing again."""
    score = np.asarray(score, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    if not len(score):
        return np.array([0.0, 1.0]), np.array([0.5, 0.5])
    xs, inv = np.unique(score, return_inverse=True)
    sums = np.bincount(inv, weights=right, minlength=len(xs))
    counts = np.bincount(inv, minlength=len(xs)).astype(np.float64)
    blocks: list[list[float]] = []  # [right, count, first x, last x]
    for x, sm, c in zip(xs.tolist(), sums.tolist(), counts.tolist(), strict=True):
        blocks.append([sm, c, x, x])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            last = blocks.pop()
            blocks[-1][0] += last[0]
            blocks[-1][1] += last[1]
            blocks[-1][3] = last[3]
    value = np.maximum.accumulate(np.array([(b[0] + 1.0) / (b[1] + 2.0) for b in blocks]))
    x = np.array([v for b in blocks for v in (b[2], b[3])])
    y = np.repeat(value, 2)
    return x, y


@dataclass
class Identified:
    """What :meth:`FingerprintModel.identify` says about each row."""

    answer: list[str]  # a trained type, or UNKNOWN
    confidence: np.ndarray  # calibrated probability that ``best`` is right
    best: list[str]  # the most likely trained type
    distance: np.ndarray  # Gower distance to the nearest training capture of ``best``
    novel: np.ndarray  # bool: farther from ``best``'s captures than the novelty threshold


@dataclass
class FingerprintModel:
    """Random forest over :func:`featurize` vectors, with a calibrated confidence and an
    ``unknown`` answer.

    The answer is :data:`UNKNOWN` when the confidence is below ``unknown_below`` (0.5, a priori:
    more likely wrong than right) or when the capture is *novel*: its Gower distance to the nearest
    training capture of its best type exceeds that type's threshold, the larger of (a) the farthest
    any training capture held out in the inner folds lay from the rest of its own type (so no
    held-out capture of a known type would have been called unknown) and (b) the distance from the
    type's captures to the nearest capture of another type (a capture farther from the type than
    its nearest neighbouring type is not that type).  Both are measured on the training captures
    only; there is no tuned constant.  The model keeps the training captures' feature vectors (no
    address, no payload: the numbers of :data:`FEATURE_NAMES`) for this test."""

    n_trees: int = 300
    # share of the features each split draws from: compared with "sqrt" (0.04) and 0.05-0.4 by
    # cross-validation on the development half of IoT Sentinel only (bench/bench_fingerprint.py)
    max_features: float | str = 0.2
    seed: int = 0
    unknown_below: float = 0.5
    calibration_folds: int = 5
    classes_: list[str] = field(default_factory=list)
    forest_: Forest | None = None
    calib_x_: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0]))
    calib_y_: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0]))
    ref_X_: np.ndarray = field(default_factory=lambda: np.zeros((0, N_FEATURES), dtype=np.float32))
    ref_y_: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    lo_: np.ndarray = field(default_factory=lambda: np.zeros(N_FEATURES))
    span_: np.ndarray = field(default_factory=lambda: np.zeros(N_FEATURES))
    novelty_above_: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per class
    calibration_: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- fitting -------------------------------------------------------------------------------
    def _forest(self, X: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> Forest:
        from sklearn.ensemble import RandomForestClassifier

        rf = RandomForestClassifier(
            n_estimators=self.n_trees,
            max_features=self.max_features,
            min_samples_leaf=1,
            class_weight="balanced",
            random_state=seed,
            n_jobs=1,
        )
        rf.fit(X.astype(np.float32), y)
        for est in rf.estimators_:  # trees see the encoded labels 0..k-1
            est.classes_ = rf.classes_
        return Forest.from_sklearn(rf.estimators_, n_classes)

    def fit(self, X: np.ndarray, labels: np.ndarray | list[str]) -> FingerprintModel:
        """Fit on one row per capture.  The confidence map and the novelty threshold are fitted on
        out-of-fold results of these captures only (stratified k-fold by capture)."""
        from sklearn.model_selection import StratifiedKFold

        X = np.asarray(X, dtype=np.float64)
        labels = np.asarray([str(s) for s in labels])
        if X.ndim != 2 or X.shape[1] != N_FEATURES or len(X) != len(labels):
            raise ValueError(f"expected ({len(labels)}, {N_FEATURES}) features, got {X.shape}")
        self.classes_ = sorted(set(labels.tolist()))
        if len(self.classes_) < 2:
            raise ValueError("need captures of at least two device types")
        y = np.searchsorted(np.asarray(self.classes_), labels)
        k = len(self.classes_)
        self.ref_X_ = X.astype(np.float32)
        self.ref_y_ = y.astype(np.int32)
        ref = self.ref_X_.astype(np.float64)
        self.lo_ = ref.min(axis=0)
        self.span_ = ref.max(axis=0) - self.lo_
        counts = np.bincount(y, minlength=k)
        folds = int(min(self.calibration_folds, counts.max()))
        top = np.zeros(len(X))
        right = np.zeros(len(X), dtype=bool)
        nearest = np.full(len(X), np.nan)
        if folds >= 2:
            with warnings.catch_warnings():  # a type with fewer captures than folds is fine here
                warnings.simplefilter("ignore", UserWarning)
                cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
                for i, (tr, te) in enumerate(cv.split(X, y)):
                    p = self._forest(X[tr], y[tr], k, self.seed + 1 + i).predict_proba(X[te])
                    top[te] = p.max(axis=1)
                    right[te] = p.argmax(axis=1) == y[te]
                    d = gower_distances(ref[te], ref[tr], self.lo_, self.span_)
                    same = y[te][:, None] == y[tr][None, :]
                    has = same.any(axis=1)
                    nearest[te[has]] = np.where(same, d, np.inf).min(axis=1)[has]
            # a held-out capture whose type had no capture in the inner training part cannot be
            # answered right by construction: that is the novelty test's case, not the confidence's
            seen = np.isfinite(nearest)
            self.calib_x_, self.calib_y_ = calibration_map(top[seen], right[seen])
            spread = float(nearest[seen].max()) if seen.any() else 1.0
            self.calibration_ = {
                "folds": folds,
                "out_of_fold_accuracy": round(float(right[seen].mean()), 4) if seen.any() else None,
                "captures": int(len(X)),
                "farthest_held_out_capture": round(spread, 6),
            }
        else:
            spread = 1.0  # one capture per type: no spread to measure, no novelty test
        # per type: the spread of held-out captures, or the distance from the type to the nearest
        # capture of another type, whichever is larger
        margin = np.zeros(k)
        for c in range(k):
            mine = y == c
            if mine.all():
                continue
            margin[c] = gower_distances(ref[mine], ref[~mine], self.lo_, self.span_).min()
        self.novelty_above_ = np.maximum(margin, spread)
        self.forest_ = self._forest(X, y, k, self.seed)
        return self

    # -- predicting ----------------------------------------------------------------------------
    def _check(self, X: np.ndarray) -> np.ndarray:
        if self.forest_ is None:
            raise ValueError("model is not fitted")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != N_FEATURES:
            raise ValueError(f"expected (n, {N_FEATURES}) features, got {X.shape}")
        return X

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check(X)
        assert self.forest_ is not None
        return self.forest_.predict_proba(X)

    def confidence(self, top: np.ndarray) -> np.ndarray:
        """Calibrated probability that the top class is right, from the forest's top probability."""
        return np.clip(np.interp(top, self.calib_x_, self.calib_y_), 0.0, 1.0)

    def identify(self, X: np.ndarray) -> Identified:
        X = self._check(X)
        p = self.predict_proba(X)
        k = p.argmax(axis=1)
        best = [self.classes_[i] for i in k]
        conf = self.confidence(p.max(axis=1))
        d = gower_distances(X, self.ref_X_.astype(np.float64), self.lo_, self.span_)
        same = k[:, None] == self.ref_y_[None, :].astype(np.int64)
        dist = np.where(same, d, np.inf).min(axis=1) if len(self.ref_y_) else np.zeros(len(X))
        novel = dist > self.novelty_above_[k]
        answer = [
            UNKNOWN if (c < self.unknown_below or nv) else b
            for b, c, nv in zip(best, conf, novel, strict=True)
        ]
        return Identified(answer, conf, best, dist, novel)

    # -- state ---------------------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self.forest_ is None:
            raise ValueError("model is not fitted")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "kind": "device-type fingerprint (random forest over per-capture traffic features)",
            "classes": list(self.classes_),
            "features": list(FEATURE_NAMES),
            "n_trees": int(len(self.forest_.roots)),
            "max_features": self.max_features,
            "max_depth": int(self.forest_.depth),
            "seed": self.seed,
            "unknown_below": self.unknown_below,
            "confidence": "isotonic map of the forest's top-class probability to the out-of-fold "
            "share of right answers on the training captures (Laplace-smoothed)",
            "unknown": "confidence below unknown_below, or Gower distance to the nearest training "
            "capture of the best type above that type's novelty threshold: the larger of the "
            "farthest a training capture held out in the inner folds lay from its own type, and the "
            "distance from the type to the nearest capture of another type",
            "calibration": self.calibration_,
            **self.meta,
        }
        arrays = {
            **self.forest_.arrays(),
            "calib_x": self.calib_x_,
            "calib_y": self.calib_y_,
            "ref_X": self.ref_X_,
            "ref_y": self.ref_y_,
            "lo": self.lo_,
            "span": self.span_,
            "novelty_above": self.novelty_above_,
        }
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FingerprintModel:
        """Rebuild a model from :meth:`to_state`'s output, checking every shape and index."""
        if meta.get("format") != FORMAT:
            raise FingerprintFormatError(f"not a fingerprint model (format {str(meta.get('format'))[:40]!r})")
        if meta.get("version") != VERSION:
            raise FingerprintFormatError(
                f"unsupported fingerprint model version {str(meta.get('version'))[:20]!r}"
            )
        classes = meta.get("classes")
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise FingerprintFormatError("'classes' must be a list of at least two names")
        if len(set(classes)) != len(classes):
            raise FingerprintFormatError("'classes' has duplicates")
        if list(meta.get("features") or []) != list(FEATURE_NAMES):
            raise FingerprintFormatError("the model was made with other features (retrain it)")
        need = {
            "feature": np.int32, "threshold": np.float64, "left": np.int32, "right": np.int32,
            "leaf_row": np.int32, "leaf_value": np.float32, "roots": np.int32, "calib_x": np.float64,
            "calib_y": np.float64, "ref_X": np.float32, "ref_y": np.int32, "lo": np.float64,
            "span": np.float64, "novelty_above": np.float64,
        }  # fmt: skip
        a: dict[str, np.ndarray] = {}
        for name, dtype in need.items():
            if name not in arrays:
                raise FingerprintFormatError(f"table {name!r} is missing")
            arr = np.asarray(arrays[name])
            if arr.dtype.kind not in "iuf":
                raise FingerprintFormatError(f"table {name!r} is not numeric")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise FingerprintFormatError(f"table {name!r} holds NaN or infinity")
            a[name] = arr.astype(dtype)
        m = len(a["feature"])
        if m == 0 or any(a[x].shape != (m,) for x in ("feature", "threshold", "left", "right", "leaf_row")):
            raise FingerprintFormatError("node tables are empty or differ in length")
        lv = a["leaf_value"]
        if lv.ndim != 2 or lv.shape[1] != len(classes) or not len(lv):
            raise FingerprintFormatError("leaf values do not match the classes")
        inner = a["feature"] >= 0
        if (a["feature"] >= N_FEATURES).any():
            raise FingerprintFormatError("a node tests a feature that does not exist")
        for side in ("left", "right"):
            kid = a[side][inner]
            if ((kid < 0) | (kid >= m)).any() or (kid <= np.flatnonzero(inner)).any():
                raise FingerprintFormatError(f"a node's {side} child is out of range")
        rows = a["leaf_row"][~inner]
        if ((rows < 0) | (rows >= len(lv))).any():
            raise FingerprintFormatError("a leaf points outside the leaf values")
        roots = a["roots"]
        if roots.ndim != 1 or not len(roots) or ((roots < 0) | (roots >= m)).any():
            raise FingerprintFormatError("tree roots out of range")
        cx, cy = a["calib_x"], a["calib_y"]
        if cx.ndim != 1 or cx.shape != cy.shape or len(cx) < 2 or not np.all(np.diff(cx) >= 0):
            raise FingerprintFormatError("calibration tables are malformed")
        rx, ry = a["ref_X"], a["ref_y"]
        if rx.ndim != 2 or rx.shape[1] != N_FEATURES or ry.shape != (len(rx),):
            raise FingerprintFormatError("reference captures are malformed")
        if len(ry) and ((ry < 0) | (ry >= len(classes))).any():
            raise FingerprintFormatError("a reference capture has an unknown class")
        if a["lo"].shape != (N_FEATURES,) or a["span"].shape != (N_FEATURES,) or (a["span"] < 0).any():
            raise FingerprintFormatError("feature ranges are malformed")
        if a["novelty_above"].shape != (len(classes),) or (a["novelty_above"] < 0).any():
            raise FingerprintFormatError("novelty thresholds do not match the classes")
        try:
            depth = int(meta.get("max_depth", 0))
            unknown_below = float(meta.get("unknown_below", 0.5))
        except (TypeError, ValueError):
            raise FingerprintFormatError("'max_depth' or 'unknown_below' is not a number") from None
        if not 0 <= depth <= 1_000_000 or not 0.0 <= unknown_below <= 1.0:
            raise FingerprintFormatError("'max_depth' or 'unknown_below' is out of range")
        model = cls(unknown_below=unknown_below, seed=int(meta.get("seed", 0) or 0))
        model.classes_ = list(classes)
        model.forest_ = Forest(
            a["feature"], a["threshold"], a["left"], a["right"], a["leaf_row"], lv, roots, depth
        )
        model.calib_x_, model.calib_y_ = cx, cy
        model.ref_X_, model.ref_y_ = rx, ry
        model.lo_, model.span_ = a["lo"], a["span"]
        model.novelty_above_ = a["novelty_above"]
        model.calibration_ = dict(meta.get("calibration") or {})
        model.n_trees = len(roots)
        mf = meta.get("max_features", 0.2)
        model.max_features = mf if isinstance(mf, str | float | int) else 0.2
        known = {
            "format", "version", "kind", "classes", "features", "n_trees", "max_features", "max_depth",
            "seed", "unknown_below", "confidence", "unknown", "calibration",
        }  # fmt: skip
        model.meta = {k: v for k, v in meta.items() if k not in known}
        return model
