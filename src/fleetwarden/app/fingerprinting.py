"""Device-type identification services: train from a directory of captures, identify captures,
cross-validate.  The model is pure (:mod:`fleetwarden.control.fingerprint`); this module reads
the captures (:mod:`fleetwarden.sources.pcap`) and the model directory
(:mod:`fleetwarden.sources.modelfile`: JSON + npz, never pickle).

A training directory holds one folder per device type, named after the type, with the type's
captures (``*.pcap``, ``*.pcapng``, ``*.cap``, optionally gzipped).  Each capture is one device's
traffic (as IoT Sentinel's set-up captures are: what one station sent and received).  Which device
a capture is about:

- the MAC address in the folder's ``_iotdevice-mac.txt`` when there is one (IoT Sentinel's layout;
  a capture in which it never appears is refused);
- otherwise, and always when identifying, the **busiest endpoint**: the unicast MAC address (the
  IP address when the capture has no link layer or its MACs are zeroed) that sent or received the
  most frames; a tie (a capture of one device talking only to its router has both
  in every frame) goes to the address that sent from the fewest IP addresses (a router forwards
  from many, a device sends from its own), then to the one that sent more frames.  ``identify
  --mac`` names the device instead, for a capture that holds several.  The folder-wide shared MAC
  is not used as the rule because the router is shared by every capture of a folder too.

Files and folders whose name starts with ``.`` or ``_`` are skipped.

:func:`check_types` (``fingerprint check``) compares the identified type with the one the
inventory registers for the device's MAC and records a confident mismatch as a ``cloned-device``
finding and incident (see its docstring for the match rule and why that category).
"""

from __future__ import annotations

import ipaddress
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fleetwarden.control.fingerprint import (
    UNKNOWN,
    DeviceTraffic,
    FingerprintFormatError,
    FingerprintModel,
    featurize,
)
from fleetwarden.core.errors import InputError
from fleetwarden.sources import ReadStats, SourceError
from fleetwarden.sources.modelfile import MODEL_JSON, read_model_files, write_model_files
from fleetwarden.sources.pcap import LT_ETHERNET, decode, read, read_packets

__all__ = [
    "CAPTURE_SUFFIXES",
    "MAC_FILE",
    "Identification",
    "TypeCheck",
    "LabelledCaptures",
    "check_types",
    "cross_validate",
    "device_traffic",
    "identify",
    "load_captures",
    "load_fingerprint_model",
    "registered_types",
    "train",
    "type_key",
    "type_verdict",
]

MAC_FILE = "_iotdevice-mac.txt"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")
_MAC_TEXT = re.compile(r"^\s*([0-9A-Fa-f]{2})[:-]?([0-9A-Fa-f]{2})[:-]?([0-9A-Fa-f]{2})[:-]?"
                       r"([0-9A-Fa-f]{2})[:-]?([0-9A-Fa-f]{2})[:-]?([0-9A-Fa-f]{2})\s*$")  # fmt: skip
_GROUP_BIT = np.uint64(1 << 40)
_IP_KEY = np.uint64(1 << 63)  # endpoint keys of frames without a MAC: hashed IP with the top bit set
_V4_MAPPED = np.uint64(0xFFFF00000000)


@dataclass
class Identification:
    path: str
    device_type: str  # the answer: a trained type, or "unknown"
    confidence: float  # calibrated probability that ``best`` is right
    best: str  # the most likely trained type (the answer unless it is "unknown")
    device: str  # which device of the capture was identified (MAC, or IP without a link layer)
    distance: float  # Gower distance to the nearest training capture of ``best``
    novel: bool  # farther than the model's novelty threshold: answered unknown


@dataclass
class LabelledCaptures:
    """Captures with their type, the device each is about, and their feature vectors."""

    paths: list[Path]
    labels: list[str]
    devices: list[str]
    X: np.ndarray
    rule: dict[str, str]  # per type: how the device was chosen


# ---------------------------------------------------------------------------------------------
# reading one capture
# ---------------------------------------------------------------------------------------------
def parse_mac(text: str, where: str | Path = "--mac") -> int:
    m = _MAC_TEXT.match(text)
    if not m:
        raise SourceError(where, None, f"not a MAC address: {text.strip()[:40]!r}")
    return int("".join(m.groups()), 16)


def _mac_text(key: int) -> str:
    return ":".join(f"{(key >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def _ip_text(hi: int, lo: int) -> str:
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def _ip_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return ((hi * np.uint64(0x9E3779B97F4A7C15)) ^ lo) | _IP_KEY


def _is_group_ip(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    a = (lo & np.uint64(0xFFFFFFFF)).astype(np.int64)
    g4 = ((a >> 28) == 0xE) | (a == 0xFFFFFFFF)
    g6 = (hi >> np.uint64(56)) == np.uint64(0xFF)
    return np.where(v4, g4, g6)


def _busiest(src: np.ndarray, dst: np.ndarray, src_unicast: np.ndarray, dst_unicast: np.ndarray,
             src_ip: np.ndarray) -> int | None:  # fmt: skip
    """The busiest endpoint (see the module docstring), or None when no unicast endpoint."""
    ends = np.concatenate([src[src_unicast], dst[dst_unicast]])
    if not len(ends):
        return None
    keys, frames = np.unique(ends, return_counts=True)
    top = keys[frames == frames.max()]
    if len(top) == 1:
        return int(top[0])
    best, best_rank = None, None
    for k in top.tolist():
        mine = src == np.uint64(k)
        ips = len(np.unique(src_ip[mine & (src_ip != 0)]))
        rank = (ips if ips else 1 << 30, -int(mine.sum()), k)
        if best_rank is None or rank < best_rank:
            best, best_rank = k, rank
    return best


def device_traffic(path: str | Path, mac: int | None = None) -> tuple[DeviceTraffic, str]:
    """The frames of one device in a capture (``mac``, else the busiest endpoint) as columns, and
    the device's address as text."""
    path = Path(path)
    cap = read_packets(path)
    d = decode(cap)
    ok = d.bad == 0
    ip = ok & ((d.net == 4) | (d.net == 6))
    with_mac = ok & d.has_mac
    macs = np.concatenate([d.src_mac[with_mac], d.dst_mac[with_mac]])
    macs = macs[(macs != 0) & ((macs & _GROUP_BIT) == 0)]
    if len(np.unique(macs)) < 2:  # no link layer, or anonymised (zeroed) MACs: tell hosts by IP
        with_mac = np.zeros_like(with_mac)
    ip_src, ip_dst = _ip_key(d.src_hi, d.src_lo), _ip_key(d.dst_hi, d.dst_lo)
    src = np.where(with_mac, d.src_mac, np.where(ip, ip_src, np.uint64(0)))
    dst = np.where(with_mac, d.dst_mac, np.where(ip, ip_dst, np.uint64(0)))
    src_unicast = (with_mac & ((d.src_mac & _GROUP_BIT) == 0) & (d.src_mac != 0)) | (
        ~with_mac & ip & ~_is_group_ip(d.src_hi, d.src_lo)
    )
    dst_unicast = (with_mac & ((d.dst_mac & _GROUP_BIT) == 0) & (d.dst_mac != 0)) | (
        ~with_mac & ip & ~_is_group_ip(d.dst_hi, d.dst_lo)
    )
    if mac is not None:
        dev = np.uint64(mac)
        if not ((src == dev) | (dst == dev)).any():
            raise SourceError(
                path, None, f"device {_mac_text(mac)} sends or receives no frame in this capture"
            )
        label = _mac_text(mac)
    else:
        src_ip = np.where(ip, ip_src, np.uint64(0))
        key = _busiest(src, dst, ok & src_unicast, ok & dst_unicast, src_ip)
        if key is None:
            raise SourceError(path, None, "no frame with a unicast sender or receiver to fingerprint")
        dev = np.uint64(key)
        if key & (1 << 63):
            j = (
                int(np.flatnonzero(ip_src == dev)[0])
                if (ip_src == dev).any()
                else int(np.flatnonzero(ip_dst == dev)[0])
            )
            hi, lo = (d.src_hi[j], d.src_lo[j]) if ip_src[j] == dev else (d.dst_hi[j], d.dst_lo[j])
            label = _ip_text(int(hi), int(lo))
        else:
            label = _mac_text(key)
    sent = ok & (src == dev)
    rows = np.flatnonzero(sent | (ok & (dst == dev)))
    if not len(rows):
        raise SourceError(path, None, "no frames of the device to fingerprint")
    buf, off = cap.buf, cap.off[rows]
    n = len(rows)
    net = d.net[rows]
    is_ip = (net == 4) | (net == 6)
    eth = np.select([net == 4, net == 6, net == 8], [0x0800, 0x86DD, 0x0806], -1).astype(np.int64)
    raw_eth = (cap.linktype[rows] == LT_ETHERNET) & (eth < 0) & (cap.caplen[rows] >= 14)
    if raw_eth.any():
        at = off[raw_eth] + 12
        eth[raw_eth] = (buf[at].astype(np.int64) << 8) | buf[at + 1]
    proto = np.where(is_ip, d.proto[rows], -1).astype(np.int32)
    tu = (proto == 6) | (proto == 17)
    l3 = off + d.l3[rows]
    l4 = off + d.l4[rows]
    caplen_end = off + cap.caplen[rows]
    ttl = np.full(n, -1, dtype=np.int32)
    v4, v6 = net == 4, net == 6
    ttl[v4 & (l3 + 8 < caplen_end)] = buf[l3[v4 & (l3 + 8 < caplen_end)] + 8]
    ttl[v6 & (l3 + 7 < caplen_end)] = buf[l3[v6 & (l3 + 7 < caplen_end)] + 7]
    tcp = (proto == 6) & (l4 + 16 <= caplen_end)
    win = np.full(n, -1, dtype=np.int32)
    hdr = np.full(n, -1, dtype=np.int32)
    win[tcp] = (buf[l4[tcp] + 14].astype(np.int32) << 8) | buf[l4[tcp] + 15]
    hdr[tcp] = (buf[l4[tcp] + 12].astype(np.int32) >> 4) * 4
    s = sent[rows]
    group_dst = np.where(
        with_mac[rows], (d.dst_mac[rows] & _GROUP_BIT) != 0, _is_group_ip(d.dst_hi[rows], d.dst_lo[rows])
    )
    traffic = DeviceTraffic(
        ts=cap.ts[rows].astype(np.float64),
        sent=s,
        size=cap.wirelen[rows].astype(np.int64),
        ethertype=eth.astype(np.int32),
        proto=proto,
        sport=np.where(tu, d.sport[rows], 0).astype(np.int32),
        dport=np.where(tu, d.dport[rows], 0).astype(np.int32),
        tcp_flags=np.where(proto == 6, d.flags[rows], 0).astype(np.int32),
        payload=np.where(is_ip, d.plen[rows], 0).astype(np.int64),
        group_dst=group_dst.astype(bool),
        peer_hi=np.where(is_ip, np.where(s, d.dst_hi[rows], d.src_hi[rows]), 0).astype(np.uint64),
        peer_lo=np.where(is_ip, np.where(s, d.dst_lo[rows], d.src_lo[rows]), 0).astype(np.uint64),
        ttl=ttl,
        tcp_window=win,
        tcp_header=hdr,
        names=_device_names(path, d, rows[s & is_ip]),
        tokens=_device_tokens(cap, d, rows[s & tu]),
    )
    return traffic, label


def _device_names(path: Path, d: Any, sent_ip_rows: np.ndarray) -> tuple[str, ...]:
    """DNS, mDNS and LLMNR names in the records the device originated (its own queries and
    announcements), read with the capture reader's DNS decoder."""
    if not len(sent_ip_rows):
        return ()
    pairs = np.unique(np.stack([d.src_hi[sent_ip_rows], d.src_lo[sent_ip_rows]], axis=1), axis=0)
    mine = {_ip_text(int(hi), int(lo)) for hi, lo in pairs[:64].tolist()}
    names: list[str] = []
    stats = ReadStats()
    for batch in read(path, skip_bad=True, stats=stats):
        if batch.kind != "dns" or not len(batch):
            continue
        orig = batch["id.orig_h"].to_pylist()
        for who, query in zip(orig, batch["query"].to_pylist(), strict=True):
            if who in mine and query:
                names.append(query)
    return tuple(names)


_REQUEST = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"NOTIFY ", b"M-SEARCH ", b"HTTP/1.")
_HEADERS = {b"user-agent": "http-ua", b"server": "http-server"}
MAX_TOKEN_PACKETS = 256  # packets per capture parsed for tokens (a bound, not a tuning)


def _device_tokens(cap: Any, d: Any, sent_rows: np.ndarray) -> tuple[str, ...]:
    """What the device says about itself in clear text, from the TCP/UDP packets it sent: its DHCP
    requests' parameter list, option order, vendor class and host name; the User-Agent and Server
    headers of its HTTP and SSDP messages.  Only the few packets that can carry them are parsed."""
    buf = cap.buf
    end = cap.off + cap.caplen
    start = cap.off + d.pay
    have = d.plen > 0
    tokens: list[str] = []
    dhcp = sent_rows[(d.sport[sent_rows] == 68) & (d.dport[sent_rows] == 67) & have[sent_rows]]
    for j in dhcp[:MAX_TOKEN_PACKETS].tolist():
        body = bytes(buf[start[j] : end[j]])
        if len(body) < 240 or body[236:240] != b"\x63\x82\x53\x63":
            continue
        i, order = 240, []
        while i < len(body) and body[i] != 255:
            code = body[i]
            if code == 0:
                i += 1
                continue
            if i + 1 >= len(body):
                break
            size = body[i + 1]
            value = body[i + 2 : i + 2 + size]
            order.append(str(code))
            if code == 55:
                tokens.append("dhcp-params:" + ",".join(str(b) for b in value))
            elif code == 60:
                tokens.append("dhcp-vendor:" + value.decode("latin-1")[:120])
            elif code == 12:
                tokens.append("dhcp-host:" + value.decode("latin-1")[:120])
            i += 2 + size
        tokens.append("dhcp-options:" + ",".join(order))
    text = sent_rows[have[sent_rows]]
    first4 = np.zeros(len(text), dtype=np.int64)
    for k in range(4):
        first4 = (first4 << 8) | buf[np.minimum(start[text] + k, len(buf) - 1)].astype(np.int64)
    heads = {int.from_bytes(r[:4], "big") for r in _REQUEST}
    cand = text[np.isin(first4, list(heads))]
    for j in cand[:MAX_TOKEN_PACKETS].tolist():
        body = bytes(buf[start[j] : min(end[j], start[j] + 2048)])
        if not body.startswith(_REQUEST):
            continue
        for line in body.split(b"\r\n")[1:40]:
            name, sep, value = line.partition(b":")
            kind = _HEADERS.get(name.strip().lower()) if sep else None
            if kind:
                tokens.append(f"{kind}:" + value.strip().decode("latin-1")[:120])
    return tuple(dict.fromkeys(tokens))


# ---------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------
def _is_capture(p: Path) -> bool:
    name = p.name.lower()
    return p.is_file() and not name.startswith((".", "_")) and name.endswith(CAPTURE_SUFFIXES)


def scan_training_dir(data_dir: str | Path) -> list[tuple[Path, str, int | None]]:
    """(capture, type, device MAC or None) for every capture of every type folder of ``data_dir``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected one folder per device type)")
    items: list[tuple[Path, str, int | None]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        captures = sorted(p for p in folder.iterdir() if _is_capture(p))
        if not captures:
            continue
        mac_file = folder / MAC_FILE
        mac = None
        if mac_file.is_file():
            try:
                text = mac_file.read_text("utf-8", errors="replace")[:200]
            except OSError as exc:
                raise SourceError(mac_file, None, f"unreadable ({exc.strerror or exc})") from None
            mac = parse_mac(text.splitlines()[0] if text.strip() else "", mac_file)
        items += [(c, folder.name, mac) for c in captures]
    if not items:
        raise InputError(
            f"{root}: no device-type folders with captures ({', '.join(CAPTURE_SUFFIXES[:3])}) in it"
        )
    if len({t for _c, t, _m in items}) < 2:
        raise InputError(f"{root}: captures of only one device type; need at least two type folders")
    return items


def load_captures(data_dir: str | Path) -> LabelledCaptures:
    """Read and featurize every capture of a training directory."""
    items = scan_training_dir(data_dir)
    X, devices = [], []
    for path, _label, mac in items:
        traffic, device = device_traffic(path, mac)
        X.append(featurize(traffic))
        devices.append(device)
    rule = {t: ("mac-file" if m is not None else "busiest-endpoint") for _p, t, m in items}
    return LabelledCaptures(
        [p for p, _t, _m in items], [t for _p, t, _m in items], devices, np.vstack(X), rule
    )


# ---------------------------------------------------------------------------------------------
# services
# ---------------------------------------------------------------------------------------------
def train(
    data_dir: str | Path, model_dir: str | Path, *, n_trees: int = 300, seed: int = 0
) -> dict[str, Any]:
    """Train a fingerprint model on ``data_dir`` (one folder per type) and save it to ``model_dir``."""
    t0 = time.perf_counter()
    if Path(model_dir).exists() and not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: exists and is not a directory (--model names a directory)")
    data = load_captures(data_dir)
    model = FingerprintModel(n_trees=n_trees, seed=seed)
    model.fit(data.X, data.labels)
    types, counts = np.unique(np.asarray(data.labels), return_counts=True)
    training = {
        "data_dir": str(data_dir),
        "captures": len(data.paths),
        "types": {str(t): int(c) for t, c in zip(types, counts, strict=True)},
        "device_rule": data.rule,
    }
    model.meta = {
        "training": training,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    meta, arrays = model.to_state()
    write_model_files(model_dir, meta, arrays)
    return {
        **training,
        "model_dir": str(model_dir),
        "calibration": model.calibration_,
        "unknown_below": model.unknown_below,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def load_fingerprint_model(model_dir: str | Path) -> FingerprintModel:
    """The fingerprint model in ``model_dir``; a :class:`SourceError` naming what is wrong otherwise."""
    meta, arrays = read_model_files(model_dir)
    try:
        return FingerprintModel.from_state(meta, arrays)
    except FingerprintFormatError as exc:
        raise SourceError(model_dir, MODEL_JSON, str(exc) or "not a fingerprint model") from None


def identify(
    paths: Sequence[str | Path], model_dir: str | Path | FingerprintModel, *, mac: str | None = None
) -> list[Identification]:
    """Identify the device type of each capture (the busiest endpoint's, or ``mac``'s)."""
    model = model_dir if isinstance(model_dir, FingerprintModel) else load_fingerprint_model(model_dir)
    if not paths:
        raise InputError("no capture to identify")
    rows, devices, _spans = _featurized(paths, mac)
    return _identifications(paths, model, rows, devices)


def _identifications(
    paths: Sequence[str | Path], model: FingerprintModel, rows: list[np.ndarray], devices: list[str]
) -> list[Identification]:
    found = model.identify(np.vstack(rows))
    return [
        Identification(str(p), a, float(c), b, dev, float(dist), bool(nv))
        for p, a, c, b, dev, dist, nv in zip(
            paths,
            found.answer,
            found.confidence,
            found.best,
            devices,
            found.distance,
            found.novel,
            strict=True,
        )
    ]


def _featurized(
    paths: Sequence[str | Path], mac: str | None
) -> tuple[list[np.ndarray], list[str], list[tuple[float, float]]]:
    """Per capture: the feature vector, the device's address and the (first, last) frame time."""
    key = parse_mac(mac) if mac is not None else None
    rows, devices, spans = [], [], []
    for p in paths:
        traffic, device = device_traffic(p, key)
        rows.append(featurize(traffic))
        devices.append(device)
        spans.append((float(traffic.ts.min()), float(traffic.ts.max())))
    return rows, devices, spans


def cross_validate(
    X: np.ndarray,
    labels: Sequence[str],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_trees: int = 300,
    seed: int = 0,
    **model_options: Any,
) -> dict[str, np.ndarray]:
    """For each (train, test) split: fit on the train rows only (the confidence map and the novelty
    threshold included, by inner folds of the train rows) and identify the test rows.  Rows never
    tested keep ``fold == -1``."""
    labels = np.asarray(labels)
    n = len(labels)
    best = np.full(n, "", dtype=object)
    answer = np.full(n, "", dtype=object)
    conf = np.full(n, np.nan)
    novel = np.zeros(n, dtype=bool)
    fold = np.full(n, -1)
    for i, (tr, te) in enumerate(splits):
        model = FingerprintModel(n_trees=n_trees, seed=seed + 1000 * i, **model_options).fit(
            X[tr], labels[tr]
        )
        found = model.identify(X[te])
        best[te], answer[te], conf[te], novel[te], fold[te] = (
            found.best,
            found.answer,
            found.confidence,
            found.novel,
            i,
        )
    return {"best": best, "answer": answer, "confidence": conf, "novel": novel, "fold": fold}


def _versions() -> dict[str, str]:
    import sklearn

    from fleetwarden import __version__ as fw

    return {
        "fleetwarden": fw,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


# ---------------------------------------------------------------------------------------------
# the registered type against the traffic
# ---------------------------------------------------------------------------------------------
TYPE_ATTRIBUTE = "fingerprint_type"  # inventory attribute: the trained type name a device is
MISMATCH_DETECTOR = "fingerprint.mismatch"
MISMATCH_CATEGORY = "cloned-device"
CHECK_SOURCE = "fingerprint-check"
# verdicts of one capture
MATCH, MISMATCH, UNSURE = "match", "mismatch", "unsure"
UNKNOWN_DEVICE, NO_TYPE, UNTRAINED = "unknown-device", "no-registered-type", "untrained-type"


@dataclass
class TypeCheck:
    """One capture checked against the inventory (see :func:`check_types`)."""

    identification: Identification
    verdict: str  # match, mismatch, unsure, unknown-device, no-registered-type, untrained-type
    device_id: str | None = None  # the inventory's device, None when the MAC is not registered
    registered: str | None = None  # what the inventory says the device is (as text)
    finding: Any = None  # the cloned-device Finding recorded for a mismatch


def type_key(name: str | None) -> str:
    """A type name normalised for comparison: case-folded, letters and digits only
    (``D-Link Cam``, ``d-linkcam`` and ``DLinkCam`` are one key)."""
    return re.sub(r"[^0-9a-z]", "", (name or "").casefold())


def registered_types(info: Any) -> list[str]:
    """What the inventory says a device is, most specific first: its ``fingerprint_type``
    attribute when set (then nothing else counts: the operator named the trained type), else its
    ``vendor`` + ``model``, its ``model`` and its ``device_class``."""
    explicit = (info.extra or {}).get(TYPE_ATTRIBUTE)
    if isinstance(explicit, str) and explicit.strip():
        return [explicit.strip()[:200]]
    names = [f"{info.vendor} {info.model}" if info.vendor and info.model else None]
    names += [info.model, info.device_class]
    return [n for n in names if n]


def type_verdict(identified: Identification, registered: Sequence[str], trained: Sequence[str]) -> str:
    """The match rule.  A registered name matches a trained type when their :func:`type_key` are
    equal.  ``match``: the identified type is one of the registered names; ``unsure``: the model
    answered ``unknown``; ``no-registered-type``: the inventory names no type; ``untrained-type``:
    no registered name is a type the model was trained on (it cannot tell that device from another,
    so its answer is no evidence against the registration); otherwise ``mismatch``."""
    if not registered:
        return NO_TYPE
    keys = {type_key(n) for n in registered}
    if identified.device_type == UNKNOWN:
        return UNSURE
    if type_key(identified.device_type) in keys:
        return MATCH
    if not keys & {type_key(t) for t in trained}:
        return UNTRAINED
    return MISMATCH


def check_types(
    paths: Sequence[str | Path],
    model_dir: str | Path | FingerprintModel,
    store: Any,
    *,
    mac: str | None = None,
    actor: str = "cli",
) -> list[TypeCheck]:
    """Identify each capture's device (``mac``, else the busiest endpoint), find it in the inventory
    by MAC, and compare the identified type with the registered one (:func:`type_verdict`).  Each
    ``mismatch`` becomes a ``cloned-device`` finding (detector ``fingerprint.mismatch``) recorded
    with its incident, joined to the device's open story, in one audited store transaction.

    Why ``cloned-device`` rather than ``policy-violation``: the MAC is the registered device's
    identity, and traffic of another kind of device behind it is that identity worn by something
    else (a spoofed MAC, a swapped or counterfeit unit: MITRE T1036 Masquerading, T1200 Hardware
    Additions); policy-violation is for a known device breaking a declared rule.

    *Blind spots.* Only devices with a MAC in the inventory and a MAC in the capture (a capture
    without a link layer names an IP: reported as an unknown device); a registered type the model
    never trained on is never contradicted; look-alike types (same hardware, other firmware: see
    README) can be confused, and a true clone of the same model looks the same by design; an
    unregistered MAC is reported, not recorded (passive discovery records unknown devices).
    """
    from fleetwarden.app.inventory import context_from_store

    model = model_dir if isinstance(model_dir, FingerprintModel) else load_fingerprint_model(model_dir)
    if not paths:
        raise InputError("no capture to check")
    rows, devices, spans = _featurized(paths, mac)
    found = _identifications(paths, model, rows, devices)
    ctx = context_from_store(store)
    by_mac = _device_by_mac(ctx)
    trained = list(model.classes_)
    checks = [_check_one(r, span, by_mac, trained) for r, span in zip(found, spans, strict=True)]
    _record_mismatches(store, [c.finding for c in checks if c.finding is not None], ctx, actor)
    return checks


def _device_by_mac(ctx: Any) -> dict[str, Any]:
    from fleetwarden.control.discovery import device_mac

    return {m: info for info in ctx.devices.values() if (m := device_mac(info.mac))}


def _check_one(
    r: Identification, span: tuple[float, float], by_mac: dict[str, Any], trained: list[str]
) -> TypeCheck:
    info = by_mac.get(r.device)
    if info is None:
        return TypeCheck(r, UNKNOWN_DEVICE)
    registered = registered_types(info)
    verdict = type_verdict(r, registered, trained)
    check = TypeCheck(r, verdict, info.device_id, registered[0] if registered else None)
    if verdict == MISMATCH:
        check.finding = _mismatch_finding(r, info, check.registered or "", span)
    return check


def _mismatch_finding(r: Identification, info: Any, registered: str, span: tuple[float, float]) -> Any:
    from fleetwarden.core.findings import Finding

    return Finding(
        entity=info.device_id,
        category=MISMATCH_CATEGORY,
        detector=MISMATCH_DETECTOR,
        score=r.confidence,  # calibrated: how likely the traffic is the other type's
        first_seen=span[0],
        last_seen=span[1],
        evidence=[
            f"registered as {registered}, traffic looks like {r.device_type} (confidence {r.confidence:.2f})",
            f"capture {Path(r.path).name[:200]}, device {r.device}",
        ],
        mitre=["T1036", "T1200"],
        ip=info.ip,
        mac=r.device,
        device_id=info.device_id,
        attributes={"registered": registered, "identified": r.device_type, "confidence": r.confidence},
    )


def _record_mismatches(store: Any, findings: list[Any], ctx: Any, actor: str) -> None:
    """The findings and their incidents, joined to the devices' open stories, in one transaction
    (audited by the store as ``results.record``)."""
    if not findings:
        return
    from fleetwarden.app.session import join_stories

    incidents = join_stories(store, findings, ctx)
    store.record_results(CHECK_SOURCE, findings, incidents, actor=actor, replace_stories=True)
