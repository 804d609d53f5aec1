"""Serve the console (and the API it is mounted on) with uvicorn, and the one-command demo behind
``fleetwarden demo --serve``."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

__all__ = ["serve", "serve_demo"]


def serve(db_url: str, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning") -> None:
    """Run the API and the console over the store at ``db_url`` until interrupted."""
    import uvicorn

    from fleetwarden.web import create_console_app

    uvicorn.run(create_console_app(db_url), host=host, port=port, log_level=log_level)


def serve_demo(
    *, db_url: str | None = None, port: int = 8080, devices: int = 60, hours: float = 6, seed: int = 7,
    say: Callable[[str], Any] = print,
) -> None:  # fmt: skip
    """Fill a store with the demo (a fresh SQLite file in a temporary folder unless ``db_url``),
    print the demo users' tokens, and serve the console on 127.0.0.1:``port``."""
    from fleetwarden.app.console import prepare_demo
    from fleetwarden.app.stores import store_at

    with ExitStack() as stack:
        if db_url is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetwarden-console-"))
            db_url = f"sqlite:///{folder}/demo.db"
        with store_at(db_url) as store:
            say(f"Running the demo: {devices} devices, {hours:g} hours…")
            ready = prepare_demo(store, devices=devices, hours=hours, seed=seed)
        say(f"{ready['incidents']} incidents, {ready['actions']} actions proposed.")
        for role, token in ready["tokens"].items():
            say(f"{role:<9} demo-{role:<9} {token}")
        say(f"Console: http://127.0.0.1:{port}/console/  (log in with a token above; Ctrl-C stops)")
        serve(db_url, host="127.0.0.1", port=port)
