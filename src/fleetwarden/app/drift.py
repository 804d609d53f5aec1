"""Model drift of the flow model: is what it scores now distributed like what it was trained on?

At ``train`` the model's own scores of its training flows give the **reference**: the quantile bin
edges of the score (at most 10 bins, :func:`fleetwarden.control.metrics.quantile_edges`) and each
bin's share, stored in ``model.json`` under ``drift_reference`` (plain JSON, see
:func:`reference_of`).  Per-feature reference shares are the model's ``train_fractions`` table.

Whatever then scores flows with the model (``fleetwarden score``, and every
:class:`~fleetwarden.app.session.DetectionSession`: analyze, watch, worker, demo) counts the live
scores into the same bins and the live flows' feature bins (:class:`DriftMeter`).  ``score``
reports the drift in its summary; a session saves its counts to the store's ``models`` table
(:meth:`DriftMeter.save`: name ``flow``, version the model's id) where
:func:`fleetwarden.app.metrics.security_metrics` reports them per model.

Levels (fixed a priori, the usual reading of PSI, not fitted to any data): PSI < 0.1 stable,
< 0.25 moderate, else significant (:func:`fleetwarden.control.metrics.drift_level`).

Blind spots: the live counts of a model accumulate over every saved run (no time window: a shift
that began recently is diluted by older traffic); two processes saving at once may lose one's
counts (read, add, write); a model directory written before drift references has no score
reference (its feature drift is still reported; retrain to get the score's).  PSI compares
distributions only: a change in *which* flows are malicious at the same score mix is invisible.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fleetwarden.control import metrics as m

__all__ = [
    "DRIFT_MODEL_NAME",
    "REFERENCE_KEY",
    "DriftMeter",
    "MeteredModel",
    "drift_report",
    "metered",
    "model_id",
    "reference_of",
    "stored_counts",
    "valid_reference",
]

DRIFT_MODEL_NAME = "flow"
REFERENCE_KEY = "drift_reference"
SAMPLE_PER_BATCH = 10_000  # feature drift from a systematic sample of at most this many flows per batch
SAVE_EVERY_S = 60.0  # a long-running session writes its counts to the store at most this often
TOP_FEATURES = 5
MAX_REFERENCE_BINS = 64


def reference_of(scores: np.ndarray, bins: int = m.PSI_BINS) -> dict[str, Any]:
    """The score reference of a model: quantile ``edges`` of ``scores``, each bin's ``shares``, ``flows``."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) > 200_000:  # the quantiles of a systematic sample: bins need shares, not every row
        s = s[:: len(s) // 200_000]
    edges = m.quantile_edges(np.sort(s).tolist(), bins)
    counts = _bin_counts(np.asarray(scores, dtype=np.float64), edges)
    return {
        "edges": [float(e) for e in edges],
        "shares": [round(v, 9) for v in m.shares_of_counts(counts.tolist())],
        "flows": int(len(scores)),
        "what": "the model's scores of its own training flows, quantile bins (PSI reference)",
    }


def valid_reference(ref: Any) -> dict[str, Any] | None:
    """``ref`` when it is a well-formed score reference (sorted finite edges, one share more than
    edges, shares non-negative), else None: a model directory may come from anywhere."""
    if not isinstance(ref, Mapping):
        return None
    edges, shares = ref.get("edges"), ref.get("shares")
    if not isinstance(edges, list) or not isinstance(shares, list) or len(edges) > MAX_REFERENCE_BINS:
        return None
    if len(shares) != len(edges) + 1 or not all(isinstance(v, int | float) for v in edges + shares):
        return None
    if not all(math.isfinite(v) for v in edges + shares) or any(v < 0 for v in shares):
        return None
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        return None
    return {"edges": [float(v) for v in edges], "shares": [float(v) for v in shares]}


def model_id(model: Any) -> str:
    """A short stable id of a trained model: its creation time and training summary, hashed."""
    meta = getattr(model, "meta", {}) or {}
    blob = json.dumps({k: meta.get(k) for k in ("created", "training")}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _bin_counts(scores: np.ndarray, edges: list[float]) -> np.ndarray:
    s = scores[np.isfinite(scores)]
    return np.bincount(np.searchsorted(np.asarray(edges), s, side="right"), minlength=len(edges) + 1)


class DriftMeter:
    """Live score and feature histograms of one model, against its reference."""

    def __init__(self, model: Any, path: str | None = None) -> None:
        self.model = model
        self.path = path
        self.reference = valid_reference((getattr(model, "meta", {}) or {}).get(REFERENCE_KEY))
        self.version = model_id(model)
        self._reset()
        self._saved_at: float | None = None

    def _reset(self) -> None:
        n_bins = len(self.reference["shares"]) if self.reference else 0
        self.score_counts = np.zeros(n_bins, dtype=np.float64)
        self.feature_counts = np.zeros_like(np.asarray(self.model.train_fractions_, dtype=np.float64))
        self.flows = 0

    def add(self, scores: np.ndarray, codes: np.ndarray) -> None:
        """Count one scored batch: its scores (every one) and its feature bin codes (a sample)."""
        n = len(scores)
        if not n:
            return
        if self.reference:
            self.score_counts += _bin_counts(np.asarray(scores, dtype=np.float64), self.reference["edges"])
        step = max(1, len(codes) // SAMPLE_PER_BATCH)
        self.feature_counts += self.model.binner_.fractions(codes[::step]) * n
        self.flows += n

    def report(self) -> dict[str, Any]:
        """The drift of what was counted (see :func:`drift_report`)."""
        return drift_report(self.model, self.reference, self.score_counts, self.feature_counts, self.flows)

    # ---- the store -----------------------------------------------------------------------------
    def save(self, store: Any, *, force: bool = False) -> None:
        """Add the counts made since the last save to the store's row of this model (at most every
        :data:`SAVE_EVERY_S` seconds unless ``force`` or never saved); audited as ``model.record``."""
        now = time.monotonic()
        if not self.flows or (not force and self._saved_at is not None and now - self._saved_at < SAVE_EVERY_S):
            return
        old = stored_counts(store, self.version)
        if old is not None and len(old["score_counts"]) == len(self.score_counts):
            self.score_counts = self.score_counts + np.asarray(old["score_counts"], dtype=np.float64)
            self.feature_counts = self.feature_counts + np.asarray(old["feature_counts"], dtype=np.float64)
            self.flows += int(old["flows"])
        meta = {
            "kind": "flow-model-drift",
            "score_counts": np.round(self.score_counts, 3).tolist(),
            "feature_counts": np.round(self.feature_counts, 3).tolist(),
            "flows": self.flows,
            "drift": self.report(),
        }
        store.record_model(DRIFT_MODEL_NAME, self.version, self.path or "(loaded in memory)", meta)
        self._reset()
        self._saved_at = now


def stored_counts(store: Any, version: str) -> dict[str, Any] | None:
    """The live counts stored for model ``version`` (None when none or not in the expected shape)."""
    for rec in store.list_models():
        if rec.name == DRIFT_MODEL_NAME and rec.version == version:
            meta = rec.meta or {}
            if meta.get("kind") == "flow-model-drift" and isinstance(meta.get("score_counts"), list):
                return meta
    return None


def drift_report(
    model: Any, reference: Mapping[str, Any] | None, score_counts: np.ndarray, feature_counts: np.ndarray, flows: int
) -> dict[str, Any]:
    """``psi`` and ``level`` of the score, the ``top`` features' PSI and the worst feature's level."""
    score_psi = None
    if reference and flows and score_counts.sum() > 0:
        score_psi = m.psi_of_shares(reference["shares"], m.shares_of_counts(score_counts.tolist()))
    features: dict[str, float] = {}
    if flows:
        features = model.drift_from_fractions(feature_counts / flows)
    top = dict(sorted(features.items(), key=lambda kv: -kv[1])[:TOP_FEATURES])
    worst = max(top.values()) if top else None
    return {
        "flows": int(flows),
        "psi": score_psi,
        "level": m.drift_level(score_psi),
        "reference": "score" if reference else "none (model trained before drift references: retrain it)",
        "feature_psi_max": worst,
        "feature_level": m.drift_level(worst),
        "top_features": top,
    }


class MeteredModel:
    """A flow model that counts what it scores into a :class:`DriftMeter` (the engine sees the
    same ``score_batch`` and ``new_stream``; everything else is the model's)."""

    def __init__(self, model: Any, meter: DriftMeter) -> None:
        self._model = model
        self.drift_meter = meter

    def new_stream(self) -> MeteredModel:
        return MeteredModel(self._model.new_stream(), self.drift_meter)

    def score_batch(self, batch: Any, cohort_of: Any = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        scores, alerts, reasons, codes = self._model.score_batch_arrow(batch, cohort_of)
        self.drift_meter.add(scores, codes)
        return scores, alerts, reasons.to_pylist()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_model", "drift_meter"):  # copy/pickle probe a bare instance
            raise AttributeError(name)
        return getattr(self._model, name)


def metered(model_arg: Any, model: Any) -> tuple[Any, DriftMeter | None]:
    """(the model to score with, its meter): a trained flow model is wrapped in a
    :class:`MeteredModel`; anything else (None, a test double) is returned as it is."""
    if isinstance(model, MeteredModel):
        return model, model.drift_meter
    if model is None or not hasattr(model, "score_batch_arrow") or not hasattr(model, "train_fractions_"):
        return model, None
    path = str(Path(model_arg).resolve()) if isinstance(model_arg, str | Path) else None
    meter = DriftMeter(model, path)
    return MeteredModel(model, meter), meter
