"""A device whose traffic stops matching its registered type is a finding: ``fingerprint check`` on
real IoT Sentinel captures (a held-apart capture, never trained on) against a real SQLite
inventory, the finding and its incident in the store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.conftest import need_data
from typer.testing import CliRunner

from fleetwarden.app.fingerprinting import MAC_FILE, Identification, type_key, type_verdict
from fleetwarden.cli import app
from fleetwarden.store import open_store

runner = CliRunner()
TYPES = ("Aria", "HueBridge", "Withings")  # distinct on the wire: a small model trains in seconds
HELD = "HueBridge"
LINE = re.compile(r"^[^\t]+\t[^\t]+\t[01]\.\d{4}\t[a-z-]+\t[^\t]+\t[^\t]+$")


@pytest.fixture(scope="module")
def sentinel() -> Path:
    return need_data("iot-sentinel")


@pytest.fixture(scope="module")
def trained(sentinel, tmp_path_factory) -> tuple[Path, Path, str]:
    """A model of TYPES trained on 4 captures each; the last HueBridge capture held apart, and
    its device's MAC."""
    root = tmp_path_factory.mktemp("fpc-train")
    for t in TYPES:
        (root / t).mkdir()
        for c in sorted((sentinel / t).glob("*.pcap"))[:4]:
            (root / t / c.name).symlink_to(c)
    model = tmp_path_factory.mktemp("fpc-model") / "m"
    res = runner.invoke(app, ["fingerprint", "train", str(root), "--model", str(model)])
    assert res.exit_code == 0, res.output
    held = sorted((sentinel / HELD).glob("*.pcap"))[-1]
    mac = (sentinel / HELD / MAC_FILE).read_text().strip().lower()
    return model, held, mac


def _db(tmp_path: Path, **device) -> str:
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    with open_store(url) as st:
        if device:
            st.upsert_devices([{"device_id": "hub-1", **device}])
    return url


def _check(url: str, model: Path, *files: Path, extra: tuple[str, ...] = ()) -> list[list[str]]:
    res = runner.invoke(
        app, ["fingerprint", "check", *map(str, files), "--model", str(model), "--db", url, *extra]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == len(files) and all(LINE.match(ln) for ln in lines), res.stdout
    return [ln.split("\t") for ln in lines]


def test_registered_as_its_true_type_is_no_finding(trained, tmp_path):
    model, held, mac = trained
    url = _db(tmp_path, mac=mac.upper(), vendor="Philips", model="Hue Bridge", device_class="hub")
    ((path, kind, conf, verdict, device, registered),) = _check(url, model, held)
    assert (path, kind, verdict, device, registered) == (
        str(held),
        HELD,
        "match",
        "hub-1",
        "Philips Hue Bridge",
    )
    assert float(conf) >= 0.5
    with open_store(url) as st:
        assert st.list_findings() == [] and st.list_incidents() == []


def test_registered_as_another_type_is_a_cloned_device_incident(trained, tmp_path):
    model, held, mac = trained
    url = _db(tmp_path, mac=mac, vendor="Withings", model="Withings", device_class="scale")
    ((_path, kind, conf, verdict, device, registered),) = _check(url, model, held)
    assert (kind, verdict, device, registered) == (HELD, "mismatch", "hub-1", "Withings Withings")
    with open_store(url) as st:
        (f,) = st.list_findings(entity="hub-1")
        assert (f.category, f.detector, f.mac, f.device_id) == (
            "cloned-device",
            "fingerprint.mismatch",
            mac,
            "hub-1",
        )
        assert (
            f.evidence[0]
            == f"registered as Withings Withings, traffic looks like {HELD} (confidence {float(conf):.2f})"
        )
        assert abs(f.score - float(conf)) < 1e-4
        (inc,) = st.list_incidents(entity="hub-1")
        assert (inc.category, inc.status, inc.device_id) == ("cloned-device", "open", "hub-1")
        assert f.incident_id == inc.id and f.evidence[0] in inc.evidence
        assert [e.action for e in st.audit_entries()][-1] == "results.record"
        assert st.audit_verify() == (True, None)
    # checking the same capture again adds nothing: the finding is stored once
    _check(url, model, held)
    with open_store(url) as st:
        assert len(st.list_findings()) == 1 and len(st.list_incidents()) == 1


def test_explicit_type_attribute_wins_over_model_and_class(trained, tmp_path):
    model, held, mac = trained
    url = _db(tmp_path, mac=mac, model="Aria", attributes={"fingerprint_type": "hue-bridge"})
    ((_p, _k, _c, verdict, _d, registered),) = _check(url, model, held)
    assert (verdict, registered) == ("match", "hue-bridge")


def test_unregistered_and_untrained_types_are_reported_not_recorded(trained, sentinel, tmp_path):
    model, held, mac = trained
    url = _db(tmp_path, mac="02:00:00:00:00:01", model="Withings")  # another device
    ((_p, _k, _c, verdict, device, registered),) = _check(url, model, held)
    assert (verdict, device, registered) == ("unknown-device", mac, "-")
    url2 = f"sqlite:///{tmp_path / 'untrained.db'}"
    with open_store(url2) as st:
        st.upsert_devices([{"device_id": "hub-1", "mac": mac, "vendor": "Nest", "model": "Thermostat"}])
    ((_p, _k, _c, verdict, _d, _r),) = _check(url2, model, held)
    assert verdict == "untrained-type"  # the model cannot contradict a type it never learnt
    for u in (url, url2):
        with open_store(u) as st:
            assert st.list_findings() == [] and st.list_incidents() == []


def test_an_unknown_answer_is_never_a_mismatch():
    r = Identification("x.pcap", "unknown", 0.3, "Aria", "aa:bb:cc:dd:ee:01", 0.9, True)
    assert type_verdict(r, ["Withings"], ["Aria", "Withings"]) == "unsure"
    assert type_verdict(r, [], ["Aria"]) == "no-registered-type"
    assert type_key("D-Link Cam") == type_key("dlinkcam") == "dlinkcam"


def test_bad_mac_is_one_error_line(trained, tmp_path):
    model, held, _mac = trained
    url = _db(tmp_path)
    res = runner.invoke(
        app, ["fingerprint", "check", str(held), "--model", str(model), "--db", url, "--mac", "nope"]
    )
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "not a MAC address" in res.stderr, res.stderr
