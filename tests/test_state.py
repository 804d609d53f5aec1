"""Per-device damped state: exact damped sums, merge, persistence, bounded size."""

from __future__ import annotations

import numpy as np

from fleetwarden.core.events import EventBatch
from fleetwarden.detection.features import FlowFeaturizer
from fleetwarden.detection.state import (
    STATE_DTYPE,
    STATS,
    DeviceStateTable,
    damped_last,
    damped_prefix,
    stable_hash,
)


def _brute(g, t, x, tau):
    out = np.zeros_like(x)
    for i in range(len(t)):
        m = (g == g[i]) & (np.arange(len(t)) < i)
        out[i] = (x[m] * np.exp(-(t[i] - t[m]) / tau)[:, None]).sum(0)
    return out


def test_damped_prefix_matches_brute_force_over_long_spans():
    rng = np.random.default_rng(1)
    g = np.sort(rng.integers(0, 4, 800))
    t = np.concatenate([np.sort(rng.uniform(0, 20_000, (g == k).sum())) for k in range(4)])
    x = rng.uniform(0, 1000, (800, 2))
    for tau in (10.0, 600.0):
        pre, _ = damped_prefix(g, t, x, tau)
        np.testing.assert_allclose(pre, _brute(g, t, x, tau), rtol=1e-6, atol=1e-3)


def test_damped_prefix_with_prior_and_damped_last_match_brute_force():
    # a prior state (sums as of prior_t) continues into the batch; damped_last is what the state stores
    rng = np.random.default_rng(2)
    g = np.sort(rng.integers(0, 5, 600))
    t = np.concatenate([np.sort(rng.uniform(100, 5_000, (g == k).sum())) for k in range(5)])
    x = rng.uniform(0, 50, (600, 3))
    prior = rng.uniform(0, 100, (5, 3))
    prior_t = np.array([0.0, 90.0, -np.inf, 50.0, 99.0])
    for tau in (10.0, 600.0):
        brute = _brute(g, t, x, tau) + prior[g] * np.exp(-(t - prior_t[g]) / tau)[:, None]
        pre, post = damped_prefix(g, t, x, tau, prior, prior_t)
        np.testing.assert_allclose(pre, brute, rtol=1e-6, atol=1e-4)  # blocks drop weights < e^-16
        last = np.r_[np.flatnonzero(g[1:] != g[:-1]), len(g) - 1]
        np.testing.assert_allclose(damped_last(g, t, x, tau, prior, prior_t), pre[last] + x[last], rtol=1e-6)
        np.testing.assert_allclose(post, pre[last] + x[last], rtol=1e-9)


def _flows(n, devices, seed, t0=1.6e9):
    rng = np.random.default_rng(seed)
    return EventBatch.from_columns(
        "flow",
        {
            "ts": np.sort(t0 + rng.uniform(0, 900, n)),
            "id.orig_h": np.array([f"10.0.0.{d}" for d in rng.integers(0, devices, n)]),
            "id.resp_h": np.array([f"8.8.{d % 7}.{d}" for d in rng.integers(0, 200, n)]),
            "id.resp_p": rng.choice([53, 443, 23], n).astype(np.int32),
            "proto": rng.choice(["tcp", "udp"], n),
            "conn_state": rng.choice(["SF", "S0"], n),
            "orig_ip_bytes": rng.integers(40, 5000, n),
            "orig_pkts": rng.integers(1, 9, n),
        },
    )


def test_state_of_device_shards_merges_to_state_of_whole_stream():
    b = _flows(3000, 20, 0)
    dev = b.np("id.orig_h")
    shard = np.isin(dev, [f"10.0.0.{i}" for i in range(10)])
    whole, a, c = FlowFeaturizer(), FlowFeaturizer(), FlowFeaturizer()
    whole.transform(b)
    a.transform(b.filter(shard))
    c.transform(b.filter(~shard))
    merged = a.state.merge(c.state)
    for f in ("key", "n", "last_ts", "first_ts", "dst_bits", "port_bits", "hll_dst", "hll_port"):
        np.testing.assert_array_equal(merged.rows[f], whole.state.rows[f], err_msg=f)
    np.testing.assert_allclose(merged.rows["sums"], whole.state.rows["sums"], rtol=1e-5)


def test_time_split_merge_is_exact_for_linear_statistics():
    b = _flows(2000, 3, 2)
    half = len(b) // 2
    whole, first, second = FlowFeaturizer(), FlowFeaturizer(), FlowFeaturizer()
    whole.transform(b)
    first.transform(b.slice(0, half))
    second.transform(b.slice(half))
    merged = first.state.merge(second.state)
    linear = [STATS.index(s) for s in ("flows", "failed", "out_bytes", "out_pkts", "tcp", "udp")]
    np.testing.assert_allclose(
        merged.rows["sums"][:, :, linear], whole.state.rows["sums"][:, :, linear], rtol=1e-4
    )
    np.testing.assert_array_equal(merged.rows["n"], whole.state.rows["n"])


def test_state_is_small_serialisable_and_counts_distinct():
    assert STATE_DTYPE.itemsize <= 4096
    fz = FlowFeaturizer()
    fz.transform(_flows(5000, 5, 3))
    again = DeviceStateTable.from_bytes(fz.state.to_bytes())
    assert again.rows.tobytes() == fz.state.rows.tobytes()
    est = again.distinct_estimate("dst")
    assert np.all((est > 200 * 0.6) & (est < 200 * 1.4)), est  # 200 distinct destinations per device


def test_stable_hash_is_deterministic_and_spreads():
    h = stable_hash(np.array(["10.0.0.1", "10.0.0.2", "10.0.0.1"], dtype=object))
    assert h[0] == h[2] != h[1]
    assert int(stable_hash(np.array(["10.0.0.1"], dtype=object))[0]) == int(h[0])


def test_pair_table_forgets_idle_pairs_and_merges_by_decay():
    from fleetwarden.detection.state import PAIR_HORIZON, PairStateTable

    t = PairStateTable()
    t.update(np.array([1, 5], dtype=np.uint64), np.array([0.0, 100.0]), np.ones((2, 1, 2)))
    assert len(t) == 2
    last, sums = t.lookup(np.array([5, 7], dtype=np.uint64))
    assert last[0] == 100.0 and last[1] == -np.inf and sums[1].sum() == 0
    # a pair idle for longer than the horizon is dropped at the next update
    t.update(np.array([9], dtype=np.uint64), np.array([PAIR_HORIZON + 50.0]), np.ones((1, 1, 2)))
    assert sorted(t.rows["key"].tolist()) == [5, 9]
    other = PairStateTable()
    other.update(np.array([5], dtype=np.uint64), np.array([700.0]), np.full((1, 1, 2), 2.0))
    merged = t.merge(other)
    row = merged.rows[merged.rows["key"] == 5][0]
    assert row["last_ts"] == 700.0
    np.testing.assert_allclose(row["sums"], 2.0 + np.exp(-600.0 / 600.0), rtol=1e-5)
