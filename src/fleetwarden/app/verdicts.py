"""Analysts' verdicts on incidents, and the labels they give the supervised flow model.

``record_verdict`` stores a true/false-positive verdict with a reason (audited, bounded:
:mod:`fleetwarden.store.verdicts`); verdicts feed the false-positive rate
(:mod:`fleetwarden.app.metrics`).  ``export_labels`` writes one JSON line per record behind each
judged incident's findings: ``uid`` (the flow's id as the source gave it), ``label``
(``Malicious`` for a true positive, ``Benign`` for a false positive), ``detailed_label`` (the
incident's category), ``incident_id``, ``entity``, ``detector``, ``first_seen``, ``last_seen``.

What ``train`` reads, and what is missing: ``fleetwarden train`` reads flow files (pcap, Zeek
``conn.log``, IoT-23, JSONL flow events) whose rows carry ``label`` / ``detailed_label``
(:func:`fleetwarden.detection.flowmodel.labels_of`).  The store keeps the ids of the records behind
a finding (``record_ids``), not the flows themselves, so this file is a label *overlay*: to train on
it, the flows of those uids must come from the original capture or log (join on ``uid``, set
``label``/``detailed_label``).  Findings whose record ids are not flow uids (authentication,
telemetry, onboarding) still get rows; the join simply finds no flow for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetwarden.control.metrics import latest_verdicts
from fleetwarden.core.errors import InputError

__all__ = ["export_labels", "record_verdict"]

LABEL_OF = {"true-positive": "Malicious", "false-positive": "Benign"}


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
