"""Model drift: PSI of the flow model's scores (and top features) between its training reference and
what it scores now, at ``score``, in every detection session, and in ``fleetwarden metrics``."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from conftest import need_data
from fleetwarden.app.drift import DRIFT_MODEL_NAME, MAX_BUCKETS, DriftMeter, valid_reference
from fleetwarden.app.metrics import model_drift, prometheus_text, security_metrics
from fleetwarden.app.modeling import flow_batches, score, train
from fleetwarden.app.models import load_flow_model
from fleetwarden.app.stores import store_at
from fleetwarden.cli import app
from fleetwarden.control.metrics import drift_level, psi_of_shares, quantile_edges, shares_of_counts
from fleetwarden.sources import ReadStats
from fleetwarden.store import open_store

runner = CliRunner()


@pytest.fixture(scope="module")
def honeypot_model(tmp_path_factory):
    """A model trained on IoT-23's Amazon Echo honeypot capture (benign), and that capture."""
    capture = need_data("iot23", "CTU-Honeypot-Capture-5-1-labeled.csv")
    model_dir = tmp_path_factory.mktemp("drift") / "model"
    train([capture], model_dir)
    return model_dir, capture


def test_reference_is_stored_as_json_quantile_histogram(honeypot_model):
    model_dir, _ = honeypot_model
    ref = json.loads((model_dir / "model.json").read_text())["drift_reference"]
    assert ref["flows"] == 1374
    assert ref["edges"] == sorted(ref["edges"]) and 2 <= len(ref["edges"]) <= 9
    assert sum(ref["shares"]) == pytest.approx(1.0) and len(ref["shares"]) == len(ref["edges"]) + 1
    assert max(ref["shares"]) < 0.2  # quantile bins: about a tenth each
    assert load_flow_model(model_dir).meta["drift_reference"] == ref


def test_score_same_capture_is_stable_mirai_is_significant(honeypot_model, tmp_path):
    model_dir, capture = honeypot_model
    same = score([capture], model_dir, tmp_path / "same.csv")["drift"]
    assert same["score_psi"] < 0.01 and same["level"] == "stable" and same["feature_level"] == "stable"
    mirai = need_data("iot23", "CTU-Malware-Capture-34-1-labeled.csv")
    other = score([mirai], model_dir, tmp_path / "mirai.csv")["drift"]
    assert other["score_psi"] >= 0.25 and other["level"] == "significant"
    assert other["psi_max"] >= 0.25


def test_sessions_save_drift_and_metrics_report_it_per_model(honeypot_model, tmp_path):
    """analyze --model --db counts the live scores; ``fleetwarden metrics`` reports drift per model."""
    model_dir, capture = honeypot_model
    mirai = need_data("iot23", "CTU-Malware-Capture-34-1-labeled.csv")
    levels = {}
    for name, path in (("same", capture), ("mirai", mirai)):
        url = f"sqlite:///{tmp_path / name}.db"
        res = runner.invoke(app, ["analyze", str(path), "--model", str(model_dir), "--db", url, "--json"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["metrics", "--json", "--db", url])
        assert res.exit_code == 0, res.output
        models = json.loads(res.stdout)["drift"]["models"]
        assert len(models) == 1
        (key, d), = models.items()
        assert key.startswith("flow@") and d["path"] == str(model_dir.resolve())
        levels[name] = (d["level"], d["psi"], d["flows"])
        if name == "mirai":
            assert "fleetwarden_flow_model_score_psi{model=" in runner.invoke(
                app, ["metrics", "--prometheus", "--db", url]
            ).stdout
    assert levels["same"][0] == "stable" and levels["same"][1] < 0.1 and levels["same"][2] == 1374
    assert levels["mirai"][0] == "significant" and levels["mirai"][1] >= 0.25 and levels["mirai"][2] == 23145


def test_counts_accumulate_across_runs_in_one_store(honeypot_model, tmp_path):
    model_dir, capture = honeypot_model
    url = f"sqlite:///{tmp_path / 'acc.db'}"
    for _ in range(2):
        assert runner.invoke(app, ["analyze", str(capture), "--model", str(model_dir), "--db", url]).exit_code == 0
    with store_at(url) as store:
        (d,) = security_metrics(store)["drift"]["models"].values()
        text = prometheus_text(security_metrics(store))
    assert d["flows"] == 2 * 1374 and d["level"] == "stable"
    assert "fleetwarden_flow_model_score_psi" in text


def test_the_last_record_of_a_run_saves_every_count(honeypot_model, tmp_path):
    """Saves are at most once a minute, but the last record of a run (``final``: analyze, watch,
    the worker's and the API's shutdown) saves what was counted since: nothing is left in memory."""
    from fleetwarden.app.drift import stored_counts
    from fleetwarden.app.session import DetectionSession

    model_dir, capture = honeypot_model
    with store_at(f"sqlite:///{tmp_path / 'tail.db'}") as store:
        session = DetectionSession(model=str(model_dir), store=store, source="t")
        batches = [b.slice(i, 200) for b in flow_batches(capture, False, ReadStats()) for i in range(0, len(b), 200)]
        half = len(batches) // 2
        assert half > 0
        session.run(batches[:half], flush=False)
        session.record()  # the first save
        session.run(batches[half:])
        session.record()  # within the minute: kept for later
        kept = session.drift.flows
        assert kept > 0
        session.record(final=True)
        assert session.drift.flows == 0
        assert stored_counts(store, session.drift.version)["flows"] == 1374


def test_older_model_dir_without_reference_still_loads_and_reports_features(honeypot_model, tmp_path):
    model_dir, capture = honeypot_model
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((model_dir / "model.json").read_text())
    del meta["drift_reference"]
    (old / "model.json").write_text(json.dumps(meta))
    (old / "estimators.npz").write_bytes((model_dir / "estimators.npz").read_bytes())
    drift = score([capture], old, tmp_path / "s.csv")["drift"]
    assert drift["score_psi"] is None and drift["level"] is None
    assert drift["feature_level"] == "stable"


@pytest.mark.parametrize(
    "ref",
    [
        None,
        "edges",
        {"edges": [0.5, 0.2], "shares": [0.3, 0.3, 0.4]},  # unsorted
        {"edges": [0.2], "shares": [1.0]},  # one share short
        {"edges": [0.2], "shares": [-1.0, 2.0]},
        {"edges": [float("nan")], "shares": [0.5, 0.5]},
        {"edges": list(range(100)), "shares": [0.0] * 101},  # too many bins
        {"edges": ["a"], "shares": [0.5, 0.5]},
    ],
)
def test_hostile_reference_is_ignored(ref):
    assert valid_reference(ref) is None


def test_psi_pieces_and_levels_fixed_a_priori():
    assert valid_reference({"edges": [0.2, 0.4], "shares": [0.3, 0.3, 0.4]}) is not None
    assert quantile_edges(list(range(100)), 10) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    assert quantile_edges([]) == []
    assert shares_of_counts([1, 3]) == [0.25, 0.75] and shares_of_counts([0, 0]) == [0.0, 0.0]
    assert psi_of_shares([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi_of_shares([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5), abs=1e-4)
    assert psi_of_shares([1.0, 0.0], [0.0, 1.0]) < 20  # empty bins floored: finite
    with pytest.raises(ValueError):
        psi_of_shares([1.0], [0.5, 0.5])
    assert [drift_level(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, None)] == [
        "stable", "stable", "moderate", "moderate", "significant", None,
    ]  # fmt: skip


# ---------------------------------------------------------------------------- recent window, old rows, concurrent saves

HOUR, DAY = 3600, 86400


def _scored(model, path):
    """(scores, feature bin codes) of every flow of ``path`` scored by ``model``."""
    model.reset_stream()
    out = [model.score_batch_arrow(b, full_reasons=False) for b in flow_batches(path, False, ReadStats())]
    return np.concatenate([o[0] for o in out]), np.vstack([o[3] for o in out])


@pytest.fixture(scope="module")
def scored(honeypot_model):
    """The honeypot model, and its scores of its own capture (benign) and of IoT-23 Mirai 34-1."""
    model_dir, capture = honeypot_model
    model = load_flow_model(model_dir)
    mirai = need_data("iot23", "CTU-Malware-Capture-34-1-labeled.csv")
    return model_dir, model, _scored(model, capture), _scored(model, mirai)


def test_recent_window_sees_a_shift_that_the_all_time_figure_dilutes(scored, tmp_path):
    """A week of hourly traffic like the training capture, then three hours of Mirai: the last day
    is significant drift, the all-time figure (where Mirai is a tenth of the flows) much less."""
    model_dir, model, (same_s, same_c), (mirai_s, mirai_c) = scored
    now = time.time()
    meter = DriftMeter(model, str(model_dir))
    with open_store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        for hours_ago in range(7 * 24, 3, -1):
            meter.add(same_s, same_c, at=now - hours_ago * HOUR)
            if hours_ago % 24 == 0:  # a save per simulated day: each adds to the stored buckets
                meter.save(store, force=True)
        third = len(mirai_s) // 3 + 1
        for i, hours_ago in enumerate((2.5, 1.5, 0.5)):
            meter.add(mirai_s[i * third : (i + 1) * third], mirai_c[i * third : (i + 1) * third], at=now - hours_ago * HOUR)
        meter.save(store, force=True)

        (day,) = security_metrics(store, now=now)["drift"]["models"].values()
        (last3,) = model_drift(store, 3 * HOUR, now=now).values()
        (week,) = model_drift(store, 8 * DAY, now=now).values()
        text = prometheus_text(security_metrics(store, now=now))
        (row,) = [r for r in store.list_models() if r.name == DRIFT_MODEL_NAME]
    n_same, n_mirai = len(same_s), len(mirai_s)
    assert day["window_s"] == DAY and day["flows"] == 21 * n_same + n_mirai  # hours 24..4 ago (the hour
    # holding "24 h ago" overlaps the window: it is counted, and ``since`` says so), and Mirai
    assert day["since"] == (now - DAY) // HOUR * HOUR
    assert day["all_time"]["flows"] == (7 * 24 - 3) * n_same + n_mirai == week["flows"]
    assert day["level"] == "significant" and day["psi"] >= 0.25
    assert day["all_time"]["psi"] < day["psi"] / 2 and day["all_time"]["level"] != "significant"
    assert week["psi"] == day["all_time"]["psi"]  # a window over everything is the all-time figure
    assert last3["flows"] == n_mirai and last3["psi"] > day["psi"] and last3["since"] == (now - 2.5 * HOUR) // HOUR * HOUR
    print(f"\nPSI last 3 h {last3['psi']}, last day {day['psi']}, all time {day['all_time']['psi']}")
    assert f'fleetwarden_flow_model_score_psi_all_time{{model="flow@{meter.version}"}}' in text
    assert f'fleetwarden_flow_model_drift_flows{{model="flow@{meter.version}",span="window"}} {float(day["flows"])}' in text
    # bounded: hours older than two days merged into UTC days; plain JSON
    buckets = row.meta["buckets"]
    assert len(buckets) <= MAX_BUCKETS and {b["span"] for b in buckets} == {HOUR, DAY}
    assert all(b["start"] + b["span"] > now - 2 * DAY - DAY for b in buckets if b["span"] == HOUR)
    assert sum(b["flows"] for b in buckets) == row.meta["flows"] == day["all_time"]["flows"]
    assert len(json.dumps(row.meta)) < 1_000_000


def test_row_saved_before_windows_is_read_then_merged(scored, tmp_path):
    """A row in the old format (the all-time total and the report saved with it) still reads, as one
    bucket at the hour of its last save; the next save keeps its counts in the all-time total."""
    model_dir, model, (same_s, same_c), (mirai_s, mirai_c) = scored
    old = DriftMeter(model, str(model_dir))
    old.add(same_s, same_c)
    legacy = {
        "kind": "flow-model-drift",
        "score_counts": np.round(old.score_counts, 3).tolist(),
        "feature_counts": np.round(old.feature_counts, 3).tolist(),
        "flows": old.flows,
        "drift": old.report(),
    }
    with open_store(f"sqlite:///{tmp_path / 'old.db'}") as store:
        store.record_model(DRIFT_MODEL_NAME, old.version, str(model_dir), legacy)
        (now_d,) = model_drift(store).values()
        (later,) = model_drift(store, now=time.time() + 3 * DAY).values()
        new = DriftMeter(model, str(model_dir))
        new.add(mirai_s, mirai_c)
        new.save(store)
        (merged,) = model_drift(store).values()
    assert now_d["flows"] == now_d["all_time"]["flows"] == len(same_s) and now_d["level"] == "stable"
    assert later["flows"] == 0 and later["level"] is None and later["all_time"]["level"] == "stable"
    assert merged["all_time"]["flows"] == merged["flows"] == len(same_s) + len(mirai_s)
    assert merged["all_time"]["psi"] > now_d["psi"] and merged["top_features"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    """(url, schema) of a fresh database: a SQLite file, or a scratch schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}", None
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"fw_test_drift_{uuid.uuid4().hex[:12]}"
    open_store(url, schema=schema).close()
    try:
        yield url, schema
    finally:
        eng = sa.create_engine(url)
        with eng.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        eng.dispose()


def test_concurrent_saves_lose_no_count(scored, store_url):
    """Four sessions (each its own store connection pool) save at once, twelve times each: the
    stored total is the sum of what they counted (a read, add, write in one transaction)."""
    model_dir, model, (same_s, same_c), _ = scored
    url, schema = store_url
    sessions, saves = 4, 12
    start = threading.Barrier(sessions)
    errors: list[BaseException] = []

    def session(k: int) -> None:
        try:
            with open_store(url, schema=schema) as store:
                meter = DriftMeter(model, str(model_dir))
                start.wait()
                for i in range(saves):
                    n = 100 + 37 * k + i  # every session and save a different number of flows
                    meter.add(same_s[:n], same_c[:n])
                    meter.save(store, force=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    expected = sum(100 + 37 * k + i for k in range(sessions) for i in range(saves))
    with open_store(url, schema=schema) as store:
        (d,) = model_drift(store).values()
        (row,) = [r for r in store.list_models() if r.name == DRIFT_MODEL_NAME]
        audited = [e for e in store.audit_entries() if e.action == "model.record"]
    assert d["all_time"]["flows"] == expected and d["flows"] == expected
    assert sum(b["flows"] for b in row.meta["buckets"]) == expected
    assert len(audited) == sessions * saves
