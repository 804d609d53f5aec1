"""What telemetry detection can see in TON_IoT's IoT telemetry, and what only looks separable.

For each ``Train_Test_IoT_<Device>.csv`` of ../shared/data/ton-iot (rows: a reading, ``label`` 0/1,
``type`` of attack), prints

* **values**: for every numeric reading, the AUC of its robust distance from the normal median
  (|value - median| / MAD of the normal rows) at telling attack rows from normal ones, and the 1st
  to 99th percentile range of each: how far attacks move the readings themselves;
* **the range analytic**: precision and recall of ``TelemetryRange`` (learning on the first half of
  the normal rows in time order, judging every later row), the detector FleetWarden runs;
* **collection artefacts**: the same AUC for "records in the same second" and "records within
  30 s", and the days normal and attack rows were recorded.  In these files normal rows were
  logged on other days (31 March to 2 April 2019) and at another rate (tens per second) than
  attack rows (23 to 29 April, about two per second): timing separates them perfectly, but that
  is how the files were assembled, not what an attack does; a detector fitted to it would be
  fitted to the collection.  So no timing rule is derived from these files.

Run: .venv/bin/python bench/bench_ton_iot.py
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from fleetwarden.core.context import Context, DeviceInfo
from fleetwarden.core.events import EventBatch
from fleetwarden.detection.analytics.telemetry import TelemetryRange

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ton-iot"
READINGS = {
    "Fridge": ("fridge_temperature", "temp_condition"),
    "Garage_Door": ("door_state", "sphone_signal"),
    "Thermostat": ("current_temperature", "thermostat_status"),
    "Weather": ("temperature", "pressure", "humidity"),
}
# on/off style readings become 0/1 (as a gateway would report them)
_STATES = {"high": 1.0, "low": 0.0, "open": 1.0, "closed": 0.0, "true": 1.0, "false": 0.0}


def _load(name: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    with open(DATA / f"Train_Test_IoT_{name}.csv", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    ts = np.array(
        [datetime.strptime(f"{r['date'].strip()} {r['time'].strip()}", "%d-%b-%y %H:%M:%S").timestamp() for r in rows]
    )
    order = np.argsort(ts, kind="stable")
    values = {c: np.array([_num(rows[i][c]) for i in order]) for c in READINGS[name]}
    return ts[order], values, np.array([int(rows[i]["label"]) for i in order])


def _num(text: str) -> float:
    text = text.strip().lower()
    if text in _STATES:
        return _STATES[text]
    try:
        return float(text)
    except ValueError:
        return np.nan


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    ok = np.isfinite(score)
    return float(roc_auc_score(y[ok], score[ok])) if len(set(y[ok])) == 2 else float("nan")


def _batch(device: str, ts: np.ndarray, values: dict[str, np.ndarray], idx: np.ndarray) -> EventBatch:
    names = list(values)
    return EventBatch.from_columns(
        "telemetry",
        {
            "ts": np.tile(ts[idx], len(names)),
            "device_id": [device] * (len(idx) * len(names)),
            "metric": np.repeat(names, len(idx)),
            "value": np.concatenate([values[m][idx] for m in names]),
        },
    )


def _range_detector(name: str, ts: np.ndarray, values: dict[str, np.ndarray], y: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the range analytic: learn on the first half of the normal rows (in
    time), then judge every later row (a row is flagged when any of its readings is)."""
    normal = np.flatnonzero(y == 0)
    train = normal[: len(normal) // 2]
    test = np.arange(train[-1] + 1, len(ts))
    dev = f"ton-{name.lower()}"
    ctx = Context(devices={dev: DeviceInfo(dev, device_class=name.lower())})
    det = TelemetryRange()
    for s in range(0, len(train), 2048):
        det.update(_batch(dev, ts, values, train[s : s + 2048]), ctx)
    flagged = np.zeros(len(test), dtype=bool)
    for s in range(0, len(test), 2048):
        idx = test[s : s + 2048]
        verdict = det.observe(_batch(dev, ts, values, idx), ctx)
        flagged[s : s + len(idx)] = verdict.flagged.reshape(len(values), len(idx)).any(axis=0)
    attack = y[test] == 1
    tp, fp = int((flagged & attack).sum()), int((flagged & ~attack).sum())
    return (tp / (tp + fp) if tp + fp else float("nan")), tp / max(1, int(attack.sum()))


def _days(ts: np.ndarray) -> str:
    return ", ".join(sorted({datetime.fromtimestamp(t).strftime("%m-%d") for t in ts.tolist()}))


def main() -> int:
    if not DATA.exists():
        print(f"TON_IoT data not found at {DATA}", file=sys.stderr)
        return 2
    for name in READINGS:
        ts, values, y = _load(name)
        print(f"== {name}: {len(y):,} rows, {y.mean():.0%} attack")
        for metric, v in values.items():
            n = v[(y == 0) & np.isfinite(v)]
            a = v[(y == 1) & np.isfinite(v)]
            med = np.median(n)
            mad = np.median(np.abs(n - med)) or 1e-9
            print(
                f"   value {metric:20s} AUC {_auc(y, np.abs(v - med) / mad):.3f}   normal 1-99 % "
                f"[{np.percentile(n, 1):.2f}, {np.percentile(n, 99):.2f}]   attack [{np.percentile(a, 1):.2f}, "
                f"{np.percentile(a, 99):.2f}]"
            )
        precision, recall = _range_detector(name, ts, values, y)
        print(f"   range analytic: precision {precision:.3f} recall {recall:.3f}")
        same = Counter(ts.tolist())
        per_second = np.array([same[t] for t in ts.tolist()], dtype=float)
        lo, hi = np.searchsorted(ts, ts - 30), np.searchsorted(ts, ts + 30, side="right")
        print(
            f"   collection artefacts (not used): AUC records-in-the-same-second {_auc(y, -per_second):.3f}, "
            f"records-within-30s {_auc(y, -(hi - lo).astype(float)):.3f}"
        )
        print(f"   normal rows recorded on {_days(ts[y == 0])}; attack rows on {_days(ts[y == 1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
