"""Leave-one-capture-out quality of the flow model on IoT-23, with an IsolationForest baseline: the quick,
per-capture view.  The honest protocol (nested selection of every constant, capture-balanced pooled
figures, gradient-boosting and IsolationForest baselines on the same folds, IoT Sentinel through the
IoT-23 model) is ``bench/bench_nested_loco.py``; this bench prints what a user sees capture by capture.

For each of the 5 IoT-23 captures: train ``fleetwarden.app.modeling.train`` on the
other 4 (its fit chooses its own constants by a leave-one-file-out over those 4), score the left-out
one (one stream, in file order), print AUC-ROC, TPR at 1 % FPR (within the capture: a per-capture
threshold, so it says nothing about whether scores compare across captures), the number of alerts on
benign flows and the alert TPR (share of malicious flows with alert=1) at the model's stored
operating point (single-flow threshold OR the device rule), per detailed label too.  The baseline is a
plain sklearn IsolationForest (100 trees) on the raw numeric conn fields, fitted on the benign flows of
the same 4 training captures, its threshold at the 99th percentile of their scores.

    .venv/bin/python bench/bench_iot23_loco.py [DATA_DIR] [--compare] [--train=KEYS]

Captures are found in DATA_DIR (default ``../shared/data/iot23``): IoT-23 CSVs named
``CTU-<Honeypot|Malware>-Capture-<N-M>-labeled.csv`` and the original layout's
``<capture>/bro/conn.log.labeled``; a capture is benign (a honeypot) when its name says so.
Memory stays bounded on IoT-23's largest captures: the model trains within its row budget, the
left-out capture is scored as a stream, batch by batch, and the baseline fits on a sample of at most
200,000 flows per capture (``--compare`` still holds the left-out capture's features whole).

``--train=4-1,5-1,8-1`` instead trains once on the listed captures and scores each of the others:
a harder check than leave-one-capture-out (fewer, and fewer kinds of, training captures).

``--compare`` also ranks the unsupervised candidates alone (HBOS, IsolationForest,
GaussianMixture on the same features, fitted on all training flows as benign) and times their
scoring: the measurement behind choosing HBOS.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from fleetwarden.app import modeling
from fleetwarden.app.modeling import read_flow_file as _read_file
from fleetwarden.app.models import load_flow_model
from fleetwarden.core.events import EventBatch
from fleetwarden.detection import flowmodel as fm
from fleetwarden.sources import read_events

ROOT = Path(__file__).resolve().parents[1]
RAW = (
    "duration",
    "orig_bytes",
    "resp_bytes",
    "missed_bytes",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "id.orig_p",
    "id.resp_p",
)


_KEY = re.compile(r"Capture-(\d+-\d+)")


def discover(data: Path) -> dict[str, Path]:
    """Capture key ("34-1") -> labelled flow file, for every IoT-23 capture under ``data``."""
    found: dict[str, Path] = {}
    for p in sorted(data.glob("*labeled.csv")) + sorted(data.glob("**/conn.log.labeled")):
        m = _KEY.search(str(p.relative_to(data)))
        if m and m.group(1) not in found:
            found[m.group(1)] = p
    return dict(sorted(found.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("-"))))


def capture_path(data: Path, key: str) -> Path:
    path = discover(data).get(key)
    if path is None:
        raise SystemExit(f"no IoT-23 capture {key} under {data}")
    return path


def _raw(batch: EventBatch) -> tuple[np.ndarray, np.ndarray]:
    X = np.column_stack([np.nan_to_num(batch.np(c, fill=0).astype(np.float64)) for c in RAW])
    y = (np.char.lower(batch.np("label", fill="").astype(str)) == "malicious").astype(int)
    return X, y


def raw_sample(path: Path, max_rows: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Raw conn fields and labels of a systematic sample of at most ``max_rows`` flows of ``path``
    (IsolationForest fits 256-flow subsamples per tree: a bounded sample loses nothing)."""
    sample = fm.RowSample(max_rows)
    for batch in read_events(path):
        if batch.kind == "flow" and len(batch):
            sample.add(*_raw(batch))
    X, y = sample.columns()
    return X, y


def score_stream(model, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The flow model's scores and alerts on ``path`` as one stream, batch by batch (bounded memory
    whatever the capture's size), with the labels (1/0) and detailed labels."""
    model.reset_stream()
    out: list[list[np.ndarray]] = [[], [], [], []]
    for batch in read_events(path):
        if batch.kind != "flow" or not len(batch):
            continue
        s, a, _ = model.score_batch(batch)
        y, det = fm.labels_of(batch)
        for acc, v in zip(out, (s, a, (y == 1).astype(int), det.astype(str)), strict=True):
            acc.append(np.asarray(v))
    return tuple(np.concatenate(acc) for acc in out)  # type: ignore[return-value]


def iforest_stream(iso: IsolationForest, path: Path) -> tuple[np.ndarray, np.ndarray]:
    ss, ys = [], []
    for batch in read_events(path):
        if batch.kind == "flow" and len(batch):
            X, y = _raw(batch)
            ss.append(-iso.score_samples(X))
            ys.append(y)
    return np.concatenate(ss), np.concatenate(ys)


def tpr_at(neg: np.ndarray, pos: np.ndarray, fpr: float = 0.01) -> float:
    return float((pos > np.quantile(neg, 1 - fpr, method="higher")).mean())


def row(name: str, key: str, s: np.ndarray, y: np.ndarray, alerts: np.ndarray) -> str:
    if y.any() and (~y.astype(bool)).any():
        auc = roc_auc_score(y, s)
        tpr = tpr_at(s[y == 0], s[y == 1])
        det = f"AUC={auc:.4f} TPR@1%FPR={tpr:.3f}"
    else:
        det = "AUC=   n/a   TPR@1%FPR=  n/a"
    fp = int(alerts[y == 0].sum())
    tp = alerts[y == 1].mean() if y.any() else float("nan")
    rate = fp / max((y == 0).sum(), 1)
    return f"{name:<14} {key:<5} {det}  alerts on benign={fp:<4} ({rate:.2%})  alert TPR={tp:.3f}"


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    data = Path(args[0]) if args else ROOT.parent / "shared" / "data" / "iot23"
    compare = "--compare" in sys.argv
    fixed = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--train=")), None)
    captures = list(discover(data))
    if not captures:
        raise SystemExit(f"no IoT-23 captures under {data}")
    raw = {k: raw_sample(capture_path(data, k)) for k in captures}
    lines: list[str] = []
    for key in captures:
        if fixed is not None and key in fixed:
            continue
        mark = len(lines)
        train_keys = list(fixed) if fixed is not None else [k for k in captures if k != key]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            modeling.train([capture_path(data, k) for k in train_keys], Path(tmp))
            t_train = time.perf_counter() - t0
            model = load_flow_model(Path(tmp))
            s, a, y, det = score_stream(model, capture_path(data, key))
            lines.append(row("fleetwarden", key, s, y, a) + f"  (train {t_train:.1f}s)")
            per = []
            for d in np.unique(det[y == 1]):
                m = (det == d) | (y == 0)
                yy = (det[m] == d).astype(int)
                per.append(
                    f"{d}: AUC={roc_auc_score(yy, s[m]):.4f} "
                    f"TPR@1%={tpr_at(s[y == 0], s[det == d]):.3f} "
                    f"alert={a[det == d].mean():.3f}"
                )
            if per:
                lines.append("    " + "; ".join(per))
        # baseline: IsolationForest on raw numeric fields, benign training flows
        Xtr = np.concatenate([raw[k][0][raw[k][1] == 0] for k in train_keys])
        iso = IsolationForest(n_estimators=100, random_state=0).fit(Xtr)
        thr = np.quantile(-iso.score_samples(Xtr), 0.99)
        si, yte = iforest_stream(iso, capture_path(data, key))
        lines.append(row("IsolationForest", key, si, yte, (si > thr).astype(int)))
        if compare:
            lines.extend(compare_unsupervised(data, train_keys, key))
        print("\n".join(lines[mark:]), flush=True)
    print("\n=== summary ===")
    print("\n".join(lines))


def compare_unsupervised(data: Path, train_keys: list[str], key: str) -> list[str]:
    """Unsupervised candidates on the same features, fitted on benign training flows only."""
    tr = [_read_file(capture_path(data, k), False, True, max_rows=200_000) for k in train_keys]
    Xtr = np.concatenate([f.X[f.label == 0] for f in tr])
    te = _read_file(capture_path(data, key), False, True)
    y = (te.label == 1).astype(int)
    if not y.any():
        return []
    out = []
    model = fm.FlowModel().fit(Xtr)
    codes = model.binner_.transform(te.X)
    t0 = time.perf_counter()
    s = model.hbos_["all"].score(codes)
    out.append(
        f"  unsup HBOS (behaviour features, as in the model) {key}: AUC={roc_auc_score(y, s):.4f} "
        f"({(time.perf_counter() - t0) * 1e6 / len(s):.2f} us/flow)"
    )
    for name, est in (
        ("IsolationForest", IsolationForest(n_estimators=50, random_state=0)),
        (
            "GaussianMixture",
            GaussianMixture(n_components=8, covariance_type="diag", reg_covar=1e-2, random_state=0),
        ),
    ):
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
        est.fit((Xtr - mu) / sd)
        t0 = time.perf_counter()
        s = -est.score_samples((te.X - mu) / sd)
        dt = time.perf_counter() - t0
        out.append(
            f"  unsup {name:<12} {key}: AUC={roc_auc_score(y, s):.4f} ({dt * 1e6 / len(s):.2f} us/flow)"
        )
    return out


if __name__ == "__main__":
    main()
