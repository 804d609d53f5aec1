"""Model drift: PSI of the flow model's scores (and top features) between its training reference and
what it scores now, at ``score``, in every detection session, and in ``fleetwarden metrics``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import need_data
from fleetwarden.app.drift import valid_reference
from fleetwarden.app.metrics import prometheus_text, security_metrics
from fleetwarden.app.modeling import score, train
from fleetwarden.app.models import load_flow_model
from fleetwarden.app.stores import store_at
from fleetwarden.cli import app
from fleetwarden.control.metrics import drift_level, psi_of_shares, quantile_edges, shares_of_counts

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
