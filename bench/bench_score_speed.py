"""End-to-end speed of ``fleetwarden score`` on a large Zeek conn.log (one process, one core).

    .venv/bin/python bench/bench_score_speed.py [FLOWS] [--repeat=N] [--profile]

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
import pyarrow.compute as pc  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402

from fleetwarden.app import modeling  # noqa: E402
from fleetwarden.app.models import load_flow_model  # noqa: E402
from fleetwarden.core.events import EventBatch  # noqa: E402
from fleetwarden.detection import flowmodel  # noqa: E402
from fleetwarden.detection.features import FlowFeaturizer  # noqa: E402
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
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 600_000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log = build_log(n, tmp / "conn.log")
        print(f"conn.log: {n:,} flows, {log.stat().st_size / 1e6:.0f} MB")
        modeling.train(sorted(DATA.glob("*.csv")), tmp / "model")
        repeat = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--repeat=")), 3)
        runs = []
        for _ in range(repeat):  # the machine is shared: report the best of a few runs, wall and CPU
            t0, c0 = time.perf_counter(), time.process_time()
            summary = modeling.score([log], tmp / "model", tmp / "out.csv")
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        total, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        print(
            f"score end to end (best of {repeat}): {summary['flows']:,} flows in {total:.2f} s wall = "
            f"{summary['flows'] / total:,.0f} flows/s; {cpu:.2f} s CPU = {summary['flows'] / cpu:,.0f} flows/s"
            f" ({summary['alerts']:,} alerts); all runs (wall, cpu): "
            + ", ".join(f"({w:.2f}, {c:.2f})" for w, c in runs)
        )
        if "--profile" in sys.argv:
            import cProfile
            import pstats

            cProfile.runctx(
                "modeling.score([log], tmp / 'model', tmp / 'out2.csv')", globals(), locals(), "/tmp/fw_score.prof"
            )
            pstats.Stats("/tmp/fw_score.prof").sort_stats("cumulative").print_stats(25)
        # where time goes (CPU seconds of each stage, run separately on the same data)
        clock = time.process_time
        t = clock()
        batches = list(read_events(log))
        t_read = clock() - t
        model = load_flow_model(tmp / "model")
        t_feat = t_model = t_expl = t_csv = 0.0
        fz = FlowFeaturizer()
        opts = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        with open(tmp / "stage.csv", "wb") as sink:
            for b in batches:
                t = clock()
                X = fz.transform(b)
                t_feat += clock() - t
                t = clock()
                codes = model.binner_.transform(X)
                keys = fz.last_keys if model.device_counts_ else None
                e, contrib, _, _ = model._combine(codes, "all", keys, fz.last_age)
                s = flowmodel._squash(e)
                t_model += clock() - t
                t = clock()
                reasons = model.explain(X, codes, contrib, s > model.threshold_)
                t_expl += clock() - t
                t = clock()
                table = pa.table(
                    {
                        "uid": b["uid"],
                        "score": pc.round(pa.array(s), 6),
                        "alert": pa.array((s > model.threshold_).astype(np.int8)),
                        "reasons": reasons,
                    }
                )
                pacsv.write_csv(table, sink, opts)
                t_csv += clock() - t
        rest = cpu - t_read - t_feat - t_model - t_expl - t_csv
        for name, v in (
            ("read (zeek TSV)", t_read),
            ("features+state", t_feat),
            ("model (bins, HBOS, logit)", t_model),
            ("explanations", t_expl),
            ("CSV out", t_csv),
            ("other (drift, glue)", rest),
        ):
            print(f"  {name:<26} {v:6.2f} s CPU  {v / cpu:5.1%}")


if __name__ == "__main__":
    main()
