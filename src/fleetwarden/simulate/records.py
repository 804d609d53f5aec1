"""Vectorised record builders shared by normal behaviour and scenarios.

Every builder takes numpy arrays (one entry per record) and returns a column dict in the
shape of one event kind's schema.  Zeek-like details of flows (packet counts, IP bytes,
``history``, ``conn_state``) are derived here from bytes and state so that every producer of
flows gets them consistent.  String columns are numpy object arrays; the fleet turns the
collected parts into Arrow tables once at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.events import EventBatch, schema_for

TCP, UDP, ICMP = 0, 1, 2
PROTO_NAMES = np.array(["tcp", "udp", "icmp"], dtype=object)
SF, S0, REJ, OTH = 0, 1, 2, 3
STATE_NAMES = np.array(["SF", "S0", "REJ", "OTH"], dtype=object)
_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_MSS = 1448.0  # TCP payload per segment with timestamps
_TCP_HDR = 52  # IP 20 + TCP 32 (timestamps)
_UDP_HDR = 28

Cols = dict[str, Any]


def full(n: int, value: Any) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = value
    return out


def _obj(value: Any, n: int) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.shape == (n,):
        return value if value.dtype == object else value.astype(object)
    return full(n, value)


def random_tokens(rng: np.random.Generator, n: int, length: int, alphabet: bytes) -> np.ndarray:
    """``n`` random strings of ``length`` characters drawn from ``alphabet`` (vectorised)."""
    table = np.frombuffer(alphabet, dtype=np.uint8)
    if n == 0:
        return np.empty(0, dtype=object)
    codes = table[rng.integers(0, len(table), size=(n, length))]
    return np.asarray(codes.view(f"S{length}").ravel().astype(f"U{length}"), dtype=object)


def zeek_uids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zeek-style connection uids ('C' + 17 base62 characters) as fixed-width bytes (no Python objects)."""
    codes = np.empty((n, 18), dtype=np.uint8)
    codes[:, 0] = ord("C")
    codes[:, 1:] = _B62[rng.integers(0, len(_B62), size=(n, 17))]
    return codes.view("S18").ravel()


def ips_from_ints(values: np.ndarray) -> np.ndarray:
    """Dotted-quad strings for uint32 addresses (vectorised through Arrow)."""
    v = values.astype(np.uint64)
    parts = [pc.cast(pa.array(((v >> s) & 255).astype(np.int64)), pa.string()) for s in (24, 16, 8, 0)]
    joined = pc.binary_join_element_wise(*parts, ".")
    return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)


def lognormal(rng: np.random.Generator, median: float | np.ndarray, sigma: float, n: int) -> np.ndarray:
    return np.asarray(median) * np.exp(rng.normal(0.0, sigma, size=n))


def flows(
    rng: np.random.Generator,
    ts: np.ndarray,
    orig_h: Any,
    resp_h: Any,
    resp_p: Any,
    proto: int | np.ndarray,
    *,
    orig_bytes: np.ndarray | None = None,
    resp_bytes: np.ndarray | None = None,
    duration: np.ndarray | None = None,
    state: int | np.ndarray = SF,
    service: Any = None,
    orig_p: Any = None,
    device_id: Any = None,
    label: Any = "benign",
    detailed_label: Any = None,
    orig_mac: Any = None,
    resp_mac: Any = None,
    orig_pkts: np.ndarray | None = None,
    uid: np.ndarray | None = None,
) -> Cols:
    """Zeek conn records; failed states (S0/REJ) get zero payload and their packet pattern."""
    n = len(ts)
    proto_a = np.broadcast_to(np.asarray(proto), (n,)).astype(np.int8)
    state_a = np.broadcast_to(np.asarray(state), (n,)).astype(np.int8)
    ok = state_a == SF
    is_tcp = proto_a == TCP
    # a failed TCP handshake carries no payload; an unanswered UDP conversation still sent its own
    ob = np.where(ok | ~is_tcp, np.zeros(n) if orig_bytes is None else np.rint(orig_bytes), 0).astype(
        np.int64
    )
    rb = np.where(ok, np.zeros(n) if resp_bytes is None else np.rint(resp_bytes), 0).astype(np.int64)
    if duration is None:
        duration = np.zeros(n)
    # S0: the SYN is retried after 1 s and 3 s when the scanner waits; duration carries that
    s0_retries = 1 + (duration >= 0.9) + (duration >= 2.9)
    dur = np.where(state_a == REJ, np.minimum(duration, 0.05), duration)
    dur = np.where((state_a == S0) & (s0_retries == 1), 0.0, dur)

    seg_o = np.ceil(ob / _MSS)
    seg_r = np.ceil(rb / _MSS)
    tcp_op = np.select(
        [state_a == SF, state_a == S0, state_a == REJ], [3 + seg_o + np.ceil(seg_r / 2), s0_retries, 1], 1
    )
    tcp_rp = np.select(
        [state_a == SF, state_a == S0, state_a == REJ], [2 + seg_r + np.ceil(seg_o / 2), 0, 1], 0
    )
    udp_op = np.maximum(1, np.ceil(ob / 1472.0))
    udp_rp = np.where(ok & (rb > 0), np.maximum(1, np.ceil(rb / 1472.0)), 0)
    op = np.where(is_tcp, tcp_op, udp_op).astype(np.int64)
    rp = np.where(is_tcp, tcp_rp, udp_rp).astype(np.int64)
    if orig_pkts is not None:
        op = np.where(is_tcp, op, orig_pkts.astype(np.int64))
    hdr = np.where(is_tcp, _TCP_HDR, _UDP_HDR)
    oip = np.where(is_tcp & ~ok, op * 60, ob + op * hdr + np.where(is_tcp, 8, 0))
    rip = np.where(is_tcp & ~ok, rp * 40, rb + rp * hdr)
    if orig_pkts is not None:
        oip = np.where(is_tcp, oip, np.maximum(oip, ob + op * _UDP_HDR))

    hist_tcp = np.select(
        [state_a == S0, state_a == REJ, (ob > 0) & (rb > 0), ob > 0, rb > 0],
        [0, 1, 2, 3, 4],
        5,
    )
    hist_udp = np.where(rb > 0, 6, 7)
    hist_names = np.array(["S", "Sr", "ShADadFf", "ShADaFf", "ShAdDaFf", "ShAaFf", "Dd", "D"], dtype=object)
    history = hist_names[np.where(is_tcp, hist_tcp, hist_udp)]
    if orig_p is None:
        orig_p = rng.integers(32768, 61000, size=n)
    svc = _obj(service, n)
    svc = np.where(ok, svc, None)
    return {
        "ts": np.asarray(ts, dtype=np.float64),
        "uid": zeek_uids(rng, n) if uid is None else uid,
        "id.orig_h": _obj(orig_h, n),
        "id.orig_p": np.broadcast_to(np.asarray(orig_p), (n,)).astype(np.int32),
        "id.resp_h": _obj(resp_h, n),
        "id.resp_p": np.broadcast_to(np.asarray(resp_p), (n,)).astype(np.int32),
        "proto": PROTO_NAMES[proto_a],
        "service": svc,
        "duration": np.round(dur, 6),
        "orig_bytes": ob,
        "resp_bytes": rb,
        "conn_state": STATE_NAMES[state_a],
        "missed_bytes": np.zeros(n, dtype=np.int64),
        "history": history,
        "orig_pkts": op,
        "orig_ip_bytes": oip.astype(np.int64),
        "resp_pkts": rp,
        "resp_ip_bytes": rip.astype(np.int64),
        "orig_l2_addr": _obj(orig_mac, n),
        "resp_l2_addr": _obj(resp_mac, n),
        "device_id": _obj(device_id, n),
        "label": _obj(label, n),
        "detailed_label": _obj(detailed_label, n),
    }


def dns(
    rng: np.random.Generator,
    ts: np.ndarray,
    client: Any,
    resolver: Any,
    query: Any,
    qtype: Any,
    answers: Any,
    *,
    rcode: Any = "NOERROR",
    device_id: Any = None,
    label: Any = "benign",
    detailed_label: Any = None,
    answer_bytes: np.ndarray | None = None,
    client_mac: Any = None,
) -> tuple[Cols, Cols]:
    """DNS records plus the udp/53 flows that carried them (same uid, sizes from the names)."""
    n = len(ts)
    uid = zeek_uids(rng, n)
    q = _obj(query, n)
    qlen = np.fromiter((len(x) for x in q), dtype=np.int64, count=n) if n else np.zeros(0, np.int64)
    ans = _obj(answers, n)
    n_ans = np.fromiter((0 if a is None else a.count(",") + 1 for a in ans), dtype=np.int64, count=n)
    if answer_bytes is None:
        answer_bytes = n_ans * 16
    orig_p = rng.integers(32768, 61000, size=n)
    rec = {
        "ts": np.asarray(ts, dtype=np.float64),
        "uid": uid,
        "id.orig_h": _obj(client, n),
        "id.orig_p": orig_p.astype(np.int32),
        "id.resp_h": _obj(resolver, n),
        "id.resp_p": np.full(n, 53, dtype=np.int32),
        "proto": full(n, "udp"),
        "trans_id": rng.integers(0, 65536, size=n).astype(np.int32),
        "query": q,
        "qtype_name": _obj(qtype, n),
        "rcode_name": _obj(rcode, n),
        "answers": ans,
        "rejected": np.zeros(n, dtype=bool),
        "device_id": _obj(device_id, n),
        "label": _obj(label, n),
        "detailed_label": _obj(detailed_label, n),
    }
    flow = flows(
        rng,
        ts,
        client,
        resolver,
        53,
        UDP,
        orig_bytes=qlen + 18,
        resp_bytes=qlen + 18 + answer_bytes,
        duration=lognormal(rng, 0.012, 0.5, n),
        service="dns",
        orig_p=orig_p,
        device_id=device_id,
        label=label,
        detailed_label=detailed_label,
        orig_mac=client_mac,
        uid=uid,
    )
    return rec, flow


class Parts:
    """Column dicts collected per event kind, turned into sorted EventBatches at the end."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Cols]] = {}

    def add(self, kind: str, cols: Cols) -> None:
        if len(cols["ts"]):
            self.parts.setdefault(kind, []).append(cols)

    def merged(self, kind: str) -> Cols:
        """All parts of a kind concatenated into one column dict (columns absent somewhere -> None)."""
        parts = self.parts.get(kind, [])
        names: list[str] = []
        for p in parts:
            names.extend(k for k in p if k not in names)
        out: Cols = {}
        for name in names:
            chunks = []
            for p in parts:
                n = len(p["ts"])
                chunks.append(p[name] if name in p else full(n, None))
            out[name] = _concat(chunks)
        return out

    def replace(self, kind: str, cols: Cols) -> None:
        self.parts[kind] = [cols]

    def to_batches(self, kinds: Sequence[str]) -> dict[str, EventBatch]:
        out = {}
        for kind in kinds:
            cols = self.merged(kind)
            if not cols:
                out[kind] = EventBatch.empty(kind)
                continue
            order = pa.array(np.argsort(cols["ts"], kind="stable"))
            # sort in Arrow: taking string columns there is far cheaper than on numpy objects
            table_cols = {k: _arrow(v, k, kind).take(order) for k, v in cols.items()}
            if kind == "flow":
                table_cols["local_orig"] = pc.starts_with(table_cols["id.orig_h"], "10.")
                table_cols["local_resp"] = pc.starts_with(table_cols["id.resp_h"], "10.")
            out[kind] = EventBatch.from_columns(kind, table_cols, len(order))
        return out


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    if any(c.dtype == object for c in chunks):
        return np.concatenate([c.astype(object) if c.dtype != object else c for c in chunks])
    return np.concatenate(chunks)


def _arrow(values: np.ndarray, name: str, kind: str) -> pa.Array:
    field = schema_for(kind).field(name)
    if values.dtype.kind == "S":
        return pa.array(values).cast(field.type)
    if values.dtype == object:
        return pa.array(values, type=field.type, from_pandas=True)
    return pa.array(values).cast(field.type)
