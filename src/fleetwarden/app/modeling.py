"""The flow model's services: ``train``, ``score`` and ``evaluate`` over flow files.

The model itself (fit, calibrate, score, explain, drift) is pure and lives in
:mod:`fleetwarden.detection.flowmodel`; here its inputs are read, its files written
(:mod:`fleetwarden.app.models`) and its outputs measured.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fleetwarden.app.drift import REFERENCE_KEY, DriftMeter, reference_of
from fleetwarden.app.models import load_flow_model, save_flow_model
from fleetwarden.app.verdicts import LabelOverlay, read_labels
from fleetwarden.core.errors import InputError
from fleetwarden.core.events import EventBatch
from fleetwarden.detection.features import FlowFeaturizer
from fleetwarden.detection.flowmodel import FlowModel, RowSample, evaluation_report, labels_of
from fleetwarden.sources import ReadStats, SourceError, read_events

__all__ = ["FlowFile", "TRAIN_MIN_ROWS_PER_FILE", "TRAIN_ROWS", "evaluate", "read_flow_file", "score", "train"]

# Training budget: rows the model is fitted on, in all, and the least any one file may contribute.
TRAIN_ROWS = 1_000_000
TRAIN_MIN_ROWS_PER_FILE = 50_000


@dataclass
class FlowFile:
    """One file's featurized flows (all of them, or a uniform sample) with their labels."""

    path: Path
    X: np.ndarray
    keys: np.ndarray
    label: np.ndarray | None  # 1 = malicious, 0 = benign, -1 = unlabelled row
    detailed: np.ndarray | None
    stats: ReadStats = field(default_factory=ReadStats)
    rows_read: int = 0  # flows in the file (``X`` may hold a sample of them)
    # per row, what replaying the flow model's device rule needs (see ``FlowModel.fit``): device age,
    # timestamp, (device, port) and (device, destination) keys; and the sample's stride
    stream: dict[str, np.ndarray] = field(default_factory=dict)
    stride: int = 1


def flow_batches(path: str | Path, skip_bad: bool, stats: ReadStats) -> Iterator[EventBatch]:
    """The non-empty flow batches of a file (other kinds are skipped)."""
    for batch in read_events(path, skip_bad=skip_bad, stats=stats):
        if batch.kind == "flow" and len(batch):
            yield batch


def read_flow_file(
    path: str | Path,
    skip_bad: bool,
    with_labels: bool,
    max_rows: int | None = None,
    overlay: Overlay | None = None,
) -> FlowFile:
    """Featurize every flow of ``path`` (the device context always sees the whole stream); keep every
    row, or with ``max_rows`` a :class:`~fleetwarden.detection.flowmodel.RowSample` of at most that many.
    With ``overlay`` (labels by uid), a flow whose uid it names takes that label."""
    path = Path(path)
    stats = ReadStats()
    featurizer = FlowFeaturizer()  # one independent network per file
    sample = RowSample(max_rows)
    for batch in flow_batches(path, skip_bad, stats):
        X = featurizer.transform(batch)
        fz = featurizer
        # the featurizer's targets are in (device, ts) order: back to row order
        dev_port, dev_dst = np.empty_like(fz.last_targets[0]), np.empty_like(fz.last_targets[1])
        dev_port[fz.last_order], dev_dst[fz.last_order] = fz.last_targets
        extra = labels_of(batch) if with_labels else ()
        if overlay is not None and with_labels:
            extra = overlay.apply(batch, *extra)
        sample.add(X, fz.last_keys, fz.last_age, fz.last_ts, dev_port, dev_dst, *extra)
    if not sample.seen:
        raise SourceError(path, None, "no flow records in this file")
    cols = sample.columns()
    data = FlowFile(
        path,
        cols[0],
        cols[1],
        cols[6] if with_labels else None,
        cols[7] if with_labels else None,
        stats,
    )
    data.stream = {"keys": cols[1], "age": cols[2], "ts": cols[3], "dev_port": cols[4], "dev_dst": cols[5]}
    data.stride = sample.stride
    data.rows_read = sample.seen
    return data


class Overlay:
    """A :class:`~fleetwarden.app.verdicts.LabelOverlay` applied to flow batches by ``uid``; remembers
    which uids it matched."""

    def __init__(self, labels: LabelOverlay) -> None:
        self.labels = labels
        self.uids = pa.array(labels.uids, type=pa.string())
        self.y = np.asarray(labels.label, dtype=np.int8)
        self.detailed = np.asarray(labels.detailed, dtype=object)
        self.matched: set[str] = set()
        self.rows = 0  # flow rows (of the whole streams, before sampling) that took a label

    def apply(self, batch: EventBatch, y: np.ndarray, det: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = pc.index_in(batch["uid"].combine_chunks().cast(pa.string()), value_set=self.uids)
        hit = np.asarray(pc.is_valid(idx).to_numpy(zero_copy_only=False), dtype=bool)
        if not hit.any():
            return y, det
        at = np.asarray(pc.fill_null(idx, 0).to_numpy(zero_copy_only=False))[hit]
        y, det = y.copy(), det.copy()
        y[hit], det[hit] = self.y[at], self.detailed[at]
        self.matched.update(self.labels.uids[i] for i in np.unique(at).tolist())
        self.rows += int(hit.sum())
        return y, det


def train(
    paths: Sequence[str | Path],
    model_dir: str | Path,
    *,
    skip_bad: bool = False,
    target_fpr: float = 0.01,
    max_rows: int = TRAIN_ROWS,
    labels: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Train the flow model on flow files; a ``label`` column, when present, trains the supervised part.

    ``labels`` are labels files (:func:`fleetwarden.app.verdicts.read_labels`: a verdict export or a
    ``uid,label[,detailed_label]`` CSV) applied by ``uid`` to the flows read, overriding or filling
    their label: a fleet's Zeek ``conn.log`` plus the analysts' verdicts trains the supervised part.
    A labels file none of whose uids is a flow of ``paths`` is refused (wrong capture).

    After fitting, the model scores its training files once more (as ``score`` would, each file its
    own stream) and keeps the quantile histogram of those scores as its drift reference
    (:mod:`fleetwarden.app.drift`): a second pass over the inputs, as long as a ``score`` of them.

    Every flow is featurized (device context needs the whole stream), but the model is fitted on at
    most ``max_rows`` flows: each file contributes a uniform systematic sample of at most
    ``max(TRAIN_MIN_ROWS_PER_FILE, max_rows // len(paths))`` of its flows, so memory and fitting time
    stay bounded on captures of tens of millions of flows (IoT-23's largest) and no single big
    capture outweighs the others.  The summary gives each file's flows read and rows used."""
    if not 0.0 < target_fpr < 0.5:
        raise InputError(f"--target-fpr must be in (0, 0.5), got {target_fpr}")
    t0 = time.perf_counter()
    cap = max(TRAIN_MIN_ROWS_PER_FILE, max_rows // max(len(paths), 1))
    overlay = Overlay(read_labels(labels)) if labels else None
    files = [read_flow_file(p, skip_bad, with_labels=True, max_rows=cap, overlay=overlay) for p in paths]
    if overlay is not None:
        overlay.labels.check_matched(overlay.matched)
    X = np.concatenate([f.X for f in files])
    keys = np.concatenate([f.keys for f in files])
    y = np.concatenate([f.label for f in files])
    groups = np.concatenate([np.full(len(f.X), i) for i, f in enumerate(files)])
    stream = {k: np.concatenate([f.stream[k] for f in files]) for k in files[0].stream}
    stream["weight"] = np.concatenate([np.full(len(f.X), float(f.stride)) for f in files])
    labelled = bool((y >= 0).any())
    model = FlowModel(target_fpr=target_fpr)
    model.fit(X, y if labelled else None, groups=groups, keys=keys, stream=stream)
    label_counts: dict[str, int] = {}
    if labelled:
        det = np.concatenate([f.detailed for f in files])
        u, c = np.unique(det[y >= 0].astype(str), return_counts=True)
        label_counts = {str(a): int(b) for a, b in zip(u, c, strict=True)}
    summary = {
        "files": [
            {"path": str(f.path), "flows": f.rows_read, "rows": len(f.X), "skipped": f.stats.skipped}
            for f in files
        ],
        "rows": int(len(X)),
        "labelled": labelled,
        "benign_rows": int((y == 0).sum()) if labelled else int(len(X)),
        "malicious_rows": int((y == 1).sum()),
        "label_counts": label_counts,
    }
    if overlay is not None:
        summary["labels"] = {
            "files": [str(p) for p in overlay.labels.paths],
            "uids": len(overlay.labels.uids),
            "uids_matched": len(overlay.matched),
            "flows_labelled": overlay.rows,
        }
    model.meta = {
        "training": summary,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    model.meta[REFERENCE_KEY] = reference_of(_scores_of(model, paths, skip_bad))
    save_flow_model(model, model_dir)
    return {
        **summary,
        "model_dir": str(model_dir),
        "threshold": model.threshold_,
        "target_fpr": target_fpr,
        "supervised": model.sup_ is not None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _scores_of(model: FlowModel, paths: Sequence[str | Path], skip_bad: bool) -> np.ndarray:
    """The model's scores of every flow of ``paths``, each file its own stream (as ``score``)."""
    out = []
    for path in paths:
        model.reset_stream()
        for batch in flow_batches(path, skip_bad, ReadStats()):
            out.append(model.score_batch_arrow(batch, full_reasons=False)[0])
    model.reset_stream()
    return np.concatenate(out) if out else np.zeros(0)


def score(
    paths: Sequence[str | Path], model_dir: str | Path, out_csv: str | Path, *, skip_bad: bool = False
) -> dict[str, Any]:
    """Score every flow of ``paths``; write ``uid,score,alert,reasons`` rows to ``out_csv``."""
    t0 = time.perf_counter()
    model = load_flow_model(model_dir)
    meter = DriftMeter(model, str(model_dir))
    n_flows = n_alerts = 0
    skipped = 0
    out_csv = Path(out_csv)
    with open(out_csv, "wb") as sink:
        sink.write(b"uid,score,alert,reasons\n")
        opts = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        for path in paths:
            model.reset_stream()
            stats = ReadStats()
            for batch in flow_batches(path, skip_bad, stats):
                s, a, reasons, codes = model.score_batch_arrow(batch, full_reasons=False)
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
                meter.add(s, codes)  # drift: every score, a systematic sample of feature codes
                n_flows += len(batch)
                n_alerts += int(a.sum())
            skipped += stats.skipped
    elapsed = time.perf_counter() - t0
    drift = model.drift_from_fractions(meter.feature_counts / max(n_flows, 1)) if n_flows else {}
    top = sorted(drift.items(), key=lambda kv: -kv[1])[:5]
    report = meter.report()
    return {
        "flows": n_flows,
        "alerts": n_alerts,
        "skipped": skipped,
        "seconds": round(elapsed, 3),
        "flows_per_s": round(n_flows / elapsed, 1) if elapsed > 0 else None,
        "threshold": model.threshold_,
        "drift": {
            "score_psi": report["psi"],
            "level": report["level"],
            "feature_level": report["feature_level"],
            "psi_max": top[0][1] if top else 0.0,
            "top": dict(top),
            "psi": drift,
        },
        "out": str(out_csv),
    }


def evaluate(paths: Sequence[str | Path], model_dir: str | Path, *, skip_bad: bool = False) -> dict[str, Any]:
    """AUC-ROC, average precision and TPR at the target FPR, overall and per detailed label."""
    model = load_flow_model(model_dir)
    scores, alerts, ys, dets = [], [], [], []
    for path in paths:
        model.reset_stream()
        stats = ReadStats()
        for batch in flow_batches(path, skip_bad, stats):
            s, a, _, _ = model.score_batch_arrow(batch)
            y, d = labels_of(batch)
            scores.append(s)
            alerts.append(a)
            ys.append(y)
            dets.append(d)
    if not scores:
        raise SourceError(paths[0] if paths else "(no input)", None, "no flow records to evaluate")
    s = np.concatenate(scores)
    a = np.concatenate(alerts)
    y = np.concatenate(ys)
    det = np.concatenate(dets).astype(str)
    lab = y >= 0
    if not lab.any():
        raise SourceError(paths[0], None, "no labelled flows (need a 'label' column: Benign/Malicious)")
    return evaluation_report(s[lab], a[lab], y[lab], det[lab], model.target_fpr, model.threshold_)


def _versions() -> dict[str, str]:
    import scipy
    import sklearn

    from fleetwarden import __version__ as fw

    return {
        "fleetwarden": fw,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "pyarrow": pa.__version__,
    }
