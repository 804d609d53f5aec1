"""The flow model: fit, calibrate, score, explain, measure drift (the services around it are in
:mod:`fleetwarden.app.modeling`).

A :class:`FlowModel` combines two parts on quantile-binned flow features
(:mod:`fleetwarden.detection.models`) into one evidence ``e`` per flow, whose unit is the same
on every network:

* **novelty** (unsupervised): HBOS against benign traffic, per cohort, with per-device histograms
  that start from the cohort's and move to the device's own as benign training history
  accumulates.  Features that measure one thing (bytes, IP bytes and packets of one direction; a
  failure share or a new-destination count at two time scales,
  :data:`~fleetwarden.detection.features.FEATURE_GROUPS`) count once, by their most surprising
  member (HBOS assumes independent features).  An amount beyond every benign value (a rate, a count,
  a size: :data:`~fleetwarden.detection.features.UNBOUNDED`) is the more surprising the further
  beyond: each doubling past the benign maximum four times rarer, up to 16 times it
  (:class:`~fleetwarden.detection.models.QuantileBinner`), so a flood a hundred times faster than any
  benign device outscores a boot burst just past it.  A **young device's context counts in proportion to
  how much of its window it has lived**: a feature measured over a window of W seconds (rates, new
  destinations, failure shares, the per-destination context) weighs ``min(1, age / W)``, ``age`` the
  seconds since the device became active (its first flow in the stream, or its first after more
  than 600 s of silence, :mod:`~fleetwarden.detection.features`).  Before it has been seen for W
  seconds a device's W-second statistics describe its boot, not its behaviour: everything is new,
  every rate is a burst (an Echo downloading its updates, an IoT Sentinel device being set up, a
  device powered on again).  Fixed a priori by the windows' definition, not fitted: it replaces the
  former 600 s alert warm-up;
* **classifier** (supervised, when the training flows carry a ``label``): an additive logistic
  model (:class:`~fleetwarden.detection.models.BinnedLogit`) whose weights are shaped by what each
  feature means: smooth along ordinal features, never decreasing along the features in
  :data:`MONOTONE_FEATURES` (more failed attempts, more repetition, more new destinations or a
  faster rate never make a flow less suspect), and none on :data:`SUPERVISED_IGNORES` (which
  service, protocol or address scope a flow uses: family traits, since each family picks its own
  C&C port).  Training flows are weighted so that every training capture counts the same in each
  class, whatever its size;
* **calibration**: each part is standardised against its own *out-of-fold* benign scores (every
  training file scored by parts fitted without it): ``z = (raw - q99) / ((q99 - q50) / 2.33)``, q50
  and q99 the median over the held-out files of each file's own quantiles.  The evidence is
  ``e = z_novelty + w * max(z_classifier, 0)``: the classifier can add evidence but never subtract
  it, so a family unlike every training family is still ranked by its novelty.  ``score = 0.5 +
  atan(e / 8) / pi`` in (0, 1), a display mapping that never saturates (ranks and alerts depend on
  ``e`` only).

**Every constant chosen from data is chosen by a leave-one-file-out inside** :meth:`FlowModel.fit`
(the training files are its groups; ``train`` gives one group per file): each training file is
scored by parts fitted on the other files only, and on those out-of-fold scores of ALL training flows
the model picks

1. whether novelty ignores the features that only say what kind of traffic a flow is
   (:data:`KIND_FEATURES`), the classifier's L2 penalty (:data:`L2_GRID`) and the classifier's weight
   ``w`` (:data:`SUP_WEIGHTS`): the combination with the best capture-balanced TPR at the target FPR
   plus AUC over the held-out files (every file weighing the same in each class).  Candidates within
   one flow of the best (``1 / (k * n)``: ``k`` held-out malicious files, ``n`` the smallest one's
   malicious flows) cannot be told apart, and the first listed wins (the a-priori defaults);
2. the **operating point**: ``alert = rule 1 OR rule 2``.  Rule 1 (one flow): ``e > threshold``.
   Rule 2 (sustained, aimed): the flow is suspect (``e``, or its flow-level part without the
   device-wide statistics every flow of the device shares, :data:`SUSPECT_ON`, above a suspect
   level) and, damped over 600 s up to this flow (the longest context window), at least
   ``device_share`` of its device's flows are suspect and at least ``device_min`` suspect flows went
   from the device to this flow's port or to its destination host: C&C retries, a scan of one port,
   a flood of one target.  The
   threshold (a quantile of out-of-fold benign evidence, :data:`THRESHOLD_QUANTILES`), the suspect
   evidence and level (:data:`SUSPECT_ON`, :data:`SUSPECT_QUANTILES`), ``device_min``
   (:data:`DEVICE_MIN_GRID`, or off) and ``device_share`` (:data:`DEVICE_SHARES`) are chosen
   together, by replaying rule 2 over each held-out training file as a stream: the combination that
   alerts the largest capture-balanced share of malicious flows while keeping every held-out file's
   benign alert rate within the target FPR; among equals the fewest benign alerts, then the
   strictest rule 1 and the most sensitive rule 2 (single flows must stand out on their own;
   sustained, aimed evidence that cost nothing on the held-out files catches families they lack).

Training rules fixed a priori (both properties of per-rule labelling such as IoT-23's, not of any
capture): benign-labelled flows from a device to a host its malicious-labelled flows also go to (in the
same file) are trained as neither class (:func:`_drop_ambiguous_benign`), and so are the
benign-labelled failed TCP attempts of an infected device (:func:`_drop_infected_failed_benign`).

Everything else is fixed a priori, each with its reason next to it below.  ``model.json`` states
the chosen values, the candidates' inner figures and the operating point in words.

* **explanations**: per flow the top features of the part that decided the score (its
  per-feature contributions in calibrated units), against the benign baseline bin, as
  ``"new_dst_60s=47 vs baseline 0; conn_state=S0 vs baseline SF"``.  ``score`` writes the
  values for flows above the single-flow threshold and the feature names for the rest;
* **drift**: the training bin fractions are stored; scoring reports PSI per feature.

A model is written as ``model.json`` (features, bins, thresholds, target FPR, training data
summary, library versions, created time) and ``estimators.npz`` (numeric tables and weights, read
with ``allow_pickle=False``) by :mod:`fleetwarden.sources.modelfile`; here it is plain state
(:meth:`FlowModel.to_state` / :meth:`FlowModel.from_state`).

Measured by nested leave-one-capture-out on IoT-23 and on IoT Sentinel through the IoT-23 model:
``bench/bench_nested_loco.py`` (its docstring says what each figure measures): capture-balanced
pooled AUC 0.995 and TPR at 1 % FPR 0.895 (IsolationForest 0.82 / 0, gradient boosting 0.82 / 0);
alerts on 100 % of Hakai's and 99.5 % of Mirai's malicious flows, 10 of Torii's 16; one benign flow
alerted in the Echo's capture (of 1,374: a 1.3 MB download), none in the Hue's, Hakai's or Torii's,
4.9 % in Mirai's: 94 flows, all
unanswered SYNs or retries from the infected device to its C&C host (port 80), to 50.50.50.53:53 (a
41-flow burst in 10 s) and to 1.1.1.1:1 (a scanned host), labelled Benign.  Those 98 unanswered
attempts are 5.1 % of the capture's benign flows, 1.02 % of the pooled benign weight by themselves:
the pooled 1 % FPR threshold lies among them, so the pooled TPR counts a Torii flow only if it
outranks nearly all of them (without them: 0.999 / 0.979).  No IoT Sentinel flow alerted, each
capture its own stream; merged into one stream (every device set up again and again), 5.2 %.

Blind spots: flows are scored one by one with their device's and their (destination, port)'s
context; slow attacks whose single flows and minute-scale context both look benign
(low-and-slow exfiltration) rank well but may not alert.  A few unanswered connection attempts
to one Internet host look the same whether they are a sparse C&C (Torii) or a device being set up
before its cloud answers (the WeMo devices of IoT Sentinel): only their number and persistence
tell them apart.  A young device's context weighs little for its first minutes, so an attack
that starts with the device's first flow is carried by the flow's own fields and the classifier
until then; the same holds for a device back from more than ten minutes of silence (its age
restarts, :data:`~fleetwarden.detection.features.QUIET_S`).  Once a device is suspect, its suspect benign-labelled flows alert too (in IoT-23
malware captures many such flows go to the C&C address).  The supervised part can only be as
good as the labels: in IoT-23 malware captures the "Benign" flows come from the infected device
itself, some of them failed connections to the C&C server.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetwarden.core.events import EventBatch
from fleetwarden.detection.features import (
    CATEGORIES,
    CONTEXT,
    FEATURE_GROUPS,
    FEATURES,
    LOG_FEATURES,
    UNBOUNDED,
    FlowFeaturizer,
)
from fleetwarden.detection.models import HBOS, MAX_BINS, BinnedLogit, QuantileBinner, psi
from fleetwarden.detection.state import PAIR_SCALES, SCALES, PairStateTable, damped_prefix_cols

__all__ = ["FlowModel", "ModelFormatError", "RowSample", "evaluation_report", "labels_of"]

FORMAT_VERSION = 8  # 8: a device silent for 600 s is young again (7: context weighs by device age); scores would shift
DEFAULT_COHORT = "all"
TOP_REASONS = 3
# Display mapping of the evidence into (0, 1); monotone, so no ranking or alert depends on it.
_SQUASH = 8.0
_CAT_INDEX = {FEATURES.index(n): len(v) for n, v in CATEGORIES.items()}

# ---- chosen by the leave-one-file-out inside fit, from these candidates -------------------------
# (Without labels nothing can be measured: novelty then ignores KIND_FEATURES and there is no
# classifier.  Without the per-row stream of FlowFile, rule 2 cannot be replayed and stays off.  Among
# candidates the held-out files cannot tell apart, the first listed wins.)
# Features that say what KIND of traffic a flow is.  Whether novelty ignores them ("kind") or not
# ("none") is chosen by the inner folds: a new device class legitimately brings new kinds (an Echo
# talks TLS where a Hue bulb talks DNS), but a new kind can also be the attack.
KIND_FEATURES = (
    "proto",
    "conn_state",
    "service",
    "dst_port_class",
    "dst_scope",
    "tcp_frac_600s",
    "icmp_frac_600s",
)
NOVELTY_MASKS = ("kind", "none")
L2_GRID = (1e-3, 1e-4, 1e-2)  # the classifier's L2 penalty on its (mean log-loss) objective
SUP_WEIGHTS = (1.0, 0.5, 2.0)  # w in e = z_novelty + w * max(z_classifier, 0)
# Rule 1's threshold: this quantile of each held-out training file's benign evidence, the largest
# over the files (the target FPR on the worst network the model did not see, or stricter).
THRESHOLD_QUANTILES = (1.0, 0.3, 0.1)  # x target_fpr: 1 - q * target_fpr
# Rule 2's suspect level: this quantile of the out-of-fold benign evidence (capture-balanced).
SUSPECT_QUANTILES = (0.97, 0.95, 0.99)
# Rule 2's device_min: suspect flows (damped) from the device to the flow's service or host; inf = off.
DEVICE_MIN_GRID = (3.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, float("inf"))
# Rule 2's device share: the least damped share of the device's flows that are suspect.  A benign
# device's odd moments (a boot burst) are most of its traffic for a while; a sparse C&C (Torii's 16
# flows a day) is a small share of an infected device's traffic, the rest being its NTP and DNS.
DEVICE_SHARES = (0.5, 0.25, 0.0)
# What makes a flow suspect for rule 2: its flow-level evidence ("flow": e without the device-wide
# statistics every flow of the device shares, see DEVICE_WIDE) or all of it ("full").  With "full",
# once a device floods or retries its C&C all day, its DNS queries to the local resolver are "suspect
# flows aimed at one host" and may alert one by one; with "flow", a flood whose single flows look
# ordinary is left to rule 1.
SUSPECT_ON = ("flow", "full")

# ---- fixed a priori ---------------------------------------------------------------------------
# Features the classifier does not learn from: which service, protocol or address scope a flow uses.
# Each family picks its own C&C port and protocol (Hakai tcp/50, Mirai IRC on 6667, Torii 443), so a
# classifier trained on some families would learn their ports and clear the next family's; how a
# connection behaves (fails, repeats, how big, how fast) is what families share.  Novelty still
# sees them when the inner folds keep them.
SUPERVISED_IGNORES = (
    "proto",
    "service",
    "dst_port_class",
    "uncommon_port",
    "dst_scope",
    "tcp_frac_600s",
    "icmp_frac_600s",
)
# Features along which the classifier's weight never decreases: more failed attempts, more repeats
# to one service, more new destinations or ports, faster rates.  None of these makes a flow less
# suspect, and the constraint lets a family that retries 3 times inherit the evidence learnt from one
# that retries 60 times.
MONOTONE_FEATURES = (
    "failed",
    "new_dst",
    "new_port",
    "hist_syn_only",
    "flows_per_s_10s",
    "flows_per_s_60s",
    "flows_per_s_600s",
    "failed_frac_60s",
    "failed_frac_600s",
    "new_dst_60s",
    "new_dst_600s",
    "new_port_60s",
    "pair_flows_600s",
    "pair_tcp_failed_600s",
    "pair_fail_frac_600s",
)


def _window(name: str) -> float:
    """The window (s) a feature is measured over: its time scale, the pair context's 600 s, and 600 s
    (the longest) for "first flow of the device to this destination or port"; 0 for a flow's own
    fields."""
    for tau in SCALES + PAIR_SCALES:
        if name.endswith(f"_{tau:g}s"):
            return float(tau)
    if name in ("new_dst", "new_port", "pair_gap_s"):
        return max(SCALES)
    return 0.0


_WINDOWS = np.array([_window(n) for n in FEATURES])
_WINDOWED = tuple(np.flatnonzero(_WINDOWS > 0).tolist())
# Rule 2 (device level): damped over the longest context window.
_DEVICE_TAU = max(SCALES)
_DEVICE_SCALE = PAIR_SCALES.index(_DEVICE_TAU)
# The device-wide statistics (shared by every flow of a device at a moment), as opposed to the flow's
# own fields and its (device, destination, port) context: rule 2's "flow" evidence leaves them out.
DEVICE_WIDE = tuple(n for n in CONTEXT if not n.startswith("pair_"))
_DEVICE_WIDE_IDX = tuple(FEATURES.index(n) for n in DEVICE_WIDE)
_FAILED = FEATURES.index("failed")
_UNBOUNDED = {FEATURES.index(n): n in LOG_FEATURES for n in UNBOUNDED}
_SUPERVISED_IGNORE_IDX = tuple(FEATURES.index(n) for n in SUPERVISED_IGNORES)
_ORDINAL = np.array([j not in _CAT_INDEX for j in range(len(FEATURES))])
_MONOTONE = np.array([1 if n in MONOTONE_FEATURES else 0 for n in FEATURES])


def _novelty_mask(which: str) -> np.ndarray:
    ignored = KIND_FEATURES if which == "kind" else ()
    return np.array([name not in ignored for name in FEATURES], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# training rows
# ---------------------------------------------------------------------------------------------
def labels_of(batch: EventBatch) -> tuple[np.ndarray, np.ndarray]:
    """(label 1 malicious / 0 benign / -1 unlabelled, detailed label) of a flow batch's rows."""
    lab = pc.utf8_lower(pc.fill_null(batch["label"], "")).to_numpy(zero_copy_only=False)
    y = np.full(len(lab), -1, dtype=np.int8)
    y[lab == "benign"] = 0
    y[lab == "malicious"] = 1
    det = pc.fill_null(batch["detailed_label"], "-").to_numpy(zero_copy_only=False)
    det = np.where(y == 0, "Benign", np.where(det == "-", "Malicious", det))
    return y, det.astype(object)


class RowSample:
    """Rows of a stream, added chunk by chunk (aligned columns): all of them, or with ``max_rows`` a
    systematic sample of at most that many, every ``stride``-th row of the stream, the stride doubling
    whenever the sample outgrows the cap.  The sample stays uniform over the stream and memory stays
    bounded however long it is."""

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self.chunks: list[list[np.ndarray]] = []  # per chunk: [stream index, *columns]
        self.seen = self.kept = 0
        self.stride = 1

    def add(self, *cols: np.ndarray) -> None:
        chunk = [np.arange(self.seen, self.seen + len(cols[0])), *cols]
        self.seen += len(cols[0])
        if self.max_rows is not None:
            chunk = self._thin(chunk)
            self.kept += len(chunk[0])
            while self.kept > self.max_rows:
                self.stride *= 2
                self.chunks = [self._thin(c) for c in self.chunks]
                chunk = self._thin(chunk)
                self.kept = sum(len(c[0]) for c in self.chunks) + len(chunk[0])
        self.chunks.append(chunk)

    def columns(self) -> list[np.ndarray]:
        """The kept rows, one array per column (in the order given to :meth:`add`)."""
        return [np.concatenate([c[j] for c in self.chunks]) for j in range(1, len(self.chunks[0]))]

    def _thin(self, chunk: list[np.ndarray]) -> list[np.ndarray]:
        """The rows of ``chunk`` whose stream index is a multiple of the stride."""
        if self.stride == 1:
            return chunk
        keep = chunk[0] % self.stride == 0
        return [a[keep] for a in chunk]


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class FlowModel:
    """Cohort-aware flow scorer; see the module docstring.  Build with :func:`train` or :func:`load_model`."""

    def __init__(self, target_fpr: float = 0.01, prior_flows: float = 200.0) -> None:
        self.target_fpr = target_fpr
        # A device's own benign histogram weighs as much as its cohort's once it has this many
        # training flows (a Dirichlet prior).  Fixed a priori: leave-one-capture-out cannot measure it
        # (a held-out capture's devices are never in training).
        self.prior_flows = prior_flows
        self.features: tuple[str, ...] = FEATURES
        self._featurizer: FlowFeaturizer | None = None
        self.meta: dict[str, Any] = {}
        self.novelty_mask_ = NOVELTY_MASKS[0]
        self.l2_ = L2_GRID[0]
        self.sup_weight_ = SUP_WEIGHTS[0]
        self.suspect_level_ = 0.0
        self.device_min_ = float("inf")
        self.device_share_ = DEVICE_SHARES[0]
        self.suspect_on_ = SUSPECT_ON[0]
        self.selection_: dict[str, Any] = {}

    # ---- fitting ---------------------------------------------------------------------------
    def _fit_novelty(
        self, codes: np.ndarray, y: np.ndarray | None, cohorts: np.ndarray, mask: str
    ) -> dict[str, HBOS]:
        benign = np.ones(len(codes), dtype=bool) if y is None else (y == 0)
        if y is not None and not benign.any():
            benign = y != 1
        keep = _novelty_mask(mask)
        hbos: dict[str, HBOS] = {}
        for c in np.unique(cohorts):
            m = benign & (cohorts == c)
            if m.any():
                h = HBOS().fit(codes[m], self.binner_.n_bins_, tail=self.binner_.tail_)
                h.neglogp_ = h.neglogp_ * keep[:, None]
                hbos[str(c)] = h
        return hbos

    def _fit_classifier(
        self, codes: np.ndarray, y: np.ndarray | None, groups: np.ndarray, l2: float
    ) -> BinnedLogit | None:
        if y is None or not (y == 1).any() or not (y == 0).any():
            return None
        m = y >= 0
        return BinnedLogit(l2=l2).fit(
            codes[m],
            y[m],
            self.binner_.n_bins_,
            ordinal=_ORDINAL,
            monotone=_MONOTONE,
            sample_weight=_balanced_weights(y[m], groups[m]),
            ignore=_SUPERVISED_IGNORE_IDX,
        )

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        cohorts: np.ndarray | None = None,
        keys: np.ndarray | None = None,
        stream: Mapping[str, np.ndarray] | None = None,
    ) -> FlowModel:
        """Fit on a feature matrix (rows from :class:`FlowFeaturizer`), labels 1/0/-1 or None.

        ``groups`` numbers the training files (the inner folds); ``stream`` holds, per row, what
        replaying the device rule over a held-out file needs: ``age`` (the featurizer's ``last_age``),
        ``ts``, ``keys``, ``dev_port`` and ``dev_dst`` (the featurizer's targets, in row order) and
        ``weight`` (how many stream flows a row stands for: the file's sampling stride).  Without
        ``stream`` every flow counts as mature and rule 2 stays off.  With fewer than two files, three
        random folds of the rows stand in for the held-out files (the figures then describe one
        network only)."""
        n = len(X)
        cohorts = np.full(n, DEFAULT_COHORT, dtype=object) if cohorts is None else cohorts
        if y is not None and stream is not None and groups is not None:
            y = _drop_ambiguous_benign(y, groups, stream["dev_dst"])
            y = _drop_infected_failed_benign(y, groups, stream["keys"], X[:, _FAILED])
        labelled = y is not None and bool((y == 1).any()) and bool((y == 0).any())
        benign = np.ones(n, dtype=bool) if y is None else (y == 0)
        if not benign.any():
            benign = np.ones(n, dtype=bool)
        # bins describe normal traffic (malicious values land in the out-of-range bins), refined with
        # the malicious flows' quantiles where room is left
        self.binner_ = QuantileBinner().fit(
            X[benign], _CAT_INDEX, extra=X[y == 1] if labelled else None, unbounded=_UNBOUNDED
        )
        codes = self.binner_.transform(X)
        self.train_fractions_ = self.binner_.fractions(codes)
        # the benign baseline: median value and modal bin of every feature
        self.baseline_value_ = np.median(X[benign], axis=0)
        self.baseline_bin_ = self.binner_.fractions(codes[benign]).argmax(axis=1)
        self.device_counts_: dict[int, np.ndarray] = {}
        self.device_n_: dict[int, int] = {}
        age = None if stream is None else np.asarray(stream["age"], dtype=np.float64)
        files = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
        # the inner folds: the files, or with fewer than two of them three random folds of the rows
        groups = files
        if len(np.unique(files[benign])) < 2:
            groups = np.random.default_rng(0).integers(0, 3, n)
        # ---- the inner leave-one-file-out: out-of-fold raw parts of every training row ----
        masks = NOVELTY_MASKS if labelled else NOVELTY_MASKS[:1]
        l2s = L2_GRID if labelled else ()
        # per candidate: the raw part of every row, and its flow-level share (device-wide features out)
        oof_a = {m: np.zeros((2, n)) for m in masks}
        oof_s = {l2: np.full((2, n), np.nan) for l2 in l2s}
        for g in np.unique(groups):
            test, train_m = groups == g, groups != g
            if not train_m.any():
                continue
            yt = None if y is None else y[train_m]
            for m in masks:
                hbos = self._fit_novelty(codes[train_m], yt, cohorts[train_m], m)
                if hbos:
                    raw, contrib = self._novelty(codes[test], cohorts[test], hbos, None, _rows(age, test))
                    oof_a[m][:, test] = raw, raw - _device_wide_sum(contrib)
            for l2 in l2s:
                sup = self._fit_classifier(codes[train_m], yt, files[train_m], l2)
                if sup is not None:
                    contrib = self._sup_contrib(sup, codes[test], _rows(age, test))
                    raw = contrib.sum(axis=1, dtype=np.float64) + sup.intercept_
                    oof_s[l2][:, test] = raw, raw - _device_wide_sum(contrib)
        # ---- calibration of each candidate part on the out-of-fold benign rows ----
        ob, og, oc = benign, groups, np.asarray(cohorts, dtype=object)
        za, a_scale = {}, {}
        for m in masks:
            a_scale[m] = {}
            for c in np.unique(oc):
                sel = ob & (oc == c)
                a_scale[m][str(c)] = _calibration(oof_a[m][0][sel], og[sel]) if sel.any() else (0.0, 1.0)
            za[m] = np.stack([_standardise(oof_a[m][i], oc, a_scale[m]) for i in (0, 1)])
        zs, s_scale = {}, {}
        for l2 in l2s:
            ok = ob & np.isfinite(oof_s[l2][0])
            s_scale[l2] = _calibration(oof_s[l2][0][ok], og[ok]) if ok.any() else (0.0, 1.0)
            zs[l2] = np.nan_to_num((oof_s[l2] - s_scale[l2][0]) / s_scale[l2][1], nan=-np.inf)
        # ---- 1. the parts and their combination ----
        yy = np.zeros(n, dtype=np.int8) if y is None else (y == 1).astype(np.int8)
        lab = np.ones(n, dtype=bool) if y is None else (y >= 0)
        w_bal = _balanced_weights(np.where(lab, yy, -1), files)
        candidates = []
        for m in masks:
            for l2 in l2s or (None,):
                for w in SUP_WEIGHTS if l2 is not None else (0.0,):
                    e = za[m][0] if l2 is None else za[m][0] + w * np.maximum(zs[l2][0], 0.0)
                    auc, tpr = _weighted_auc_tpr(e[lab], yy[lab], w_bal[lab], self.target_fpr)
                    candidates.append(
                        {"novelty_ignores": m, "l2": l2, "sup_weight": w, "auc": auc, "tpr": tpr}
                    )
        best = _first_within_one_flow(candidates, files[lab & (yy == 1)])
        self.novelty_mask_, self.l2_, self.sup_weight_ = (
            best["novelty_ignores"],
            best["l2"],
            best["sup_weight"],
        )
        # e: the evidence; e_flow: the same without the device-wide features (rule 2's suspect flag)
        e, e_flow = za[self.novelty_mask_]
        if self.l2_ is not None:
            e = e + self.sup_weight_ * np.maximum(zs[self.l2_][0], 0.0)
            e_flow = e_flow + self.sup_weight_ * np.maximum(zs[self.l2_][1], 0.0)
        self.anom_scale_ = a_scale[self.novelty_mask_]
        self.sup_scale_ = s_scale[self.l2_] if self.l2_ is not None else (0.0, 1.0)
        # ---- 2. the operating point, replaying rule 2 over each held-out file as a stream ----
        self._select_operating_point(e, e_flow, yy, lab, benign, files, stream, w_bal)
        self.selection_["combination"] = {
            "chosen": {k: best[k] for k in ("novelty_ignores", "l2", "sup_weight")},
            "candidates": [
                {k: (round(v, 5) if isinstance(v, float) else v) for k, v in c.items()} for c in candidates
            ],
        }
        oof = _squash(e[benign])
        self.oof_benign_scores_ = np.quantile(oof, np.linspace(0, 1, 101)) if len(oof) else np.zeros(0)
        # ---- the final parts, on every training row ----
        self.hbos_ = self._fit_novelty(codes, y, cohorts, self.novelty_mask_)
        self.sup_ = self._fit_classifier(codes, y, files, self.l2_) if self.l2_ is not None else None
        # per-device histograms (devices seen with benign history in training)
        if keys is not None:
            self.learn_devices(codes[benign], keys[benign])
        return self

    def _select_operating_point(
        self,
        e: np.ndarray,
        e_flow: np.ndarray,
        y: np.ndarray,
        lab: np.ndarray,
        benign: np.ndarray,
        groups: np.ndarray,
        stream: Mapping[str, np.ndarray] | None,
        w_bal: np.ndarray,
    ) -> None:
        """Rule 1's threshold, rule 2's suspect level and device_min from the out-of-fold evidence ``e``
        (and ``e_flow``, rule 2's) of every training row: the most malicious flows alerted
        (capture-balanced) with every held-out file's benign alert rate within the target FPR; see the
        module docstring for the ties."""
        files = [g for g in np.unique(groups) if (benign & (groups == g)).any()]
        thresholds = {
            q: max(float(np.quantile(e[benign & (groups == g)], 1.0 - q * self.target_fpr)) for g in files)
            for q in THRESHOLD_QUANTILES
        }
        wb = w_bal[benign]
        evidence = {"flow": e_flow, "full": e}
        suspects = {
            (on, q): _weighted_quantile(evidence[on][benign], wb, q)
            for on in SUSPECT_ON
            for q in SUSPECT_QUANTILES
        }
        mal = lab & (y == 1)
        ones = {tq: e > thr for tq, thr in thresholds.items()}
        rows = []
        for (on, sq), level in suspects.items():
            suspect = evidence[on] > level
            counts, share = (
                _replay_rule2(suspect, groups, stream)
                if stream is not None
                else (np.zeros(len(e)), np.zeros(len(e)))
            )
            for tq, k, ds in itertools.product(
                THRESHOLD_QUANTILES,
                DEVICE_MIN_GRID if stream is not None else DEVICE_MIN_GRID[-1:],
                DEVICE_SHARES if stream is not None else DEVICE_SHARES[:1],
            ):
                alert = ones[tq] | (suspect & (share >= ds) & (counts >= k))
                fp = max(float(alert[benign & (groups == g)].mean()) for g in files)
                tp = float((w_bal[mal] * alert[mal]).sum() / w_bal[mal].sum()) if mal.any() else 0.0
                rows.append(
                    {
                        "threshold_q": tq,
                        "suspect_on": on,
                        "suspect_q": sq,
                        "device_min": k,
                        "device_share": ds,
                        "max_benign_alerted": fp,
                        "malicious_alerted": tp,
                    }
                )
        ok = [r for r in rows if r["max_benign_alerted"] <= self.target_fpr + 1e-12] or [
            min(rows, key=lambda r: r["max_benign_alerted"])
        ]
        # most malicious flows alerted; among equals the fewest benign alerts; among equals a strict rule 1
        # (one flow alone must be beyond nearly all benign flows) and a sensitive rule 2 (sustained, aimed
        # evidence costs nothing the held-out files could measure, and catches families they lack)
        best = max(
            ok,
            key=lambda r: (
                round(r["malicious_alerted"], 6),
                -round(r["max_benign_alerted"], 6),
                -r["threshold_q"],
                -r["device_min"],
                -r["device_share"],
                -r["suspect_q"],
                r["suspect_on"] == SUSPECT_ON[0],
            ),
        )
        self.threshold_e_ = thresholds[best["threshold_q"]]
        self.threshold_ = float(_squash(np.array([self.threshold_e_]))[0])
        self.suspect_on_ = best["suspect_on"]
        self.suspect_level_ = float(suspects[(best["suspect_on"], best["suspect_q"])])
        self.device_min_ = float(best["device_min"])
        self.device_share_ = float(best["device_share"])
        self.selection_["operating_point"] = {
            "chosen": {k: _jsonable(v) for k, v in best.items()},
            "candidates": [{k: _jsonable(v) for k, v in r.items()} for r in rows],
            "feasible": len([r for r in rows if r["max_benign_alerted"] <= self.target_fpr + 1e-12]),
        }

    def learn_devices(self, codes: np.ndarray, keys: np.ndarray) -> None:
        """Accumulate benign bin counts per device (the device's own baseline)."""
        self.__dict__.pop("_dev_cache", None)
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
    def _novelty(
        self,
        codes: np.ndarray,
        cohorts: np.ndarray | str,
        hbos: dict[str, HBOS],
        keys: np.ndarray | None,
        age: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(novelty score, its per-feature contributions): young devices' windowed features scaled by
        ``min(1, age / window)``, one contribution per feature group."""
        n, f = codes.shape
        fallback = DEFAULT_COHORT if DEFAULT_COHORT in hbos else next(iter(hbos))
        use_dev = keys is not None and bool(self.device_counts_)
        if isinstance(cohorts, str):
            h = hbos.get(cohorts, hbos[fallback])
            contrib = self._device_contrib(codes, keys, h) if use_dev else h.contributions(codes)
        else:
            contrib = np.zeros((f, n), dtype=np.float32).T
            for c_in in np.unique(cohorts):
                h = hbos.get(c_in, hbos[fallback])
                m = cohorts == c_in
                contrib[m] = (
                    self._device_contrib(codes[m], keys[m], h) if use_dev else h.contributions(codes[m])
                )
        if age is not None:
            young = np.flatnonzero(age < _WINDOWS.max())
            if len(young):
                a = age[young]
                for j in _WINDOWED:
                    contrib[young, j] *= np.minimum(a / _WINDOWS[j], 1.0).astype(np.float32)
        _keep_group_max(contrib)
        return contrib.sum(axis=1, dtype=np.float64), contrib

    def _combine(
        self,
        codes: np.ndarray,
        cohorts: np.ndarray | str,
        keys: np.ndarray | None,
        age: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(evidence e, the per-feature contributions of the part that decided each flow's evidence,
        whether the classifier decided it, the flow-level evidence: e without the device-wide features)."""
        anom, anom_c = self._novelty(codes, cohorts, self.hbos_, keys, age)
        za = _standardise(anom, cohorts, self.anom_scale_)
        za_flow = _standardise(anom - _device_wide_sum(anom_c), cohorts, self.anom_scale_)
        if self.sup_ is None:
            return za, anom_c / self._anom_unit(cohorts), np.zeros(len(za), dtype=bool), za_flow
        sup_c = self._sup_contrib(self.sup_, codes, age)
        raw = sup_c.sum(axis=1, dtype=np.float64) + self.sup_.intercept_
        ref, unit_s = self.sup_scale_
        zs = (raw - ref) / unit_s
        lift = self.sup_weight_ * np.maximum(zs, 0.0)
        e = za + lift
        e_flow = za_flow + self.sup_weight_ * np.maximum((raw - _device_wide_sum(sup_c) - ref) / unit_s, 0.0)
        sup_won = lift > np.maximum(za, 0.0)
        # each part's contributions in its own calibrated units, so reasons compare across rows
        unit = self._anom_unit(cohorts)
        if isinstance(unit, float) and anom_c.dtype == sup_c.dtype == np.float32:
            # one cohort: the same float32 divisions column by column over contiguous memory, written
            # in place (the (n, f) np.where below broadcasts a row mask over column-major arrays)
            c = np.empty((anom_c.shape[1], anom_c.shape[0]), dtype=np.float32).T
            for j in range(c.shape[1]):
                np.divide(anom_c[:, j], unit, out=c[:, j])
                np.divide(sup_c[:, j], self.sup_scale_[1], out=c[:, j], where=sup_won)
        else:
            c = np.where(sup_won[:, None], sup_c / self.sup_scale_[1], anom_c / unit)
        return e, c, sup_won, e_flow

    def _sup_contrib(self, sup: BinnedLogit, codes: np.ndarray, age: np.ndarray | None) -> np.ndarray:
        """The classifier's per-feature contributions, a young device's windowed features moved from
        the benign baseline bin's weight towards their own by ``min(1, age / 600)`` (600 s, the
        longest context window).  The classifier learnt its weights from training rows of devices that
        had lived far longer than that (hours-long captures), so for a device in its first minutes its
        context evidence is extrapolation: a device being set up, retrying a cloud that does not answer
        yet, is not judged on failure shares and repeat counts it has not lived to measure (novelty
        applies the same principle feature by feature).  Fixed a priori, not fitted.  Measured: without
        it, every IoT Sentinel alert (WeMo set-ups) came from a device younger than 115 s, Torii's from
        one older than 340 s."""
        contrib = sup.contributions(codes)
        if age is None:
            return contrib
        young = np.flatnonzero(age < _WINDOWS.max())
        if len(young):
            frac = np.minimum(age[young] / _WINDOWS.max(), 1.0).astype(np.float32)
            for j in _WINDOWED:
                base = np.float32(sup.weights_[j, self.baseline_bin_[j]])
                contrib[young, j] = base + frac * (contrib[young, j] - base)
        return contrib

    def _anom_unit(self, cohorts: np.ndarray | str) -> float | np.ndarray:
        if isinstance(cohorts, str):
            return self.anom_scale_.get(cohorts, next(iter(self.anom_scale_.values())))[1]
        return np.asarray([self.anom_scale_.get(c, (0.0, 1.0))[1] for c in cohorts])[:, None]

    def _device_contrib(self, codes: np.ndarray, keys: np.ndarray, h: HBOS) -> np.ndarray:
        """Per-feature surprise against the device's own blended histogram where the device has
        benign history (Dirichlet blend with the cohort), else against the cohort's."""
        dev_keys, tables = self._device_tables(h)
        n, f = codes.shape
        pos = np.minimum(np.searchsorted(dev_keys, keys), max(len(dev_keys) - 1, 0))
        known = dev_keys[pos] == keys if len(dev_keys) else np.zeros(n, dtype=bool)
        if not known.any():
            return h.contributions(codes)
        # tables[j] holds feature j's table of the cohort (0) and of every known device (i + 1): one
        # gather per contiguous column, no (n, f) index matrix
        base = np.where(known, pos + 1, 0) * MAX_BINS
        out = np.empty((f, n), dtype=np.float32).T
        for j in range(f):
            np.take(tables[j], base + codes[:, j], out=out[:, j])
        return out

    def _device_tables(self, h: HBOS) -> tuple[np.ndarray, np.ndarray]:
        """Sorted device keys and their blended -log p tables, built once per cohort model."""
        cache = self.__dict__.setdefault("_dev_cache", {})
        if id(h) not in cache:
            keys = np.array(sorted(self.device_counts_), dtype=np.uint64)
            p_cohort = np.exp(-h.neglogp_)
            keep = _novelty_mask(self.novelty_mask_)
            tables = np.stack(
                [h.neglogp_]
                + [
                    -np.log(
                        (self.device_counts_[k] + self.prior_flows * p_cohort)
                        / (self.device_n_[k] + self.prior_flows)
                    )
                    * keep[:, None]
                    for k in keys.tolist()
                ]
            ).astype(np.float32)
            # feature-major: feature j's (1 + devices) x MAX_BINS tables contiguous, flattened
            tables = np.ascontiguousarray(tables.transpose(1, 0, 2)).reshape(tables.shape[1], -1)
            cache[id(h)] = (keys, tables)
        return cache[id(h)]

    def new_stream(self) -> FlowModel:
        """This fitted model with a stream of its own: the tables are shared (read-only), the
        per-device context starts fresh.  Each engine scores through its own, so two runs over one
        loaded model never mix their devices' context."""
        other = copy.copy(self)
        other.reset_stream()
        return other

    def reset_stream(self) -> None:
        """Start a new independent stream (fresh per-device context)."""
        self._featurizer = None
        self._suspicion = PairStateTable()
        self._target_suspicion = (PairStateTable(), PairStateTable())

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
        full_reasons: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray]:
        """As :meth:`score_batch` with reasons as an Arrow string array, plus the bin codes (for drift).

        ``full_reasons=False`` writes values and baselines only for flows above the single-flow alert
        threshold, and feature names for the rest (what ``score`` does on big files)."""
        if self._featurizer is None:
            self._featurizer = FlowFeaturizer()
        fz = self._featurizer
        X = fz.transform(batch)
        codes = self.binner_.transform(X)
        cohorts = self._cohorts(batch, cohort_of)
        keys = fz.last_keys if self.device_counts_ else None
        e, contrib, _, e_flow = self._combine(codes, cohorts, keys, fz.last_age)
        score = _squash(e)
        # rule 1: the flow alone is beyond benign; rule 2: a suspect flow of a device whose recent
        # traffic is mostly suspect and aimed at this flow's service or host
        one = e > self.threshold_e_
        suspect = (e_flow if self.suspect_on_ == "flow" else e) > self.suspect_level_
        tables = self.__dict__.setdefault("_suspicion", PairStateTable())
        share = _device_share(tables, fz.last_keys, fz.last_ts, fz.last_order, suspect)
        two = suspect & (share >= self.device_share_)
        if two.any() and np.isfinite(self.device_min_):
            targets = self.__dict__.setdefault("_target_suspicion", (PairStateTable(), PairStateTable()))
            two &= (
                _target_counts(targets, fz.last_order, fz.last_ts, fz.last_targets, suspect)
                >= self.device_min_
            )
        else:
            two[:] = False
        alerts = (one | two).astype(np.int8)
        # values and baselines for every flow beyond the single-flow threshold; names for the rest
        # (device-rule alerts of unremarkable flows get names only: formatting values for every flow
        # of a flood would cost more than scoring it)
        detailed = None if full_reasons else one
        reasons = self.explain(X, codes, contrib, detailed)
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
        self, X: np.ndarray, codes: np.ndarray, contrib: np.ndarray, detailed: np.ndarray | None = None
    ) -> pa.Array:
        """Top contributing features per flow as text, against the benign baseline.

        Rows where ``detailed`` is true (all rows when it is None) get
        ``"name=value vs baseline b; ..."``; the others get the feature names only
        (``"conn_state; failed_frac_60s"``), formatted once per distinct combination, which
        keeps explaining millions of unremarkable flows cheap.
        """
        n, f = codes.shape
        k = min(TOP_REASONS, f)
        top, valid = self._top_reasons(codes, contrib, k)
        if detailed is None:
            return self._full_text(X, top, valid)
        # names-only text: one string per distinct (top-1, top-2, top-3) combination
        combo = np.zeros(n, dtype=np.int64)
        for j in range(k):
            combo = combo * (f + 1) + np.where(valid[:, j], top[:, j] + 1, 0)
        # distinct combinations without sorting: a presence table over all (f + 1) ** k codes
        present = np.zeros((f + 1) ** k, dtype=bool)
        present[combo] = True
        uniq = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        inv = rank[combo]
        names = []
        for u in uniq.tolist():
            picked = []
            for _ in range(k):
                u, t = divmod(u, f + 1)
                if t:
                    picked.append(FEATURES[t - 1])
            names.append("; ".join(reversed(picked)))
        rows = np.flatnonzero(detailed)
        if not len(rows):
            return pa.array(names, type=pa.string()).take(pa.array(inv.ravel()))
        full = self._full_text(X, top[rows], valid[rows], rows)
        idx = inv.ravel().copy()
        idx[rows] = len(names) + np.arange(len(rows))
        return pa.concat_arrays([pa.array(names, type=pa.string()), full]).take(pa.array(idx))

    def _top_reasons(self, codes: np.ndarray, contrib: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) indices of each row's k largest positive contributions among the features whose bin
        differs from the baseline bin (largest first, ties to the lower index), and which are valid.

        One pass over the contiguous columns: each value is packed with its column into a uint64 whose
        order is (value, -column) (positive float32 bits order like the floats), and a running top-k
        of those keys is kept with elementwise max/min; no row-major copy of the matrix, no argsort.
        Invalid slots (fewer than k positive contributions) get index 0."""
        n, f = codes.shape
        assert f < 64, "column index must fit in the low 6 bits of the key"
        best = [np.zeros(n, dtype=np.uint64) for _ in range(k)]
        key = np.empty(n, dtype=np.uint64)
        hi = np.empty(n, dtype=np.uint64)
        ok = np.empty(n, dtype=bool)
        base = self.baseline_bin_
        for j in range(f):
            v = np.asarray(contrib[:, j], dtype=np.float32)
            np.greater(v, np.float32(0.0), out=ok)
            ok &= codes[:, j] != base[j]
            np.copyto(key, v.view(np.uint32), casting="unsafe")
            key <<= np.uint64(6)
            key |= np.uint64(63 - j)
            key *= ok  # zero: not a reason
            for b in best[:-1]:
                np.maximum(b, key, out=hi)
                np.minimum(b, key, out=key)
                b[...] = hi
            np.maximum(best[-1], key, out=best[-1])
        top = np.empty((n, k), dtype=np.intp)
        valid = np.empty((n, k), dtype=bool)
        for j, b in enumerate(best):
            valid[:, j] = b != 0
            top[:, j] = np.where(valid[:, j], 63 - (b & np.uint64(63)).astype(np.intp), 0)
        return top, valid

    def _full_text(
        self, X: np.ndarray, top: np.ndarray, valid: np.ndarray, rows: np.ndarray | None = None
    ) -> pa.Array:
        """Detailed reasons of the rows ``rows`` of ``X`` (all rows when None); ``top`` / ``valid``
        are those rows' own."""
        n, k = top.shape
        rows = np.arange(n) if rows is None else rows
        parts = []
        for j in range(k):
            fi = top[:, j]
            # the "; " separator is part of the few distinct texts, not joined onto every row
            text = self._format(fi, X[rows, fi], prefix="; ")
            parts.append(pc.if_else(pa.array(valid[:, j]), text, ""))
        # no nulls here: null_handling="skip" drops all-null rows in pyarrow 26
        joined = pc.binary_join_element_wise(*parts, "")
        return pc.utf8_ltrim(joined, characters="; ")

    def _format(self, fi: np.ndarray, vals: np.ndarray, prefix: str = "") -> pa.Array:
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
            texts.extend(prefix + self._text(fidx, v) for v in uniq.tolist())
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

    # ---- persistence (as plain state: the files are :mod:`fleetwarden.sources.modelfile`'s) -----
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted model as (JSON-able description, numeric arrays): nothing that needs pickle."""
        cohorts = list(self.hbos_)
        dev_keys = np.array(list(self.device_counts_), dtype=np.uint64)
        f = len(self.features)
        arrays: dict[str, np.ndarray] = {
            "edges": np.concatenate(self.binner_.edges_) if self.binner_.edges_ else np.zeros(0),
            "edge_counts": np.array([len(e) for e in self.binner_.edges_], dtype=np.int64),
            "tail": np.asarray(self.binner_.tail_),
            "train_fractions": np.asarray(self.train_fractions_),
            "baseline_value": np.asarray(self.baseline_value_),
            "baseline_bin": np.asarray(self.baseline_bin_),
            "device_keys": dev_keys,
            "device_counts": (
                np.stack([self.device_counts_[k] for k in dev_keys.tolist()])
                if len(dev_keys)
                else np.zeros((0, f, MAX_BINS))
            ),
            "device_n": np.array([self.device_n_[k] for k in dev_keys.tolist()], dtype=np.int64),
            "oof_benign_scores": np.asarray(self.oof_benign_scores_),
        }
        hbos_meta = []
        for i, c in enumerate(cohorts):
            h = self.hbos_[c]
            arrays[f"hbos_counts_{i}"] = np.asarray(h.counts_)
            arrays[f"hbos_bins_{i}"] = np.asarray(h.n_bins_)
            hbos_meta.append({"cohort": c, "n": float(h.n_)})
        if self.sup_ is not None:
            arrays["sup_weights"] = np.asarray(self.sup_.weights_)
        device_min = None if not np.isfinite(self.device_min_) else self.device_min_
        meta = dict(self.meta)
        meta.update(
            {
                "format_version": FORMAT_VERSION,
                "kind": "fleetwarden-flow-model",
                "features": list(self.features),
                "categorical": {k: list(v) for k, v in CATEGORIES.items()},
                "bins": [int(b) for b in self.binner_.n_bins_],
                "threshold": self.threshold_,
                "threshold_evidence": self.threshold_e_,
                "suspect_level": self.suspect_level_,
                "device_min": device_min,
                "device_share": self.device_share_,
                "suspect_on": self.suspect_on_,
                "target_fpr": self.target_fpr,
                "prior_flows": self.prior_flows,
                "cohorts": {c: {"q99": s[0], "scale": s[1]} for c, s in self.anom_scale_.items()},
                "hbos": hbos_meta,
                "supervised_calibration": {"q99": self.sup_scale_[0], "scale": self.sup_scale_[1]},
                "supervised": self.sup_ is not None,
                "supervised_model": (
                    None
                    if self.sup_ is None
                    else {"intercept": self.sup_.intercept_, "l2": self.l2_, "weight": self.sup_weight_}
                ),
                "unsupervised": (
                    "HBOS on quantile-binned features, one contribution per feature group; a young "
                    "device's windowed features weigh min(1, age / window)"
                ),
                "novelty_ignores": list(KIND_FEATURES) if self.novelty_mask_ == "kind" else [],
                "novelty_mask": self.novelty_mask_,
                "feature_groups": [list(g) for g in FEATURE_GROUPS],
                "supervised_ignores": list(SUPERVISED_IGNORES),
                "monotone": list(MONOTONE_FEATURES),
                "selection": self.selection_,
                "combination": (
                    f"score = 0.5 + atan(e / {_SQUASH:g}) / pi with e = z_hbos + {self.sup_weight_:g} * "
                    "max(z_logit, 0); each z = (raw - q99) / scale against that part's out-of-fold benign "
                    "scores, so the classifier can add evidence but never hide a novel flow"
                ),
                "operating_point": (
                    "alert = rule 1 OR rule 2. Rule 1 (one flow): score > threshold, chosen with the suspect "
                    "level and device_min on the training files, each scored by parts fitted with that file "
                    f"held out, so that no held-out file had more than {self.target_fpr:.2%} of its benign flows "
                    "alerted. Rule 2 (device): the flow is suspect (evidence > suspect_level) and, damped over "
                    f"{_DEVICE_TAU:g} s up to this flow, at least {self.device_share_:.0%} of its device's flows are "
                    + (
                        f"suspect and at least {self.device_min_:g} suspect flows went from the device to this "
                        "flow's port or to its destination host: sustained, aimed C&C retries, scans and floods"
                        if np.isfinite(self.device_min_)
                        else "suspect: rule 2 is off (no level kept the held-out benign flows within the target)"
                    )
                ),
            }
        )
        return meta, arrays

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> FlowModel:
        """Rebuild a model from :meth:`to_state`'s output.  Raises :class:`ModelFormatError` naming
        what is missing or inconsistent (a file from another version, a truncated or edited one)."""
        if (
            meta.get("kind") != "fleetwarden-flow-model"
            or meta.get("features") != list(FEATURES)
            or meta.get("format_version") != FORMAT_VERSION
        ):
            raise ModelFormatError("model was built for a different model format or feature set; retrain it")
        try:
            return cls._from_state(meta, arrays)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFormatError(
                f"model is incomplete or inconsistent ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def _from_state(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> FlowModel:
        f = len(FEATURES)
        m = cls(target_fpr=float(meta["target_fpr"]), prior_flows=float(meta["prior_flows"]))
        # drift_reference: the score histogram ``train`` keeps (fleetwarden.app.drift); absent in older dirs
        m.meta = {k: meta[k] for k in ("training", "created", "versions", "drift_reference") if k in meta}
        m.binner_ = QuantileBinner()
        counts = arrays["edge_counts"].astype(np.int64)
        if len(counts) != f or counts.sum() != len(arrays["edges"]) or (counts < 0).any():
            raise ValueError("bin edges do not match the feature list")
        m.binner_.edges_ = np.split(arrays["edges"], np.cumsum(counts)[:-1])
        m.binner_.n_bins_ = np.array([len(e) + 1 for e in m.binner_.edges_])
        m.binner_.tail_ = np.asarray(arrays["tail"], dtype=np.float64)
        if m.binner_.tail_.shape != (f, MAX_BINS):
            raise ValueError(f"tail surprise has shape {m.binner_.tail_.shape}, expected {(f, MAX_BINS)}")
        m.train_fractions_ = arrays["train_fractions"]
        m.baseline_value_ = arrays["baseline_value"]
        m.baseline_bin_ = arrays["baseline_bin"]
        m.novelty_mask_ = str(meta["novelty_mask"])
        if m.novelty_mask_ not in NOVELTY_MASKS:
            raise ValueError(f"unknown novelty mask {m.novelty_mask_!r}")
        keep = _novelty_mask(m.novelty_mask_)
        m.hbos_ = {}
        for i, hm in enumerate(meta["hbos"]):
            h = HBOS()
            h.counts_, h.n_, h.n_bins_ = arrays[f"hbos_counts_{i}"], hm["n"], arrays[f"hbos_bins_{i}"]
            h.tail_ = m.binner_.tail_
            if h.counts_.shape != (f, MAX_BINS):
                raise ValueError(f"histogram {i} has shape {h.counts_.shape}, expected {(f, MAX_BINS)}")
            h.neglogp_ = h.table_from_counts(h.counts_, h.n_) * keep[:, None]
            m.hbos_[str(hm["cohort"])] = h
        if not m.hbos_:
            raise ValueError("no novelty histograms")
        m.anom_scale_ = {c: (float(v["q99"]), float(v["scale"])) for c, v in meta["cohorts"].items()}
        cal = meta["supervised_calibration"]
        m.sup_scale_ = (float(cal["q99"]), float(cal["scale"]))
        sup = meta.get("supervised_model")
        if sup is not None:
            m.l2_, m.sup_weight_ = float(sup["l2"]), float(sup["weight"])
            m.sup_ = BinnedLogit(l2=m.l2_)
            m.sup_.weights_ = np.asarray(arrays["sup_weights"], dtype=np.float32)
            m.sup_.intercept_ = float(sup["intercept"])
            if m.sup_.weights_.shape != (f, MAX_BINS):
                raise ValueError(f"classifier weights have shape {m.sup_.weights_.shape}")
        else:
            m.sup_, m.l2_ = None, None
        keys = arrays["device_keys"].astype(np.uint64).tolist()
        m.device_counts_ = dict(zip(keys, arrays["device_counts"].astype(np.float64), strict=True))
        m.device_n_ = dict(zip(keys, arrays["device_n"].astype(np.int64).tolist(), strict=True))
        m.oof_benign_scores_ = arrays["oof_benign_scores"]
        m.threshold_ = float(meta["threshold"])
        m.threshold_e_ = float(meta["threshold_evidence"])
        m.suspect_level_ = float(meta["suspect_level"])
        m.device_min_ = float("inf") if meta["device_min"] is None else float(meta["device_min"])
        m.device_share_ = float(meta["device_share"])
        m.suspect_on_ = str(meta["suspect_on"])
        if m.suspect_on_ not in SUSPECT_ON:
            raise ValueError(f"unknown suspect evidence {m.suspect_on_!r}")
        m.selection_ = dict(meta.get("selection") or {})
        return m


class ModelFormatError(ValueError):
    """A stored model that this version cannot use: another format, missing or inconsistent parts."""


_GROUP_INDEX = tuple(tuple(FEATURES.index(n) for n in g) for g in FEATURE_GROUPS)


def _keep_group_max(contrib: np.ndarray) -> None:
    """In place: within each group of :data:`FEATURE_GROUPS`, keep the largest contribution (the first
    member on ties) and zero the others, so one measurement counts once."""
    for members in _GROUP_INDEX:
        cols = [contrib[:, j] for j in members]
        top = cols[0].copy()
        for c in cols[1:]:
            np.maximum(top, c, out=top)
        free = np.ones(len(top), dtype=bool)
        for c in cols:
            keep = (c == top) & free
            free &= ~keep
            c *= keep


def _drop_ambiguous_benign(y: np.ndarray, groups: np.ndarray, dev_dst: np.ndarray) -> np.ndarray:
    """``y`` with the benign-labelled flows that go from a device to a host its malicious-labelled flows
    also go to, in the same file, marked unlabelled (-1): neither benign nor malicious for training.

    Labels such as IoT-23's are given per (address, port) rule, so an infected device's attempts to its
    C&C server on another port (Mirai's download attempts to port 80 of its IRC server, in capture
    34-1) come labelled Benign.  Trained as benign, they teach every part that C&C retries are normal.
    Fixed a priori (a property of per-rule labelling, not of any capture); evaluation labels are never
    changed."""
    y = y.copy()
    for g in np.unique(groups[y == 1]):
        in_g = groups == g
        bad = np.unique(dev_dst[in_g & (y == 1)])
        y[in_g & (y == 0) & np.isin(dev_dst, bad)] = -1
    return y


def _drop_infected_failed_benign(
    y: np.ndarray, groups: np.ndarray, keys: np.ndarray, failed: np.ndarray
) -> np.ndarray:
    """``y`` with the benign-labelled failed TCP attempts (``failed``: a SYN never answered) of an
    infected device (one with malicious-labelled flows in the same file) marked unlabelled (-1).

    Per-rule labels (IoT-23's) name the malware's flows by (address, port); an infected device's
    unanswered attempts that no rule names (a SYN burst to another target, retries to a host the
    rules do not list) come labelled Benign, and trained as benign they set the operating point: every
    held-out file must keep its benign alerts within the target FPR, so the model is made blind to
    the very behaviour (unanswered, repeated attempts) that sparse C&C shows.  An infected device's
    answered flows (its DNS, NTP, updates) stay benign.  Fixed a priori (a property of per-rule
    labelling of infected devices, like :func:`_drop_ambiguous_benign`); evaluation labels are never
    changed."""
    y = y.copy()
    for g in np.unique(groups[y == 1]):
        in_g = groups == g
        infected = np.unique(keys[in_g & (y == 1)])
        y[in_g & (y == 0) & (failed > 0) & np.isin(keys, infected)] = -1
    return y


def _first_within_one_flow(candidates: list[dict[str, Any]], malicious_files: np.ndarray) -> dict[str, Any]:
    """The first listed candidate (the a-priori defaults come first) whose inner figure (TPR plus AUC,
    capture-balanced) is within one flow of the best: ``1 / (k * n)``, ``k`` held-out malicious files
    and ``n`` the malicious flows of the smallest.  One flow of that file moves the capture-balanced TPR
    by that much (and the AUC by at most that much), so smaller differences are one flow's luck, not
    a measured difference: with few malicious files the candidates' figures are often saturated and
    the exact maximum would be noise (fixed a priori: the resolution of the figure itself)."""
    score = [round(c["tpr"] + c["auc"], 6) for c in candidates]
    _, per_file = np.unique(malicious_files, return_counts=True)
    tol = 1.0 / (len(per_file) * per_file.min()) if len(per_file) else 0.0
    floor = max(score) - tol
    return next(c for c, s in zip(candidates, score, strict=True) if s >= floor - 1e-12)


def _device_wide_sum(contrib: np.ndarray) -> np.ndarray:
    """Row sums of the contributions of the device-wide features (:data:`DEVICE_WIDE`)."""
    out = np.zeros(len(contrib))
    for j in _DEVICE_WIDE_IDX:
        out += contrib[:, j]
    return out


def _jsonable(v: Any) -> Any:
    """A figure for model.json: floats rounded, infinity as null (JSON has no infinity)."""
    if isinstance(v, float):
        return round(v, 5) if np.isfinite(v) else None
    return v


def _rows(a: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[mask]


def _balanced_weights(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sample weights under which every group (training file) weighs the same within each class and
    the two classes weigh the same; rows with ``y`` < 0 (unlabelled) weigh nothing."""
    w = np.zeros(len(y))
    for cls in (0, 1):
        m = y == cls
        if not m.any():
            continue
        g, inv, cnt = np.unique(groups[m], return_inverse=True, return_counts=True)
        w[m] = 1.0 / (cnt[inv.ravel()] * len(g))
    return w


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x, kind="stable")
    cw = np.cumsum(w[order])
    return float(x[order][min(np.searchsorted(cw, q * cw[-1]), len(x) - 1)])


def _weighted_auc_tpr(s: np.ndarray, y: np.ndarray, w: np.ndarray, fpr: float) -> tuple[float, float]:
    """Weighted ROC AUC (ties count half) and the weighted share of positives strictly above the lowest
    score that at most ``fpr`` of the negative weight exceeds."""
    pos, neg = y == 1, y != 1
    if not pos.any() or not neg.any():
        return 0.0, 0.0
    sn, wn = s[neg], w[neg]
    order = np.argsort(sn, kind="stable")
    sn, wn = sn[order], wn[order]
    cw = np.r_[0.0, np.cumsum(wn)]
    wn_total = cw[-1]
    sp, wp = s[pos], w[pos]
    below = cw[np.searchsorted(sn, sp, side="left")]
    upto = cw[np.searchsorted(sn, sp, side="right")]
    auc = float((wp * (below + 0.5 * (upto - below))).sum() / (wp.sum() * wn_total))
    # threshold: the smallest negative score t with weight(neg > t) <= fpr * total
    above = wn_total - cw[np.searchsorted(sn, sn, side="right")]
    ok = above <= fpr * wn_total + 1e-12
    thr = float(sn[np.flatnonzero(ok)[0]]) if ok.any() else float(sn[-1])
    tpr = float(wp[sp > thr].sum() / wp.sum())
    return auc, tpr


def _damped_counts(
    table: PairStateTable,
    g_key: np.ndarray,
    group: np.ndarray,
    t: np.ndarray,
    x: np.ndarray,
    start: np.ndarray,
) -> np.ndarray:
    """Damped sums over _DEVICE_TAU of the rows of ``x`` (k, n), this flow included, for flows sorted by
    (key, ts) (``group`` numbers the keys, ``g_key`` their keys, ``start`` marks each key's first flow),
    continuing from and written back to ``table`` (one scale, up to two statistics)."""
    prior_t, prior_sums = table.lookup(g_key)
    k = len(x)
    pre, post_last = damped_prefix_cols(group, t, x, _DEVICE_TAU, prior_sums[:, _DEVICE_SCALE, :k].T, prior_t)
    last = np.r_[np.flatnonzero(start)[1:] - 1, len(t) - 1]
    post = np.zeros((len(g_key), 1, prior_sums.shape[2]))
    post[:, 0, :k] = post_last.T
    table.update(g_key, t[last], post)
    return pre + x


def _device_share(
    table: PairStateTable,
    keys: np.ndarray,
    ts: np.ndarray,
    order: np.ndarray,
    suspect: np.ndarray,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Causal damped share of suspect flows among each flow's device's flows (this flow included), over
    _DEVICE_TAU seconds, continuing across batches of the stream in ``table``.  ``order`` sorts the flows
    by (device, ts); ``weight`` is how many stream flows each row stands for (a sample's stride)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0)
    k, t = keys[order], ts[order]
    start = np.r_[True, k[1:] != k[:-1]]
    group = np.cumsum(start) - 1
    x = np.empty((2, n))  # one contiguous row per statistic
    x[0] = 1.0 if weight is None else weight[order]
    x[1] = suspect[order] * x[0]
    incl = _damped_counts(table, k[start], group, t, x, start)
    share = np.empty(n)
    share[order] = incl[1] / incl[0]
    return share


def _target_counts(
    tables: tuple[PairStateTable, PairStateTable],
    order: np.ndarray,
    ts: np.ndarray,
    targets: tuple[np.ndarray, ...],
    suspect: np.ndarray,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Damped count (over _DEVICE_TAU, this flow included) of the suspect flows from the flow's device to
    the flow's port, and to its destination host, whichever is larger; zero for flows that are not
    suspect.  ``targets`` holds the (device, port) and (device, destination) keys in ``order`` (the
    featurizer's (device, ts) order).  Only suspect flows are touched: a few percent of a benign stream."""
    out = np.zeros(len(order))
    sel = np.flatnonzero(suspect[order])
    if not len(sel):
        return out
    rows = order[sel]
    t_sel = ts[rows]
    for table, key_sorted in zip(tables, targets, strict=True):
        k = key_sorted[sel]
        perm = np.argsort(k, kind="stable")  # (key, ts) order: sel is in (device, ts) order
        ks, t = k[perm], t_sel[perm]
        start = np.r_[True, ks[1:] != ks[:-1]]
        ones = np.ones((1, len(ks))) if weight is None else weight[rows[perm]][None, :].astype(np.float64)
        (counts,) = _damped_counts(table, ks[start], np.cumsum(start) - 1, t, ones, start)
        dest = rows[perm]  # distinct rows: a plain gather and scatter
        out[dest] = np.maximum(out[dest], counts)
    return out


def _replay_rule2(
    suspect: np.ndarray, groups: np.ndarray, stream: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2's (target counts, device share) for every training row, each file replayed as its own
    stream in (device, ts) order, as :meth:`FlowModel.score_batch_arrow` computes them."""
    counts, share = np.zeros(len(suspect)), np.zeros(len(suspect))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        keys, ts = stream["keys"][idx], np.asarray(stream["ts"], dtype=np.float64)[idx]
        wt = np.asarray(stream["weight"], dtype=np.float64)[idx] if "weight" in stream else None
        order = np.lexsort((ts, keys))
        sus = suspect[idx]
        share[idx] = _device_share(PairStateTable(), keys, ts, order, sus, wt)
        targets = (stream["dev_port"][idx][order], stream["dev_dst"][idx][order])
        counts[idx] = _target_counts((PairStateTable(), PairStateTable()), order, ts, targets, sus, wt)
    return counts, share


def _calibration(raw: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(reference, unit) of a part from its out-of-fold benign scores: 0 at their 99th percentile,
    one unit = their (q99 - q50) / 2.33, i.e. a standard deviation if they were normal.  Both are the
    median over the held-out training files of each file's own figure: the typical new network, not
    one pooled distribution that the most unusual file (or the biggest) dominates."""
    q = np.array([np.quantile(raw[groups == g], [0.5, 0.99]) for g in np.unique(groups)])
    q50, q99 = np.median(q, axis=0)
    return float(q99), float(max((q99 - q50) / 2.33, 1e-3))


def _standardise(
    raw: np.ndarray, cohorts: np.ndarray | str, scale: Mapping[str, tuple[float, float]]
) -> np.ndarray:
    first = next(iter(scale.values()))
    if isinstance(cohorts, str):
        ref, unit = scale.get(cohorts, first)
        return (raw - ref) / unit
    out = np.empty(len(raw))
    for c in np.unique(cohorts):
        m = cohorts == c
        ref, unit = scale.get(c, first)
        out[m] = (raw[m] - ref) / unit
    return out


def _squash(e: np.ndarray) -> np.ndarray:
    # arctan maps evidence into (0, 1) without saturating: extreme flows still rank above unusual ones
    return 0.5 + np.arctan(e / _SQUASH) / np.pi


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return str(v)
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def evaluation_report(
    s: np.ndarray, a: np.ndarray, y: np.ndarray, det: np.ndarray, target_fpr: float, threshold: float
) -> dict[str, Any]:
    """AUC-ROC, average precision and TPR at ``target_fpr``, overall and per detailed label, from the
    scores ``s``, alerts ``a``, labels ``y`` (1/0) and detailed labels ``det`` of labelled flows."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    def metrics(mask_pos: np.ndarray) -> dict[str, Any]:
        neg = y == 0
        sel = mask_pos | neg
        out: dict[str, Any] = {"positives": int(mask_pos.sum()), "negatives": int(neg.sum())}
        out["alert_rate"] = round(float(a[mask_pos].mean()), 6) if mask_pos.any() else None
        if mask_pos.any() and neg.any():
            yy = mask_pos[sel].astype(int)
            out["auc_roc"] = round(float(roc_auc_score(yy, s[sel])), 6)
            out["average_precision"] = round(float(average_precision_score(yy, s[sel])), 6)
            out["tpr_at_fpr"] = round(_tpr_at_fpr(s[neg], s[mask_pos], target_fpr), 6)
        return out

    result: dict[str, Any] = {
        "flows": int(len(y)),
        "target_fpr": target_fpr,
        "threshold": threshold,
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
