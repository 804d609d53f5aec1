"""Analysts' verdicts feed the supervised flow model: ``fleetwarden train FILE --labels LABELS``.

The loop on real data: analyze an IoT-23 capture into a store, mark an incident true positive,
export the labels, train on the same capture with them, and find them in the model's label counts.
"""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from conftest import need_data
from fleetwarden.app.modeling import train
from fleetwarden.app.stores import store_at
from fleetwarden.app.verdicts import LabelsFileError, read_labels
from fleetwarden.cli import app

runner = CliRunner()


def _csv_column(path, name):
    with open(path, newline="") as fh:
        return [r[name] for r in csv.DictReader(fh)]


def test_verdict_labels_reach_the_model_end_to_end(tmp_path):
    """analyze --db -> verdict true-positive -> incident labels -> train --labels: the incident's
    records are the capture's flow uids, and every one of them trains as the incident's category."""
    capture = need_data("iot23", "CTU-Malware-Capture-8-1-labeled.csv")
    url = f"sqlite:///{tmp_path / 'fw.db'}"
    res = runner.invoke(app, ["analyze", str(capture), "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    with store_at(url) as store:
        incidents = sorted(store.list_incidents(), key=lambda i: i.id)
        judged = next(i for i in incidents if store.list_findings(incident_id=i.id))
        iid, category = judged.id, judged.category
    res = runner.invoke(
        app, ["incident", "verdict", str(iid), "true-positive", "--reason", "C2 confirmed", "--as", "ana", "--db", url]
    )
    assert res.exit_code == 0, res.output
    labels = tmp_path / "labels.jsonl"
    res = runner.invoke(app, ["incident", "labels", "--out", str(labels), "--db", url])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    uids = {r["uid"] for r in rows}
    assert uids and {r["label"] for r in rows} == {"Malicious"}
    # the finding record ids of flow-based findings are the capture's Zeek uids
    assert uids <= set(_csv_column(capture, "uid"))
    assert category not in set(_csv_column(capture, "detailed-label"))  # the label can only come from the verdict

    res = runner.invoke(app, ["train", str(capture), "--model", str(tmp_path / "m"), "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["labelled"] and summary["supervised"]
    assert summary["label_counts"][category] == len(uids)
    assert summary["labels"]["uids_matched"] == len(uids) == summary["labels"]["flows_labelled"]
    assert sum(summary["label_counts"].values()) == summary["rows"]  # every IoT-23 flow stays labelled


def test_csv_labels_fill_unlabelled_and_override(tmp_path):
    """A plain uid,label,detailed_label CSV; a later file overrides an earlier one for the same uid."""
    capture = need_data("iot23", "CTU-Honeypot-Capture-4-1-labeled.csv")
    uids = _csv_column(capture, "uid")[:7]
    first = tmp_path / "a.csv"
    first.write_text("uid,label,detailed_label\n" + "".join(f"{u},Malicious,manual\n" for u in uids))
    second = tmp_path / "b.csv"
    second.write_text("uid,label\n" + f"{uids[0]},benign\n")
    summary = train([capture], tmp_path / "m", labels=[first, second])
    assert summary["label_counts"]["manual"] == 6
    assert summary["malicious_rows"] == 6
    assert summary["labels"] == {
        "files": [str(first), str(second)],
        "uids": 7,
        "uids_matched": 7,
        "flows_labelled": 7,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uid,label,colour\nC1,Benign,red\n", "unknown column(s) 'colour'"),
        ("uid,detailed_label\nC1,scan\n", "missing column(s) label"),
        ("uid,label\nC1,Evil\n", "line 2: label 'Evil'? expected Malicious or Benign"),
        ("uid,label\n,Benign\n", "line 2: uid must be"),
        ("uid,label\n" + "C" * 129 + ",Benign\n", "uid must be 1-128"),
        ("uid,label\nC1\n", "line 2: 1 fields, the header has 2"),
        ('{"uid": "C1", "label": "Malicious", "x": 1}\n', "unknown column(s) 'x'"),
        ('{"uid": "C1", "label": "Malicious"}\nnot json\n', "line 2: not a JSON object"),
        ("uid,label\n", "no labelled rows"),
        ("", "empty"),
    ],
)
def test_bad_labels_files_are_refused_with_one_line(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelsFileError) as exc:
        read_labels([path])
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_export_format_reads_back(tmp_path):
    path = tmp_path / "l.jsonl"
    rows = [
        {"uid": "C1", "label": "Malicious", "detailed_label": "scan", "incident_id": 3, "entity": "10.0.0.1",
         "detector": "scan", "first_seen": 1.0, "last_seen": 2.0},
        {"uid": "C2", "label": "Benign", "detailed_label": "c2-beacon", "incident_id": 4, "entity": "10.0.0.2",
         "detector": "retry", "first_seen": 1.0, "last_seen": 2.0},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overlay = read_labels([path])
    assert overlay.uids == ["C1", "C2"]
    assert overlay.label == [1, 0]
    assert overlay.detailed == ["scan", "Benign"]  # a false positive trains as benign


def test_cli_refuses_labels_that_match_no_flow(tmp_path):
    capture = need_data("iot23", "CTU-Honeypot-Capture-4-1-labeled.csv")
    labels = tmp_path / "other.csv"
    labels.write_text("uid,label\nCnotInThisCapture1,Malicious\n")
    res = runner.invoke(app, ["train", str(capture), "--model", str(tmp_path / "m"), "--labels", str(labels)])
    assert res.exit_code == 2
    assert "none of its 1 uids is a flow of the training files" in res.stderr
    assert not (tmp_path / "m").exists()
    missing = runner.invoke(app, ["train", str(capture), "--model", str(tmp_path / "m"), "--labels", "/nonexistent"])
    assert missing.exit_code == 2 and "labels file /nonexistent: unreadable" in missing.stderr
