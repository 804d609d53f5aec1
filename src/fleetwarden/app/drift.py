"""Model drift of the flow model: is what it scores now distributed like what it was trained on?

At ``train`` the model's own scores of its training flows give the **reference**: the quantile bin
edges of the score (at most 10 bins, :func:`fleetwarden.control.metrics.quantile_edges`) and each
bin's share, stored in ``model.json`` under ``drift_reference`` (plain JSON, see
:func:`reference_of`).  Per-feature reference shares are the model's ``train_fractions`` table.

Whatever then scores flows with the model (``fleetwarden score``, and every
:class:`~fleetwarden.app.session.DetectionSession`: analyze, watch, worker, demo) counts the live
scores into the same bins and the live flows' feature bins (:class:`DriftMeter`).  ``score``
reports the drift of what it scored in its summary; a session saves its counts to the store's
``models`` table (:meth:`DriftMeter.save`: name ``flow``, version the model's id) where
:func:`fleetwarden.app.metrics.model_drift` reports, per model, the drift over a **recent window**
(the last day by default: what the model sees now) and the **all-time** figure beside it, each
with its flow count.

The stored row (plain JSON, :func:`stored_counts`) keeps the counts **per UTC hour in which they
were counted** (``buckets``), plus the all-time total (``score_counts``, ``feature_counts``,
``flows``, as rows have always had) and what reading them needs without the model (the score
reference, the training feature fractions and names).  Count time, not the flows' event time:
a replay of an old capture (IoT-23 is from 2018-2019) would otherwise fall outside any recent
window and the retention at once, a batch can span hours of event time, and for live traffic the
two differ by seconds.  Size is bounded: hour buckets older than :data:`HOURLY_FOR_S` (two days)
merge into their UTC day, buckets that ended more than :data:`RETENTION_S` (30 days) ago are
dropped (the all-time total keeps their counts), and at most :data:`MAX_BUCKETS` are kept.  A
window reads every bucket that overlaps it (``since`` says where its oldest one starts: a day
window of hour buckets spans 24 to 25 hours; windows reaching past two days are precise to the
day).  A save is one read-add-write transaction (:meth:`fleetwarden.store.Store.update_model`,
the row read ``FOR UPDATE`` on PostgreSQL, serialised writers on SQLite), so two processes
saving at once both count.

Levels (fixed a priori, the usual reading of PSI, not fitted to any data): PSI < 0.1 stable,
< 0.25 moderate, else significant (:func:`fleetwarden.control.metrics.drift_level`).

Blind spots: a row saved before windows existed (only the all-time total) is read as one bucket
at the hour of its last save, so for one window (a day) after that save the recent figure includes
that older history; such a row's figures are the ones it saved (recomputed after its next save).
A window with no scored flows reports no level (None), not "stable".  A model directory written
before drift references has no score reference (its feature drift is still reported; retrain to
get the score's).  Feature drift is measured on a systematic sample of each batch.  PSI compares
distributions only: a change in *which* flows are malicious at the same score mix is invisible.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetwarden.control import metrics as m
from fleetwarden.detection.models import psi as feature_psi

__all__ = [
    "DRIFT_MODEL_NAME",
    "REFERENCE_KEY",
    "WINDOW_S",
    "DriftMeter",
    "MeteredModel",
    "drift_report",
    "metered",
    "model_id",
    "reference_of",
    "stored_counts",
    "stored_drift",
    "valid_reference",
]

DRIFT_MODEL_NAME = "flow"
REFERENCE_KEY = "drift_reference"
SAMPLE_PER_BATCH = 10_000  # feature drift from a systematic sample of at most this many flows per batch
SAVE_EVERY_S = 60.0  # a long-running session writes its counts to the store at most this often
TOP_FEATURES = 5
MAX_REFERENCE_BINS = 64
KIND = "flow-model-drift"
FORMAT = 2  # 1 (no "format" key): the all-time total only; 2: plus hour/day buckets
BUCKET_S = 3_600  # counts are kept per UTC hour in which they were counted...
DAY_S = 86_400
HOURLY_FOR_S = 2 * DAY_S  # ...and per UTC day once that hour ended more than two days ago
RETENTION_S = 30 * DAY_S  # buckets that ended longer ago are dropped (the all-time total keeps them)
MAX_BUCKETS = 96  # 49 hours and 31 days fit; beyond, the oldest go (a clock far off could add more)
WINDOW_S = DAY_S  # the default recent window (the same day as app.metrics.DRIFT_WINDOW_S)


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


# ---- counts and their buckets (pure) ------------------------------------------------------------
@dataclass(frozen=True)
class _Counts:
    """Score bin counts, feature bin counts (features x bins) and flows of some scored traffic."""

    score: np.ndarray
    features: np.ndarray
    flows: int

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(self.score + other.score, self.features + other.features, self.flows + other.flows)

    def as_json(self, places: int) -> dict[str, Any]:
        return {
            "score_counts": np.round(self.score, places).tolist(),
            "feature_counts": np.round(self.features, places).tolist(),
            "flows": int(self.flows),
        }


def _zero(n_bins: int, shape: tuple[int, ...]) -> _Counts:
    return _Counts(np.zeros(n_bins), np.zeros(shape), 0)


def _counts_of(obj: Any, n_bins: int, shape: tuple[int, ...]) -> _Counts | None:
    """Counts read from stored JSON, None unless they have the expected shapes and finite values."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("flows"), int) or obj["flows"] < 0:
        return None
    try:
        score = np.asarray(obj.get("score_counts"), dtype=np.float64)
        features = np.asarray(obj.get("feature_counts"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if score.shape != (n_bins,) or features.shape != shape:
        return None
    if not (np.isfinite(score).all() and np.isfinite(features).all()):
        return None
    return _Counts(score, features, int(obj["flows"]))


Buckets = dict[tuple[int, int], _Counts]  # (start, span in seconds) -> counts


def _hour(t: float) -> int:
    return int(t // BUCKET_S) * BUCKET_S


def _history_of(
    meta: Mapping[str, Any], saved_at: float | None, n_bins: int, shape: tuple[int, ...]
) -> tuple[_Counts, Buckets] | None:
    """(all-time total, buckets) of a stored row; a row without buckets (format 1) is its total as
    one bucket at the hour of its last save.  None when the total is unreadable."""
    total = _counts_of(meta, n_bins, shape)
    if total is None:
        return None
    if not isinstance(meta.get("buckets"), list):
        return total, ({(_hour(saved_at), BUCKET_S): total} if saved_at is not None and total.flows else {})
    buckets: Buckets = {}
    for b in meta["buckets"]:
        c = _counts_of(b, n_bins, shape)
        start, span = b.get("start"), b.get("span")
        if c is None or not isinstance(start, int) or span not in (BUCKET_S, DAY_S):
            continue  # a bucket not in the expected shape is left out, the total still counts it
        key = (start, span)
        buckets[key] = buckets[key] + c if key in buckets else c
    return total, buckets


def _compacted(buckets: Buckets, now: float) -> Buckets:
    """Hour buckets that ended more than :data:`HOURLY_FOR_S` ago merged into their UTC day,
    buckets that ended more than :data:`RETENTION_S` ago dropped, the newest :data:`MAX_BUCKETS` kept."""
    out: Buckets = {}
    for (start, span), c in buckets.items():
        if start + span <= now - RETENTION_S:
            continue
        if span == BUCKET_S and start + span <= now - HOURLY_FOR_S:
            start, span = start - start % DAY_S, DAY_S
        out[(start, span)] = out[(start, span)] + c if (start, span) in out else c
    newest = sorted(out, reverse=True)[:MAX_BUCKETS]
    return {k: out[k] for k in sorted(newest)}


def _window(buckets: Buckets, cut: float, n_bins: int, shape: tuple[int, ...]) -> tuple[_Counts, int | None]:
    """The counts of the buckets that end after ``cut``, and the start of the oldest of them."""
    chosen = [(start, c) for (start, span), c in buckets.items() if start + span > cut]
    total = _zero(n_bins, shape)
    for _, c in chosen:
        total = total + c
    return total, min((s for s, _ in chosen), default=None)


def _report(
    reference: Mapping[str, Any] | None, train_fractions: np.ndarray, features: list[str], counts: _Counts
) -> dict[str, Any]:
    score_psi = None
    if reference and counts.flows and counts.score.sum() > 0:
        score_psi = m.psi_of_shares(reference["shares"], m.shares_of_counts(counts.score.tolist()))
    by_feature: dict[str, float] = {}
    if counts.flows:
        values = feature_psi(train_fractions, counts.features / counts.flows)
        by_feature = {name: round(float(v), 4) for name, v in zip(features, values, strict=True)}
    top = dict(sorted(by_feature.items(), key=lambda kv: -kv[1])[:TOP_FEATURES])
    worst = max(top.values()) if top else None
    return {
        "flows": int(counts.flows),
        "psi": score_psi,
        "level": m.drift_level(score_psi),
        "reference": "score" if reference else "none (model trained before drift references: retrain it)",
        "feature_psi_max": worst,
        "feature_level": m.drift_level(worst),
        "top_features": top,
    }


def drift_report(
    model: Any, reference: Mapping[str, Any] | None, score_counts: np.ndarray, feature_counts: np.ndarray, flows: int
) -> dict[str, Any]:
    """``psi`` and ``level`` of the score, the ``top`` features' PSI and the worst feature's level."""
    counts = _Counts(np.asarray(score_counts, dtype=np.float64), np.asarray(feature_counts), int(flows))
    return _report(reference, np.asarray(model.train_fractions_), list(model.features), counts)


# ---- the meter -----------------------------------------------------------------------------------
class DriftMeter:
    """Live score and feature histograms of one model, against its reference."""

    def __init__(self, model: Any, path: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self.path = path
        self.clock = clock
        self.reference = valid_reference((getattr(model, "meta", {}) or {}).get(REFERENCE_KEY))
        self.version = model_id(model)
        self._reset()
        self._saved_at: float | None = None

    def _reset(self) -> None:
        n_bins = len(self.reference["shares"]) if self.reference else 0
        self._empty = _zero(n_bins, np.asarray(self.model.train_fractions_).shape)
        self._hours: dict[int, _Counts] = {}  # UTC hour counted -> counts since the last save

    @property
    def counted(self) -> _Counts:
        """What was counted since the last save: the sum of its hours."""
        total = self._empty
        for c in self._hours.values():
            total = total + c
        return total

    @property
    def score_counts(self) -> np.ndarray:
        return self.counted.score

    @property
    def feature_counts(self) -> np.ndarray:
        return self.counted.features

    @property
    def flows(self) -> int:
        return sum(c.flows for c in self._hours.values())

    def add(self, scores: np.ndarray, codes: np.ndarray, *, at: float | None = None) -> None:
        """Count one scored batch: its scores (every one) and its feature bin codes (a sample), in
        the hour of ``at`` (epoch seconds; default now: the time it is counted)."""
        n = len(scores)
        if not n:
            return
        score = np.zeros_like(self._empty.score)
        if self.reference:
            score = _bin_counts(np.asarray(scores, dtype=np.float64), self.reference["edges"]).astype(np.float64)
        step = max(1, len(codes) // SAMPLE_PER_BATCH)
        features = self.model.binner_.fractions(codes[::step]) * n
        hour = _hour(self.clock() if at is None else at)
        c = _Counts(score, features, n)
        self._hours[hour] = self._hours[hour] + c if hour in self._hours else c

    def report(self) -> dict[str, Any]:
        """The drift of what was counted since the last save (see :func:`drift_report`)."""
        counted = self.counted
        return drift_report(self.model, self.reference, counted.score, counted.features, counted.flows)

    # ---- the store -----------------------------------------------------------------------------
    def save(self, store: Any, *, force: bool = False) -> None:
        """Add the counts made since the last save to the store's row of this model, in one
        transaction (at most every :data:`SAVE_EVERY_S` seconds unless ``force`` or never saved);
        audited as ``model.record``.  When the write fails the counts stay for the next save."""
        now = time.monotonic()
        if not self.flows or (not force and self._saved_at is not None and now - self._saved_at < SAVE_EVERY_S):
            return
        store.update_model(DRIFT_MODEL_NAME, self.version, self.path or "(loaded in memory)", self._merged)
        self._reset()
        self._saved_at = now

    def _merged(self, old: Mapping[str, Any] | None, saved_at: float | None) -> dict[str, Any]:
        """The row to store: ``old`` (the stored metadata, read in the same transaction) plus the
        counts since the last save.  Counts in another shape (another reference) are replaced."""
        n_bins, shape = len(self._empty.score), self._empty.features.shape
        history = _history_of(old, saved_at, n_bins, shape) if old and old.get("kind") == KIND else None
        total, buckets = history or (_zero(n_bins, shape), {})
        for hour, c in self._hours.items():
            key = (hour, BUCKET_S)
            buckets[key] = buckets[key] + c if key in buckets else c
            total = total + c
        buckets = _compacted(buckets, self.clock())
        train = np.asarray(self.model.train_fractions_, dtype=np.float64)
        return {
            "kind": KIND,
            "format": FORMAT,
            **total.as_json(3),
            "drift": _report(self.reference, train, list(self.model.features), total),  # all time, as saved
            "reference": self.reference,
            "features": list(self.model.features),
            "train_fractions": np.round(train, 9).tolist(),
            "bucket_s": BUCKET_S,
            "buckets": [{"start": s, "span": span, **c.as_json(3)} for (s, span), c in buckets.items()],
        }


def stored_counts(store: Any, version: str) -> dict[str, Any] | None:
    """The live counts stored for model ``version`` (None when none or not in the expected shape)."""
    for rec in store.list_models():
        if rec.name == DRIFT_MODEL_NAME and rec.version == version:
            meta = rec.meta or {}
            if meta.get("kind") == KIND and isinstance(meta.get("score_counts"), list):
                return meta
    return None


def stored_drift(
    meta: Mapping[str, Any], saved_at: float | None, *, window_s: float = WINDOW_S, now: float | None = None
) -> dict[str, Any]:
    """The drift of a stored row (:meth:`DriftMeter.save`) over the last ``window_s`` seconds before
    ``now`` (``window_s``, ``since``: the oldest counted bucket's start, and the figures of
    :func:`drift_report`), with the all-time figures under ``all_time``."""
    now = time.time() if now is None else now
    cut = now - window_s
    ref = valid_reference(meta.get("reference"))
    features = meta.get("features")
    try:
        train = np.asarray(meta.get("train_fractions"), dtype=np.float64)
    except (TypeError, ValueError):
        train = np.zeros(0)
    ok = isinstance(features, list) and train.ndim == 2 and len(features) == train.shape[0]
    history = _history_of(meta, saved_at, len(ref["shares"]) if ref else 0, train.shape) if ok else None
    if history is None:  # a row saved before windows: the all-time figures it saved, one bucket
        saved = dict(meta["drift"]) if isinstance(meta.get("drift"), Mapping) else {}
        in_window = saved_at is not None and _hour(saved_at) + BUCKET_S > cut and bool(saved.get("flows"))
        recent = saved if in_window else {**saved, "flows": 0, "psi": None, "level": None,
                                          "feature_psi_max": None, "feature_level": None, "top_features": {}}  # fmt: skip
        since = _hour(saved_at) if in_window and saved_at is not None else None
        return {"window_s": window_s, "since": since, **recent, "all_time": saved}
    total, buckets = history
    recent_counts, since = _window(buckets, cut, len(total.score), train.shape)
    all_time = _report(ref, train, features, total)
    return {"window_s": window_s, "since": since, **_report(ref, train, features, recent_counts), "all_time": all_time}


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
