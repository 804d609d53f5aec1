"""Tests of the fleet simulator: schema, determinism, normal behaviour per class, scenarios."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pyarrow.compute as pc
import pytest
from geoip2fast import GeoIP2Fast

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import KINDS, required_fields, schema_for
from fleetwarden.core.findings import CATEGORIES
from fleetwarden.simulate import DEVICE_CLASSES, SCENARIOS, simulate_fleet
from fleetwarden.simulate.behaviour import local_hour
from fleetwarden.simulate.catalog import CITIES, COUNTRY_NETS, SITES, VENDORS

DEVICES, HOURS, SEED = 90, 24, 7


@pytest.fixture(scope="module")
def fleet():
    return simulate_fleet(devices=DEVICES, hours=HOURS, seed=SEED)


@pytest.fixture(scope="module")
def geo():
    return GeoIP2Fast()


def _rows(fleet, kind, **eq):
    b = fleet.batches[kind]
    mask = None
    for col, val in eq.items():
        m = pc.equal(b[col.replace("__", ".")], val)
        mask = m if mask is None else pc.and_(mask, m)
    return b.filter(mask) if mask is not None else b


def _inv(fleet):
    return {d["device_id"]: d for d in fleet.inventory}


def _site_offset(fleet, device_id):
    site = _inv(fleet)[device_id]["site"]
    return next(s.utc_offset for s in SITES if s.name == site) * 3600.0


def _km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371 * math.asin(math.sqrt(a))


# --- structure --------------------------------------------------------------------------------


def test_every_kind_present_with_valid_schema(fleet):
    labels = {"benign", *SCENARIOS}
    for kind in KINDS:
        b = fleet.batches[kind]
        assert len(b) > 0, kind
        assert b.table.schema.equals(schema_for(kind), check_metadata=False)
        for name in [*required_fields(kind), "device_id", "label"]:
            assert b[name].null_count == 0, (kind, name)
        ts = b.np("ts")
        assert np.all(np.diff(ts) >= 0), f"{kind} not sorted by ts"
        assert set(b.np("label")) <= labels
        assert set(b.np("device_id")) <= set(_inv(fleet))


def test_inventory_is_complete_and_consistent(fleet):
    fields = {
        "device_id",
        "ip",
        "mac",
        "device_class",
        "vendor",
        "model",
        "firmware_version",
        "owner",
        "site",
        "zone",
        "network_role",
        "data_class",
        "lifecycle",
        "country",
        "serial",
        "pubkey_sha256",
    }
    assert len(fleet.inventory) == DEVICES
    assert {d["device_class"] for d in fleet.inventory} == set(DEVICE_CLASSES)
    for d in fleet.inventory:
        assert fields <= set(d)
    for key in ("device_id", "ip", "mac", "serial", "pubkey_sha256"):
        assert len({d[key] for d in fleet.inventory}) == DEVICES, key
    # each site lives in its own 10.x.0.0/16, zones in their own /24s
    nets = {}
    for d in fleet.inventory:
        x, y = d["ip"].split(".")[1:3]
        nets.setdefault(d["site"], set()).add(x)
        assert (d["site"], d["zone"]) == next((k for k, v in _zone_nets(fleet).items() if (x, y) in v))
    assert all(len(v) == 1 for v in nets.values()) and len({next(iter(v)) for v in nets.values()}) == len(
        nets
    )
    catalog = {(c["vendor"], c["model"], c["version"]) for c in fleet.firmware_catalog}
    assert all((d["vendor"], d["model"], d["firmware_version"]) in catalog for d in fleet.inventory)


def _zone_nets(fleet):
    out = {}
    for d in fleet.inventory:
        out.setdefault((d["site"], d["zone"]), set()).add(tuple(d["ip"].split(".")[1:3]))
    return out


def test_vendor_endpoints_geolocate_to_vendor_country(geo):
    countries = {v.country for v in VENDORS}
    assert len(countries) >= 8
    for v in VENDORS:
        for ip in (v.cloud_ip(0), v.cloud_ip(1), v.update_ip, v.edge_ip):
            assert geo.lookup(ip).country_code == v.country, (v.name, ip)
    for cc, nets in COUNTRY_NETS.items():
        for net in nets:
            assert geo.lookup(f"{net}.77").country_code == cc, net


def test_same_seed_same_output_other_seed_differs():
    a = simulate_fleet(devices=40, hours=8, seed=3)
    b = simulate_fleet(devices=40, hours=8, seed=3)
    c = simulate_fleet(devices=40, hours=8, seed=4)
    assert a.inventory == b.inventory
    assert [t.to_dict() for t in a.scenarios] == [t.to_dict() for t in b.scenarios]
    for kind in KINDS:
        assert a.batches[kind].table.equals(b.batches[kind].table), kind
    assert not a.batches["flow"].table.equals(c.batches["flow"].table)


def test_iter_batches_streams_everything_in_time_order(fleet):
    total, last = 0, -np.inf
    for batch in fleet.iter_batches(seconds=300):
        ts = batch.np("ts")
        assert ts[0] >= last - 300 and ts[-1] - ts[0] < 300
        last = max(last, ts[-1])
        total += len(batch)
    assert total == fleet.event_count()


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="unknown scenario"):
        simulate_fleet(devices=40, hours=2, scenarios=["nope"])
    with pytest.raises(InputError, match="at least"):
        simulate_fleet(devices=5, hours=2)
    # every scenario plays out within the shortest duration allowed, and a shorter one is refused
    # by name instead of failing inside a scenario
    for name in SCENARIOS:
        assert simulate_fleet(devices=24, hours=0.5, seed=3, scenarios=[name]).truth(name)
    with pytest.raises(InputError, match="scenarios need at least 0.5"):
        simulate_fleet(devices=24, hours=0.25)


def test_no_scenarios_means_all_benign():
    f = simulate_fleet(devices=30, hours=4, seed=1, scenarios=[])
    assert f.scenarios == []
    for b in f.batches.values():
        assert set(b.np("label")) <= {"benign"}


# --- normal behaviour -------------------------------------------------------------------------


def test_benign_records_are_labelled_benign_and_scenarios_labelled_by_name(fleet):
    flows = fleet.batches["flow"]
    counts = Counter(flows.np("label"))
    assert counts["benign"] > 0.6 * len(flows)  # a small fleet: the scan and flood weigh a lot
    for t in fleet.scenarios:
        assert counts[t.name] > 0 or t.name == "remote-access-misuse", t.name
        assert set(t.expected_categories) <= set(CATEGORIES)
    assert [t.benign for t in fleet.scenarios if t.name == "benign-rollout"] == [True]
    assert not any(t.benign for t in fleet.scenarios if t.name != "benign-rollout")


def test_telemetry_is_periodic_per_class(fleet):
    flows = _rows(fleet, "flow", detailed_label="mqtt-telemetry", label="benign")
    tel = _rows(fleet, "telemetry", label="benign")
    for cls, period in (("env-sensor", 120.0), ("plc", 60.0), ("ip-camera", 300.0)):
        dev = next(d["device_id"] for d in fleet.inventory if d["device_class"] == cls)
        ts = flows.filter(pc.equal(flows["device_id"], dev)).np("ts")
        gaps = np.diff(ts)
        assert abs(np.median(gaps) - period) < 0.05 * period, cls
        assert np.std(gaps) / np.mean(gaps) < 0.15
        port = flows.filter(pc.equal(flows["device_id"], dev)).np("id.resp_p")
        assert set(port) <= {1883, 8883}
        # one reading per metric per publish (minus the rare failed connection)
        readings = tel.filter(pc.equal(tel["device_id"], dev))
        assert abs(len(readings) / 2 - len(ts)) <= 0.02 * len(ts) + 2


def test_camera_streams_more_by_day(fleet):
    rtsp = _rows(fleet, "flow", detailed_label="rtsp-stream")
    day, night = [], []
    for row in rtsp.to_pylist():
        h = local_hour(np.array(row["ts"]), np.array(_site_offset(fleet, row["device_id"])))
        (day if 10 <= h < 16 else night if h < 4 else []).append(row["resp_bytes"])
    assert np.mean(day) > 2.0 * np.mean(night)
    assert set(rtsp.np("id.resp_p")) == {554}


def test_pos_busy_in_opening_hours(fleet):
    pay = _rows(fleet, "flow", detailed_label="payment")
    assert len(pay) > 50
    inside = 0
    for row in pay.to_pylist():
        site = next(s for s in SITES if s.name == _inv(fleet)[row["device_id"]]["site"])
        h = local_hour(np.array(row["ts"]), np.array(site.utc_offset * 3600.0))
        inside += site.opening[0] <= h < site.opening[1]
    assert inside / len(pay) > 0.9


def test_operator_logins_in_working_hours_from_home_location(fleet):
    auth = _rows(fleet, "auth", detailed_label="operator-login").to_pylist()
    assert len(auth) >= 10
    for row in auth:
        site, op = next((s, o) for s in SITES for o in s.operators if o.name == row["user"])
        h = float(local_hour(np.array(row["ts"]), np.array(site.utc_offset * 3600.0)))
        s_h, e_h = op.shift
        in_shift = (s_h - 1 <= h < e_h) if e_h > s_h else (h >= s_h - 1 or h < e_h)
        assert in_shift, (row["user"], h)
        home = CITIES[op.city] if op.remote else CITIES[site.city]
        assert (row["src_country"], row["src_lat"], row["src_lon"]) == (home.country, home.lat, home.lon)


def test_maintenance_window_logins_and_commands(fleet):
    logins = _rows(fleet, "auth", detailed_label="maintenance-login").to_pylist()
    cmds = _rows(fleet, "command", detailed_label="maintenance-command").to_pylist()
    assert logins and cmds
    for row in logins:
        site = next(s for s in SITES if s.maintenance.name == row["user"])
        h = float(local_hour(np.array(row["ts"]), np.array(site.utc_offset * 3600.0)))
        assert site.maintenance_hour <= h < site.maintenance_hour + 1
    assert {r["operator"] for r in cmds} <= {s.maintenance.name for s in SITES}


def test_dns_answers_are_the_vendor_endpoints_the_devices_then_use(fleet, geo):
    dns = _rows(fleet, "dns", detailed_label="dns-cloud", qtype_name="A").to_pylist()
    inv = _inv(fleet)
    vendors = {v.name: v for v in VENDORS}
    for row in dns[:200]:
        v = vendors[inv[row["device_id"]]["vendor"]]
        assert row["query"] == v.cloud_domain
        assert set(row["answers"].split(",")) == {v.cloud_ip(0), v.cloud_ip(1)}
    flows = _rows(fleet, "flow", label="benign")
    ext = flows.filter(pc.invert(flows["local_resp"]))
    for ip in set(ext.np("id.resp_h")):
        assert any(ip.startswith(v.net + ".") for v in VENDORS), ip


def test_ntp_and_zeek_states(fleet):
    flows = fleet.batches["flow"]
    ntp = _rows(fleet, "flow", detailed_label="ntp")
    assert set(ntp.np("id.resp_p")) == {123} and set(ntp.np("proto")) == {"udp"}
    assert {d["device_class"] for d in fleet.inventory} == {
        _inv(fleet)[d]["device_class"] for d in set(ntp.np("device_id"))
    }
    benign_tcp = flows.filter(pc.and_(pc.equal(flows["label"], "benign"), pc.equal(flows["proto"], "tcp")))
    states = Counter(benign_tcp.np("conn_state"))
    assert states["SF"] > 0.99 * len(benign_tcp) and states["S0"] + states["REJ"] > 0
    sf = benign_tcp.filter(pc.equal(benign_tcp["conn_state"], "SF"))
    assert np.all(sf.np("orig_ip_bytes") > sf.np("orig_bytes"))
    assert np.all(sf.np("orig_pkts") >= 3) and set(sf.np("history")) <= {
        "ShADadFf",
        "ShADaFf",
        "ShAdDaFf",
        "ShAaFf",
    }


def test_firmware_reports_match_catalogue_and_enrolment_precedes_start(fleet):
    catalog = {(c["vendor"], c["model"], c["version"]): c["image_sha256"] for c in fleet.firmware_catalog}
    inv = _inv(fleet)
    reports = _rows(fleet, "firmware_report", label="benign").to_pylist()
    assert len({r["device_id"] for r in reports}) > 0.9 * DEVICES  # daily: nearly all report in 24 h
    for r in reports:
        d = inv[r["device_id"]]
        assert catalog[(d["vendor"], d["model"], r["version"])] == r["image_sha256"]
        assert r["signature"] == "valid"
    prov = _rows(fleet, "provision", label="benign")
    assert len(prov) == DEVICES and np.all(prov.np("ts") < fleet.start)
    for r in prov.to_pylist():
        assert r["pubkey_sha256"] == inv[r["device_id"]]["pubkey_sha256"] and r["attestation"] == "ok"


# --- scenarios --------------------------------------------------------------------------------


def _scenario(fleet, name):
    truth = fleet.truth(name)
    recs = {k: _rows(fleet, k, label=name) for k in KINDS}
    for kind, b in recs.items():
        if len(b):
            ts = b.np("ts")
            assert ts.min() >= truth.start - 1 and ts.max() <= truth.end + 1, (name, kind)
            assert set(b.np("device_id")) <= set(truth.device_ids), (name, kind)
    return truth, recs


def test_all_scenarios_injected_with_known_categories(fleet):
    assert [t.name for t in fleet.scenarios] == list(SCENARIOS)
    for t in fleet.scenarios:
        assert fleet.start <= t.start < t.end <= fleet.end + 1
        assert t.description


def test_mirai_camera(fleet, geo):
    truth, recs = _scenario(fleet, "mirai-camera")
    (dev,) = truth.device_ids
    assert _inv(fleet)[dev]["device_class"] == "ip-camera"
    flows = recs["flow"]
    scan = flows.filter(pc.equal(flows["detailed_label"], "telnet-scan"))
    assert set(scan.np("id.resp_p")) == {23, 2323}
    assert len(set(scan.np("id.resp_h"))) >= 1000
    assert np.mean(np.isin(scan.np("conn_state"), ["S0", "REJ"])) > 0.9
    beacon = flows.filter(
        pc.and_(pc.equal(flows["detailed_label"], "c2-beacon"), pc.equal(flows["proto"], "tcp"))
    )
    assert set(beacon.np("id.resp_h")) == {truth.details["c2_ip"]}
    gaps = np.diff(beacon.np("ts"))
    assert len(gaps) > 30 and np.std(gaps) / np.mean(gaps) < 0.1
    assert np.std(beacon.np("orig_bytes")) / np.mean(beacon.np("orig_bytes")) < 0.15
    site_cc = _inv(fleet)[dev]["country"]
    assert geo.lookup(truth.details["c2_ip"]).country_code not in (site_cc, "")
    flood = flows.filter(pc.equal(flows["detailed_label"], "udp-flood"))
    assert set(flood.np("proto")) == {"udp"} and len(set(flood.np("id.resp_h"))) == 1
    assert flood.np("orig_bytes").sum() > 1e9
    assert flood.np("ts").min() > beacon.np("ts").min() > scan.np("ts").min()


def test_tampered_controller(fleet):
    truth, recs = _scenario(fleet, "tampered-controller")
    (dev,) = truth.device_ids
    d = _inv(fleet)[dev]
    assert d["device_class"] == "plc"
    known = {c["image_sha256"] for c in fleet.firmware_catalog}
    fw = recs["firmware_report"].to_pylist()
    assert fw and all(
        r["image_sha256"] not in known and r["signature"] in ("invalid", "unsigned") for r in fw
    )
    assert all(r["version"] == d["firmware_version"] for r in fw)
    flows = recs["flow"]
    new = set(flows.filter(pc.equal(flows["detailed_label"], "new-destination")).np("id.resp_h"))
    benign = _rows(fleet, "flow", label="benign")
    seen = set(benign.filter(pc.equal(benign["device_id"], dev)).np("id.resp_h")) | set(
        benign.filter(pc.equal(benign["device_id"], dev)).np("id.orig_h")
    )
    assert new and not (new & seen)
    cmds = recs["command"].to_pylist()
    assert len(cmds) >= 5
    stations = {r["src_ip"] for r in _rows(fleet, "command", label="benign").to_pylist()}
    assert all(r["src_ip"] not in stations for r in cmds)


def test_remote_access_misuse(fleet):
    truth, recs = _scenario(fleet, "remote-access-misuse")
    auth = recs["auth"].to_pylist()
    user = truth.details["user"]
    site = next(s for s in SITES if s.maintenance.name == user)
    assert {r["user"] for r in auth} == {user}
    fails = [r for r in auth if not r["success"]]
    ok = sorted((r for r in auth if r["success"]), key=lambda r: r["ts"])
    assert len(fails) >= 20 and max(r["ts"] for r in fails) < ok[0]["ts"]
    assert ok[0]["src_country"] != CITIES[site.maintenance.city].country
    h = float(local_hour(np.array(ok[0]["ts"]), np.array(site.utc_offset * 3600.0)))
    assert not (site.maintenance_hour <= h < site.maintenance_hour + 1) and not (7 <= h < 19)
    # impossible travel: two successes thousands of km apart within the hour
    a, b = ok[0], ok[1]
    km = _km(a["src_lat"], a["src_lon"], b["src_lat"], b["src_lon"])
    assert km / ((b["ts"] - a["ts"]) / 3600.0) > 1000.0
    normal = _rows(fleet, "auth", user=user, label="benign").to_pylist()
    assert a["src_country"] not in {r["src_country"] for r in normal}


def test_cloned_device(fleet):
    truth, recs = _scenario(fleet, "cloned-device")
    (dev,) = truth.device_ids
    prov = _rows(fleet, "provision", device_id=dev).to_pylist()
    assert len(prov) == 2
    first, second = sorted(prov, key=lambda r: r["ts"])
    assert first["serial"] == second["serial"]
    assert first["src_ip"] != second["src_ip"] and first["pubkey_sha256"] != second["pubkey_sha256"]
    assert second["ts"] >= fleet.start and second["label"] == "cloned-device"
    flows = _rows(fleet, "flow", device_id=dev)
    after = flows.filter(pc.greater(flows["ts"], second["ts"] + 300))
    senders = Counter(after.filter(pc.equal(after["detailed_label"], "mqtt-telemetry")).np("id.orig_h"))
    clones = Counter(after.filter(pc.equal(after["detailed_label"], "clone-report")).np("id.orig_h"))
    assert senders[_inv(fleet)[dev]["ip"]] >= 5 and clones[second["src_ip"]] >= 5
    assert len(recs["telemetry"]) >= 10 and len(recs["firmware_report"]) == 1


def test_slow_exfiltration(fleet, geo):
    truth, recs = _scenario(fleet, "slow-exfiltration")
    (dev,) = truth.device_ids
    d = _inv(fleet)[dev]
    assert d["device_class"] == "env-sensor"
    up = recs["flow"].filter(pc.equal(recs["flow"]["id.resp_h"], truth.details["destination"]))
    benign = _rows(fleet, "flow", device_id=dev, label="benign")
    assert up.np("orig_bytes").sum() > 20 * benign.np("orig_bytes").sum()
    assert up.np("ts").max() - up.np("ts").min() > 0.6 * (truth.end - truth.start)
    assert up.np("orig_bytes").max() < 5e6  # slow: no single big transfer
    vendor_cc = next(v.country for v in VENDORS if v.name == d["vendor"])
    cc = geo.lookup(truth.details["destination"]).country_code
    assert cc not in (vendor_cc, d["country"])
    assert truth.details["destination"] not in set(benign.np("id.resp_h"))


def _entropy(s):
    counts = np.array(list(Counter(s).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_dns_tunnel(fleet):
    truth, recs = _scenario(fleet, "dns-tunnel")
    q = recs["dns"].to_pylist()
    assert len(q) >= 500
    assert {r["qtype_name"] for r in q} == {"TXT", "NULL"}
    assert {r["query"].split(".", 2)[-1] for r in q} == {truth.details["domain"]}
    labels = [r["query"].split(".")[0] for r in q]
    assert np.mean([len(x) for x in labels]) > 40
    assert np.mean([_entropy(x) for x in labels[:200]]) > 4.0
    benign = _rows(fleet, "dns", label="benign").to_pylist()
    assert max(len(r["query"].split(".")[0]) for r in benign) < 20


def test_benign_rollout(fleet, geo):
    truth, recs = _scenario(fleet, "benign-rollout")
    assert truth.benign and truth.expected_categories == ()
    entry = next(
        c
        for c in fleet.firmware_catalog
        if c["version"] == truth.details["version"] and c["model"] == truth.details["model"]
    )
    assert entry["signed"]
    fw = recs["firmware_report"].to_pylist()
    assert {r["device_id"] for r in fw} == set(truth.device_ids) and len(truth.device_ids) >= 2
    assert all(r["image_sha256"] == entry["image_sha256"] and r["signature"] == "valid" for r in fw)
    inv = _inv(fleet)
    assert {(inv[d]["vendor"], inv[d]["model"]) for d in truth.device_ids} == {
        (entry["vendor"], entry["model"])
    }
    vendor = next(v for v in VENDORS if v.name == entry["vendor"])
    edge = recs["flow"].filter(pc.equal(recs["flow"]["detailed_label"], "new-endpoint"))
    assert len(edge) > 0 and geo.lookup(truth.details["edge_ip"]).country_code == vendor.country


def test_write_files_round_trips_through_the_readers(tmp_path):
    from fleetwarden.simulate import write_files
    from fleetwarden.sources import read_events

    f = simulate_fleet(devices=30, hours=3, seed=2, scenarios=["dns-tunnel", "cloned-device"])
    paths = write_files(f, tmp_path)
    conn = list(read_events(paths["conn.log"]))
    assert sum(len(b) for b in conn) == len(f.batches["flow"])
    back = conn[0].to_pylist()[0]
    assert back["uid"] == f.batches["flow"].to_pylist()[0]["uid"]
    counts = Counter()
    for b in read_events(paths["events.jsonl"]):
        counts[b.kind] += len(b)
    assert counts == Counter({k: len(b) for k, b in f.batches.items() if len(b)})
    assert len(json.loads(paths["inventory.json"].read_text())) == 30
    assert {t["name"] for t in json.loads(paths["scenarios.json"].read_text())} == {
        "dns-tunnel",
        "cloned-device",
    }
