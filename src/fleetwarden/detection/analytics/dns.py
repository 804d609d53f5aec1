"""DNS abuse: tunnelling and exfiltration, DGA-like lookups, unexpected resolvers.

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

    Findings come in the update that completes the evidence; a (client, domain) pair is
    reported again when its distinct-subdomain count doubles.

Blind spots
    Slow tunnels (fewer than ``min_unique`` names per window), tunnels over DNS-over-HTTPS
    or DoT (no DNS records), and DGAs whose domains resolve (only NXDOMAIN answers are
    counted) are missed.  Reputation services that encode hashes in subdomains (some
    anti-virus lookups) look like tunnels.  mDNS/DNS-SD (``.local``) and reverse lookups
    (``.arpa``) are ignored.

Reference
    Slips' DNS analytics (high-entropy and NXDOMAIN modules); Farnham & Atlasis, "Detecting
    DNS Tunneling" (SANS, 2013): label length, entropy, unique-subdomain volume, record types;
    Antonakakis et al., "From Throw-Away Traffic to Bots" (USENIX Security 2012) for
    NXDOMAIN-based DGA detection.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from fleetwarden.detection.analytics.base import Context
from fleetwarden.detection.analytics.netcommon import (
    MAX_RECORD_IDS,
    is_private,
    make_finding,
    sorted_by_time,
    str_col,
)
from fleetwarden.events import EventBatch
from fleetwarden.findings import Finding

__all__ = ["ANALYTICS", "DnsDetector", "registered_domain", "shannon_entropy"]

DATA_QTYPES = frozenset({"TXT", "NULL", "CNAME", "MX", "KEY", "ANY", "PRIVATE", "SRV", "10", "16", "65399"})
UNREGISTERED = "(names under no public suffix)"
IGNORED_SUFFIXES = (".local", ".arpa", ".lan", ".home", ".localdomain", ".internal")

_extract = None


def _extractor():
    global _extract
    if _extract is None:
        import tldextract

        # suffix_list_urls=() keeps tldextract on its bundled snapshot: no download, ever.
        _extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    return _extract


@lru_cache(maxsize=131_072)
def registered_domain(name: str) -> tuple[str, str]:
    """(registered domain, subdomain) of a query name; unknown suffixes keep the last two labels."""
    name = name.strip(".").lower()
    ext = _extractor()(name)
    if ext.domain and ext.suffix:
        return f"{ext.domain}.{ext.suffix}", ext.subdomain
    # No public suffix: a private zone or a tunnel talking straight to its server (dnscat2
    # without a domain).  Group all such names of a client together: the whole name is data.
    return UNREGISTERED, name


@lru_cache(maxsize=131_072)
def shannon_entropy(text: str) -> float:
    """Bits per character of ``text`` (0 for the empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


@dataclass
class _Domain:
    subs: dict = field(default_factory=dict)  # subdomain -> last ts
    qtypes: Counter = field(default_factory=Counter)
    first: float = math.inf
    last: float = -math.inf
    queries: int = 0
    reported: int = 0
    uids: list = field(default_factory=list)


@dataclass
class _Client:
    nx: dict = field(default_factory=dict)  # registered domain -> last ts
    nx_reported: int = 0
    resolvers: set = field(default_factory=set)
    uids: list = field(default_factory=list)


class DnsDetector:
    """DNS tunnelling, DGA-like NXDOMAIN bursts and unexpected resolvers (see module docstring)."""

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
        ts = batch.np("ts")
        client = str_col(batch, "id.orig_h")
        resolver = str_col(batch, "id.resp_h")
        query = str_col(batch, "query")
        qtype = str_col(batch, "qtype_name")
        rcode = str_col(batch, "rcode_name")
        uid = str_col(batch, "uid")
        touched: set[tuple] = set()
        nx_touched: set[str] = set()
        findings: list[Finding] = []
        for i in range(len(batch)):
            q = query[i].strip(".").lower()
            if not q or "." not in q or q.endswith(IGNORED_SUFFIXES):
                continue
            c = client[i]
            t = float(ts[i])
            domain, sub = registered_domain(q)
            cs = self._clients.get(c)
            if cs is None:
                cs = self._clients[c] = _Client()
            if resolver[i] and resolver[i] not in cs.resolvers and len(cs.resolvers) < 16:
                cs.resolvers.add(resolver[i])
                self._resolver_clients.setdefault(resolver[i], set()).add(c)
                f = self._check_resolver(c, resolver[i], t, uid[i], ctx)
                if f:
                    findings.append(f)
            if rcode[i] == "NXDOMAIN":
                if domain in cs.nx or len(cs.nx) < self.max_subs:
                    cs.nx[domain] = t
                if uid[i] and len(cs.uids) < MAX_RECORD_IDS:
                    cs.uids.append(uid[i])
                nx_touched.add(c)
            if not sub or sub.startswith("_") or (domain == UNREGISTERED and q.count(".") < 1):
                continue
            key = (c, domain)
            d = self._domains.get(key)
            if d is None:
                d = self._domains[key] = _Domain()
            if sub in d.subs or len(d.subs) < self.max_subs:
                d.subs[sub] = t
            d.qtypes[qtype[i] or "?"] += 1
            d.queries += 1
            d.first, d.last = min(d.first, t), max(d.last, t)
            if uid[i] and len(d.uids) < MAX_RECORD_IDS:
                d.uids.append(uid[i])
            touched.add(key)
        for key in touched:
            f = self._check_tunnel(key, ctx)
            if f:
                findings.append(f)
        for c in nx_touched:
            f = self._check_dga(c, ctx)
            if f:
                findings.append(f)
        if len(self._domains) > self.max_keys:
            now = float(ts[-1])
            self._domains = {k: d for k, d in self._domains.items() if d.last >= now - self.window}
        return findings

    def _check_tunnel(self, key: tuple, ctx: Context) -> Finding | None:
        d = self._domains[key]
        cutoff = d.last - self.window
        if min(d.subs.values()) < cutoff:
            d.subs = {s: t for s, t in d.subs.items() if t >= cutoff}
        n = len(d.subs)
        if n < self.min_unique or (d.reported and n < 2 * d.reported):
            return None
        subs = list(d.subs)
        # Entropy and length of the data-bearing part: dots are separators, not content.
        flat = [s.replace(".", "") for s in subs]
        mean_len = float(np.mean([len(s) for s in flat]))
        mean_ent = float(np.mean([shannon_entropy(s) for s in flat]))
        data_q = sum(v for k, v in d.qtypes.items() if k.upper() in DATA_QTYPES)
        data_share = data_q / max(d.queries, 1)
        random_names = mean_len >= self.min_label_len and mean_ent >= self.min_entropy
        data_types = data_share >= 0.5 and mean_len >= self.min_label_len / 2 and mean_ent >= 2.5
        if not (random_names or data_types):
            return None
        d.reported = n
        client, domain = key
        span = max(d.last - d.first, 0.0)
        encoded = sum(len(s) for s in flat)
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
        cs.nx = {k: t for k, t in cs.nx.items() if t >= latest - self.window}
        n = len(cs.nx)
        if n < self.min_nx_domains or (cs.nx_reported and n < 2 * cs.nx_reported):
            return None
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


ANALYTICS = [DnsDetector]
