"""The one error every face reports as "bad input": one line, exit code 2 (the command-line
contract), an HTTP 4xx at the API.

Everything else that escapes a service is a bug and is shown as one, traceback included.
:class:`~fleetwarden.sources.SourceError` (a file, a line or packet, what was wrong), the store's
:class:`~fleetwarden.store.StoreError` (a database that cannot be opened, an unknown id) and the
application's own usage errors all derive from :class:`InputError`.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(Exception):
    """Input or usage the user can correct; the message names what was wrong, in one line."""
