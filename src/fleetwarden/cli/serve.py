"""``fleetwarden serve``: the REST API (and whatever faces are mounted on it) under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetwarden.cli._common import DbUrl, _run

serve_app = typer.Typer(help="Serve the REST API.", invoke_without_command=True)


@serve_app.callback()
def serve(
    host: Annotated[str, typer.Option("--host", help="address to bind (default: loopback only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port")] = 8080,
    db: DbUrl = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="server certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="server private key (PEM)")] = None,
    client_ca: Annotated[
        Path | None, typer.Option("--client-ca", help="CA of device client certificates (mutual TLS)")
    ] = None,
) -> None:
    """Serve the API (/api/v1, /openapi.json, /metrics) until interrupted."""
    from fleetwarden.api.server import serve as run

    _run(run, host=host, port=port, db=db, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca)
