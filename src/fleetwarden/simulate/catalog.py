"""What the simulated fleet is made of: device classes, vendors, sites, people and the firmware catalogue.

Everything here is static data plus the deterministic builder of the inventory.  Vendor cloud
endpoints are real public IPv4 /24 networks that geolocate (with geoip2fast's bundled data) to the
vendor's home country, so geolocation-based analytics see a coherent world; the test suite checks
every one of them.  Domain names are the vendors' real-looking domains; nothing is ever contacted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fleetwarden.core.errors import InputError

__all__ = [
    "CLASS_INFO",
    "COUNTRY_NETS",
    "DEVICE_CLASSES",
    "SITES",
    "VENDORS",
    "City",
    "DeviceTable",
    "Operator",
    "Site",
    "Vendor",
    "build_firmware_catalog",
    "build_inventory",
    "firmware_hash",
]

DEVICE_CLASSES = (
    "ip-camera",
    "env-sensor",
    "plc",
    "gateway",
    "smart-plug",
    "infusion-pump",
    "badge-reader",
    "pos-terminal",
    "digital-signage",
)


@dataclass(frozen=True)
class City:
    name: str
    country: str
    lat: float
    lon: float


CITIES = {
    "stuttgart": City("Stuttgart", "DE", 48.78, 9.18),
    "munich": City("Munich", "DE", 48.14, 11.58),
    "nuremberg": City("Nuremberg", "DE", 49.45, 11.08),
    "boston": City("Boston", "US", 42.36, -71.06),
    "worcester": City("Worcester", "US", 42.26, -71.80),
    "chicago": City("Chicago", "US", 41.88, -87.63),
    "london": City("London", "GB", 51.51, -0.13),
    "manchester": City("Manchester", "GB", 53.48, -2.24),
    "lyon": City("Lyon", "FR", 45.76, 4.84),
    "paris": City("Paris", "FR", 48.86, 2.35),
    "sao-paulo": City("Sao Paulo", "BR", -23.55, -46.63),
    "hanoi": City("Hanoi", "VN", 21.03, 105.85),
    "lagos": City("Lagos", "NG", 6.52, 3.38),
    "moscow": City("Moscow", "RU", 55.76, 37.62),
    "tehran": City("Tehran", "IR", 35.69, 51.39),
    "mumbai": City("Mumbai", "IN", 19.08, 72.88),
    "johannesburg": City("Johannesburg", "ZA", -26.20, 28.05),
    "jakarta": City("Jakarta", "ID", -6.21, 106.85),
}

# Public /24 networks whose every address geolocates to the country (checked with geoip2fast).
# Used for operators' home connections and for attacker / C2 / exfiltration infrastructure.
COUNTRY_NETS: dict[str, tuple[str, ...]] = {
    "US": ("63.111.67", "149.173.169"),
    "DE": ("84.173.31", "141.73.250"),
    "GB": ("31.52.78", "57.163.41"),
    "FR": ("91.134.188", "129.182.0"),
    "RU": ("81.163.41", "128.73.136"),
    "VN": ("123.18.138", "14.161.222"),
    "BR": ("189.77.189", "177.89.63"),
    "IR": ("77.237.76", "151.242.230"),
    "NG": ("154.72.38", "105.123.180"),
    "IN": ("13.127.8", "20.198.44"),
    "ZA": ("196.10.27", "196.38.176"),
    "ID": ("117.20.58", "39.230.2"),
    "UA": ("77.123.182", "212.9.254"),
    "RO": ("86.105.17", "89.35.115"),
    "TR": ("85.109.66", "195.175.204"),
    "AR": ("186.182.114", "181.101.35"),
}

# Countries used for hostile infrastructure: none is home to a vendor or a site of the fleet.
HOSTILE_COUNTRIES = ("RU", "VN", "BR", "IR", "NG", "IN", "ZA", "ID", "UA", "RO", "TR", "AR")
HOSTILE_CITY = {
    "BR": "sao-paulo",
    "VN": "hanoi",
    "NG": "lagos",
    "RU": "moscow",
    "IR": "tehran",
    "IN": "mumbai",
    "ZA": "johannesburg",
    "ID": "jakarta",
}


@dataclass(frozen=True)
class Vendor:
    """A device maker: where it is, its cloud, and the models it sells per device class."""

    name: str
    country: str
    domain: str
    net: str  # /24 prefix "a.b.c" of its cloud; hosts .10/.11 cloud, .20 updates, .200 new edge
    oui: str
    mqtt_tls: bool
    models: dict[str, tuple[str, ...]]
    version_style: tuple[int, int] = (1, 0)  # (major base, minor base) of its version numbers

    def cloud_ip(self, k: int) -> str:
        return f"{self.net}.{10 + k % 2}"

    @property
    def update_ip(self) -> str:
        return f"{self.net}.20"

    @property
    def edge_ip(self) -> str:
        return f"{self.net}.200"

    @property
    def cloud_domain(self) -> str:
        return f"cloud.{self.domain}"

    @property
    def update_domain(self) -> str:
        return f"update.{self.domain}"

    @property
    def edge_domain(self) -> str:
        return f"edge.{self.domain}"


VENDORS: tuple[Vendor, ...] = (
    # ip-camera
    Vendor(
        "Axis",
        "SE",
        "axis.com",
        "159.7.124",
        "00:40:8c",
        True,
        {"ip-camera": ("M3106-L", "P3245-V", "Q6135-LE")},
        (10, 12),
    ),
    Vendor(
        "Hikvision",
        "CN",
        "hik-connect.com",
        "219.159.222",
        "44:19:b6",
        False,
        {"ip-camera": ("DS-2CD2143G2", "DS-2CD2387G2")},
        (5, 7),
    ),
    Vendor(
        "Hanwha",
        "KR",
        "hanwhavision.com",
        "112.151.153",
        "00:09:18",
        True,
        {"ip-camera": ("XNV-6081", "QNO-7082R")},
        (2, 21),
    ),
    # env-sensor
    Vendor(
        "Vaisala",
        "FI",
        "vaisala.com",
        "130.234.115",
        "00:40:8f",
        True,
        {"env-sensor": ("HMT370", "RFL100")},
        (3, 2),
    ),
    Vendor(
        "Sensirion",
        "CH",
        "sensirion.com",
        "82.197.168",
        "d8:a0:1d",
        True,
        {"env-sensor": ("SHT4x-Node", "SCD41-Node")},
        (1, 4),
    ),
    Vendor(
        "Monnit",
        "US",
        "imonnit.com",
        "99.169.254",
        "00:1e:c0",
        False,
        {"env-sensor": ("ALTA-Temp", "ALTA-Humidity")},
        (2, 5),
    ),
    # plc
    Vendor(
        "Siemens",
        "DE",
        "siemens.com",
        "217.229.77",
        "00:1b:1b",
        True,
        {"plc": ("S7-1200", "S7-1500")},
        (4, 5),
    ),
    Vendor(
        "Rockwell",
        "US",
        "rockwellautomation.com",
        "96.61.37",
        "00:00:bc",
        True,
        {"plc": ("CompactLogix-5380", "ControlLogix-5580")},
        (33, 11),
    ),
    Vendor("Omron", "JP", "omron.com", "124.210.123", "00:00:0a", True, {"plc": ("NX1P2", "NJ501")}, (1, 48)),
    # gateway
    Vendor(
        "Cisco", "US", "cisco.com", "8.44.51", "00:1b:54", True, {"gateway": ("IR1101", "IR829")}, (17, 9)
    ),
    Vendor(
        "Moxa",
        "TW",
        "moxa.com",
        "150.117.131",
        "00:90:e8",
        True,
        {"gateway": ("UC-8100A", "UC-3100")},
        (1, 6),
    ),
    Vendor(
        "Advantech",
        "TW",
        "advantech.com",
        "210.209.214",
        "74:fe:48",
        True,
        {"gateway": ("UNO-2271G",)},
        (2, 3),
    ),
    # smart-plug
    Vendor(
        "TP-Link",
        "CN",
        "tplinkcloud.com",
        "112.6.5",
        "50:c7:bf",
        False,
        {"smart-plug": ("HS110", "P110")},
        (1, 5),
    ),
    Vendor(
        "Shelly",
        "BG",
        "shelly.cloud",
        "89.106.124",
        "84:cc:a8",
        False,
        {"smart-plug": ("Plug-S", "Plus-Plug-S")},
        (1, 14),
    ),
    Vendor("Eve", "DE", "evehome.com", "91.250.94", "70:ee:50", True, {"smart-plug": ("Energy",)}, (3, 1)),
    # infusion-pump
    Vendor(
        "BD",
        "US",
        "bd.com",
        "99.88.186",
        "00:0d:6f",
        True,
        {"infusion-pump": ("Alaris-8015", "Alaris-8100")},
        (12, 1),
    ),
    Vendor(
        "B.Braun",
        "DE",
        "bbraun.com",
        "88.75.127",
        "00:0a:c2",
        True,
        {"infusion-pump": ("Space-Infusomat", "Perfusor-Space")},
        (688, 1),
    ),
    Vendor(
        "Baxter",
        "US",
        "baxter.com",
        "140.178.190",
        "00:1a:a0",
        True,
        {"infusion-pump": ("Sigma-Spectrum", "Novum-IQ")},
        (8, 0),
    ),
    # badge-reader
    Vendor(
        "HID",
        "US",
        "hidglobal.com",
        "76.228.4",
        "00:06:8e",
        True,
        {"badge-reader": ("iCLASS-SE-R40", "Signo-40")},
        (5, 2),
    ),
    Vendor(
        "Nedap",
        "NL",
        "nedapsecurity.com",
        "46.144.230",
        "00:17:e3",
        True,
        {"badge-reader": ("AEOS-AP7803",)},
        (2, 2),
    ),
    # pos-terminal
    Vendor(
        "Verifone",
        "US",
        "verifone.cloud",
        "69.40.1",
        "00:0b:4f",
        True,
        {"pos-terminal": ("V400m", "P400")},
        (4, 2),
    ),
    Vendor(
        "Ingenico",
        "FR",
        "ingenico.com",
        "78.201.63",
        "54:7f:54",
        True,
        {"pos-terminal": ("Move5000", "Desk3500")},
        (11, 16),
    ),
    Vendor(
        "PAX", "CN", "paxsaas.com", "110.73.218", "00:1c:ae", True, {"pos-terminal": ("A920", "A80")}, (8, 7)
    ),
    # digital-signage
    Vendor(
        "Samsung",
        "KR",
        "samsungvx.com",
        "123.251.251",
        "8c:71:f8",
        True,
        {"digital-signage": ("QM55R", "QB75R")},
        (1, 40),
    ),
    Vendor(
        "LG",
        "KR",
        "lgsupersign.com",
        "220.90.237",
        "a8:23:fe",
        True,
        {"digital-signage": ("55UH5F",)},
        (4, 1),
    ),
    Vendor(
        "BrightSign",
        "US",
        "brightsignnetwork.com",
        "67.72.223",
        "90:ac:3f",
        True,
        {"digital-signage": ("XT1144", "HD224")},
        (8, 5),
    ),
)


@dataclass(frozen=True)
class ClassInfo:
    prefix: str
    network_role: str
    data_class: str


CLASS_INFO: dict[str, ClassInfo] = {
    "ip-camera": ClassInfo("cam", "video-source", "confidential"),
    "env-sensor": ClassInfo("env", "sensor", "internal"),
    "plc": ClassInfo("plc", "controller", "ot-critical"),
    "gateway": ClassInfo("gw", "gateway", "internal"),
    "smart-plug": ClassInfo("plug", "actuator", "internal"),
    "infusion-pump": ClassInfo("pump", "medical-device", "phi"),
    "badge-reader": ClassInfo("badge", "access-control", "confidential"),
    "pos-terminal": ClassInfo("pos", "payment-terminal", "pci"),
    "digital-signage": ClassInfo("sign", "display", "public"),
}


@dataclass(frozen=True)
class Operator:
    """A person (or service account) who logs in to devices and sends them commands."""

    name: str
    city: str  # key of CITIES: where the person logs in from
    shift: tuple[float, float]  # local hours [start, end); end < start means overnight
    days: tuple[int, ...]  # weekdays worked, Monday = 0
    remote: bool = False  # logs in over the VPN from home, from a public address
    station: int = 0  # host part of the operator's station in the site's mgmt zone


@dataclass(frozen=True)
class Site:
    name: str
    code: str
    owner: str
    city: str
    utc_offset: float  # hours; no daylight saving in the simulation
    weight: float  # share of the fleet
    mix: dict[str, float]  # device class -> share of the site's devices
    operators: tuple[Operator, ...]
    maintenance: Operator  # the contractor account, active in the maintenance window
    maintenance_hour: float  # local start of the daily one-hour maintenance window
    opening: tuple[float, float]  # local business hours (POS, badge traffic)
    open_days: tuple[int, ...]
    zones: dict[str, str] = field(default_factory=dict)  # device class -> zone


_WEEK = (0, 1, 2, 3, 4)
_ALL = (0, 1, 2, 3, 4, 5, 6)
_SIX = (0, 1, 2, 3, 4, 5)

SITES: tuple[Site, ...] = (
    Site(
        "factory-stuttgart",
        "fac",
        "acme-manufacturing",
        "stuttgart",
        1.0,
        0.36,
        {
            "plc": 0.26,
            "env-sensor": 0.24,
            "ip-camera": 0.14,
            "badge-reader": 0.08,
            "smart-plug": 0.12,
            "gateway": 0.06,
            "digital-signage": 0.04,
            "infusion-pump": 0.0,
            "pos-terminal": 0.0,
        },
        (
            Operator("k.weber", "stuttgart", (6.0, 14.0), _WEEK, station=11),
            Operator("a.schmidt", "stuttgart", (14.0, 22.0), _WEEK, station=12),
            Operator("m.fischer", "stuttgart", (8.0, 17.0), _WEEK, station=13),
            Operator("j.becker", "munich", (8.0, 17.0), _WEEK, remote=True),
        ),
        Operator("maint-fac", "nuremberg", (5.0, 6.0), _ALL, remote=True),
        5.0,
        (7.0, 18.0),
        _WEEK,
        {
            "plc": "ot",
            "env-sensor": "ot",
            "smart-plug": "iot",
            "digital-signage": "iot",
            "ip-camera": "security",
            "badge-reader": "security",
            "gateway": "core",
        },
    ),
    Site(
        "hospital-boston",
        "hos",
        "st-mary-hospital",
        "boston",
        -5.0,
        0.36,
        {
            "infusion-pump": 0.34,
            "env-sensor": 0.18,
            "ip-camera": 0.14,
            "badge-reader": 0.1,
            "digital-signage": 0.06,
            "smart-plug": 0.12,
            "gateway": 0.06,
            "plc": 0.0,
            "pos-terminal": 0.0,
        },
        (
            Operator("s.miller", "boston", (7.0, 19.0), _ALL, station=11),
            Operator("r.jones", "boston", (19.0, 7.0), _ALL, station=12),
            Operator("l.garcia", "boston", (8.0, 17.0), _WEEK, station=13),
            Operator("d.chen", "worcester", (8.0, 17.0), _WEEK, remote=True),
        ),
        Operator("maint-hos", "chicago", (4.0, 5.0), _ALL, remote=True),
        4.0,
        (0.0, 24.0),
        _ALL,
        {
            "infusion-pump": "clinical",
            "env-sensor": "iot",
            "smart-plug": "iot",
            "digital-signage": "iot",
            "ip-camera": "security",
            "badge-reader": "security",
            "gateway": "core",
        },
    ),
    Site(
        "retail-london",
        "lon",
        "brightmart-retail",
        "london",
        0.0,
        0.14,
        {
            "pos-terminal": 0.36,
            "ip-camera": 0.2,
            "digital-signage": 0.14,
            "env-sensor": 0.1,
            "smart-plug": 0.08,
            "gateway": 0.06,
            "badge-reader": 0.06,
            "plc": 0.0,
            "infusion-pump": 0.0,
        },
        (
            Operator("e.taylor", "london", (8.0, 17.0), _SIX, station=11),
            Operator("o.brown", "manchester", (9.0, 18.0), _WEEK, remote=True),
        ),
        Operator("maint-lon", "manchester", (6.0, 7.0), _ALL, remote=True),
        6.0,
        (9.0, 21.0),
        _SIX,
        {
            "pos-terminal": "payment",
            "ip-camera": "security",
            "badge-reader": "security",
            "digital-signage": "iot",
            "env-sensor": "iot",
            "smart-plug": "iot",
            "gateway": "core",
        },
    ),
    Site(
        "retail-lyon",
        "lyo",
        "brightmart-retail",
        "lyon",
        1.0,
        0.14,
        {
            "pos-terminal": 0.36,
            "ip-camera": 0.2,
            "digital-signage": 0.14,
            "env-sensor": 0.1,
            "smart-plug": 0.08,
            "gateway": 0.06,
            "badge-reader": 0.06,
            "plc": 0.0,
            "infusion-pump": 0.0,
        },
        (
            Operator("c.martin", "lyon", (8.0, 17.0), _SIX, station=11),
            Operator("n.bernard", "paris", (9.0, 18.0), _WEEK, remote=True),
        ),
        Operator("maint-lyo", "manchester", (6.0, 7.0), _ALL, remote=True),
        6.0,
        (9.0, 20.0),
        _SIX,
        {
            "pos-terminal": "payment",
            "ip-camera": "security",
            "badge-reader": "security",
            "digital-signage": "iot",
            "env-sensor": "iot",
            "smart-plug": "iot",
            "gateway": "core",
        },
    ),
)

# Third octet of each zone's first /24 inside the site's 10.<site>.0.0/16.
ZONE_OCTET = {
    "core": 0,
    "mgmt": 5,
    "vpn": 6,
    "ot": 10,
    "clinical": 20,
    "iot": 30,
    "security": 40,
    "payment": 50,
}
# Site servers in the core zone (host part).
SERVERS = {
    "resolver": 2,
    "ntp": 3,
    "nvr": 10,
    "scada": 20,
    "access": 30,
    "druglib": 40,
    "cms": 60,
    "historian": 70,
}
GATEWAY_HOST0 = 100  # gateways take core-zone hosts from .100 on


def site_ip(site_idx: int, zone: str, host: int) -> str:
    """Address of host number ``host`` (0-based, any size) in a zone: 240 hosts per /24, from .10."""
    octet3 = ZONE_OCTET[zone] + host // 240
    return f"10.{site_idx + 1}.{octet3}.{10 + host % 240}"


def server_ip(site_idx: int, server: str) -> str:
    return f"10.{site_idx + 1}.0.{SERVERS[server]}"


def station_ip(site_idx: int, op: Operator) -> str:
    return f"10.{site_idx + 1}.{ZONE_OCTET['mgmt']}.{op.station}"


def public_ip(country: str, host: int, k: int = 0) -> str:
    nets = COUNTRY_NETS[country]
    return f"{nets[k % len(nets)]}.{10 + host % 240}"


def firmware_hash(vendor: str, model: str, version: str) -> str:
    return hashlib.sha256(f"fleetwarden-sim|{vendor}|{model}|{version}|image".encode()).hexdigest()


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def model_versions(vendor: Vendor, model: str) -> list[str]:
    """Three released versions per model, oldest first (independent of the seed)."""
    major, minor = vendor.version_style
    h = _stable_int(vendor.name + model)
    base = minor + h % 5
    return [
        f"{major}.{base}.{h % 7}",
        f"{major}.{base + 1}.{(h >> 3) % 4}",
        f"{major}.{base + 2}.{(h >> 5) % 3}",
    ]


def next_version(vendor: Vendor, model: str) -> str:
    major, minor = vendor.version_style
    h = _stable_int(vendor.name + model)
    return f"{major}.{minor + h % 5 + 3}.0"


RELEASE_AGES_DAYS = (420.0, 200.0, 45.0)


def build_firmware_catalog(start: float) -> list[dict]:
    """Known-good images of every model: three signed versions released over the past ~14 months."""
    out = []
    for vendor in VENDORS:
        for models in vendor.models.values():
            for model in models:
                for version, age in zip(model_versions(vendor, model), RELEASE_AGES_DAYS, strict=True):
                    jitter = (_stable_int(vendor.name + model + version) % 20) * 86400.0
                    out.append(
                        {
                            "vendor": vendor.name,
                            "model": model,
                            "version": version,
                            "image_sha256": firmware_hash(vendor.name, model, version),
                            "signed": True,
                            "released": start - age * 86400.0 - jitter,
                        }
                    )
    return out


@dataclass
class DeviceTable:
    """The fleet as parallel numpy arrays (index = device number) plus the inventory dicts."""

    device_id: np.ndarray
    ip: np.ndarray
    mac: np.ndarray
    cls: np.ndarray  # index into DEVICE_CLASSES
    vendor: np.ndarray  # index into VENDORS
    model: np.ndarray
    version: np.ndarray
    site: np.ndarray  # index into SITES
    zone: np.ndarray
    serial: np.ndarray
    pubkey: np.ndarray
    broker_ip: np.ndarray  # the site gateway that acts as MQTT broker for the device
    utc_offset: np.ndarray  # seconds
    enrolled: np.ndarray  # enrolment time
    inventory: list[dict]

    def __len__(self) -> int:
        return len(self.device_id)

    def of_class(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.cls == DEVICE_CLASSES.index(name))


def _allocate(total: int, weights: np.ndarray, minimum: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``total`` by ``weights``, with per-entry minimums."""
    counts = minimum.copy()
    rest = total - counts.sum()
    if rest <= 0:
        return counts
    share = weights / weights.sum() * rest
    add = np.floor(share).astype(int)
    order = np.argsort(-(share - add), kind="stable")
    add[order[: rest - add.sum()]] += 1
    return counts + add


MIN_DEVICES = 24


def _daily_window(start_h: float, hours: float) -> str:
    """A daily window as local "HH:MM-HH:MM" (wrapping midnight when it must)."""
    a, b = round(start_h * 60) % 1440, round((start_h + hours) * 60) % 1440
    return f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"


def build_inventory(devices: int, rng: np.random.Generator, start: float) -> DeviceTable:
    """Place ``devices`` devices on the sites by each site's class mix (every site gets a gateway)."""
    if devices < MIN_DEVICES:
        raise InputError(f"devices must be at least {MIN_DEVICES} (got {devices})")
    site_w = np.array([s.weight for s in SITES])
    per_site = _allocate(devices, site_w, np.full(len(SITES), 2))
    rows: list[tuple[int, int]] = []  # (site, class)
    for si, site in enumerate(SITES):
        w = np.array([site.mix.get(c, 0.0) for c in DEVICE_CLASSES])
        minimum = np.array([1 if c == "gateway" else 0 for c in DEVICE_CLASSES])
        counts = _allocate(int(per_site[si]), w, minimum)
        for ci, n in enumerate(counts):
            rows.extend([(si, ci)] * int(n))
    n = len(rows)
    site = np.array([r[0] for r in rows])
    cls = np.array([r[1] for r in rows])

    vendor = np.zeros(n, dtype=int)
    model = np.empty(n, dtype=object)
    version = np.empty(n, dtype=object)
    zone = np.empty(n, dtype=object)
    ip = np.empty(n, dtype=object)
    mac = np.empty(n, dtype=object)
    device_id = np.empty(n, dtype=object)
    serial = np.empty(n, dtype=object)
    pubkey = np.empty(n, dtype=object)
    broker = np.empty(n, dtype=object)
    vendors_of = {c: [i for i, v in enumerate(VENDORS) if c in v.models] for c in DEVICE_CLASSES}
    zone_count: dict[tuple[int, str], int] = {}
    class_count: dict[tuple[int, int], int] = {}
    mac_bytes = rng.integers(0, 256, size=(n, 3))
    key_bytes = rng.bytes(32 * n)
    serial_nums = rng.integers(10**7, 10**8, size=n)
    fw_pick = rng.random(n)
    vendor_pick = rng.random(n)
    model_pick = rng.random(n)
    for i in range(n):
        cname = DEVICE_CLASSES[cls[i]]
        s = SITES[site[i]]
        # vendors of a class are bought per site: skew the site's choice, keep a mix
        choices = vendors_of[cname]
        k = int(vendor_pick[i] * (len(choices) + 1))
        vi = choices[(site[i] if k >= len(choices) else k) % len(choices)]
        vendor[i] = vi
        v = VENDORS[vi]
        models = v.models[cname]
        model[i] = models[int(model_pick[i] * len(models))]
        versions = model_versions(v, model[i])
        version[i] = versions[2] if fw_pick[i] < 0.7 else versions[1] if fw_pick[i] < 0.92 else versions[0]
        zone[i] = s.zones[cname]
        zc = zone_count.get((site[i], zone[i]), 0)
        zone_count[(site[i], zone[i])] = zc + 1
        if zone[i] == "core":
            ip[i] = f"10.{site[i] + 1}.0.{GATEWAY_HOST0 + zc}"
        else:
            ip[i] = site_ip(int(site[i]), zone[i], zc)
        cc = class_count.get((site[i], cls[i]), 0) + 1
        class_count[(site[i], cls[i])] = cc
        device_id[i] = f"{CLASS_INFO[cname].prefix}-{s.code}-{cc:04d}"
        mac[i] = v.oui + ":" + ":".join(f"{b:02x}" for b in mac_bytes[i])
        serial[i] = f"{v.name[:3].upper().replace('.', '')}{serial_nums[i]}"
        pubkey[i] = hashlib.sha256(key_bytes[32 * i : 32 * i + 32]).hexdigest()
    gw_cls = DEVICE_CLASSES.index("gateway")
    for si in range(len(SITES)):
        members = np.flatnonzero(site == si)
        gws = members[cls[members] == gw_cls]
        for j, i in enumerate(members):
            broker[i] = ip[gws[j % len(gws)]] if cls[i] != gw_cls else ip[i]
    utc = np.array([SITES[s].utc_offset * 3600.0 for s in site])
    enrolled = start - rng.uniform(20, 500, size=n) * 86400.0
    inventory = []
    for i in range(n):
        s = SITES[site[i]]
        v = VENDORS[vendor[i]]
        cname = DEVICE_CLASSES[cls[i]]
        inventory.append(
            {
                "device_id": device_id[i],
                "ip": ip[i],
                "mac": mac[i],
                "device_class": cname,
                "vendor": v.name,
                "model": model[i],
                "firmware_version": version[i],
                "owner": s.owner,
                "site": s.name,
                "zone": zone[i],
                "network_role": CLASS_INFO[cname].network_role,
                "data_class": CLASS_INFO[cname].data_class,
                "lifecycle": "active",
                "country": CITIES[s.city].country,
                "serial": serial[i],
                "pubkey_sha256": pubkey[i],
                "enrolled": float(enrolled[i]),
                # the site's clock and its daily maintenance window (local "HH:MM-HH:MM"), as a
                # CMDB exposes them: analytics judge off-hours activity in the device's local time
                "utc_offset_hours": float(s.utc_offset),
                "maintenance_windows": [_daily_window(s.maintenance_hour, 1.0)],
            }
        )
    return DeviceTable(
        device_id=device_id,
        ip=ip,
        mac=mac,
        cls=cls,
        vendor=vendor,
        model=model,
        version=version,
        site=site,
        zone=zone,
        serial=serial,
        pubkey=pubkey,
        broker_ip=broker,
        utc_offset=utc,
        enrolled=enrolled,
        inventory=inventory,
    )
