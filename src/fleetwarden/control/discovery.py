"""Passive discovery: the devices traffic shows, whether or not the inventory knows them.

:class:`Sightings` reads the address columns of flow and DNS batches (``id.orig_h``,
``id.resp_h``, ``id.resp_p``, ``orig_l2_addr``, ``resp_l2_addr``) and ARP tables, and keeps per
device its first and last time seen (event time), its addresses and what it talked to: the top
peers and ports, counted in records.  :meth:`Sightings.take_rows` turns what changed since the
last call into rows for ``Store.upsert_devices``: a sighting of a registered device (same MAC,
else one of its addresses) refreshes that device's ``first_seen``/``last_seen``; any other
becomes an *unknown device*, ``discovered=True`` and lifecycle ``active`` (it is on the network
now; an operator registers, quarantines or retires it), with id its MAC, else its address.

Only local addresses count as devices: RFC 1918 (10/8, 172.16/12, 192.168/16), link-local
(169.254/16, fe80::/10) and IPv6 unique-local (fc00::/7); and unicast MACs (not broadcast,
multicast or all zero).  An internet address is only ever a *peer*.

Bounds: at most ``max_devices`` devices per aggregator (later new ones are counted in
:attr:`Sightings.dropped`), ``max_peers`` counted peers and ports per device (past it the least
seen half is forgotten, so counts of the top ones are lower bounds), ``max_ips`` addresses per
device, ``top`` peers and ports reported.

Blind spots: a MAC seen beside a local address is paired with it, so a router forwarding between
two local subnets lends its MAC to the far subnet's addresses (a capture on one L2 segment is
right); without MACs (Zeek logs without ``orig_l2_addr``) a device that changes address (DHCP)
is two devices; application records (auth, telemetry, commands) are not read: a device that
only speaks MQTT through a broker is seen as a peer of the broker's flows, not by its device_id.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tables come in; the CLI imports this module without loading Arrow
    import pyarrow as pa

LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fe80::/10", "fc00::/7")
)
_FLOW_KEYS = ("id.orig_h", "orig_l2_addr", "id.resp_h", "resp_l2_addr", "id.resp_p")


@lru_cache(maxsize=65_536)
def is_local_address(ip: str | None) -> bool:
    """True for an RFC 1918, link-local or unique-local address (a device of the site)."""
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in LOCAL_NETWORKS if net.version == addr.version)


@lru_cache(maxsize=65_536)
def _address(value: str | None) -> str | None:
    """``value`` as a canonical IP address, or None when it is not one."""
    if not value or len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


@lru_cache(maxsize=65_536)
def device_mac(mac: str | None) -> str | None:
    """The MAC normalised (``aa:bb:…``) when it names one device: unicast and not all zero."""
    if not mac:
        return None
    digits = mac.replace(":", "").replace("-", "").replace(".", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        return None
    if int(digits[:2], 16) & 1 or digits == "0" * 12:  # the I/G bit marks group addresses
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


@dataclass
class Sighting:
    """What traffic showed of one device."""

    mac: str | None
    first: float
    last: float
    ips: dict[str, None] = field(default_factory=dict)  # ordered set, newest last
    peers: Counter = field(default_factory=Counter)
    ports: Counter = field(default_factory=Counter)
    records: int = 0


class Sightings:
    """A bounded aggregate of the devices seen in traffic (see the module docstring)."""

    def __init__(self, *, max_devices: int = 10_000, max_peers: int = 256, max_ips: int = 16, top: int = 10):
        self.max_devices = max_devices
        self.max_peers = max_peers
        self.max_ips = max_ips
        self.top = top
        self.devices: dict[str, Sighting] = {}  # key: MAC, else address
        self.dropped = 0
        self._mac_of_ip: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._taken: set[str] = set()  # the keys the last take_rows returned

    # ---- reading traffic
    def observe_flows(self, table: pa.Table) -> None:
        """A flow or DNS table (event schema of ``core.events``): both ends of every record."""
        keys = [k for k in _FLOW_KEYS if k in table.column_names]
        if "id.orig_h" not in keys or "id.resp_h" not in keys or not len(table):
            return
        groups = table.select([*keys, "ts"]).group_by(keys).aggregate([("ts", "min"), ("ts", "max"), ("ts", "count")])
        for g in groups.to_pylist():
            span = (g["ts_min"], g["ts_max"], g["ts_count"])
            port = g.get("id.resp_p")
            self._see(g["id.orig_h"], g.get("orig_l2_addr"), g["id.resp_h"], port, span)
            self._see(g["id.resp_h"], g.get("resp_l2_addr"), g["id.orig_h"], port, span)

    def observe_arp(self, table: pa.Table) -> None:
        """An ARP table (``sources.pcap.read_arp``): the sender's MAC and address."""
        if not len(table) or "src_mac" not in table.column_names:
            return
        groups = table.select(["src_ip", "src_mac", "ts"]).group_by(["src_ip", "src_mac"])
        for g in groups.aggregate([("ts", "min"), ("ts", "max"), ("ts", "count")]).to_pylist():
            self._see(g["src_ip"], g["src_mac"], None, None, (g["ts_min"], g["ts_max"], g["ts_count"]))

    def _see(self, ip: str | None, mac: str | None, peer: str | None, port: Any, span: tuple) -> None:
        local = is_local_address(ip)
        mac = device_mac(mac)
        if not local and mac is None:
            return
        if local and mac is not None:
            self._mac_of_ip[ip] = mac  # type: ignore[index]
        key = mac or self._mac_of_ip.get(ip) or ip  # type: ignore[arg-type]
        s = self.devices.get(key)
        if s is None:
            if len(self.devices) >= self.max_devices:
                self.dropped += 1
                return
            s = self.devices[key] = Sighting(mac=mac or self._mac_of_ip.get(ip), first=span[0], last=span[1])  # type: ignore[arg-type]
        self._update(s, ip if local else None, peer, port, span)
        self._dirty.add(key)

    def _update(self, s: Sighting, ip: str | None, peer: str | None, port: Any, span: tuple) -> None:
        first, last, n = span
        s.first, s.last, s.records = min(s.first, first), max(s.last, last), s.records + int(n)
        if ip and ip not in s.ips:
            s.ips[ip] = None
            while len(s.ips) > self.max_ips:
                del s.ips[next(iter(s.ips))]
        peer = _address(peer)  # a peer is an address; hostile text in an address column is not kept
        if peer:
            _count(s.peers, peer, n, self.max_peers)
        if port is not None:
            _count(s.ports, int(port), n, self.max_peers)

    # ---- rows for the store
    def take_rows(self, known_macs: Mapping[str, str], known_ips: Mapping[str, str]) -> list[dict[str, Any]]:
        """Rows for ``Store.upsert_devices`` of every device seen since the last call (counts since
        this aggregator started); ``known_macs``/``known_ips`` map registered MACs and addresses to
        their device ids."""
        self._merge_address_keys()
        rows = [self._row(self.devices[k], k, known_macs, known_ips) for k in sorted(self._dirty) if k in self.devices]
        self._taken, self._dirty = self._dirty, set()
        return rows

    def put_back(self) -> None:
        """The rows of the last :meth:`take_rows` were not written: take them again next time (the
        rows carry totals, so nothing is counted twice)."""
        self._dirty |= self._taken
        self._taken = set()

    def _merge_address_keys(self) -> None:
        """An address first seen without a MAC and later with one: one device, keyed by the MAC."""
        for key in [k for k in self.devices if k in self._mac_of_ip]:
            mac = self._mac_of_ip[key]
            s = self.devices.pop(key)
            into = self.devices.setdefault(mac, Sighting(mac=mac, first=s.first, last=s.last))
            into.first, into.last, into.records = min(into.first, s.first), max(into.last, s.last), into.records + s.records
            into.ips.update(s.ips)
            into.peers.update(s.peers)
            into.ports.update(s.ports)
            self._dirty.discard(key)
            self._dirty.add(mac)

    def _row(self, s: Sighting, key: str, known_macs: Mapping[str, str], known_ips: Mapping[str, str]) -> dict:
        observed = {
            "peers": [[p, n] for p, n in s.peers.most_common(self.top)],
            "ports": [[p, n] for p, n in s.ports.most_common(self.top)],
            "records": s.records,
        }
        row: dict[str, Any] = {
            "discovered": True,  # never demotes a registered device (Store.upsert_devices)
            "first_seen": s.first,
            "last_seen": s.last,
            "attributes": {"observed": observed},
        }
        registered = (known_macs.get(s.mac) if s.mac else None) or next(
            (known_ips[ip] for ip in s.ips if ip in known_ips), None
        )
        if registered:
            return {"device_id": registered, **row}
        ips = list(s.ips)
        return {"device_id": key, "mac": s.mac, "ip": ips[-1] if ips else None, "ips": ips, **row}


def _count(counter: Counter, item: Any, n: int, bound: int) -> None:
    counter[item] += int(n)
    if len(counter) > bound:
        for k, _ in counter.most_common()[bound // 2 :]:
            del counter[k]


# lifecycles in which a registered device is expected to show up in traffic
ON_NETWORK = ("active", "quarantined")


def inventory_accuracy(devices: Iterable[Mapping[str, Any]], *, listed: int = 50) -> dict[str, Any]:
    """Known vs seen, from device rows (``Device.to_dict()``).

    * ``known_share``: of the devices seen in traffic, the share that is registered
      (``seen_registered / seen``; None when nothing was seen).  1.0 means no unknown device.
    * ``registered_never_seen``: registered devices expected on the network (lifecycle active or
      quarantined) that traffic never showed, with their ids (the first ``listed``).  Ordered,
      provisioned and retired devices are not expected there.

    Blind spot: "seen" is what the analysed traffic covered; a device on a segment no capture or
    log reaches counts as never seen."""
    registered, unknown = [], []
    for d in devices:
        (unknown if d.get("discovered") else registered).append(d)
    seen_registered = sum(1 for d in registered if d.get("last_seen") is not None)
    seen = seen_registered + len(unknown)
    expected = [d for d in registered if d.get("lifecycle") in ON_NETWORK]
    never = sorted(d["device_id"] for d in expected if d.get("last_seen") is None)
    return {
        "seen": seen,
        "seen_registered": seen_registered,
        "seen_unknown": len(unknown),
        "known_share": round(seen_registered / seen, 4) if seen else None,
        "registered": len(registered),
        "expected_on_network": len(expected),
        "registered_never_seen": len(never),
        "never_seen_share": round(len(never) / len(expected), 4) if expected else None,
        "never_seen": never[:listed],
    }
