"""Per-device streaming state: damped incremental statistics over several time scales.

This is the flow-level counterpart of Kitsune's AfterImage (Mirsky et al., NDSS 2018):
for every device we keep exponentially damped sums of a few per-flow quantities
(flows, failed connections, new destinations, new ports, bytes and packets each way,
inter-arrival time and its square, protocol mix) at three time constants (10 s, 60 s,
600 s).  A damped sum ``S(t) = sum_j x_j * exp(-(t - t_j) / tau)`` is linear, so it can
be decayed to any later time, added across shards, and its ratio with the damped flow
count gives a damped mean (and with the squares, a variance).

Besides the damped sums a device row holds small fixed-size sketches:

* a 512-bit bitmap of destination-address hashes and a 256-bit bitmap of destination
  port hashes: "has this device talked to this destination before?" (a one-hash Bloom
  filter; false "seen" answers grow as the bitmap fills, so it is reset when half full);
* HyperLogLog registers (64 for destinations, 32 for ports): lifetime distinct counts
  with ~13 % / ~18 % standard error, mergeable by element-wise max.

All devices live in ONE numpy structured array (:data:`STATE_DTYPE`, ~460 bytes a row),
sorted by a 64-bit device key, updated in vectorised batches; there is no Python
object per device.  :meth:`DeviceStateTable.to_bytes` / :meth:`from_bytes` checkpoint it
and :meth:`merge` combines the tables of two shards.

Blind spots: the seen-destination bitmap answers "new" only approximately (hash
collisions, resets); the inter-arrival and "new destination" inputs depend on flow
order, so merging two shards that saw the SAME device in interleaved time gives exact
damped counts/bytes but only approximate inter-arrival and novelty statistics (sharding
by device, as the engine does, keeps them exact).
"""

from __future__ import annotations

import numpy as np

# Hashing lives in core (the bus partitions devices with it too); re-exported here for the
# detectors that key their state by it.
from fleetwarden.core.hashing import encode_strings, stable_hash, stable_hash_encoded

__all__ = [
    "PAIR_SCALES",
    "PAIR_STATS",
    "PairStateTable",
    "SCALES",
    "STATE_DTYPE",
    "STATS",
    "DeviceStateTable",
    "damped_last",
    "damped_last_cols",
    "damped_prefix",
    "damped_prefix_cols",
    "encode_strings",
    "stable_hash",
    "stable_hash_encoded",
]

# Time constants (seconds) of the damped statistics: burst, minute, ten minutes.
SCALES: tuple[float, ...] = (10.0, 60.0, 600.0)
# Per-flow quantities accumulated in the damped sums (order = column order).
STATS: tuple[str, ...] = (
    "flows",
    "failed",
    "new_dst",
    "new_port",
    "out_bytes",
    "in_bytes",
    "out_pkts",
    "in_pkts",
    "iat",
    "iat2",
    "tcp",
    "udp",
    "icmp",
)
N_STATS = len(STATS)
N_SCALES = len(SCALES)
DST_BITS = 512
PORT_BITS = 256
HLL_DST = 64
HLL_PORT = 32

STATE_DTYPE = np.dtype(
    [
        ("key", np.uint64),  # stable hash of the device id (or originator address)
        ("first_ts", np.float64),
        ("last_ts", np.float64),
        ("n", np.int64),  # lifetime flows
        ("sums", np.float32, (N_SCALES, N_STATS)),  # damped sums as of last_ts
        ("dst_bits", np.uint64, (DST_BITS // 64,)),
        ("port_bits", np.uint64, (PORT_BITS // 64,)),
        ("hll_dst", np.uint8, (HLL_DST,)),
        ("hll_port", np.uint8, (HLL_PORT,)),
    ]
)

# Block width in units of t/tau for the vectorised damped prefix sums: inside a block the
# weights exp(u - block_start) stay below e^16, so float64 cumulative sums keep ~1e-4
# absolute precision on counts; contributions older than two blocks weigh < e^-16.
_BLOCK = 16.0
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def damped_prefix(
    group: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    tau: float,
    prior_sums: np.ndarray | None = None,
    prior_t: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Causal damped sums for flows sorted by (group, t).

    Returns ``(pre, post_last)``: ``pre[i] = sum_{j<i, same group} x_j exp(-(t_i-t_j)/tau)``
    plus the group's prior sums decayed from ``prior_t``; ``post_last[g]`` is the sum
    including the group's last flow, as of that flow's time (what the state stores).
    ``group`` holds dense ids 0..G-1 (non-decreasing), ``x`` is (n, k).
    """
    n, k = x.shape
    if n == 0:
        return np.zeros((0, k)), np.zeros((0, k))
    pre_t, post_t = damped_prefix_cols(
        group, t, np.ascontiguousarray(x.T), tau, None if prior_sums is None else prior_sums.T, prior_t
    )
    return pre_t.T, post_t.T


def damped_prefix_cols(
    group: np.ndarray,
    t: np.ndarray,
    xt: np.ndarray,
    tau: float,
    prior_sums: np.ndarray | None = None,
    prior_t: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`damped_prefix` on statistics stored row-wise: ``xt`` is (k, n) (one contiguous row per
    statistic), ``prior_sums`` (k, G); returns ``pre`` (k, n) and ``post_last`` (k, G).

    Every statistic's cumulative sum, gather and scaling then runs over contiguous memory; the values
    are bit-for-bit those of the (n, k) layout (the same operations on the same numbers)."""
    xt = np.asarray(xt, dtype=np.float64)
    k, n = xt.shape
    if n == 0:
        return np.zeros((k, 0)), np.zeros((k, 0))
    u = (t - t[0]) / tau
    blk = np.floor(u / _BLOCK)
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(group[1:], group[:-1], out=start[1:])
    g_end = np.flatnonzero(start[1:])  # last flow of every group but the last
    start[1:] |= blk[1:] != blk[:-1]
    seg_first = np.flatnonzero(start)
    seg_len = np.diff(np.r_[seg_first, n])
    r = u - blk * _BLOCK  # position inside the block, in [0, _BLOCK)
    xw = xt * np.exp(r)
    pre = np.cumsum(xw, axis=1)
    seg_last = np.r_[seg_first[1:] - 1, n - 1]
    base = pre[:, seg_first] - xw[:, seg_first]  # cumulative sum before each segment
    # totals of each segment (in its own reference) for the carry into the next block
    seg_total = pre[:, seg_last] - base
    pre -= xw  # exclusive prefix
    # segments are contiguous runs: repeating per-segment values is a copy, not a gather
    pre -= np.repeat(base, seg_len, axis=1)  # ... within the segment
    seg_g = group[seg_first]
    seg_b = blk[seg_first]
    prev_ok = np.zeros(len(seg_first), dtype=bool)
    prev_ok[1:] = (seg_g[1:] == seg_g[:-1]) & (seg_b[1:] == seg_b[:-1] + 1)
    if prev_ok.any():
        # carry is in reference (blk-1)*B: exp(-B) brings it to this block's reference
        carry = np.zeros_like(seg_total)
        carry[:, 1:] = np.where(prev_ok[1:], seg_total[:, :-1] * np.exp(-_BLOCK), 0.0)
        pre += np.repeat(carry, seg_len, axis=1)
    pre *= np.exp(-r)
    if prior_sums is not None and prior_t is not None:
        dt = t - prior_t[group]
        # only flows whose prior still weighs more than e^-40 (the others add nothing in float64)
        ok = np.isfinite(dt) & (dt < 40.0 * tau)
        if ok.all():
            pre += prior_sums[:, group] * np.exp(-np.maximum(dt, 0.0) / tau)
        else:
            rows = np.flatnonzero(ok)
            if len(rows):
                w = np.exp(-np.maximum(dt[rows], 0.0) / tau)
                pre[:, rows] += prior_sums[:, group[rows]] * w
    last = np.r_[g_end, n - 1]
    post_last = pre[:, last] + xt[:, last]
    assert len(last) == int(group[-1]) + 1
    return pre, post_last


def damped_last(
    group: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    tau: float,
    prior_sums: np.ndarray,
    prior_t: np.ndarray,
) -> np.ndarray:
    """Damped sums of each group as of its last flow (what the state stores), for flows sorted by
    (group, t): one weighted per-group reduction, cheaper than the prefix sums of every flow."""
    return damped_last_cols(group, t, np.ascontiguousarray(x.T), tau, prior_sums.T, prior_t).T


def damped_last_cols(
    group: np.ndarray,
    t: np.ndarray,
    xt: np.ndarray,
    tau: float,
    prior_sums: np.ndarray,
    prior_t: np.ndarray,
) -> np.ndarray:
    """:func:`damped_last` on statistics stored row-wise: ``xt`` (k, n), ``prior_sums`` (k, G);
    returns (k, G)."""
    n = len(t)
    last = np.r_[np.flatnonzero(group[1:] != group[:-1]), n - 1]
    t_last = t[last]
    # weights <= 1: no overflow whatever the span of the batch
    w = np.exp(-(t_last[group] - t) / tau)
    starts = np.r_[0, last[:-1] + 1]
    out = np.add.reduceat(xt * w, starts, axis=1)
    dt = np.maximum(t_last - prior_t, 0.0)
    dt = np.where(np.isfinite(dt), dt, np.inf)
    return out + prior_sums * np.exp(-dt / tau)


def _sketch(which: str) -> tuple[str, int, str, int]:
    """(bitmap field, its bits, HyperLogLog field, its registers) of the "dst" or the "port" sketch."""
    if which == "dst":
        return "dst_bits", DST_BITS, "hll_dst", HLL_DST
    return "port_bits", PORT_BITS, "hll_port", HLL_PORT


class DeviceStateTable:
    """Damped per-device statistics for many devices in one structured array.

    Rows are stored in arrival order (appended, with spare capacity, so a new device never
    moves the others) and found through a small sorted index of (key, row) pairs: inserting
    many new devices costs 16 bytes of index per device moved, not a whole ~460-byte row, which
    matters when a flood brings hundreds of thousands of spoofed sources.  :attr:`rows` gives the
    table sorted by key (reordering the storage once when needed); :attr:`data` the storage in
    row-id order, which is what :meth:`ensure` and :meth:`find` index.
    """

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = rows if rows is not None else np.zeros(0, dtype=STATE_DTYPE)

    @property
    def rows(self) -> np.ndarray:
        """The device rows sorted by key (row ids from earlier :meth:`ensure` calls become invalid)."""
        if not self._sorted:
            self._data = self._data[: self._n][self._irows]
            self._irows = np.arange(self._n, dtype=np.intp)
            self._sorted = True
        return self._data[: self._n]

    @rows.setter
    def rows(self, rows: np.ndarray) -> None:
        order = np.argsort(rows["key"], kind="stable")
        self._data = rows[order] if len(rows) and np.any(order != np.arange(len(rows))) else rows
        self._n = len(rows)
        self._ikeys = self._data["key"].copy()
        self._irows = np.arange(self._n, dtype=np.intp)
        self._sorted = True

    @property
    def data(self) -> np.ndarray:
        """The device rows in storage order: ``data[i]`` is the row of row id ``i``."""
        return self._data[: self._n]

    # size / persistence -----------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @staticmethod
    def bytes_per_device() -> int:
        return STATE_DTYPE.itemsize

    def to_bytes(self) -> bytes:
        return self.rows.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceStateTable:
        if len(data) % STATE_DTYPE.itemsize:
            raise ValueError("state bytes are not a whole number of device rows")
        return cls(np.frombuffer(data, dtype=STATE_DTYPE).copy())

    # look-up ----------------------------------------------------------------------------
    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row id (index into :attr:`data`) of each key, -1 where the device is unknown."""
        if not self._n:
            return np.full(len(keys), -1, dtype=np.intp)
        pos = np.minimum(np.searchsorted(self._ikeys, keys), self._n - 1)
        return np.where(self._ikeys[pos] == keys, self._irows[pos], -1)

    def ensure(self, keys: np.ndarray) -> np.ndarray:
        """Insert the unknown keys (fresh rows) and return the row id of every key."""
        return self.ensure_ranked(keys)[0]

    def ensure_ranked(
        self, keys: np.ndarray, distinct: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ensure`, plus each key's rank among the batch's distinct keys (sorting flows by
        rank sorts them by key, whatever the storage order).  ``distinct`` = ``np.unique(keys,
        return_inverse=True)`` when the caller has it cheaper (e.g. from a dictionary encoding)."""
        uniq, rank = np.unique(keys, return_inverse=True) if distinct is None else distinct
        rid = self.find(uniq)
        miss = rid < 0
        if miss.any():
            missing = uniq[miss]  # sorted
            m, n0 = len(missing), self._n
            if n0 + m > len(self._data):
                grown = np.zeros(max(2 * len(self._data), n0 + m, 1024), dtype=STATE_DTYPE)
                # raw bytes: a structured copy with sub-array fields goes field by field, ~10x slower
                grown[:n0].view(np.uint8)[...] = self._data[:n0].view(np.uint8)
                self._data = grown
            fresh = self._data[n0 : n0 + m]  # spare capacity is all zeros
            fresh["key"] = missing
            fresh["first_ts"] = np.nan
            fresh["last_ts"] = np.nan
            new_ids = np.arange(n0, n0 + m, dtype=np.intp)
            # both sides are sorted: one linear insertion into the 16-byte-a-device index
            at = np.searchsorted(self._ikeys, missing)
            if self._sorted and n0 and at[0] < n0:
                self._sorted = False  # new keys fall between old ones: storage no longer in key order
            self._ikeys = np.insert(self._ikeys, at, missing)
            self._irows = np.insert(self._irows, at, new_ids)
            self._n = n0 + m
            rid[miss] = new_ids
        return rid[rank.ravel()], rank.ravel()

    # sketches -----------------------------------------------------------------------------
    def seen_before(
        self,
        rows: np.ndarray,
        h: np.ndarray,
        which: str = "dst",
        *,
        touched: np.ndarray | None = None,
        local: np.ndarray | None = None,
    ) -> np.ndarray:
        """True where the device's bitmap already holds hash ``h`` (before this batch).

        ``touched`` (the distinct rows, any order) and ``local`` (each flow's index into ``touched``)
        are optional: a caller that already grouped its flows by device saves the grouping here."""
        field, nbits, _, _ = _sketch(which)
        bit = (h & np.uint64(nbits - 1)).astype(np.int64)  # nbits: a power of 2
        if touched is None or local is None:
            words = self.data[field][rows, bit >> 6]
        else:
            # gather the few touched rows once (contiguous), then index them flat
            words = self.data[field][touched].reshape(-1)[local * (nbits // 64) + (bit >> 6)]
        return (words >> (bit & 63).astype(np.uint64)) & np.uint64(1) == 1

    def add_to_sketches(
        self,
        rows: np.ndarray,
        h: np.ndarray,
        which: str = "dst",
        *,
        touched: np.ndarray | None = None,
        local: np.ndarray | None = None,
    ) -> None:
        """Set the bitmap bits and raise the HyperLogLog registers of hashes ``h`` of devices ``rows``
        (``touched`` / ``local`` as in :meth:`seen_before`)."""
        field, nbits, hll, m = _sketch(which)
        if touched is None or local is None:
            touched, local = np.unique(rows, return_inverse=True)
            local = local.ravel()
        data = self.data
        nwords = nbits // 64
        # work on a contiguous copy of the touched rows' sketches: unbuffered ufunc.at on a flat
        # contiguous array is several times faster than on the strided field of the whole table
        words = data[field][touched]
        # reset bitmaps that are more than half full: "seen" would otherwise become always-true
        full = _popcount(words).sum(axis=1) > nbits // 2
        if full.any():
            words[full] = 0
        bit = (h & np.uint64(nbits - 1)).astype(np.int64)  # nbits: a power of 2
        np.bitwise_or.at(
            words.reshape(-1), local * nwords + (bit >> 6), np.uint64(1) << (bit & 63).astype(np.uint64)
        )
        data[field][touched] = words
        # HyperLogLog: bucket from the top bits, rank from the rest
        bucket = (h >> np.uint64(58)).astype(np.int64) & (m - 1)  # m: a power of 2
        rest = h & np.uint64((1 << 58) - 1)
        rank = (58 - np.floor(np.log2(rest.astype(np.float64) + 1.0))).astype(np.uint8)
        regs = data[hll][touched]
        np.maximum.at(regs.reshape(-1), local * m + bucket, rank)
        data[hll][touched] = regs

    def distinct_estimate(self, which: str = "dst") -> np.ndarray:
        """HyperLogLog estimate of lifetime distinct destinations (or ports) per row."""
        _, _, field, m = _sketch(which)
        regs = self.rows[field].astype(np.float64)
        alpha = 0.709 if m == 64 else 0.697
        raw = alpha * m * m / np.sum(2.0**-regs, axis=1)
        zeros = (regs == 0).sum(axis=1)
        small = (raw <= 2.5 * m) & (zeros > 0)
        with np.errstate(divide="ignore"):
            lin = m * np.log(m / np.maximum(zeros, 1))
        return np.where(small, lin, raw)

    # damped sums ----------------------------------------------------------------------------
    def decayed_sums(self, at: float | np.ndarray) -> np.ndarray:
        """(devices, scales, stats) damped sums decayed from each row's last_ts to ``at``."""
        dt = np.maximum(np.asarray(at, dtype=np.float64) - self.rows["last_ts"], 0.0)
        dt = np.where(np.isfinite(dt), dt, np.inf)
        scales = np.asarray(SCALES)
        return self.rows["sums"] * np.exp(-dt[:, None] / scales[None, :])[:, :, None]

    # merge ------------------------------------------------------------------------------------
    def merge(self, other: DeviceStateTable) -> DeviceStateTable:
        """State of the union of two shards' streams (see module doc for what is exact)."""
        a, b = self.rows, other.rows
        keys = np.union1d(a["key"], b["key"])
        out = np.zeros(len(keys), dtype=STATE_DTYPE)
        out["key"] = keys
        out["first_ts"] = np.nan
        out["last_ts"] = np.nan
        ia = np.searchsorted(keys, a["key"])
        ib = np.searchsorted(keys, b["key"])
        last = np.full(len(keys), -np.inf)
        last[ia] = a["last_ts"]
        last[ib] = np.maximum(last[ib], b["last_ts"])
        out["last_ts"] = last
        first = np.full(len(keys), np.inf)
        first[ia] = a["first_ts"]
        first[ib] = np.minimum(first[ib], b["first_ts"])
        out["first_ts"] = first
        scales = np.asarray(SCALES)
        sums = np.zeros((len(keys), N_SCALES, N_STATS), dtype=np.float64)
        for src, idx in ((a, ia), (b, ib)):
            dt = np.maximum(last[idx] - src["last_ts"], 0.0)
            sums[idx] += src["sums"] * np.exp(-dt[:, None] / scales[None, :])[:, :, None]
            out["n"][idx] += src["n"]
        out["sums"] = sums
        for f in ("dst_bits", "port_bits"):
            out[f][ia] |= a[f]
            out[f][ib] |= b[f]
        for f in ("hll_dst", "hll_port"):
            out[f][ia] = np.maximum(out[f][ia], a[f])
            out[f][ib] = np.maximum(out[f][ib], b[f])
        return DeviceStateTable(out)


def _popcount(words: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    b = words.view(np.uint8).reshape(*words.shape, 8)
    return np.unpackbits(b, axis=-1).sum(axis=(-1, -2)).reshape(words.shape)


# ---------------------------------------------------------------------------------------------
# per-(device, destination, port) context
# ---------------------------------------------------------------------------------------------
# Time constants of the pair statistics and what they count: attempts, and TCP attempts that
# never completed a handshake (a SYN nobody answered, a reset): persistent failure to one
# service is what C&C retries, floods and dead-drop polling look like, while a benign device's
# repeats to its servers mostly succeed.
PAIR_SCALES: tuple[float, ...] = (600.0,)
PAIR_STATS: tuple[str, ...] = ("flows", "tcp_failed")
# A pair idle for longer than this is forgotten (its damped sums weigh < e^-6 at 600 s): the
# table stays bounded by the pairs active in the last hour, and "seconds since the previous
# attempt to this pair" saturates at this horizon.
PAIR_HORIZON = 3600.0
PAIR_DTYPE = np.dtype(
    [
        ("key", np.uint64),  # hash of (device, destination, port, protocol)
        ("last_ts", np.float64),
        ("sums", np.float32, (len(PAIR_SCALES), len(PAIR_STATS))),  # damped sums as of last_ts
    ]
)


class PairStateTable:
    """Damped attempt and failure counts per (device, destination, port, protocol), sorted by key.

    24 bytes a pair; pairs idle for :data:`PAIR_HORIZON` seconds are dropped at each update,
    so the size follows the pairs active in the last hour (a scanning device brings many,
    briefly).  Mergeable across shards by key (sums decayed to the later ``last_ts`` and added).
    """

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = rows if rows is not None else np.zeros(0, dtype=PAIR_DTYPE)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(last_ts, sums) of each key; -inf and zeros where the pair is unknown."""
        pos = np.searchsorted(self.rows["key"], keys)
        pos_c = np.minimum(pos, max(len(self.rows) - 1, 0))
        hit = self.rows["key"][pos_c] == keys if len(self.rows) else np.zeros(len(keys), dtype=bool)
        last = np.where(hit, self.rows["last_ts"][pos_c] if len(self.rows) else -np.inf, -np.inf)
        sums = np.zeros((len(keys), len(PAIR_SCALES), len(PAIR_STATS)))
        if len(self.rows):
            sums[hit] = self.rows["sums"][pos_c[hit]]
        return last, sums

    def update(self, keys: np.ndarray, last_ts: np.ndarray, sums: np.ndarray) -> None:
        """Replace/insert the rows of ``keys`` (unique, sorted) and drop idle pairs."""
        fresh = np.zeros(len(keys), dtype=PAIR_DTYPE)
        fresh["key"], fresh["last_ts"], fresh["sums"] = keys, last_ts, sums
        rows = self.rows
        # both sides are sorted by key: replace the known pairs in place, insert the others
        pos = np.searchsorted(rows["key"], keys)
        hit = rows["key"][np.minimum(pos, len(rows) - 1)] == keys if len(rows) else np.zeros(len(keys), bool)
        if hit.any():
            rows = rows.copy()
            rows[pos[hit]] = fresh[hit]
        rows = np.insert(rows, pos[~hit], fresh[~hit]) if not hit.all() else rows
        now = float(np.max(rows["last_ts"])) if len(rows) else 0.0
        keep = rows["last_ts"] >= now - PAIR_HORIZON
        self.rows = rows if keep.all() else rows[keep]

    def merge(self, other: PairStateTable) -> PairStateTable:
        rows = np.concatenate([self.rows, other.rows])
        if not len(rows):
            return PairStateTable()
        rows = rows[np.lexsort((rows["last_ts"], rows["key"]))]
        keys, start = np.unique(rows["key"], return_index=True)
        end = np.r_[start[1:], len(rows)]
        last = rows["last_ts"][end - 1]
        dt = np.maximum(last[np.repeat(np.arange(len(keys)), end - start)] - rows["last_ts"], 0.0)
        w = np.exp(-dt[:, None] / np.asarray(PAIR_SCALES)[None, :])[:, :, None]
        sums = np.add.reduceat(rows["sums"] * w, start, axis=0)
        out = np.zeros(len(keys), dtype=PAIR_DTYPE)
        out["key"], out["last_ts"], out["sums"] = keys, last, sums
        return PairStateTable(out)
