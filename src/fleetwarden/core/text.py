"""Text that crosses a trust boundary: credentials redacted, control characters made visible.

Devices, logs, brokers and API callers are attacker-controlled, and what they send ends up in
evidence sentences, terminal tables, web pages, database rows and the audit log.  Two helpers,
used by every face and by the store:

* :func:`redact` / :func:`redact_url`: the password (and token-like query values) of any URL, and
  ``password=…``-style pairs, become ``***``.  Applied to everything that names a source (a broker
  or bus URL, a database URL) before it is printed, logged or stored: the audit log is
  append-only, so a credential written there could never be removed.
* :func:`printable`: C0/C1 control characters, DEL, the Unicode line/paragraph separators, every
  invisible "format" character (bidirectional overrides and isolates, zero-width characters, the
  invisible tag characters U+E0000–E007F) and lone surrogates become visible ``\\xNN`` /
  ``\\uNNNN`` / ``\\UNNNNNNNN`` escapes, so a crafted string cannot move the cursor, recolour or
  clear a terminal, hide or reorder text, or make printing fail.  Rich markup is not interpreted
  by the faces at all (they hand Rich ``Text`` objects or print with ``markup=False``);
  :func:`printable` is what makes the characters themselves harmless.
* :func:`one_line`: :func:`printable` plus newlines and tabs escaped, for a message that must stay
  one line (an error reason, a log line).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["MASK", "one_line", "printable", "redact", "redact_all", "redact_url", "truncate"]

MASK = "***"
_SECRET_KEYS = r"(?:password|passwd|pwd|pass|secret|token|api[_-]?key|access[_-]?key|auth|authorization)"
# scheme://user:password@host  (the password part: anything up to the last @ before the host;
# the scheme is bounded so that a megabyte of "a.a.a.a…" costs linear, not quadratic, time)
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://)(?P<user>[^\s:/@]*):(?P<pw>[^\s/]*)@"
)
# key=value / key: value pairs, in query strings, DSNs and log lines; JSON's "key": "value" too
_SECRET_PAIR = re.compile(rf"(?i)(?P<key>\b{_SECRET_KEYS}\b[\"']?\s*[=:]\s*[\"']?)(?P<val>[^\s&;,'\"]+)")
# HTTP's "Authorization: Bearer <token>" (and Basic): the credential after the scheme word
_BEARER = re.compile(r"(?i)(?P<key>\b(?:bearer|basic)\s+)(?P<val>[A-Za-z0-9\-._~+/=]{8,})")
# C0/C1 controls and DEL; line/paragraph separators; Unicode format characters (category Cf:
# soft hyphen, bidi marks, embeddings, overrides and isolates, zero-width characters, word
# joiners, the BOM, interlinear annotations, invisible tags); lone surrogates (unprintable).
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def redact_url(url: str) -> str:
    """``url`` with its password (and secret-looking query values) replaced by ``***``; a string
    that is not a URL is passed through :func:`redact`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if not parts.scheme or not parts.netloc:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{quote(user, safe='%')}:{MASK}@{host}" if ":" in userinfo else f"{userinfo}@{host}"
    return redact(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


def redact(text: str) -> str:
    """``text`` with every URL password and ``password=…``-style value replaced by ``***``."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_all(value: object) -> object:
    """``value`` with every string in it (dictionary keys too, in lists and tuples) passed through
    :func:`redact`: structured details such as a finding's attributes or an audit entry's."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {(redact(k) if isinstance(k, str) else k): redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_all(v) for v in value)
    return value


def printable(text: object, limit: int | None = None) -> str:
    """``text`` safe for a terminal or a log line: control and reordering characters escaped,
    optionally cut to ``limit`` characters (with a marker saying how much was cut)."""
    s = text if isinstance(text, str) else str(text)
    s = _CONTROL.sub(_escape, s)
    return truncate(s, limit) if limit is not None else s


def one_line(text: object, limit: int | None = None) -> str:
    """:func:`printable`, with newlines and tabs escaped too: a message that stays one line."""
    s = printable(text).replace("\n", "\\n").replace("\t", "\\t")
    return truncate(s, limit) if limit is not None else s


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked (``…(+123)``)."""
    if len(text) <= limit:
        return text
    marker = f"…(+{len(text) - limit})"
    return text[: max(0, limit - len(marker))] + marker


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"
