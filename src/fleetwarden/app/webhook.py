"""Signed webhooks for SOAR and ticketing systems: JSON POSTed with an HMAC-SHA256 signature over a
timestamp and the body, retried with backoff.  Reused by every sender (the SIEM export, response
actions).

*Contract.*  :func:`post_signed` sends ``payload`` as compact, key-sorted JSON with two headers:

* ``X-FleetWarden-Timestamp``: Unix seconds when this attempt was signed;
* ``X-FleetWarden-Signature``: ``sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``.

The receiver recomputes the HMAC (:func:`verify_signature` is that check) and rejects a
timestamp more than ``tolerance`` seconds (default 300) away from its clock: a captured request
cannot be replayed later.  Each retry is signed afresh.  Connection errors, 408, 429 and 5xx
are retried (``retries`` times, exponential backoff with jitter); other answers are returned at
once; redirects are not followed (the body would go somewhere nobody configured).

*Secrets.*  The secret comes from a file (:func:`load_secret`) or ``FLEETWARDEN_WEBHOOK_SECRET``,
must be at least 16 bytes, and appears in no message, log, audit entry or exception; URLs are
shown with their credentials masked.

*Blind spots.*  No at-most-once guarantee: a receiver that answered 2xx after a timeout gets the
payload twice, so payloads carry their own id for de-duplication.  Reference: the scheme Stripe
and Slack use for webhook signatures (timestamped HMAC-SHA256).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetwarden.core.errors import InputError
from fleetwarden.core.text import redact_url

__all__ = [
    "SECRET_ENV",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookError",
    "load_secret",
    "post_signed",
    "sign",
    "verify_signature",
]

SECRET_ENV = "FLEETWARDEN_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-FleetWarden-Signature"
TIMESTAMP_HEADER = "X-FleetWarden-Timestamp"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
MAX_BODY_BYTES = 8 << 20
_RETRIED = {408, 425, 429, 500, 502, 503, 504}


class WebhookError(InputError):
    """A webhook that cannot be sent: bad URL, missing secret, receiver unreachable."""


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    body: bytes,
    secret: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float,
    tolerance: float = 300,
) -> bool:
    """True when ``signature`` is ``body``'s at ``timestamp`` and the timestamp is fresh (the
    receiver's side of :func:`post_signed`; constant-time comparison)."""
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(body, secret, int(timestamp)), signature)


def load_secret(path: Path | None = None) -> bytes:
    """The shared secret: the file's content (trailing newline stripped) when ``path`` is given,
    else ``FLEETWARDEN_WEBHOOK_SECRET``.  Raises :class:`WebhookError` (without the secret)."""
    if path is not None:
        with path.open("rb") as fh:  # bounded: a secret file is small
            raw = fh.read(MAX_SECRET_BYTES + 8).rstrip(b"\r\n")
        where = f"secret file {path}"
    else:
        raw = os.environ.get(SECRET_ENV, "").encode()
        where = SECRET_ENV
    if not raw:
        raise WebhookError(f"no webhook secret: set {SECRET_ENV} or pass --secret-file")
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise WebhookError(f"{where}: the secret must be {MIN_SECRET_BYTES}–{MAX_SECRET_BYTES} bytes")
    return raw


def post_signed(
    url: str,
    payload: Mapping[str, Any] | list[Any],
    secret: bytes | str,
    *,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> int:
    """POST ``payload`` signed to ``url``; the receiver's HTTP status (after retries for the
    retried statuses).  Raises :class:`WebhookError` for a bad URL or secret, a payload over
    8 MiB, or a receiver still unreachable after the retries."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise WebhookError(f"webhook secret shorter than {MIN_SECRET_BYTES} bytes")
    _check_url(url)
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_BODY_BYTES:
        raise WebhookError(f"webhook payload of {len(body):,} bytes is over {MAX_BODY_BYTES:,}")
    for attempt in range(retries + 1):
        status, problem = _attempt(url, body, key, timeout)
        if status is not None and (status not in _RETRIED or attempt == retries):
            return status
        if attempt == retries:
            raise WebhookError(f"webhook {redact_url(url)}: {problem} (after {retries + 1} attempts)")
        time.sleep(backoff * (2**attempt) * (1 + random.random() / 4))
    raise AssertionError("unreachable")


def _check_url(url: str) -> None:
    if len(url) > 2048:
        raise WebhookError("webhook URL longer than 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise WebhookError(f"webhook URL {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"webhook URL {redact_url(url)!r}: expected http(s)://host[:port]/path")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _attempt(url: str, body: bytes, key: bytes, timeout: float) -> tuple[int | None, str]:
    """One signed POST: (status, "") or (None, why it failed)."""
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fleetwarden-webhook/1",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(body, key, ts),
    }
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"
