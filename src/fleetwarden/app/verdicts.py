"""Analysts' verdicts on incidents, and the labels they give the supervised flow model.

``record_verdict`` stores a true/false-positive verdict with a reason (audited, bounded:
:mod:`fleetwarden.store.verdicts`); verdicts feed the false-positive rate
(:mod:`fleetwarden.app.metrics`).  ``export_labels`` writes one JSON line per record behind each
judged incident's findings: ``uid`` (the flow's id as the source gave it), ``label``
(``Malicious`` for a true positive, ``Benign`` for a false positive), ``detailed_label`` (the
incident's category), ``incident_id``, ``entity``, ``detector``, ``first_seen``, ``last_seen``.

How verdicts reach the model: the store keeps the ids of the records behind a finding
(``record_ids``: for flow-based findings, the flows' Zeek ``uid``), not the flows themselves, so the
export is a label *overlay*.  ``fleetwarden train FILE... --labels LABELS`` reads it
(:func:`read_labels`, which also takes a ``uid,label[,detailed_label]`` CSV) and
:func:`fleetwarden.app.modeling.train` applies it by ``uid`` to the flows of the original capture or
log, overriding or filling their ``label``/``detailed_label``.  Findings whose record ids are not
flow uids (authentication, telemetry, onboarding) still get rows; the join finds no flow for them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetwarden.control.metrics import latest_verdicts
from fleetwarden.core.errors import InputError

__all__ = ["LabelOverlay", "LabelsFileError", "export_labels", "read_labels", "record_verdict"]

LABEL_OF = {"true-positive": "Malicious", "false-positive": "Benign"}
# what a labels file (``read_labels``) may hold: the export's columns, IoT-23's spelling of the
# detailed label; ``uid`` and ``label`` are required
LABEL_COLUMNS = frozenset(
    {"uid", "label", "detailed_label", "detailed-label", "incident_id", "entity", "detector", "first_seen", "last_seen"}
)
LABEL_VALUES = {"malicious": 1, "benign": 0}
MAX_LABELS_BYTES = 256 * 1024 * 1024
MAX_LABEL_ROWS = 2_000_000
MAX_UID_CHARS = 128
MAX_DETAIL_CHARS = 100


class LabelsFileError(InputError, ValueError):
    """A labels file that cannot be used: its name, the line and what was wrong."""

    def __init__(self, path: str | Path, line: int | None, what: str) -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"labels file {where}: {what}")


@dataclass
class LabelOverlay:
    """Labels by flow ``uid`` from one or more labels files (a later row overrides an earlier one for
    the same uid): ``label`` 1 malicious / 0 benign, ``detailed`` the detailed label, ``source`` the
    index (in ``paths``) of the file each uid's label came from."""

    paths: list[Path]
    uids: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    detailed: list[str] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # rows read per file

    def check_matched(self, matched_uids: set[str]) -> None:
        """Refuse a labels file none of whose uids named a flow (wrong capture, wrong export)."""
        hit = {self.source[i] for i, u in enumerate(self.uids) if u in matched_uids}
        for k, path in enumerate(self.paths):
            if k not in hit:
                raise LabelsFileError(path, None, f"none of its {self.rows[k]} uids is a flow of the training files")


def record_verdict(store: Any, incident_id: int, verdict: str, reason: str, *, analyst: str) -> dict[str, Any]:
    """Store an analyst's verdict on an incident (audited); returns the stored row as a dict."""
    from fleetwarden.store.verdicts import add_verdict

    if incident_id < 1:
        raise InputError(f"incident id must be positive, got {incident_id}")
    return add_verdict(store, incident_id, verdict, reason, analyst=analyst).to_dict()


def _label_rows(store: Any) -> list[dict[str, Any]]:
    from fleetwarden.store.verdicts import list_verdicts

    latest = latest_verdicts(v.to_dict() for v in list_verdicts(store))
    rows = []
    for iid, v in sorted(latest.items()):
        inc = store.get_incident(iid)
        for f in store.list_findings(incident_id=iid):
            rows += [
                {
                    "uid": uid,
                    "label": LABEL_OF[v["verdict"]],
                    "detailed_label": inc.category if inc is not None else f.category,
                    "incident_id": iid,
                    "entity": f.entity,
                    "detector": f.detector,
                    "first_seen": f.first_seen,
                    "last_seen": f.last_seen,
                }
                for uid in (f.record_ids or [])
            ]
    return rows


def export_labels(store: Any, out: str | Path) -> dict[str, Any]:
    """Write the labelled rows of every judged incident to ``out`` (JSON lines); returns counts."""
    rows = _label_rows(store)
    path = Path(out)
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    return {
        "path": str(path),
        "rows": len(rows),
        "malicious": sum(1 for r in rows if r["label"] == "Malicious"),
        "benign": sum(1 for r in rows if r["label"] == "Benign"),
        "incidents": len({r["incident_id"] for r in rows}),
    }


# ---------------------------------------------------------------------------- labels files -> training


def read_labels(paths: Sequence[str | Path]) -> LabelOverlay:
    """The labels of ``paths``: a verdict export (:func:`export_labels`, JSON lines) or a CSV with a
    header holding ``uid``, ``label`` and optionally ``detailed_label`` (or ``detailed-label``).

    ``label`` is ``Malicious`` or ``Benign`` (any case); a missing detailed label is the label.
    Hostile input is bounded: at most :data:`MAX_LABELS_BYTES` per file and :data:`MAX_LABEL_ROWS`
    rows in all, uids of at most :data:`MAX_UID_CHARS` characters; an unknown column, a bad label, a
    missing uid is a :class:`LabelsFileError` naming the file and line.  Blind spot: a uid is only
    unique within one capture (Zeek's), so labels must be applied to the capture they came from."""
    overlay = LabelOverlay([Path(p) for p in paths])
    index: dict[str, int] = {}
    for k, path in enumerate(overlay.paths):
        n = 0
        for line, row in _label_rows_of(path):
            uid, y, det = _parse_label_row(path, line, row)
            if len(index) >= MAX_LABEL_ROWS and uid not in index:
                raise LabelsFileError(path, line, f"more than {MAX_LABEL_ROWS} labelled uids in all")
            _put(overlay, index, uid, y, det, k)
            n += 1
        overlay.rows.append(n)
        if not n:
            raise LabelsFileError(path, None, "no labelled rows")
    return overlay


def _put(overlay: LabelOverlay, index: dict[str, int], uid: str, y: int, det: str, k: int) -> None:
    i = index.get(uid)
    if i is None:
        index[uid] = len(overlay.uids)
        overlay.uids.append(uid)
        overlay.label.append(y)
        overlay.detailed.append(det)
        overlay.source.append(k)
    else:  # a later row overrides
        overlay.label[i], overlay.detailed[i], overlay.source[i] = y, det, k


def _label_rows_of(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row as a dict) of a JSON-lines or CSV labels file."""
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise LabelsFileError(path, None, f"larger than {MAX_LABELS_BYTES // (1024 * 1024)} MiB")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsFileError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise LabelsFileError(path, None, f"unreadable ({exc.strerror or exc})") from None
    if text.lstrip().startswith("{"):
        yield from _json_rows(path, text)
    else:
        yield from _csv_rows(path, text)


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LabelsFileError(path, line, f"not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise LabelsFileError(path, line, "not a JSON object")
        _check_columns(path, line, row.keys())
        yield line, row


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise LabelsFileError(path, None, "empty (need a header with uid,label)")
    header = [h.strip() for h in header]
    _check_columns(path, 1, header)
    for row in reader:
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LabelsFileError(path, reader.line_num, f"{len(row)} fields, the header has {len(header)}")
        yield reader.line_num, dict(zip(header, row, strict=True))


def _check_columns(path: Path, line: int, columns: Any) -> None:
    cols = [str(c) for c in columns]
    unknown = sorted(set(cols) - LABEL_COLUMNS)
    if unknown:
        shown = ", ".join(repr(c[:40]) for c in unknown[:5])
        raise LabelsFileError(path, line, f"unknown column(s) {shown}; expected uid,label[,detailed_label]")
    missing = [c for c in ("uid", "label") if c not in cols]
    if missing:
        raise LabelsFileError(path, line, f"missing column(s) {', '.join(missing)}")


def _parse_label_row(path: Path, line: int, row: dict[str, Any]) -> tuple[str, int, str]:
    uid = str(row.get("uid") or "").strip()
    if not uid or len(uid) > MAX_UID_CHARS or not uid.isprintable():
        raise LabelsFileError(path, line, f"uid must be 1-{MAX_UID_CHARS} printable characters")
    raw = str(row.get("label") or "").strip()
    y = LABEL_VALUES.get(raw.lower())
    if y is None:
        raise LabelsFileError(path, line, f"label {raw[:40]!r}? expected Malicious or Benign")
    det = str(row.get("detailed_label") or row.get("detailed-label") or "").strip()
    if det in ("", "-"):
        det = "Benign" if y == 0 else "Malicious"
    if len(det) > MAX_DETAIL_CHARS or not det.isprintable():
        raise LabelsFileError(path, line, f"detailed_label must be at most {MAX_DETAIL_CHARS} printable characters")
    return uid, y, "Benign" if y == 0 else det
