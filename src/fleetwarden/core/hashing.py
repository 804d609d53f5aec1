"""Stable 64-bit hashes of strings, computed column-wise.

Python's ``hash`` changes between processes; these do not, so a device maps to the same state row,
bitmap bit and bus partition in every process, worker and run.  Used by the detection state
(:mod:`fleetwarden.detection.state`) and by the bus's partitioning
(:func:`fleetwarden.bus.jetstream.partition_of`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

__all__ = ["encode_strings", "stable_hash", "stable_hash_encoded"]


def stable_hash(values: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """64-bit hash of strings that is stable across processes (unlike Python's ``hash``).

    Hashes the distinct values only (Arrow dictionary encoding) with a vectorised
    FNV-1a-like polynomial over the UTF-8 bytes, then takes per row.  Values longer than
    :data:`FOLD_BYTES` bytes are hashed through a digest (see :func:`_byte_matrix`), so memory
    stays bounded whatever a hostile device names itself.
    """
    if isinstance(values, np.ndarray):
        values = pa.array(values, type=pa.string(), from_pandas=True)
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    h, idx = stable_hash_encoded(encode_strings(values))
    return h[idx]


def encode_strings(values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """Dictionary encoding of a string column with nulls as ``""`` (what :func:`stable_hash` hashes);
    computed once, it serves every per-distinct-value computation on the column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count:
        values = values.fill_null("")
    return values.dictionary_encode()


def stable_hash_encoded(enc: pa.DictionaryArray) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`stable_hash` of each dictionary value, each row's dictionary index) of an
    :func:`encode_strings` array: ``h[idx]`` is the per-row hash.

    Memory is bounded whatever the strings: values longer than :data:`FOLD_BYTES` are folded
    (:func:`_byte_matrix`) and the distinct values are hashed :data:`_CHUNK_BYTES` of matrix at a
    time, so one megabyte-long device id among ten thousand devices costs kilobytes, not the
    ten gigabytes a (distinct values x longest string) matrix would ask for."""
    idx = enc.indices.to_numpy(zero_copy_only=False)
    strings = enc.dictionary
    m = len(strings)
    if m == 0:
        return np.zeros(0, dtype=np.uint64), idx
    offsets, _ = _buffers(strings)
    longest = int(np.diff(offsets).max())
    rows = max(1, _CHUNK_BYTES // max(1, min(longest, FOLD_BYTES)))
    h = np.empty(m, dtype=np.uint64)
    for start in range(0, m, rows):
        h[start : start + rows] = _fnv(_byte_matrix(strings.slice(start, rows)))
    return h, idx


# Strings up to this many UTF-8 bytes are hashed as they are (every ordinary id, address or name:
# their hashes, kept in checkpoints, never change); a longer one is hashed as its first
# FOLD_BYTES - 32 bytes followed by the 32 hex digits of a BLAKE2b-128 digest of all its bytes.
FOLD_BYTES = 256
_DIGEST_HEX = 32
# byte-matrix bytes hashed per pass: bounds the matrix and its temporaries (~10x) per call
_CHUNK_BYTES = 4 << 20


def _fnv(mat: np.ndarray) -> np.ndarray:
    """The hash of each row of a NUL-padded byte matrix (see :func:`stable_hash`)."""
    h = np.full(len(mat), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    step = np.empty_like(h)
    # byte j of every string as one contiguous row, widened one row at a time
    cols = np.ascontiguousarray(mat.T)
    c = np.empty(len(mat), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in cols:
            np.copyto(c, col, casting="unsafe")
            if col.all():  # no string ends before this byte: no padding to skip
                h ^= c
                h *= prime
                continue
            # padding (NUL) bytes are skipped so the hash does not depend on the batch's longest string
            np.bitwise_xor(h, c, out=step)
            step *= prime
            np.copyto(h, step, where=col != 0)
        # final avalanche (splitmix64) so low bits are usable for bitmaps / HLL buckets
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The value offsets (int64, one more than values) and the data bytes of a string array."""
    large = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    m = len(strings)
    _, off_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64 if large else np.int32)
    offsets = offsets[strings.offset : strings.offset + m + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def _byte_matrix(strings: pa.Array) -> np.ndarray:
    """(len, width) uint8 matrix of the UTF-8 bytes of non-null strings, NUL-padded, straight from
    the Arrow offsets and data buffers (no Python string per value).  A string longer than
    :data:`FOLD_BYTES` is folded to its first ``FOLD_BYTES - 32`` bytes and the hex BLAKE2b-128
    digest of all its bytes, so ``width <= FOLD_BYTES`` however long the strings are."""
    m = len(strings)
    offsets, data = _buffers(strings)
    lengths = np.diff(offsets)
    long = np.flatnonzero(lengths > FOLD_BYTES)
    take = lengths.copy()
    take[long] = FOLD_BYTES - _DIGEST_HEX
    width = FOLD_BYTES if len(long) else max(int(lengths.max()) if m else 0, 1)
    mat = np.zeros((m, width), dtype=np.uint8)
    total = int(take.sum())
    if total:
        if len(long):  # the kept bytes are no longer contiguous in the data: gather them
            packed = np.cumsum(take) - take  # where each string's kept bytes start, packed end to end
            kept = data[np.arange(total) + np.repeat(offsets[:-1] - packed, take)]
        else:
            packed = offsets[:-1] - offsets[0]
            kept = data[offsets[0] : offsets[-1]]
        # row-major position of every byte: its row's start in the matrix plus its place in the string
        pos = np.arange(total) + np.repeat(np.arange(m, dtype=np.int64) * width - packed, take)
        mat.reshape(-1)[pos] = kept
    for r in long.tolist():
        digest = hashlib.blake2b(data[offsets[r] : offsets[r + 1]], digest_size=_DIGEST_HEX // 2)
        mat[r, FOLD_BYTES - _DIGEST_HEX :] = np.frombuffer(digest.hexdigest().encode(), dtype=np.uint8)
    return mat
