"""The flow model: train, calibrate, score, explain, measure drift; the train/score/evaluate services.

A :class:`FlowModel` combines

* an **unsupervised** model of normal per cohort (HBOS on quantile-binned flow features,
  :mod:`fleetwarden.detection.models`), with per-device histograms that start from the
  cohort's and move to the device's own as benign history accumulates;
* a **supervised** additive classifier (:class:`BinnedLogit`) when the training flows carry
  a ``label`` column (Benign/Malicious, any case);
* a combined score in [0, 1]: the classifier's log-odds plus the anomaly score standardised
  so that 0 is the 99th percentile of benign training flows, squashed by arctan (which
  never saturates, so extreme flows keep ranking above merely unusual ones);
* a **calibrated threshold**: the (1 - target_fpr) quantile of *out-of-fold* scores of the
  benign training flows (folds = training files when there are several), so ``alert``
  means "rarer than target_fpr of benign traffic" on any fleet;
* **explanations**: per flow the top features by contribution (logistic weight of its bin
  plus its HBOS surprise) against the benign baseline bin, as text
  ``"new_dst_60s=47 vs baseline 0; conn_state=S0 vs baseline SF"``;
* **drift**: the training bin fractions are stored; scoring reports PSI per feature.

Model directory: ``model.json`` (features, bins, thresholds, target FPR, training data
summary, library versions, created time) and ``estimators.joblib`` (tables and weights).

Blind spots: flows are scored one by one with their device's context; slow attacks whose
single flows and minute-scale context both look benign (low-and-slow exfiltration,
sparse beacons) are left to the behaviour analytics.  The supervised part can only be
as good as the labels: in IoT-23 malware captures the "Benign" flows come from the
infected device itself.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fleetwarden.detection.features import CATEGORIES, FEATURES, LOG_FEATURES, FlowFeaturizer, device_keys
from fleetwarden.detection.models import HBOS, MAX_BINS, BinnedLogit, QuantileBinner, psi
from fleetwarden.events import EventBatch
from fleetwarden.sources import ReadStats, SourceError, read_events

__all__ = ["FlowModel", "evaluate", "load_model", "score", "train"]

MODEL_JSON = "model.json"
ESTIMATORS = "estimators.joblib"
FORMAT_VERSION = 1
DEFAULT_COHORT = "all"
TOP_REASONS = 3
_SQUASH = 8.0
_CAT_INDEX = {FEATURES.index(n): len(v) for n, v in CATEGORIES.items()}


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
@dataclass
class _FileData:
    path: Path
    X: np.ndarray
    keys: np.ndarray
    label: np.ndarray | None  # 1 = malicious, 0 = benign, -1 = unlabelled row
    detailed: np.ndarray | None
    stats: ReadStats = field(default_factory=ReadStats)


def _flow_batches(path: Path, skip_bad: bool, stats: ReadStats) -> Iterator[EventBatch]:
    for batch in read_events(path, skip_bad=skip_bad, stats=stats):
        if batch.kind == "flow" and len(batch):
            yield batch


def _labels(batch: EventBatch) -> tuple[np.ndarray, np.ndarray]:
    lab = pc.utf8_lower(pc.fill_null(batch["label"], "")).to_numpy(zero_copy_only=False)
    y = np.full(len(lab), -1, dtype=np.int8)
    y[lab == "benign"] = 0
    y[lab == "malicious"] = 1
    det = pc.fill_null(batch["detailed_label"], "-").to_numpy(zero_copy_only=False)
    det = np.where(y == 0, "Benign", np.where(det == "-", "Malicious", det))
    return y, det.astype(object)


def _read_file(path: Path, skip_bad: bool, with_labels: bool) -> _FileData:
    stats = ReadStats()
    featurizer = FlowFeaturizer()  # one independent network per file
    xs, ks, ys, ds = [], [], [], []
    for batch in _flow_batches(path, skip_bad, stats):
        xs.append(featurizer.transform(batch))
        ks.append(device_keys(batch))
        if with_labels:
            y, d = _labels(batch)
            ys.append(y)
            ds.append(d)
    if not xs:
        raise SourceError(path, None, "no flow records in this file")
    return _FileData(
        path,
        np.concatenate(xs),
        np.concatenate(ks),
        np.concatenate(ys) if ys else None,
        np.concatenate(ds) if ds else None,
        stats,
    )


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class FlowModel:
    """Cohort-aware flow scorer; see the module docstring.  Build with :func:`train` or :func:`load_model`."""

    def __init__(self, target_fpr: float = 0.01, prior_flows: float = 200.0, C: float = 0.1) -> None:
        self.target_fpr = target_fpr
        self.prior_flows = prior_flows
        self.C = C
        self.features: tuple[str, ...] = FEATURES
        self._featurizer: FlowFeaturizer | None = None
        self.meta: dict[str, Any] = {}

    # ---- fitting ---------------------------------------------------------------------------
    def _fit_parts(
        self, codes: np.ndarray, y: np.ndarray | None, cohorts: np.ndarray
    ) -> tuple[dict[str, HBOS], BinnedLogit | None, dict[str, tuple[float, float]]]:
        benign = np.ones(len(codes), dtype=bool) if y is None else (y == 0)
        if y is not None and not benign.any():
            benign = y != 1
        hbos: dict[str, HBOS] = {}
        anom_scale: dict[str, tuple[float, float]] = {}
        for c in np.unique(cohorts):
            m = benign & (cohorts == c)
            if not m.any():
                continue
            h = HBOS().fit(codes[m], self.binner_.n_bins_)
            s = h.score(codes[m])
            q50, q99 = np.quantile(s, [0.5, 0.99])
            hbos[str(c)] = h
            anom_scale[str(c)] = (float(q99), float(max((q99 - q50) / 3.0, 1e-3)))
        sup = None
        if y is not None and (y == 1).any() and (y == 0).any():
            m = y >= 0
            sup = BinnedLogit(C=self.C).fit(codes[m], y[m])
        return hbos, sup, anom_scale

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        cohorts: np.ndarray | None = None,
        keys: np.ndarray | None = None,
    ) -> FlowModel:
        """Fit on a feature matrix (rows from :class:`FlowFeaturizer`), labels 1/0/-1 or None."""
        n = len(X)
        cohorts = np.full(n, DEFAULT_COHORT, dtype=object) if cohorts is None else cohorts
        benign = np.ones(n, dtype=bool) if y is None else (y == 0)
        if not benign.any():
            benign = np.ones(n, dtype=bool)
        # bins describe normal traffic: malicious values land in the out-of-range bins
        self.binner_ = QuantileBinner().fit(X[benign], _CAT_INDEX)
        codes = self.binner_.transform(X)
        self.train_fractions_ = self.binner_.fractions(codes)
        # the benign baseline: median value and modal bin of every feature
        self.baseline_value_ = np.median(X[benign], axis=0)
        bf = self.binner_.fractions(codes[benign])
        self.baseline_bin_ = bf.argmax(axis=1)
        # out-of-fold scores of benign flows -> threshold
        oof = self._oof_benign_scores(codes, y, groups, cohorts)
        self.hbos_, self.sup_, self.anom_scale_ = self._fit_parts(codes, y, cohorts)
        self.threshold_ = float(np.quantile(oof, 1.0 - self.target_fpr)) if len(oof) else 0.5
        self.oof_benign_scores_ = np.quantile(oof, np.linspace(0, 1, 101)) if len(oof) else np.zeros(0)
        # per-device histograms (devices seen with benign history in training)
        self.device_counts_: dict[int, np.ndarray] = {}
        self.device_n_: dict[int, int] = {}
        if keys is not None:
            self.learn_devices(codes[benign], keys[benign])
        return self

    def _oof_benign_scores(
        self, codes: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None, cohorts: np.ndarray
    ) -> np.ndarray:
        n = len(codes)
        benign = np.ones(n, dtype=bool) if y is None else (y == 0)
        if groups is None or len(np.unique(groups[benign])) < 2:
            rng = np.random.default_rng(0)
            groups = rng.integers(0, 3, n)
        out = []
        for g in np.unique(groups):
            test = (groups == g) & benign
            train_m = groups != g
            if not test.any() or not train_m.any():
                continue
            hbos, sup, scale = self._fit_parts(
                codes[train_m], None if y is None else y[train_m], cohorts[train_m]
            )
            if not hbos:
                continue
            s, *_ = self._combine(codes[test], cohorts[test], hbos, sup, scale, None)  # noqa: F841
            out.append(s)
        return np.concatenate(out) if out else np.zeros(0)

    def learn_devices(self, codes: np.ndarray, keys: np.ndarray) -> None:
        """Accumulate benign bin counts per device (the device's own baseline)."""
        f = codes.shape[1]
        uniq, inv = np.unique(keys, return_inverse=True)
        flat = (inv[:, None] * f * MAX_BINS + np.arange(f)[None, :] * MAX_BINS + codes).ravel()
        counts = np.bincount(flat, minlength=len(uniq) * f * MAX_BINS).reshape(len(uniq), f, MAX_BINS)
        ns = np.bincount(inv, minlength=len(uniq))
        for k, c, m in zip(uniq.tolist(), counts, ns, strict=True):
            if k in self.device_counts_:
                self.device_counts_[k] = self.device_counts_[k] + c
                self.device_n_[k] += int(m)
            else:
                self.device_counts_[k] = c.astype(np.float64)
                self.device_n_[k] = int(m)

    # ---- scoring ------------------------------------------------------------------------------
    def _combine(
        self,
        codes: np.ndarray,
        cohorts: np.ndarray,
        hbos: dict[str, HBOS],
        sup: BinnedLogit | None,
        scale: dict[str, tuple[float, float]],
        keys: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        n, f = codes.shape
        anom_contrib = np.zeros((n, f), dtype=np.float64)
        evidence = np.zeros(n)
        fallback = DEFAULT_COHORT if DEFAULT_COHORT in hbos else next(iter(hbos))
        single = cohorts is None or isinstance(cohorts, str)
        for c_in in [cohorts or DEFAULT_COHORT] if single else np.unique(cohorts):
            c = c_in if c_in in hbos else fallback
            m = slice(None) if single else cohorts == c_in
            h = hbos[c]
            contrib = h.contributions(codes[m])
            if keys is not None and self.device_counts_:
                contrib = self._device_contrib(contrib, codes[m], keys[m], h)
            anom_contrib[m] = contrib
            q99, s = scale[c]
            evidence[m] = (contrib.sum(axis=1) - q99) / s
        sup_contrib = None
        if sup is not None:
            sup_contrib = sup.contributions(codes)
            logit = sup_contrib.sum(axis=1) + sup.intercept_
            evidence = evidence + logit
        # evidences add (log-odds of the classifier + standardised surprise); arctan maps them
        # into (0, 1) without saturating, so extreme flows still rank above merely unusual ones
        score = 0.5 + np.arctan(evidence / _SQUASH) / np.pi
        return score, anom_contrib, sup_contrib

    def _device_contrib(
        self, contrib: np.ndarray, codes: np.ndarray, keys: np.ndarray, h: HBOS
    ) -> np.ndarray:
        """Replace cohort surprise by device surprise for devices with own history (Dirichlet blend)."""
        known = np.fromiter((k in self.device_counts_ for k in keys.tolist()), dtype=bool, count=len(keys))
        if not known.any():
            return contrib
        p_cohort = np.exp(-h.neglogp_)
        for k in np.unique(keys[known]).tolist():
            m = keys == k
            n_dev = self.device_n_[k]
            p = (self.device_counts_[k] + self.prior_flows * p_cohort) / (n_dev + self.prior_flows)
            contrib[m] = np.take_along_axis(-np.log(p), codes[m].T.astype(np.intp), axis=1).T
        return contrib

    def reset_stream(self) -> None:
        """Start a new independent stream (fresh per-device context)."""
        self._featurizer = None

    def score_batch(
        self,
        batch: EventBatch,
        cohort_of: Mapping[str, str] | Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Score flows: (scores in [0,1], alerts 0/1, reasons).  Keeps device context across calls."""
        scores, alerts, reasons, _ = self.score_batch_arrow(batch, cohort_of)
        return scores, alerts, reasons.to_pylist()

    def score_batch_arrow(
        self,
        batch: EventBatch,
        cohort_of: Mapping[str, str] | Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray]:
        """As :meth:`score_batch` with reasons as an Arrow string array, plus the bin codes (for drift)."""
        if self._featurizer is None:
            self._featurizer = FlowFeaturizer()
        X = self._featurizer.transform(batch)
        codes = self.binner_.transform(X)
        cohorts = self._cohorts(batch, cohort_of)
        keys = device_keys(batch) if self.device_counts_ else None
        score, anom_c, sup_c = self._combine(codes, cohorts, self.hbos_, self.sup_, self.anom_scale_, keys)
        alerts = (score > self.threshold_).astype(np.int8)
        reasons = self.explain(X, codes, anom_c, sup_c)
        return score, alerts, reasons, codes

    def _cohorts(self, batch: EventBatch, cohort_of: Any) -> np.ndarray:
        if cohort_of is None:
            return DEFAULT_COHORT  # type: ignore[return-value]  # one cohort: no per-row array
        dev = pc.coalesce(batch["device_id"], batch["id.orig_h"]).to_numpy(zero_copy_only=False)
        if callable(cohort_of):
            return np.asarray(cohort_of(dev), dtype=object)
        return np.asarray([cohort_of.get(d, DEFAULT_COHORT) for d in dev], dtype=object)

    # ---- explanations ---------------------------------------------------------------------------
    def explain(
        self, X: np.ndarray, codes: np.ndarray, anom_c: np.ndarray, sup_c: np.ndarray | None
    ) -> pa.Array:
        """Top contributing features per flow as text, against the benign baseline bin."""
        n, f = codes.shape
        base_codes = np.broadcast_to(self.baseline_bin_[None, :], (1, f)).astype(np.uint8)
        contrib = anom_c - self.hbos_[next(iter(self.hbos_))].contributions(base_codes)
        if sup_c is not None:
            contrib = contrib + sup_c - self.sup_.contributions(base_codes)
        # only features whose bin differs from the baseline bin can be reasons
        contrib = np.where(codes != self.baseline_bin_[None, :], contrib, 0.0)
        k = min(TOP_REASONS, f)
        top = np.argpartition(-contrib, k - 1, axis=1)[:, :k]
        top_val = np.take_along_axis(contrib, top, axis=1)
        order = np.argsort(-top_val, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_val = np.take_along_axis(top_val, order, axis=1)
        parts = []
        for j in range(k):
            fi = top[:, j]
            vals = X[np.arange(n), fi]
            text = self._format(fi, vals)
            parts.append(
                pc.if_else(pa.array(top_val[:, j] > 0.5), pc.binary_join_element_wise("; ", text, ""), "")
            )
        # no nulls here: null_handling="skip" drops all-null rows in pyarrow 26
        joined = pc.binary_join_element_wise(*parts, "")
        return pc.utf8_ltrim(joined, characters="; ")

    def _format(self, fi: np.ndarray, vals: np.ndarray) -> pa.Array:
        """'name=value vs baseline b' for (feature, value) pairs, formatted once per distinct pair."""
        shown = vals.astype(np.float64)
        is_log = np.isin(fi, [FEATURES.index(n) for n in LOG_FEATURES])
        shown = np.where(is_log, np.expm1(np.minimum(shown, 700.0)), shown)
        # two significant digits: enough for an analyst, and few distinct texts to format
        mag = np.where(shown != 0, 10.0 ** (np.floor(np.log10(np.abs(shown) + 1e-300)) - 1), 1.0)
        rounded = np.nan_to_num(np.round(shown / mag) * mag, nan=0.0, posinf=1e300, neginf=-1e300)
        out = np.empty(len(fi), dtype=np.int64)
        texts: list[str] = []
        for fidx in np.unique(fi).tolist():
            rows = np.flatnonzero(fi == fidx)
            uniq, inv = np.unique(rounded[rows], return_inverse=True)
            out[rows] = len(texts) + inv.ravel()
            texts.extend(self._text(fidx, v) for v in uniq.tolist())
        return pa.array(texts, type=pa.string()).take(pa.array(out))

    def _text(self, fidx: int, v: float) -> str:
        name = FEATURES[fidx]
        base = float(self.baseline_value_[fidx])
        if name in CATEGORIES:
            labels = CATEGORIES[name]
            shown = labels[min(int(v), len(labels) - 1)]
            return f"{name}={shown} vs baseline {labels[min(int(round(base)), len(labels) - 1)]}"
        if name in LOG_FEATURES:
            base = float(np.expm1(base))
        return f"{name}={_fmt(v)} vs baseline {_fmt(base)}"

    # ---- drift -------------------------------------------------------------------------------------
    def drift(self, codes: np.ndarray) -> dict[str, float]:
        """PSI of each feature's distribution in ``codes`` against the training distribution."""
        values = psi(self.train_fractions_, self.binner_.fractions(codes))
        return {name: round(float(v), 4) for name, v in zip(self.features, values, strict=True)}

    def drift_from_fractions(self, fractions: np.ndarray) -> dict[str, float]:
        values = psi(self.train_fractions_, fractions)
        return {name: round(float(v), 4) for name, v in zip(self.features, values, strict=True)}

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        est = {
            "edges": self.binner_.edges_,
            "train_fractions": self.train_fractions_,
            "baseline_value": self.baseline_value_,
            "baseline_bin": self.baseline_bin_,
            "hbos": {c: (h.counts_, h.n_, h.n_bins_) for c, h in self.hbos_.items()},
            "sup": None if self.sup_ is None else (self.sup_.weights_, self.sup_.intercept_, self.sup_.C),
            "device_counts": self.device_counts_,
            "device_n": self.device_n_,
            "oof_benign_scores": self.oof_benign_scores_,
        }
        joblib.dump(est, model_dir / ESTIMATORS, compress=3)
        meta = dict(self.meta)
        meta.update(
            {
                "format_version": FORMAT_VERSION,
                "kind": "fleetwarden-flow-model",
                "features": list(self.features),
                "categorical": {k: list(v) for k, v in CATEGORIES.items()},
                "bins": [int(b) for b in self.binner_.n_bins_],
                "threshold": self.threshold_,
                "target_fpr": self.target_fpr,
                "prior_flows": self.prior_flows,
                "cohorts": {c: {"q99": s[0], "scale": s[1]} for c, s in self.anom_scale_.items()},
                "supervised": self.sup_ is not None,
                "unsupervised": "HBOS on quantile-binned features",
                "combination": "0.5 + atan((logit_supervised + (hbos - hbos_q99) / scale) / 8) / pi",
            }
        )
        (model_dir / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")

    @classmethod
    def load(cls, model_dir: Path) -> FlowModel:
        model_dir = Path(model_dir)
        try:
            meta = json.loads((model_dir / MODEL_JSON).read_text())
            est = joblib.load(model_dir / ESTIMATORS)
        except FileNotFoundError as exc:
            raise SourceError(model_dir, None, f"not a model directory: {exc.filename} is missing") from None
        except (ValueError, OSError, EOFError) as exc:
            raise SourceError(model_dir, None, f"model files are unreadable: {exc}") from None
        if meta.get("kind") != "fleetwarden-flow-model" or meta.get("features") != list(FEATURES):
            raise SourceError(
                model_dir, MODEL_JSON, "model was built for a different feature set; retrain it"
            )
        m = cls(target_fpr=meta["target_fpr"], prior_flows=meta["prior_flows"])
        m.meta = {k: meta[k] for k in ("training", "created", "versions") if k in meta}
        m.binner_ = QuantileBinner()
        m.binner_.edges_ = est["edges"]
        m.binner_.n_bins_ = np.array([len(e) + 1 for e in est["edges"]])
        m.train_fractions_ = est["train_fractions"]
        m.baseline_value_ = est["baseline_value"]
        m.baseline_bin_ = est["baseline_bin"]
        m.hbos_ = {}
        for c, (counts, n, n_bins) in est["hbos"].items():
            h = HBOS()
            h.counts_, h.n_, h.n_bins_ = counts, n, n_bins
            h.neglogp_ = h.table_from_counts(counts, n)
            m.hbos_[c] = h
        m.anom_scale_ = {c: (v["q99"], v["scale"]) for c, v in meta["cohorts"].items()}
        if est["sup"] is not None:
            w, b, c = est["sup"]
            m.sup_ = BinnedLogit(C=c)
            m.sup_.weights_, m.sup_.intercept_ = w, b
        else:
            m.sup_ = None
        m.device_counts_ = est["device_counts"]
        m.device_n_ = est["device_n"]
        m.oof_benign_scores_ = est["oof_benign_scores"]
        m.threshold_ = float(meta["threshold"])
        return m


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return str(v)
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _versions() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn

    from fleetwarden import __version__ as fw

    return {
        "fleetwarden": fw,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "pyarrow": pa.__version__,
    }


# ---------------------------------------------------------------------------------------------
# services (the CLI calls these)
# ---------------------------------------------------------------------------------------------
def load_model(model_dir: Path) -> FlowModel:
    """Load a model directory written by :func:`train`."""
    return FlowModel.load(Path(model_dir))


def train(paths: list[Path], model_dir: Path, *, skip_bad: bool = False, target_fpr: float = 0.01) -> dict:
    """Train the flow model on flow files; a ``label`` column, when present, trains the supervised part."""
    if not 0.0 < target_fpr < 0.5:
        raise ValueError(f"target_fpr must be in (0, 0.5), got {target_fpr}")
    t0 = time.perf_counter()
    files = [_read_file(Path(p), skip_bad, with_labels=True) for p in paths]
    X = np.concatenate([f.X for f in files])
    keys = np.concatenate([f.keys for f in files])
    y = np.concatenate([f.label for f in files])
    groups = np.concatenate([np.full(len(f.X), i) for i, f in enumerate(files)])
    labelled = bool((y >= 0).any())
    model = FlowModel(target_fpr=target_fpr)
    model.fit(X, y if labelled else None, groups=groups, keys=keys)
    label_counts: dict[str, int] = {}
    if labelled:
        det = np.concatenate([f.detailed for f in files])
        u, c = np.unique(det[y >= 0].astype(str), return_counts=True)
        label_counts = {str(a): int(b) for a, b in zip(u, c, strict=True)}
    summary = {
        "files": [{"path": str(f.path), "rows": len(f.X), "skipped": f.stats.skipped} for f in files],
        "rows": int(len(X)),
        "labelled": labelled,
        "benign_rows": int((y == 0).sum()) if labelled else int(len(X)),
        "malicious_rows": int((y == 1).sum()),
        "label_counts": label_counts,
    }
    model.meta = {
        "training": summary,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    model.save(Path(model_dir))
    return {
        **summary,
        "model_dir": str(model_dir),
        "threshold": model.threshold_,
        "target_fpr": target_fpr,
        "supervised": model.sup_ is not None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def score(paths: list[Path], model_dir: Path, out_csv: Path, *, skip_bad: bool = False) -> dict:
    """Score every flow of ``paths``; write ``uid,score,alert,reasons`` rows to ``out_csv``."""
    t0 = time.perf_counter()
    model = load_model(model_dir)
    n_flows = n_alerts = 0
    drift_counts = np.zeros_like(model.train_fractions_)
    skipped = 0
    out_csv = Path(out_csv)
    with open(out_csv, "wb") as sink:
        sink.write(b"uid,score,alert,reasons\n")
        opts = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        for path in paths:
            model.reset_stream()
            stats = ReadStats()
            for batch in _flow_batches(Path(path), skip_bad, stats):
                s, a, reasons, codes = model.score_batch_arrow(batch)
                uid = batch["uid"].combine_chunks()
                if uid.null_count:
                    gen = pa.array([f"FW{n_flows + i:016x}" for i in range(len(batch))])
                    uid = pc.if_else(pc.is_null(uid), gen, uid)
                table = pa.table(
                    {
                        "uid": uid,
                        "score": pc.round(pa.array(s), 6),
                        "alert": pa.array(a),
                        "reasons": pc.fill_null(reasons, ""),
                    }
                )
                pacsv.write_csv(table, sink, opts)
                drift_counts += model.binner_.fractions(codes) * len(batch)
                n_flows += len(batch)
                n_alerts += int(a.sum())
            skipped += stats.skipped
    elapsed = time.perf_counter() - t0
    drift = model.drift_from_fractions(drift_counts / max(n_flows, 1)) if n_flows else {}
    top = sorted(drift.items(), key=lambda kv: -kv[1])[:5]
    return {
        "flows": n_flows,
        "alerts": n_alerts,
        "skipped": skipped,
        "seconds": round(elapsed, 3),
        "flows_per_s": round(n_flows / elapsed, 1) if elapsed > 0 else None,
        "threshold": model.threshold_,
        "drift": {"psi_max": top[0][1] if top else 0.0, "top": dict(top), "psi": drift},
        "out": str(out_csv),
    }


def evaluate(paths: list[Path], model_dir: Path, *, skip_bad: bool = False) -> dict:
    """AUC-ROC, average precision and TPR at the target FPR, overall and per detailed label."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    model = load_model(model_dir)
    scores, alerts, ys, dets = [], [], [], []
    for path in paths:
        model.reset_stream()
        stats = ReadStats()
        for batch in _flow_batches(Path(path), skip_bad, stats):
            s, a, _, _ = model.score_batch_arrow(batch)
            y, d = _labels(batch)
            scores.append(s)
            alerts.append(a)
            ys.append(y)
            dets.append(d)
    if not scores:
        raise SourceError(paths[0] if paths else "", None, "no flow records to evaluate")
    s = np.concatenate(scores)
    a = np.concatenate(alerts)
    y = np.concatenate(ys)
    det = np.concatenate(dets).astype(str)
    lab = y >= 0
    if not lab.any():
        raise SourceError(paths[0], None, "no labelled flows (need a 'label' column: Benign/Malicious)")
    s, a, y, det = s[lab], a[lab], y[lab], det[lab]

    def metrics(mask_pos: np.ndarray) -> dict[str, Any]:
        neg = y == 0
        sel = mask_pos | neg
        out: dict[str, Any] = {"positives": int(mask_pos.sum()), "negatives": int(neg.sum())}
        out["alert_rate"] = round(float(a[mask_pos].mean()), 6) if mask_pos.any() else None
        if mask_pos.any() and neg.any():
            yy = mask_pos[sel].astype(int)
            out["auc_roc"] = round(float(roc_auc_score(yy, s[sel])), 6)
            out["average_precision"] = round(float(average_precision_score(yy, s[sel])), 6)
            out["tpr_at_fpr"] = round(_tpr_at_fpr(s[neg], s[mask_pos], model.target_fpr), 6)
        return out

    result: dict[str, Any] = {
        "flows": int(len(y)),
        "target_fpr": model.target_fpr,
        "threshold": model.threshold_,
        "false_positive_rate": round(float(a[y == 0].mean()), 6) if (y == 0).any() else None,
        "overall": metrics(y == 1),
        "per_label": {},
    }
    for d in np.unique(det[y == 1]):
        result["per_label"][str(d)] = metrics((det == d) & (y == 1))
    return result


def _tpr_at_fpr(neg: np.ndarray, pos: np.ndarray, fpr: float) -> float:
    """Largest TPR with FPR <= fpr, thresholding on the scores themselves (ties count as alerts)."""
    thr = np.quantile(neg, 1.0 - fpr, method="higher")
    # flows scoring strictly above the (1-fpr) quantile of negatives
    return float((pos > thr).mean())
