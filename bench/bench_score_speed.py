"""End-to-end speed of ``fleetwarden score`` on a large Zeek conn.log (one process, one core).

    .venv/bin/python bench/bench_score_speed.py [FLOWS]

Builds a Zeek TSV conn.log of FLOWS flows (default 600,000) in a temp dir from the IoT-23
flows repeated with shifted timestamps and fresh uids (``fleetwarden.sources.zeek.write_tsv``),
trains a model on the IoT-23 captures, then times ``flowmodel.score`` (read + features +
model + explanations + CSV out) and, separately, each stage on the same data.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from fleetwarden.detection import flowmodel as fm  # noqa: E402
from fleetwarden.events import EventBatch  # noqa: E402
from fleetwarden.sources import read_events  # noqa: E402
from fleetwarden.sources.zeek import write_tsv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "iot23"


def build_log(n: int, path: Path) -> Path:
    base = EventBatch.concat(b for f in sorted(DATA.glob("*.csv")) for b in read_events(f))
    t = base.table.drop_columns(["label", "detailed_label"])
    t = EventBatch.from_columns("flow", {c: t.column(c) for c in t.column_names}, len(t)).table
    span = float(np.nanmax(base.np("ts")) - np.nanmin(base.np("ts"))) + 1.0
    batches = []
    done = 0
    rep = 0
    while done < n:
        k = min(len(t), n - done)
        part = t.slice(0, k)
        ts = part.column("ts").to_numpy() + rep * span
        uid = pa.array([f"C{rep:04d}{i:08d}" for i in range(k)])
        part = part.set_column(part.schema.get_field_index("ts"), "ts", pa.array(ts))
        part = part.set_column(part.schema.get_field_index("uid"), "uid", uid)
        batches.append(EventBatch("flow", part))
        done += k
        rep += 1
    return write_tsv(batches, path)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 600_000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log = build_log(n, tmp / "conn.log")
        print(f"conn.log: {n:,} flows, {log.stat().st_size / 1e6:.0f} MB")
        fm.train(sorted(DATA.glob("*.csv")), tmp / "model")
        t0 = time.perf_counter()
        summary = fm.score([log], tmp / "model", tmp / "out.csv")
        total = time.perf_counter() - t0
        print(
            f"score end to end: {summary['flows']:,} flows in {total:.2f} s = "
            f"{summary['flows'] / total:,.0f} flows/s"
            f" ({summary['alerts']:,} alerts)"
        )
        # where time goes
        t = time.perf_counter()
        batches = list(read_events(log))
        t_read = time.perf_counter() - t
        model = fm.load_model(tmp / "model")
        t_feat = t_model = t_expl = 0.0
        for b in batches:
            t = time.perf_counter()
            X = model._featurizer_transform(b) if hasattr(model, "_featurizer_transform") else None
            if X is None:
                from fleetwarden.detection.features import FlowFeaturizer

                fz = getattr(model, "_bench_fz", None) or FlowFeaturizer()
                model._bench_fz = fz
                X = fz.transform(b)
            t_feat += time.perf_counter() - t
            t = time.perf_counter()
            codes = model.binner_.transform(X)
            s, ac, sc = model._combine(codes, "all", model.hbos_, model.sup_, model.anom_scale_, None)
            t_model += time.perf_counter() - t
            t = time.perf_counter()
            model.explain(X, codes, ac, sc)
            t_expl += time.perf_counter() - t
        rest = total - t_read - t_feat - t_model - t_expl
        for name, v in (
            ("read (zeek TSV)", t_read),
            ("features+state", t_feat),
            ("model (bins, HBOS, logit)", t_model),
            ("explanations", t_expl),
            ("CSV out + other", rest),
        ):
            print(f"  {name:<26} {v:6.2f} s  {v / total:5.1%}")


if __name__ == "__main__":
    main()
