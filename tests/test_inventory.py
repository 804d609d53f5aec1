"""The inventory: the device record, import/export with per-row errors, the lifecycle migration,
passive discovery from real captures, the accuracy metric, vendors and their risk, and the
detection context every mode reads from the store (analyze --db, watch over Mosquitto, the
worker over NATS)."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.conftest import need_data
from typer.testing import CliRunner

from fleetwarden.cli import app
from fleetwarden.control import inventory as inv
from fleetwarden.control.discovery import Sightings, device_mac, inventory_accuracy, is_local_address
from fleetwarden.control.vendors import vendor_risk
from fleetwarden.store import create_store_engine, models, open_store, upgrade

runner = CliRunner()
SSH_BRUTE = ("stratosphere", "ssh-bruteforce.test19.pcap")
BRUTE_ENTITY = "147.32.80.40"  # the address the brute-force incident of that capture names

FULL_CSV = """device_id,name,device_class,vendor,model,serial,mac,ip,ips,owner,site,zone,network_role,\
firmware_version,data_class,criticality,lifecycle,end_of_support,discovered,first_seen,last_seen,attributes,rack
cam-1,Gate camera,ip-camera,Axis,M3106-L,AX123,00-40-8C-79-83-C1,10.1.40.10,10.1.40.10;fd00::10,security-team,\
plant-a,security,video-source,10.13.0,Confidential,high,provisioning,2028-06-30,false,2024-01-02T03:04:05Z,\
1704164645,"{""allowed_destinations"": [""10.1.0.5""]}",R3
"""


def _cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _db(tmp_path: Path, name: str = "fw.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _device(db: str, device_id: str) -> dict:
    with open_store(db) as store:
        d = store.get_device(device_id)
        return d.to_dict() if d else {}


# ---------------------------------------------------------------------- the record, import, export


def test_vocabularies_match_the_store():
    assert inv.LIFECYCLES == models.LIFECYCLES
    assert inv.DATA_CLASSES == models.DATA_CLASSES
    assert inv.CRITICALITIES == models.CRITICALITIES
    assert set(models.Device.__table__.columns.keys()) >= inv.DEVICE_COLUMNS


def test_csv_import_with_every_column(tmp_path):
    f = tmp_path / "inv.csv"
    f.write_text(FULL_CSV)
    db = _db(tmp_path)
    res = _cli("inventory", "import", str(f), "--db", db)
    assert res.exit_code == 0, res.output
    assert "1 devices read, 1 added" in res.output
    d = _device(db, "cam-1")
    assert d["name"] == "Gate camera" and d["serial"] == "AX123" and d["owner"] == "security-team"
    assert d["mac"] == "00:40:8c:79:83:c1"
    assert (d["ip"], d["ips"]) == ("10.1.40.10", ["10.1.40.10", "fd00::10"])
    assert (d["site"], d["zone"], d["network_role"]) == ("plant-a", "security", "video-source")
    assert (d["data_class"], d["criticality"], d["lifecycle"]) == ("confidential", "high", "provisioned")
    assert d["end_of_support"] == date(2028, 6, 30)
    assert d["first_seen"] == d["last_seen"] == 1704164645.0  # ISO and epoch read alike
    assert d["attributes"] == {"allowed_destinations": ["10.1.0.5"], "rack": "R3"}
    assert d["discovered"] is False


def test_json_import_with_every_column(tmp_path):
    row = {
        "device_id": "pump-7",
        "name": "Infusion pump 7",
        "device_class": "infusion-pump",
        "vendor": "Baxter",
        "model": "Sigma",
        "serial": "BX-77",
        "mac": "0004.a3ff.0001",
        "ips": ["10.2.0.7", "10.2.1.7"],
        "owner": "biomed",
        "site": "ward-3",
        "zone": "clinical",
        "network_role": "medical-device",
        "firmware_version": "8.1",
        "data_class": "phi",
        "criticality": "critical",
        "lifecycle": "ordered",
        "end_of_support": "2026-12-31",
        "discovered": False,
        "first_seen": None,
        "attributes": {"maintenance_windows": ["02:00-03:00"]},
    }
    f = tmp_path / "inv.json"
    f.write_text(json.dumps([row]))
    db = _db(tmp_path)
    assert _cli("inventory", "import", str(f), "--db", db).exit_code == 0
    d = _device(db, "pump-7")
    assert d["mac"] == "00:04:a3:ff:00:01"
    assert (d["ip"], d["ips"]) == ("10.2.0.7", ["10.2.0.7", "10.2.1.7"])  # the first address is primary
    assert (d["data_class"], d["criticality"], d["lifecycle"]) == ("regulated", "critical", "ordered")
    assert d["attributes"] == {"maintenance_windows": ["02:00-03:00"], "data_class_label": "phi"}


def test_bad_rows_are_all_named_and_nothing_is_imported(tmp_path):
    f = tmp_path / "inv.csv"
    f.write_text(
        "device_id,ip,mac,lifecycle,criticality,end_of_support\n"
        "ok-1,10.0.0.1,,active,,\n"
        "bad-2,10.0.0.300,,active,,\n"
        "ok-3,10.0.0.3,,,,\n"
        "bad-4,10.0.0.4,zz:zz,sleeping,urgent,2027-02-30\n"
        ",10.0.0.5,,,,\n"
        "ok-1,10.0.0.6,,,,\n"
    )
    db = _db(tmp_path)
    res = _cli("inventory", "import", str(f), "--db", db)
    assert res.exit_code == 2
    err = res.stderr
    assert "nothing imported" in err and err.count("\n") == 1  # one line
    assert "device bad-2 (line 3), column ip: '10.0.0.300' is not an IP address" in err
    assert "device bad-4 (line 5), column mac: 'zz:zz' is not a MAC address" in err
    assert "device bad-4 (line 5), column lifecycle: 'sleeping' is not one of" in err
    assert "device bad-4 (line 5), column criticality: 'urgent'" in err
    assert "device bad-4 (line 5), column end_of_support: '2027-02-30' is not a date" in err
    assert "device 5 has no device_id (line 6)" in err
    assert "device ok-1 (line 7), column device_id: 'ok-1' repeats device ok-1 (line 2)" in err
    with open_store(db) as store:
        assert store.list_devices() == []

    j = tmp_path / "inv.json"
    j.write_text(json.dumps([{"device_id": "a", "ips": ["10.0.0.1", "nope"]}, {"device_id": "b", "attributes": 3}]))
    res = _cli("inventory", "import", str(j), "--db", db)
    assert res.exit_code == 2
    assert "device a (item 1), column ips: 'nope' is not an IP address" in res.stderr
    assert "device b (item 2), column attributes: not a JSON object" in res.stderr


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_round_trips(tmp_path, fmt):
    f = tmp_path / "inv.csv"
    f.write_text(FULL_CSV + "plc-2,,plc,Siemens,,,,10.0.0.8,,,,,,,,,,,,,,,\n")
    db, db2 = _db(tmp_path), _db(tmp_path, "second.db")
    assert _cli("inventory", "import", str(f), "--db", db).exit_code == 0
    with open_store(db) as store:  # a discovered device round-trips too
        store.upsert_devices([{"device_id": "aa:bb:cc:00:00:01", "mac": "aa:bb:cc:00:00:01", "discovered": True,
                               "first_seen": 10.5, "last_seen": 20.25, "attributes": {"observed": {"records": 3}}}])
    out = tmp_path / f"export.{fmt}"
    res = _cli("inventory", "export", "--out", str(out), "--format", fmt, "--db", db)
    assert res.exit_code == 0, res.output
    assert "3 devices written" in res.output
    assert _cli("inventory", "import", str(out), "--db", db2).exit_code == 0
    keep = lambda d: {k: v for k, v in d.to_dict().items() if k not in ("id", "created_at", "updated_at")}  # noqa: E731
    with open_store(db) as a, open_store(db2) as b:
        assert [keep(d) for d in a.list_devices()] == [keep(d) for d in b.list_devices()]
    # and the export of the copy is the same file
    again = tmp_path / f"again.{fmt}"
    assert _cli("inventory", "export", "--out", str(again), "--db", db2).exit_code == 0
    assert again.read_text() == out.read_text()


def test_changes_are_audited(tmp_path):
    f = tmp_path / "inv.csv"
    f.write_text(FULL_CSV)
    db = _db(tmp_path)
    _cli("inventory", "import", str(f), "--db", db)
    with open_store(db) as store:
        actions = [e.action for e in store.audit_entries()]
        assert actions == ["devices.upsert"]
        assert store.audit_verify() == (True, None)


# ---------------------------------------------------------------------- the lifecycle migration


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_0003_maps_provisioning_and_keeps_links(tmp_path, backend, request):
    if backend == "sqlite":
        url, schema = _db(tmp_path), None
    else:
        url, schema = request.getfixturevalue("postgres_url"), f"fw_inv_{secrets.token_hex(4)}"
    engine = create_store_engine(url, schema=schema)
    try:
        upgrade(engine, "0002")
        with engine.begin() as c:
            c.exec_driver_sql(
                "INSERT INTO devices (device_id, ip, lifecycle, discovered, attributes, created_at, updated_at,"
                " data_class) VALUES ('d1', '10.0.0.1', 'provisioning', false, '{\"a\": 1}', 0, 0, 'Secret'),"
                " ('d2', NULL, 'active', false, '{}', 0, 0, 'Internal')"
            )
            c.exec_driver_sql(
                "INSERT INTO incidents (entity, device_id, category, severity, risk, first_seen, last_seen,"
                " evidence, mitre, status, created_at, updated_at)"
                " VALUES ('d1', 'd1', 'scan', 'low', 10, 0, 0, '[]', '[]', 'open', 0, 0)"
            )
        upgrade(engine)
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT device_id FROM incidents").scalar() == "d1"  # link kept
        with open_store(url, schema=schema) as store:
            d1, d2 = store.get_device("d1"), store.get_device("d2")
            assert (d1.lifecycle, d1.ips, d1.data_class) == ("provisioned", ["10.0.0.1"], None)
            assert d1.attributes == {"a": 1, "data_class_legacy": "Secret"}
            assert (d2.lifecycle, d2.ips, d2.data_class) == ("active", [], "internal")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as c:
            c.exec_driver_sql("UPDATE devices SET lifecycle = 'provisioning'")  # the new check holds
    finally:
        if schema:
            with engine.begin() as c:
                c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


# ---------------------------------------------------------------------- passive discovery


def test_local_addresses_and_device_macs():
    for ip in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.9.9", "fe80::1", "fd12::1"):
        assert is_local_address(ip), ip
    for ip in ("8.8.8.8", "172.32.0.1", "255.255.255.255", "224.0.0.251", "127.0.0.1", "2001:db8::1", "x", None):
        assert not is_local_address(ip), ip
    assert device_mac("20-F8-5E-CA-91-52") == "20:f8:5e:ca:91:52"
    for mac in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01", "00:00:00:00:00:00", "zz"):
        assert device_mac(mac) is None, mac


def test_sightings_are_bounded():
    import pyarrow as pa

    s = Sightings(max_devices=3, max_peers=8, top=3)
    n = 50
    table = pa.table(
        {
            "ts": [float(i) for i in range(n)],
            "id.orig_h": [f"10.0.0.{i}" for i in range(n)],
            "id.resp_h": [f"93.184.216.{i}" for i in range(n)],
            "id.resp_p": list(range(n)),
        }
    )
    s.observe_flows(table)
    assert len(s.devices) == 3 and s.dropped == n - 3  # internet addresses never become devices
    rows = s.take_rows({}, {})
    assert [r["device_id"] for r in rows] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert s.take_rows({}, {}) == []  # nothing new since


def test_iot_sentinel_capture_makes_its_device_an_unknown_device(tmp_path):
    device_dir = need_data("iot-sentinel", "Aria")
    mac = (device_dir / "_iotdevice-mac.txt").read_text().strip().lower()
    pcap = device_dir / "Setup-A-1-STA.pcap"
    db = _db(tmp_path)
    res = _cli("analyze", "--db", db, "--json", str(pcap))
    assert res.exit_code == 0, res.stderr
    res = _cli("inventory", "unknown", "--json", "--db", db)
    unknown = {d["device_id"]: d for d in json.loads(res.stdout)}
    assert mac in unknown, unknown.keys()
    aria = unknown[mac]
    assert aria["mac"] == mac and aria["ips"] == ["10.10.10.123"]
    assert 1.46e9 < aria["first_seen"] <= aria["last_seen"] < 1.47e9  # June 2016, event time
    peers = dict((p, n) for p, n in aria["peers"])
    assert "10.10.10.1" in peers and "104.16.66.50" in peers  # the gateway and an internet server
    assert {53, 80} <= {p for p, _ in aria["ports"]}
    assert len(aria["peers"]) <= 10
    # only local addresses and unicast MACs are devices: the internet server is a peer, not a device
    assert all(not d["ips"] or all(is_local_address(ip) for ip in d["ips"]) for d in unknown.values())
    assert not any("104.16.66.50" in d["ips"] for d in unknown.values())
    # the human table escapes and renders
    assert mac in _cli("inventory", "unknown", "--db", db).output

    # once registered (by MAC) it is no longer unknown, and a re-analysis refreshes its last sighting
    f = tmp_path / "inv.csv"
    f.write_text(f"device_id,mac,device_class,lifecycle\naria-1,{mac},scale,active\nghost-1,,plc,active\n")
    # the discovered row keyed by the MAC stays until the operator retires it; register under a new id
    assert _cli("inventory", "import", str(f), "--db", db).exit_code == 0
    assert _cli("analyze", "--db", db, "--json", str(pcap)).exit_code == 0
    registered = _device(db, "aria-1")
    assert registered["discovered"] is False and registered["last_seen"] == aria["last_seen"]
    assert registered["attributes"]["observed"]["records"] >= 1
    m = json.loads(_cli("inventory", "accuracy", "--json", "--db", db).stdout)
    assert m["registered"] == 2 and m["seen_registered"] == 1
    assert m["registered_never_seen"] == 1 and m["never_seen"] == ["ghost-1"]
    assert m["known_share"] == round(1 / m["seen"], 4)
    assert "known share of seen" in _cli("inventory", "accuracy", "--db", db).output


def test_accuracy_metric():
    rows = [
        {"device_id": "a", "discovered": False, "lifecycle": "active", "last_seen": 5.0},
        {"device_id": "b", "discovered": False, "lifecycle": "active", "last_seen": None},
        {"device_id": "c", "discovered": False, "lifecycle": "retired", "last_seen": None},
        {"device_id": "d", "discovered": False, "lifecycle": "quarantined", "last_seen": 1.0},
        {"device_id": "10.0.0.9", "discovered": True, "lifecycle": "active", "last_seen": 2.0},
    ]
    m = inventory_accuracy(rows)
    assert (m["seen"], m["seen_registered"], m["seen_unknown"]) == (3, 2, 1)
    assert m["known_share"] == round(2 / 3, 4)
    assert (m["registered"], m["expected_on_network"], m["registered_never_seen"]) == (4, 3, 1)
    assert m["never_seen"] == ["b"] and m["never_seen_share"] == round(1 / 3, 4)
    assert inventory_accuracy([])["known_share"] is None


# ---------------------------------------------------------------------- vendors


def test_vendor_risk_rule():
    today = date(2026, 6, 1)
    good = {
        "security_contact": "psirt@example.com",
        "disclosure_policy": "https://example.com/cvd",
        "patch_cadence_days": 30,
        "auth_support": ["certificates", "mfa"],
        "support_years": 5,
        "support_until": date(2031, 1, 1),
    }
    assert vendor_risk(good, today=today).score == 0
    poor = {**good, "security_contact": None, "patch_cadence_days": 200, "auth_support": ["hard-coded"],
            "support_until": date(2026, 1, 1)}
    r = vendor_risk(poor, today=today)
    assert r.score == 15 + 20 + 25 + 5 + 5 + 20
    assert r.reasons[0] == "hard-coded credentials (+25)"
    assert "security support ended 2026-01-01 (+20)" in r.reasons
    unknown = vendor_risk(None, today=today)
    assert unknown.score == 70 and unknown.reasons[-1].startswith("vendor not in the vendor register")
    worst = {"auth_support": ["hard-coded", "default-password"], "patch_cadence_days": 999,
             "support_until": date(2020, 1, 1), "support_years": 1}
    assert vendor_risk(worst, today=today).score == 100  # capped


def test_vendor_import_list_and_devices_inherit_risk(tmp_path):
    v = tmp_path / "vendors.csv"
    v.write_text(
        "name,security_contact,disclosure_policy,patch_cadence_days,auth_support,support_years,support_until\n"
        "Axis,psirt@axis.com,https://www.axis.com/vdp,30,certificates;mfa,5,2031-01-01\n"
        "CheapCam,,,400,default-password;hard-coded,,\n"
    )
    db = _db(tmp_path)
    res = _cli("vendor", "import", str(v), "--db", db)
    assert res.exit_code == 0, res.output
    assert "2 vendors read, 2 added" in res.output
    vendors = {r["name"]: r for r in json.loads(_cli("vendor", "list", "--json", "--db", db).stdout)}
    assert vendors["Axis"]["risk"] == 0 and vendors["Axis"]["auth_support"] == ["certificates", "mfa"]
    assert vendors["CheapCam"]["risk"] >= 80 and "hard-coded credentials (+25)" in vendors["CheapCam"]["risk_reasons"]
    assert "CheapCam" in _cli("vendor", "list", "--db", db).output

    f = tmp_path / "inv.csv"
    f.write_text("device_id,vendor\ncam-1,Axis\ncam-2,cheapcam\ncam-3,Nobody\ncam-4,\n")
    assert _cli("inventory", "import", str(f), "--db", db).exit_code == 0
    devices = {d["device_id"]: d for d in json.loads(_cli("inventory", "list", "--json", "--db", db).stdout)}
    assert devices["cam-1"]["vendor_risk"] == 0
    assert devices["cam-2"]["vendor_risk"] == vendors["CheapCam"]["risk"]  # names match without case
    assert devices["cam-2"]["vendor_risk_reasons"] == vendors["CheapCam"]["risk_reasons"]
    assert devices["cam-3"]["vendor_risk"] == 70
    assert devices["cam-4"]["vendor_risk"] is None

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "X", "patch_cadence_days": -1, "auth_support": ["magic"]}, {"website": "w"}]))
    res = _cli("vendor", "import", str(bad), "--db", db)
    assert res.exit_code == 2
    assert "vendor 1 (item 1), column patch_cadence_days: -1 is outside 0-3650" in res.stderr
    assert "vendor 1 (item 1), column auth_support: 'magic' is not one of" in res.stderr
    assert "vendor 2 (item 2), column name: missing" in res.stderr
    with open_store(db) as store:
        assert len(store.list_vendors()) == 2
        assert [e.action for e in store.audit_entries()][:1] == ["vendors.upsert"]


# ---------------------------------------------------------------------- context in every mode


def _register_brute_forcer(db: str, tmp_path: Path) -> None:
    """A device whose SECOND address is the one the capture's incident names: only a context built
    from the store (every address of the row) turns that address into the device id."""
    f = tmp_path / "reg.json"
    f.write_text(json.dumps([{"device_id": "jump-host", "ips": ["10.9.9.9", BRUTE_ENTITY], "zone": "dmz",
                              "device_class": "server", "attributes": {"allowed_destinations": ["10.0.0.0/8"]}}]))
    assert _cli("inventory", "import", str(f), "--db", db).exit_code == 0


def test_store_context_carries_cohort_site_zone_and_attributes(tmp_path):
    from fleetwarden.app.inventory import context_from_store

    db = _db(tmp_path)
    _register_brute_forcer(db, tmp_path)
    with open_store(db) as store:
        store.upsert_devices([{"device_id": "10.0.0.77", "ip": "10.0.0.77", "discovered": True}])
        ctx = context_from_store(store)
    assert set(ctx.devices) == {"jump-host"}  # discovered devices are not "known"
    info = ctx.devices["jump-host"]
    assert info.device_class == "server" and info.extra["zone"] == "dmz"
    assert info.extra["allowed_destinations"] == ["10.0.0.0/8"]
    assert ctx.entity_for_ip(BRUTE_ENTITY) == ctx.entity_for_ip("10.9.9.9") == "jump-host"


def test_analyze_with_db_reads_the_inventory(tmp_path):
    pcap = need_data(*SSH_BRUTE)
    db = _db(tmp_path)
    _register_brute_forcer(db, tmp_path)
    res = _cli("analyze", "--json", "--db", db, str(pcap))
    assert res.exit_code == 0, res.stderr
    assert "jump-host" in {i["entity"] for i in json.loads(res.stdout)}
    plain = json.loads(_cli("analyze", "--json", str(pcap)).stdout)
    assert BRUTE_ENTITY in {i["entity"] for i in plain}  # without the store: the address


def test_watch_reads_the_inventory_and_discovers(tmp_path, mqtt_broker):
    from fleetwarden.app.inputs import InputSet
    from fleetwarden.app.watch import watch_mqtt
    from fleetwarden.sources.mqtt import publish_batches

    pcap = need_data(*SSH_BRUTE)
    db = _db(tmp_path)
    _register_brute_forcer(db, tmp_path)
    url = f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}"
    prefix = f"fwinv/{secrets.token_hex(4)}/events"
    batches = list(InputSet([pcap]).batches())
    found: list = []

    def publish() -> None:
        time.sleep(1.5)  # the subscriber is up
        publish_batches(iter(batches), url, prefix=prefix, per_message=50)

    t = threading.Thread(target=publish)
    t.start()
    with open_store(db) as store:
        try:
            result = watch_mqtt(url, f"{prefix}/#", duration=8, on_finding=found.append, store=store)
        finally:
            t.join()
        assert result.events == sum(len(b) for b in batches)
        assert "jump-host" in {f.entity for f in found}
        assert store.list_devices(discovered=True), "watch --db records what it saw"


def test_worker_reads_the_inventory_without_recording(tmp_path, nats_url):
    from fleetwarden.app.inputs import InputSet
    from fleetwarden.app.worker import run_worker
    from fleetwarden.bus.jetstream import connect, publish_batches_nats

    pcap = need_data(*SSH_BRUTE)
    db = _db(tmp_path)
    _register_brute_forcer(db, tmp_path)
    tag = secrets.token_hex(4)
    stream, prefix = f"FWINV_{tag}", f"fwinv.{tag}.events"
    publish_batches_nats(InputSet([pcap]).batches(), nats_url, 2, per_message=50, stream=stream, prefix=prefix)
    found: list = []
    try:
        with open_store(db) as store:
            run_worker(nats_url, store, partitions=2, stream=stream, prefix=prefix, record=False,
                       on_finding=found.append, idle_exit=3, duration=60, drain=True)
    finally:

        async def delete() -> None:
            nc = await connect(nats_url)
            await nc.jetstream().delete_stream(stream)
            await nc.close()

        asyncio.run(delete())
    assert "jump-host" in {f.entity for f in found}, {f.entity for f in found}
