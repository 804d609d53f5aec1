"""DNS abuse: tunnelling and exfiltration, DGA-like lookups, unexpected and encrypted resolvers.

Contract
    :class:`DnsDetector` consumes ``dns`` batches.

    * Tunnelling / exfiltration (``dns-tunnel``, T1071.004, T1048.003): per (client,
      registered domain) within ``window`` seconds, the distinct subdomains, their mean
      length and mean Shannon entropy (bits per character), and the share of query types
      that carry data (TXT, NULL, CNAME, MX, KEY, ANY, PRIVATE).  A finding is emitted when
      at least ``min_unique`` distinct subdomains are long (mean ≥ ``min_label_len``
      characters) and random-looking (mean entropy ≥ ``min_entropy``), or when a data-carrying
      query type dominates them.  The registered domain comes from tldextract's bundled
      public-suffix list (no network access).
    * DGA-like lookups (``c2-beacon``, T1568.002): per client within ``window``, at least
      ``min_nx_domains`` distinct registered domains answered NXDOMAIN whose names look
      random (mean entropy ≥ ``min_dga_entropy``, mean length ≥ 8).
    * Unexpected resolvers (``policy-violation``, T1071.004): a device sending queries to a
      public resolver when the fleet's resolvers are known (``ctx.expected_resolvers`` when
      the context has it, otherwise learned: local resolvers used by at least
      ``min_fleet_clients`` other devices).

    Queries are judged one by one in time order: the sliding windows drop what is older than
    ``window`` before a query is added, and a window full at ``max_subs`` forgets its oldest
    name for the new one (so a long tunnel stays in view whatever the batches: a table that
    stopped growing at ``max_subs`` and was then pruned to the window used to lose the
    simulator's own tunnel when it came in one batch).  A finding comes at the query that
    completes the evidence; a (client, domain) pair is reported again when its
    distinct-subdomain count doubles, and afresh once its window has emptied (a new episode).

    :class:`EncryptedDnsDetector` consumes ``flow`` and ``dns`` batches and emits
    ``policy-violation`` findings (T1071.004, T1572) about a device that resolves names over
    an encrypted channel the fleet's DNS monitoring never sees:

    * DNS-over-HTTPS: tcp/443 (and udp/443, HTTP/3) to an address of a well-known public
      resolver (:data:`PUBLIC_RESOLVERS`, a curated table of the operators' documented
      anycast addresses: Cloudflare, Google, Quad9, OpenDNS, AdGuard, CleanBrowsing, NextDNS,
      Mullvad, DNS.SB, Control D, AliDNS, DNSPod, Yandex);
    * DNS-over-TLS / DNS-over-QUIC: anything to port 853 (IANA's DoT/DoQ port, RFC 7858 and
      RFC 9250) of a public address, listed or not;
    * a ``dns`` lookup of a DoH/DoT endpoint name (``dns.google``, ``cloudflare-dns.com``,
      ``dns.quad9.net``, ``doh.opendns.com``…, :data:`DOH_ENDPOINTS`): the device is set up to
      resolve elsewhere.  The addresses answered are learned as resolver addresses, so later
      flows to an endpoint outside the table are found too.

    Addresses or endpoint names in ``ctx.expected_resolvers`` (when the context has it) are the
    fleet's own resolvers and are allowed.  Candidate flows (tcp/udp 443 and 853) and endpoint
    lookups wait until both kinds are in up to their time (a lookup teaches the addresses of the
    flows after it, even one in the same window, which the engine hands over after the flows),
    then are judged one by one in event time.  Each (device, resolver service) is reported at
    the record that first raises its evidence, and again only when the evidence grows: a lookup or unanswered attempts (score 0.45: intent, the
    network may have blocked it), answered sessions (0.55, 0.6 when the device also looked the
    endpoint up: a channel that certainly bypasses monitoring, but browsers open it by default),
    bulk (0.7: at least ``bulk_bytes`` bytes or ``bulk_flows`` connections to that resolver
    within one clock hour, far above what name resolution needs, the shape of a tunnel).
    Measured: nDPI's ``dns2tcp_tunnel.pcap`` (dns2tcp over DoH, one 8 s TLS session to 1.1.1.1)
    gives one medium finding on 192.168.20.211; the IoT Sentinel, IoT-23, Stratosphere and
    StopDDoS captures, the other protocol traces and a simulated fleet give none (their
    plaintext DNS to 8.8.8.8 or 1.1.1.1 is not encrypted DNS).

Blind spots
    Slow tunnels (fewer than ``min_unique`` names per window) and DGAs whose domains resolve
    (only NXDOMAIN answers are counted) are missed.  Reputation services that encode hashes in
    subdomains (some anti-virus lookups) look like tunnels.  mDNS/DNS-SD (``.local``) and
    reverse lookups (``.arpa``) are ignored.  Encrypted DNS: DoH to a private, self-hosted or
    unlisted resolver on port 443 is missed unless its name was looked up in the clear first;
    DoH behind an address shared with other services (a CDN front, Oblivious DoH relays) is
    missed, and a learned endpoint address that a CDN shares flags the other HTTPS to it; an
    endpoint lookup learns addresses only for flows that come after it (a capture replays its
    flows before its DNS records, so there only the table and port 853 count).  Ordinary HTTPS
    to a listed address (someone opening https://1.1.1.1 in a browser) is reported like DoH,
    and a browser-like gateway using DoH by default is reported (which the policy may want).
    Whether a session carries a tunnel is judged on volume only: a slow tunnel stays medium.
    A local forwarding resolver that looks an endpoint up for a client is named, not the client.

Reference
    Slips' DNS analytics (high-entropy and NXDOMAIN modules); Farnham & Atlasis, "Detecting
    DNS Tunneling" (SANS, 2013): label length, entropy, unique-subdomain volume, record types;
    Antonakakis et al., "From Throw-Away Traffic to Bots" (USENIX Security 2012) for
    NXDOMAIN-based DGA detection.  Encrypted DNS: RFC 8484 (DoH), RFC 7858 (DoT), RFC 9250
    (DoQ); NSA, "Adopting Encrypted DNS in Enterprise Environments" (2021), which advises
    blocking known external DoH/DoT resolvers by address and tcp/853; MontazeriShatoori et al.,
    "Detection of DoH Tunnels using Time-series Classification of Encrypted Traffic" (IEEE
    DASC 2020, the CIRA-CIC-DoHBrw-2020 data) for the volume of DoH tunnels.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa

from fleetwarden.core.context import Context
from fleetwarden.core.events import FLOW as FLOW_SCHEMA
from fleetwarden.core.events import EventBatch
from fleetwarden.core.findings import Finding
from fleetwarden.detection.analytics.netcommon import (
    FAILED_STATES,
    MAX_RECORD_IDS,
    KindClock,
    address_mask,
    is_group,
    is_local,
    is_private,
    make_finding,
    num_col,
    parse_address,
    plain_table,
    sorted_by_time,
    str_col,
)
from fleetwarden.detection.enrich import UNREGISTERED, split_name

__all__ = [
    "ANALYTICS",
    "DOH_ENDPOINTS",
    "PUBLIC_RESOLVERS",
    "DnsDetector",
    "EncryptedDnsDetector",
    "doh_endpoint",
    "public_resolver",
    "shannon_entropy",
]

DATA_QTYPES = frozenset({"TXT", "NULL", "CNAME", "MX", "KEY", "ANY", "PRIVATE", "SRV", "10", "16", "65399"})
IGNORED_SUFFIXES = (".local", ".arpa", ".lan", ".home", ".localdomain", ".internal")


@lru_cache(maxsize=131_072)
def shannon_entropy(text: str) -> float:
    """Bits per character of ``text`` (0 for the empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


@dataclass
class _Domain:
    """One (client, registered domain): its subdomains within the window, oldest first."""

    subs: dict = field(default_factory=dict)  # subdomain -> last ts (oldest first)
    sizes: dict = field(default_factory=dict)  # subdomain -> (length, entropy) of its data part
    sum_len: float = 0.0  # of the subdomains in ``subs``
    sum_ent: float = 0.0
    qtypes: Counter = field(default_factory=Counter)
    first: float = math.inf  # first query of the episode (the window last emptied before it)
    last: float = -math.inf
    queries: int = 0
    reported: int = 0
    uids: list = field(default_factory=list)


@dataclass
class _Client:
    nx: dict = field(default_factory=dict)  # registered domain -> last ts (oldest first)
    nx_reported: int = 0
    resolvers: set = field(default_factory=set)
    uids: list = field(default_factory=list)


class DnsDetector:
    """DNS tunnelling, DGA-like NXDOMAIN bursts and unexpected resolvers (see module docstring).

    Every record is judged as it comes, in time order: the sliding windows drop what is older
    than ``window`` before a record is added, and a window full at ``max_subs`` (or
    ``max_subs`` NXDOMAIN names) forgets its oldest entry, so findings do not depend on how the
    records were batched.  An episode of a (client, domain) ends when its window empties: the
    next one is reported afresh.
    """

    name = "dns"
    kinds = ("dns",)

    def __init__(
        self,
        window: float = 600.0,
        min_unique: int = 10,
        min_label_len: float = 20.0,
        min_entropy: float = 3.3,
        min_nx_domains: int = 10,
        min_dga_entropy: float = 2.8,
        min_fleet_clients: int = 3,
        max_subs: int = 512,
        max_keys: int = 100_000,
    ) -> None:
        self.window = window
        self.min_unique = min_unique
        self.min_label_len = min_label_len
        self.min_entropy = min_entropy
        self.min_nx_domains = min_nx_domains
        self.min_dga_entropy = min_dga_entropy
        self.min_fleet_clients = min_fleet_clients
        self.max_subs = max_subs
        self.max_keys = max_keys
        self._domains: dict[tuple, _Domain] = {}
        self._clients: dict[str, _Client] = {}
        self._resolver_clients: dict[str, set] = {}
        self._reported_resolvers: set[tuple] = set()

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        if batch.kind != "dns" or len(batch) == 0:
            return []
        batch = sorted_by_time(batch)
        ts = batch.np("ts").tolist()
        client = str_col(batch, "id.orig_h").tolist()
        resolver = str_col(batch, "id.resp_h").tolist()
        query = str_col(batch, "query").tolist()
        qtype = str_col(batch, "qtype_name").tolist()
        rcode = str_col(batch, "rcode_name").tolist()
        uid = str_col(batch, "uid").tolist()
        findings: list[Finding] = []
        window = self.window
        for i in range(len(ts)):
            q = query[i].strip(".").lower()
            if not q or "." not in q or q.endswith(IGNORED_SUFFIXES):
                continue
            c = client[i]
            t = float(ts[i])
            domain, sub = split_name(q)
            cs = self._clients.get(c)
            if cs is None:
                cs = self._clients[c] = _Client()
            r = resolver[i]
            if r and r not in cs.resolvers and len(cs.resolvers) < 16:
                cs.resolvers.add(r)
                self._resolver_clients.setdefault(r, set()).add(c)
                f = self._check_resolver(c, r, t, uid[i], ctx)
                if f:
                    findings.append(f)
            if rcode[i] == "NXDOMAIN":
                f = self._add_nx(cs, c, domain, t, uid[i], ctx)
                if f:
                    findings.append(f)
            if not sub or sub.startswith("_") or (domain == UNREGISTERED and q.count(".") < 1):
                continue
            key = (c, domain)
            d = self._domains.get(key)
            if d is None:
                if len(self._domains) >= self.max_keys:
                    self._forget_idle(t)
                d = self._domains[key] = _Domain()
            subs = d.subs
            # Slide the window: subdomains last seen before it go (oldest first).
            cutoff = t - window
            while subs:
                old = next(iter(subs))
                if subs[old] >= cutoff:
                    break
                self._drop_sub(d, old)
            if not subs:  # a new episode
                d.reported = 0
                d.first = t
                d.queries = 0
                d.qtypes = Counter()
                d.uids = []
            if sub in subs:
                del subs[sub]  # to the young end
            else:
                if len(subs) >= self.max_subs:
                    self._drop_sub(d, next(iter(subs)))  # full: forget the oldest
                flat = sub.replace(".", "")
                size = (len(flat), shannon_entropy(flat))
                d.sizes[sub] = size
                d.sum_len += size[0]
                d.sum_ent += size[1]
            subs[sub] = t
            d.qtypes[qtype[i] or "?"] += 1
            d.queries += 1
            d.first, d.last = min(d.first, t), max(d.last, t)
            if uid[i] and len(d.uids) < MAX_RECORD_IDS:
                d.uids.append(uid[i])
            n = len(subs)
            if n >= self.min_unique and (not d.reported or n >= 2 * d.reported):
                f = self._check_tunnel(key, ctx)
                if f:
                    findings.append(f)
        return findings

    @staticmethod
    def _drop_sub(d: _Domain, sub: str) -> None:
        del d.subs[sub]
        length, ent = d.sizes.pop(sub)
        d.sum_len -= length
        d.sum_ent -= ent
        if not d.subs:
            d.sum_len = d.sum_ent = 0.0  # no rounding drift across episodes

    def _forget_idle(self, now: float) -> None:
        """Bound the table: forget keys idle for the window (their next query starts afresh anyway),
        then, if still full, the oldest quarter (a safety valve far above any real load)."""
        self._domains = {k: d for k, d in self._domains.items() if d.last >= now - self.window}
        if len(self._domains) >= self.max_keys:
            for k in list(self._domains)[: max(1, self.max_keys // 4)]:
                del self._domains[k]

    def _add_nx(
        self, cs: _Client, client: str, domain: str, t: float, uid: str, ctx: Context
    ) -> Finding | None:
        nx = cs.nx
        cutoff = t - self.window
        while nx:
            old = next(iter(nx))
            if nx[old] >= cutoff:
                break
            del nx[old]
        if not nx:
            cs.nx_reported = 0
            cs.uids = []
        if domain in nx:
            del nx[domain]
        elif len(nx) >= self.max_subs:
            del nx[next(iter(nx))]
        nx[domain] = t
        if uid and len(cs.uids) < MAX_RECORD_IDS:
            cs.uids.append(uid)
        n = len(nx)
        if n < self.min_nx_domains or (cs.nx_reported and n < 2 * cs.nx_reported):
            return None
        return self._check_dga(client, ctx)

    def _check_tunnel(self, key: tuple, ctx: Context) -> Finding | None:
        d = self._domains[key]
        n = len(d.subs)
        # Entropy and length of the data-bearing part: dots are separators, not content.
        mean_len = d.sum_len / n
        mean_ent = d.sum_ent / n
        data_q = sum(v for k, v in d.qtypes.items() if k.upper() in DATA_QTYPES)
        data_share = data_q / max(d.queries, 1)
        random_names = mean_len >= self.min_label_len and mean_ent >= self.min_entropy
        data_types = data_share >= 0.5 and mean_len >= self.min_label_len / 2 and mean_ent >= 2.5
        if not (random_names or data_types):
            return None
        d.reported = n
        client, domain = key
        span = max(d.last - d.first, 0.0)
        encoded = int(round(d.sum_len))
        top_types = ", ".join(f"{k} {v}" for k, v in d.qtypes.most_common(3))
        score = (
            0.55 + 0.15 * random_names + 0.1 * data_types + 0.2 * min(1.0, math.log10(n / self.min_unique))
        )
        evidence = [
            f"{n} distinct subdomains of {domain} in {span:.0f} s (threshold {self.min_unique} per "
            f"{self.window:.0f} s), mean length {mean_len:.1f} chars (threshold {self.min_label_len:.0f}), "
            f"mean entropy {mean_ent:.2f} bits/char (threshold {self.min_entropy})",
            f"{encoded} characters encoded in names; query types: {top_types} "
            f"({data_share:.0%} data-carrying)",
        ]
        return make_finding(
            ctx,
            client,
            "dns-tunnel",
            self.name,
            score,
            d.first,
            d.last,
            evidence,
            ["T1071.004", "T1048.003"],
            d.uids,
            domain=domain,
            unique_subdomains=n,
        )

    def _check_dga(self, client: str, ctx: Context) -> Finding | None:
        cs = self._clients[client]
        latest = max(cs.nx.values())
        n = len(cs.nx)
        labels = [k.split(".")[0] for k in cs.nx]
        mean_ent = float(np.mean([shannon_entropy(s) for s in labels]))
        mean_len = float(np.mean([len(s) for s in labels]))
        if mean_ent < self.min_dga_entropy or mean_len < 8:
            return None
        cs.nx_reported = n
        sample = ", ".join(sorted(cs.nx)[:5])
        return make_finding(
            ctx,
            client,
            "c2-beacon",
            self.name,
            0.5 + 0.3 * min(1.0, math.log10(n / self.min_nx_domains) + 0.3),
            min(cs.nx.values()),
            latest,
            [
                f"{n} distinct random-looking domains answered NXDOMAIN within {self.window:.0f} s "
                f"(threshold {self.min_nx_domains}); mean label entropy {mean_ent:.2f} bits/char "
                f"(threshold {self.min_dga_entropy}), mean length {mean_len:.1f}; e.g. {sample}"
            ],
            ["T1568.002"],
            cs.uids,
            nx_domains=n,
        )

    def _check_resolver(self, client: str, resolver: str, ts: float, uid: str, ctx: Context):
        expected = getattr(ctx, "expected_resolvers", None)
        if expected:
            unexpected = resolver not in expected
            basis = f"the fleet's resolvers are {', '.join(sorted(expected)[:3])}"
        else:
            if is_private(resolver) or not is_private(client):
                return None
            local = [
                r
                for r, cl in self._resolver_clients.items()
                if is_private(r) and len(cl - {client}) >= self.min_fleet_clients
            ]
            unexpected = bool(local)
            basis = (
                f"{len(self._resolver_clients.get(local[0], ())) if local else 0} other devices use the "
                f"local resolver {local[0] if local else '-'}"
            )
        if not unexpected or (client, resolver) in self._reported_resolvers:
            return None
        self._reported_resolvers.add((client, resolver))
        return make_finding(
            ctx,
            client,
            "policy-violation",
            self.name,
            0.3,
            ts,
            ts,
            [f"sends DNS queries directly to {resolver}; {basis}"],
            ["T1071.004"],
            [uid],
            resolver=resolver,
        )

    def flush(self, ctx: Context) -> list[Finding]:
        return []


# --- encrypted DNS to public resolvers --------------------------------------------------------

# Public resolvers that answer DNS-over-HTTPS and DNS-over-TLS, by operator: the anycast addresses
# each operator documents for its service (networks where the whole block serves DNS).  Curated
# from the operators' own setup pages, not from any capture; an address here serves DNS (and at
# most the operator's own small web page), so TLS to it is name resolution.
PUBLIC_RESOLVERS: dict[str, tuple[str, ...]] = {
    "Cloudflare": (
        "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
        "2606:4700:4700::1111", "2606:4700:4700::1001", "2606:4700:4700::1112",
        "2606:4700:4700::1002", "2606:4700:4700::1113", "2606:4700:4700::1003",
    ),
    "Google Public DNS": (
        "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
        "2001:4860:4860::6464", "2001:4860:4860::64",
    ),
    "Quad9": (
        "9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11", "149.112.112.11",
        "9.9.9.12", "149.112.112.12", "2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::fe:10",
        "2620:fe::11", "2620:fe::fe:11",
    ),
    "OpenDNS": (
        "208.67.222.222", "208.67.220.220", "208.67.222.123", "208.67.220.123",
        "146.112.41.2", "146.112.41.3", "2620:119:35::35", "2620:119:53::53",
    ),
    "AdGuard DNS": (
        "94.140.14.14", "94.140.15.15", "94.140.14.15", "94.140.15.16", "94.140.14.140",
        "94.140.14.141", "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff", "2a10:50c0::bad1:ff",
        "2a10:50c0::bad2:ff", "2a10:50c0::1:ff", "2a10:50c0::2:ff",
    ),
    "CleanBrowsing": (
        "185.228.168.9", "185.228.169.9", "185.228.168.10", "185.228.169.11", "185.228.168.168",
        "185.228.169.168", "2a0d:2a00:1::", "2a0d:2a00:2::", "2a0d:2a00:1::1", "2a0d:2a00:2::1",
        "2a0d:2a00:1::2", "2a0d:2a00:2::2",
    ),
    "NextDNS": ("45.90.28.0/24", "45.90.30.0/24", "2a07:a8c0::/33", "2a07:a8c1::/33"),
    "Mullvad DNS": ("194.242.2.2", "194.242.2.3", "194.242.2.4", "194.242.2.5", "194.242.2.6", "194.242.2.9"),
    "DNS.SB": ("185.222.222.222", "45.11.45.11", "2a09::", "2a11::"),
    "Control D": ("76.76.2.0/24", "76.76.10.0/24", "2606:1a40::/48", "2606:1a40:1::/48"),
    "AliDNS": ("223.5.5.5", "223.6.6.6", "2400:3200::1", "2400:3200:baba::1"),
    "DNSPod": ("119.29.29.29", "1.12.12.12", "120.53.53.53"),
    "Yandex DNS": ("77.88.8.8", "77.88.8.1", "77.88.8.88", "77.88.8.2", "77.88.8.7", "77.88.8.3"),
}  # fmt: skip

# DoH/DoT endpoint names, by operator.  A name matches itself and the names under it (NextDNS
# and AdGuard put a per-customer label in front: ``abc123.dns.nextdns.io``).  Only zones that
# serve nothing but DNS are matched as suffixes; the operators' web sites are not here.
DOH_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "Cloudflare": ("cloudflare-dns.com", "one.one.one.one"),
    "Google Public DNS": ("dns.google", "dns.google.com", "8888.google"),
    "Quad9": ("dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net", "dns12.quad9.net"),
    "OpenDNS": ("doh.opendns.com", "doh.familyshield.opendns.com", "doh.sandbox.opendns.com", "dns.umbrella.com"),
    "AdGuard DNS": ("adguard-dns.com", "dns.adguard.com", "dns-family.adguard.com", "dns-unfiltered.adguard.com"),
    "CleanBrowsing": (
        "doh.cleanbrowsing.org", "family-filter-dns.cleanbrowsing.org", "adult-filter-dns.cleanbrowsing.org",
        "security-filter-dns.cleanbrowsing.org",
    ),
    "NextDNS": ("dns.nextdns.io",),
    "Mullvad DNS": ("dns.mullvad.net", "doh.mullvad.net"),
    "DNS.SB": ("doh.dns.sb", "dot.sb"),
    "Control D": ("freedns.controld.com", "dns.controld.com"),
    "AliDNS": ("dns.alidns.com",),
    "DNSPod": ("doh.pub", "dot.pub"),
    "Yandex DNS": ("dot.dns.yandex.net",),
    "Apple iCloud Private Relay": ("doh.dns.apple.com",),
}  # fmt: skip

DOT_PORT = 853  # IANA: domain-s, DNS over TLS (RFC 7858) and over QUIC (RFC 9250)
HTTPS_PORT = 443

_RESOLVER_ADDRS: dict = {}
_RESOLVER_NETS: list = []
for _op, _entries in PUBLIC_RESOLVERS.items():
    for _e in _entries:
        if "/" in _e:
            _RESOLVER_NETS.append((ipaddress.ip_network(_e), _op))
        else:
            _RESOLVER_ADDRS[ipaddress.ip_address(_e)] = _op
_ENDPOINTS = {name: op for op, names in DOH_ENDPOINTS.items() for name in names}


@lru_cache(maxsize=65_536)
def public_resolver(ip: str) -> str | None:
    """Operator of the well-known public DoH/DoT resolver at ``ip`` (any spelling), else None."""
    try:
        a = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    op = _RESOLVER_ADDRS.get(a)
    if op is None:
        op = next((o for net, o in _RESOLVER_NETS if a.version == net.version and a in net), None)
    return op


@lru_cache(maxsize=131_072)
def doh_endpoint(name: str) -> str | None:
    """Operator whose DoH/DoT endpoint ``name`` is (or is under), else None."""
    labels = name.strip(".").lower().split(".")
    for i in range(len(labels) - 1):
        op = _ENDPOINTS.get(".".join(labels[i:]))
        if op:
            return op
    return None


# Evidence levels of a (device, resolver service): reported when the level rises.
_INTENT, _USE, _BULK = 1, 2, 3


@dataclass
class _Resolver:
    """What one device did with one encrypted resolver service."""

    first: float = math.inf
    last: float = -math.inf
    flows: int = 0
    answered: int = 0
    sent: int = 0
    received: int = 0
    channels: dict = field(default_factory=dict)  # "tcp/443" -> addresses (capped)
    hours: dict = field(default_factory=dict)  # clock hour -> [bytes, connections]
    peak_bytes: int = 0
    peak_flows: int = 0
    names: dict = field(default_factory=dict)  # endpoint name looked up -> addresses answered
    uids: list = field(default_factory=list)


def _channel_sentence(chan: str, addrs: list[str], service: str | None) -> str:
    to = ", ".join(addrs)
    proto, port = chan.split("/")
    plural = len(addrs) > 1
    who = f" ({service})" if service else ""
    if port == str(DOT_PORT):
        kind = "DNS-over-TLS" if proto == "tcp" else "DNS-over-QUIC"
        why = f"({service})" if service else f"(not a listed resolver; {chan} is {kind}'s IANA port)"
        return f"{chan} {kind} to {to} {why}: name lookups bypass the fleet's DNS monitoring"
    carrier = "TLS" if proto == "tcp" else "QUIC (HTTP/3)"
    noun = "public DNS-over-HTTPS resolvers" if plural else "a public DNS-over-HTTPS resolver"
    return f"{carrier} to {to} {chan}, {noun}{who}: name lookups bypass the fleet's DNS monitoring"


class EncryptedDnsDetector:
    """DNS-over-HTTPS/TLS/QUIC to public resolvers, which bypasses DNS monitoring (see module docstring)."""

    name = "encrypted-dns"
    kinds = ("flow", "dns")

    def __init__(
        self,
        bulk_bytes: int = 1_000_000,
        bulk_flows: int = 360,
        max_keys: int = 100_000,
        max_learned: int = 4096,
    ) -> None:
        # A DoH exchange costs ~150-300 bytes each way (HTTP/2 frames and TLS records around a
        # ~40-byte query and a ~100-byte answer).  An IoT device resolves a handful of names a
        # minute (< 0.1 MB an hour); a busy household browser a couple of thousand an hour
        # (~0.5 MB).  A tunnel carries at most ~150 payload bytes per query, so moving even
        # 0.5 MB of data takes > 1 MB of DoH: ``bulk_bytes`` per clock hour separates the two.
        self.bulk_bytes = bulk_bytes
        # DoH and DoT clients keep one connection open and reuse it (RFC 8484 §5, RFC 7858 §3.4):
        # a new connection every 10 s for an hour is a tool opening one per chunk of data.
        self.bulk_flows = bulk_flows
        self.max_keys = max_keys
        self.max_learned = max_learned
        self._keys: dict[tuple[str, str], _Resolver] = {}
        self._reported: dict[tuple[str, str], int] = {}
        self._learned: dict[str, str] = {}  # address answered for an endpoint name -> operator
        self.clock = KindClock(self.kinds)
        self._held: pa.Table | None = None  # candidate flows and endpoint lookups not yet judged
        self._seq = 0

    def update(self, batch: EventBatch, ctx: Context) -> list[Finding]:
        """Candidate flows (tcp/udp 443 and 853) and lookups of DoH/DoT endpoints wait until both
        kinds are complete up to their time (:class:`KindClock`), then go one by one in event
        time: a lookup teaches the addresses of the flows after it, and the evidence level a
        device reaches is reported at the record that raises it, however the kinds were batched."""
        if len(batch) == 0 or batch.kind not in self.kinds:
            return []
        batch = sorted_by_time(batch)
        self.clock.note(batch.kind, float(np.nanmax(batch.np("ts"))))
        part = self._candidates(batch) if batch.kind == "flow" else self._lookups(batch)
        if part is not None and part.num_rows:
            self._held = (
                part
                if self._held is None
                else pa.concat_tables([self._held, part], promote_options="default")
            )
        return self._release(ctx, self.clock.through)

    def flush(self, ctx: Context) -> list[Finding]:
        self.clock.finish()
        return self._release(ctx, math.inf)

    def _service_of(self, ip: str) -> str | None:
        return public_resolver(ip) or self._learned.get(ip)

    _COLUMNS = ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "duration", "orig_bytes", "resp_bytes",
                "resp_pkts", "conn_state", "uid")  # fmt: skip

    def _candidates(self, batch: EventBatch) -> pa.Table | None:
        """The flows that may reach a resolver: tcp/udp to port 443 or 853 (whether an address is a
        resolver's is decided when the flow is judged: a lookup before it may have taught it)."""
        dport = num_col(batch, "id.resp_p")
        proto = str_col(batch, "proto")
        sel = ((dport == HTTPS_PORT) | (dport == DOT_PORT)) & ((proto == "tcp") | (proto == "udp"))
        sel &= (str_col(batch, "id.orig_h") != "") & (str_col(batch, "id.resp_h") != "")
        if not sel.any():
            return None
        part = plain_table(batch.table.select(list(self._COLUMNS)).filter(pa.array(sel)))
        n = part.num_rows
        seq = self._seq + np.arange(n, dtype=np.int64)
        self._seq += n
        return part.append_column("k", pa.array(np.zeros(n, dtype=np.int64))).append_column(
            "i", pa.array(seq)
        )

    def _lookups(self, batch: EventBatch) -> pa.Table | None:
        query = str_col(batch, "query")
        hit = address_mask(query, lambda q: doh_endpoint(q) is not None)
        if not hit.any():
            return None
        rows = np.flatnonzero(hit)
        n = len(rows)
        seq = self._seq + np.arange(n, dtype=np.int64)
        self._seq += n
        cols = {
            c: pa.nulls(n, f.type)
            for c, f in zip(self._COLUMNS, [FLOW_SCHEMA.field(c) for c in self._COLUMNS], strict=True)
        }
        cols["ts"] = pa.array(batch.np("ts")[rows], pa.float64())
        cols["id.orig_h"] = pa.array(str_col(batch, "id.orig_h")[rows], pa.string())
        cols["id.resp_h"] = pa.array(query[rows], pa.string())  # the name looked up
        cols["uid"] = pa.array(str_col(batch, "uid")[rows], pa.string())
        table = pa.table({**cols, "answers": pa.array(str_col(batch, "answers")[rows], pa.string())})
        return table.append_column("k", pa.array(np.ones(n, dtype=np.int64))).append_column(
            "i", pa.array(seq)
        )

    def _release(self, ctx: Context, until: float) -> list[Finding]:
        if self._held is None or self._held.num_rows == 0:
            return []
        ts = self._held.column("ts").to_numpy()
        ready = ts <= until
        if not ready.any():
            return []
        rows = self._held.filter(pa.array(ready)) if not ready.all() else self._held
        self._held = self._held.filter(pa.array(~ready)) if not ready.all() else None
        expected = {_normal(str(r)) for r in (getattr(ctx, "expected_resolvers", None) or ())}
        kind = rows.column("k").to_numpy()
        dst = np.asarray(rows.column("id.resp_h").fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        src = np.asarray(rows.column("id.orig_h").fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        answers = (
            rows.column("answers").fill_null("").to_pylist()
            if "answers" in rows.column_names
            else [""] * len(kind)
        )
        # Flows that cannot be a resolver's whatever a lookup teaches are dropped first (vectorised):
        # not port 853, and neither a listed address nor one a lookup answered (before or now).
        taught = set(self._learned)
        for k_, ans in zip(kind.tolist(), answers, strict=True):
            if k_ == 1:
                taught.update(a.strip() for a in ans.split(","))
        flows = kind == 0
        port = rows.column("id.resp_p").fill_null(0).to_numpy()
        dot = flows & (port == DOT_PORT)
        maybe = flows & (dot | address_mask(dst, lambda d: public_resolver(d) is not None or d in taught))
        if maybe.any():
            m = np.flatnonzero(maybe)
            maybe[m] &= ~address_mask(
                dst[m], lambda d: is_group(d) or is_local(ctx, d) or _normal(d) in expected
            )
            maybe[m] &= ~address_mask(
                src[m], lambda s: public_resolver(s) is not None
            )  # resolvers as clients
        keep = ~flows | maybe
        if not keep.any():
            return []
        # the records that matter, one by one in event time (ties: flows before lookups, then arrival)
        idx = np.flatnonzero(keep)
        at, ks, seq = rows.column("ts").to_numpy()[idx], kind[idx], rows.column("i").to_numpy()[idx]
        idx = idx[np.lexsort((seq, ks, at))]
        rows = rows.take(pa.array(idx))
        kind, dst, src = kind[idx], dst[idx], src[idx]
        answers = [answers[i] for i in idx.tolist()]
        proto = rows.column("proto").fill_null("").to_pylist()
        dur = np.nan_to_num(
            rows.column("duration").fill_null(0.0).to_numpy(zero_copy_only=False).astype(float)
        )
        ts = rows.column("ts").to_numpy()
        cols = {
            "ts": ts.tolist(),
            "end": (ts + np.where(dur > 0, dur, 0.0)).tolist(),
            "ob": np.maximum(rows.column("orig_bytes").fill_null(0).to_numpy(), 0).tolist(),
            "rb": np.maximum(rows.column("resp_bytes").fill_null(0).to_numpy(), 0).tolist(),
            "rp": rows.column("resp_pkts").fill_null(0).to_numpy().tolist(),
            "state": rows.column("conn_state").fill_null("").to_pylist(),
            "uid": rows.column("uid").fill_null("").to_pylist(),
        }
        port = rows.column("id.resp_p").fill_null(0).to_numpy().tolist()
        findings: list[Finding] = []
        for i in range(len(kind)):
            if kind[i] == 1:
                key = self._lookup(src[i], dst[i], answers[i], cols["ts"][i], cols["uid"][i], expected)
            else:
                key = self._flow(ctx, i, src[i], dst[i], f"{proto[i]}/{port[i]}", cols)
            if key is not None:
                f = self._check(key, ctx, expected)
                if f is not None:
                    findings.append(f)
        if len(self._keys) > self.max_keys:
            # Keep the most recently active half of the room; what was reported stays in ``_reported``.
            keep_keys = sorted(self._keys.items(), key=lambda kv: kv[1].last)[-(self.max_keys // 2 or 1) :]
            self._keys = dict(keep_keys)
        while len(self._reported) > 4 * self.max_keys:
            self._reported.pop(next(iter(self._reported)))
        return findings

    def _flow(self, ctx: Context, i: int, src: str, dst: str, chan: str, cols: dict) -> tuple | None:
        """One candidate flow, judged against what is known of resolvers at its time."""
        service = self._service_of(dst)
        if service is None and not chan.endswith(f"/{DOT_PORT}"):
            return None
        key = (src, service if service is not None else dst)
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _Resolver()
        t, end = float(cols["ts"][i]), float(cols["end"][i])
        ob, rb, rp = int(cols["ob"][i]), int(cols["rb"][i]), int(cols["rp"][i])
        # Unanswered: nothing came back and the state says no exchange (a firewall dropping DoH).
        answered = not (rp <= 0 and rb <= 0 and (cols["state"][i] or "") in FAILED_STATES)
        st.first = min(st.first, t)
        st.last = max(st.last, end)
        st.flows += 1
        st.answered += int(answered)
        st.sent += ob
        st.received += rb
        addrs = st.channels.setdefault(chan, [])
        if dst not in addrs and len(addrs) < 4:
            addrs.append(dst)
        hour = st.hours.setdefault(int(math.floor(t / 3600.0)), [0, 0])
        hour[0] += ob + rb
        hour[1] += 1
        st.peak_bytes = max(st.peak_bytes, hour[0])
        st.peak_flows = max(st.peak_flows, hour[1])
        if len(st.hours) > 3:
            for h in sorted(st.hours)[:-3]:
                del st.hours[h]
        u = cols["uid"][i]
        if u and u not in st.uids and len(st.uids) < MAX_RECORD_IDS:
            st.uids.append(u)
        return key

    def _lookup(
        self, client: str, query: str, answers: str, t: float, uid: str, expected: set[str]
    ) -> tuple | None:
        """A lookup of a DoH/DoT endpoint: learn its addresses; the client's intent is evidence."""
        name = query.strip(".").lower()
        op = doh_endpoint(name)
        addrs = [a.strip() for a in answers.split(",") if parse_address(a.strip()) is not None]
        for a in addrs:
            if public_resolver(a) is None and not is_private(a):
                self._learned.pop(a, None)
                self._learned[a] = op
        while len(self._learned) > self.max_learned:
            self._learned.pop(next(iter(self._learned)))
        if (
            not client
            or public_resolver(client)
            or name in expected
            or any(_normal(a) in expected for a in addrs)
        ):
            return None
        k = (client, op)
        st = self._keys.get(k)
        if st is None:
            st = self._keys[k] = _Resolver()
        st.first, st.last = min(st.first, t), max(st.last, t)
        known = st.names.setdefault(name, [])
        for a in addrs:
            if a not in known and len(known) < 4:
                known.append(a)
        if uid and uid not in st.uids and len(st.uids) < MAX_RECORD_IDS:
            st.uids.append(uid)
        return k

    def _check(self, key: tuple[str, str], ctx: Context, expected: set[str]) -> Finding | None:
        st = self._keys[key]
        if st.peak_bytes >= self.bulk_bytes or st.peak_flows >= self.bulk_flows:
            level = _BULK
        elif st.answered:
            level = _USE
        else:
            level = _INTENT
        if level <= self._reported.get(key, 0):
            return None
        self._reported[key] = level
        client, resolver = key
        service = resolver if resolver in PUBLIC_RESOLVERS or resolver in DOH_ENDPOINTS else None
        evidence = [_channel_sentence(chan, addrs, service) for chan, addrs in st.channels.items()]
        if st.flows:
            span = max(st.last - st.first, 0.0)
            line = (
                f"{st.flows} connection{'s' if st.flows > 1 else ''} over {span:.0f} s, {st.sent} bytes sent "
                f"and {st.received} received"
            )
            if not st.answered:
                line += "; none answered (blocked by the network?)"
            evidence.append(line)
        if level == _BULK:
            evidence.append(
                f"bulk: up to {st.peak_bytes} bytes and {st.peak_flows} connections within one clock "
                f"hour (thresholds {self.bulk_bytes} bytes or {self.bulk_flows} connections, far above "
                "what name resolution needs): the shape of a tunnel over encrypted DNS (T1572)"
            )
        for name, addrs in list(st.names.items())[:3]:
            answered = f", answered {', '.join(addrs)}" if addrs else ""
            evidence.append(
                f"looked up {name}, a DNS-over-HTTPS/TLS endpoint of {service or resolver}{answered}: "
                "the device is set up to resolve names outside the fleet's DNS"
            )
        if expected:
            evidence.append(f"the fleet's resolvers are {', '.join(sorted(expected)[:3])}")
        score = {_INTENT: 0.45, _USE: 0.55, _BULK: 0.7}[level]
        if level == _USE and st.names:
            score = 0.6  # the device both looked an endpoint up and used a resolver of it
        addresses = [a for addrs in st.channels.values() for a in addrs]
        addresses += [a for addrs in st.names.values() for a in addrs if a not in addresses]
        return make_finding(
            ctx,
            client,
            "policy-violation",
            self.name,
            score,
            st.first,
            st.last,
            evidence,
            ["T1071.004", "T1572"],
            st.uids,
            resolver=addresses[0] if addresses else next(iter(st.names), resolver),
            resolver_service=service,
            addresses=addresses,
            channels=sorted(st.channels),
            endpoints=list(st.names),
            connections=st.flows,
            bytes_sent=st.sent,
            bytes_received=st.received,
            bulk=level == _BULK,
        )


def _normal(resolver: str) -> str:
    """An address in its canonical spelling, a name in lower case without the final dot."""
    resolver = resolver.strip()
    try:
        return str(ipaddress.ip_address(resolver))
    except ValueError:
        return resolver.strip(".").lower()


ANALYTICS = [DnsDetector, EncryptedDnsDetector]
