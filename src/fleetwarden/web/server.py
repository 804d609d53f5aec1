"""Serve the console (and the API it is mounted on) with uvicorn, optionally with the live pipeline
in the same process (``fleetwarden serve --mqtt/--bus``), and the one-command demo behind
``fleetwarden demo --serve``."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

__all__ = ["serve", "serve_demo"]


def serve(
    db_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning",
    live: dict[str, Any] | None = None, say: Callable[[str], Any] | None = None, **options: Any,
) -> None:  # fmt: skip
    """Run the API and the console over the store at ``db_url`` until interrupted.

    ``options`` are :func:`fleetwarden.api.server.server_config`'s (``tls_cert``, ``tls_key``,
    ``client_ca``, API settings).  ``live`` (keyword arguments of
    :class:`fleetwarden.app.live.LivePipeline`: ``mqtt=URL`` or ``bus=URL``, …) runs detection in a
    background thread of this process, recording to the same store, started once the store is
    open and stopped (pending findings recorded) when the server shuts down.  ``say`` gets a line
    naming what the pipeline reads; its errors go to standard error (``live["on_error"]``)."""
    import uvicorn

    from fleetwarden.api.server import server_config
    from fleetwarden.app.live import LivePipeline
    from fleetwarden.web import create_console_app

    pipeline = LivePipeline(db_url, **live) if live else None  # bad options fail before serving
    config = server_config(
        host=host, port=port, db=db_url, log_level=log_level, factory=create_console_app, **options
    )
    server = uvicorn.Server(config)
    if pipeline is None:
        server.run()
        return
    pipeline.start()
    if say is not None:
        say(f"Live pipeline: {pipeline.source}")
    try:
        server.run()
    finally:
        pipeline.stop()


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
