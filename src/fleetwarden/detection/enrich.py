"""Offline enrichment: country and ASN of external addresses, registered domain of names.

Country and ASN come from geoip2fast, which ships its (MaxMind GeoLite2-derived) data
inside the package; the registered domain comes from tldextract with its bundled public
suffix snapshot only (``suffix_list_urls=()``), so nothing here touches the network.
Look-ups are done once per distinct value (Arrow dictionary encoding) and taken back per
row, and the databases are loaded once per process, on first use (~0.2 s, ~1 s with ASN).

Blind spots: the bundled data ages with the installed package version; private,
link-local and multicast addresses get country ``"--"`` and an empty ASN.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["UNREGISTERED", "asn_of", "country_code", "country_of", "geo_db", "registered_domain", "split_name"]

# The registered domain of names under no public suffix (see :func:`split_name`).
UNREGISTERED = "(names under no public suffix)"


@lru_cache(maxsize=1)
def geo_db() -> Any:
    """The process's one country database (geoip2fast's bundled data), loaded on first use."""
    from geoip2fast import GeoIP2Fast

    return GeoIP2Fast()


@lru_cache(maxsize=1)
def _geo_asn() -> Any:
    from geoip2fast import GeoIP2Fast

    return GeoIP2Fast(geoip2fast_data_file="geoip2fast-asn.dat.gz")


@lru_cache(maxsize=1)
def _tld() -> Any:
    import tldextract

    # bundled snapshot only: no suffix-list URLs, and no cache on disk (detection writes no file)
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _per_distinct(values: pa.Array | pa.ChunkedArray | list[str], fn: Any) -> pa.Array:
    arr = pa.chunked_array([pa.array(values, type=pa.string())]) if isinstance(values, list) else values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = pc.fill_null(arr, "").dictionary_encode()
    looked = pa.array([fn(v) if v else "" for v in enc.dictionary.to_pylist()], type=pa.string())
    return looked.take(enc.indices)


def country_of(ips: pa.Array | pa.ChunkedArray | list[str]) -> pa.Array:
    """ISO country code per address ('--' for private/unknown, '' for empty)."""
    geo = geo_db()
    return _per_distinct(ips, lambda ip: geo.lookup(ip).country_code or "--")


def country_code(ip: str) -> str | None:
    """ISO country code of one address; None when private, unknown or not an address."""
    if not ip:
        return None
    try:
        code = geo_db().lookup(ip).country_code
    except Exception:  # geoip2fast raises assorted errors on odd strings; unknown is the answer
        return None
    return code if code and code != "--" and len(code) == 2 else None


def asn_of(ips: pa.Array | pa.ChunkedArray | list[str]) -> pa.Array:
    """Name of the autonomous system announcing each address ('' when unknown or private)."""
    geo = _geo_asn()
    return _per_distinct(ips, lambda ip: geo.lookup(ip).asn_name or "")


def registered_domain(names: pa.Array | pa.ChunkedArray | list[str]) -> pa.Array:
    """Registered domain ('example.co.uk' for 'a.b.example.co.uk'); the name itself when it has none."""
    ext = _tld()

    def one(name: str) -> str:
        r = ext(name.rstrip("."))
        top = getattr(r, "top_domain_under_public_suffix", None) or r.registered_domain
        return top or name.rstrip(".").lower()

    return _per_distinct(names, one)


@lru_cache(maxsize=131_072)
def split_name(name: str) -> tuple[str, str]:
    """(registered domain, subdomain) of one query name; unknown suffixes keep the last two labels."""
    name = name.strip(".").lower()
    ext = _tld()(name)
    if ext.domain and ext.suffix:
        return f"{ext.domain}.{ext.suffix}", ext.subdomain
    # No public suffix: a private zone or a tunnel talking straight to its server (dnscat2
    # without a domain).  Group all such names of a client together: the whole name is data.
    return UNREGISTERED, name
