"""Per-device state for 1,000,000 devices: bytes per device, update throughput, checkpoint size.

    .venv/bin/python bench/bench_state_memory.py [DEVICES] [FLOWS]

Builds a synthetic flow batch spread over DEVICES originators (default 1,000,000) and
pushes FLOWS flows (default 2,000,000) through :class:`FlowFeaturizer` in batches of 500k,
which updates the :class:`DeviceStateTable` (damped sums, bitmaps, HyperLogLog).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fleetwarden.core.events import EventBatch
from fleetwarden.detection.features import FlowFeaturizer
from fleetwarden.detection.state import STATE_DTYPE, DeviceStateTable


def synthetic(n: int, devices: int, t0: float, rng: np.random.Generator) -> EventBatch:
    dev = rng.integers(0, devices, n)
    orig = np.char.add(
        "10.",
        np.char.add(
            (dev // 65536).astype(str),
            np.char.add(
                ".", np.char.add(((dev // 256) % 256).astype(str), np.char.add(".", (dev % 256).astype(str)))
            ),
        ),
    )
    dst = rng.integers(0, 5000, n)
    return EventBatch.from_columns(
        "flow",
        {
            "ts": np.sort(t0 + rng.uniform(0, 3600, n)),
            "id.orig_h": orig,
            "id.resp_h": np.char.add("93.184.", (dst % 256).astype(str)),
            "id.resp_p": rng.choice([53, 80, 123, 443, 8883], n).astype(np.int32),
            "proto": rng.choice(["tcp", "udp"], n),
            "conn_state": rng.choice(["SF", "S0", "REJ"], n, p=[0.9, 0.07, 0.03]),
            "orig_bytes": rng.integers(0, 5000, n),
            "resp_bytes": rng.integers(0, 50000, n),
            "orig_pkts": rng.integers(1, 20, n),
            "resp_pkts": rng.integers(0, 40, n),
            "history": rng.choice(["ShADadFf", "S", "Dd"], n),
        },
    )


def main() -> None:
    devices = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    flows = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000
    rng = np.random.default_rng(0)
    fz = FlowFeaturizer()
    per = 500_000
    spent = 0.0
    for i in range(0, flows, per):
        b = synthetic(min(per, flows - i), devices, 1.7e9 + i / 100, rng)
        t = time.perf_counter()
        fz.transform(b)
        spent += time.perf_counter() - t
    st = fz.state
    blob = st.to_bytes()
    t = time.perf_counter()
    again = DeviceStateTable.from_bytes(blob)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    merged = st.merge(again)
    t_merge = time.perf_counter() - t
    print(f"devices in state      : {len(st):,}")
    print(f"bytes per device      : {STATE_DTYPE.itemsize} (structured row; target <= 4096)")
    print(f"state size            : {st.rows.nbytes / 1e6:.1f} MB  (checkpoint {len(blob) / 1e6:.1f} MB)")
    print(f"update throughput     : {flows / spent:,.0f} flows/s through features+state ({spent:.2f} s)")
    print(
        f"checkpoint load       : {t_load * 1e3:.0f} ms;  merge of two 1M-device tables: {t_merge:.2f} s "
        f"({len(merged):,} devices)"
    )
    print(f"HLL distinct dst (median over devices): {np.median(st.distinct_estimate('dst')):.1f}")


if __name__ == "__main__":
    main()
