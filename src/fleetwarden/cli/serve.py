"""``fleetwarden serve``: the REST API and the console under uvicorn, optionally with the live
detection pipeline (MQTT or the bus) in the same process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fleetwarden.cli._common import DbUrl, OptModel, _run, err

serve_app = typer.Typer(help="Serve the REST API and the console.", invoke_without_command=True)

_LIVE = "Live pipeline"
_TLS = "TLS"


@serve_app.callback()
def serve(
    host: Annotated[
        str, typer.Option("--host", help="address to bind (default: loopback only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port")] = 8080,
    db: DbUrl = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="server certificate (PEM)", rich_help_panel=_TLS)
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="server private key (PEM)", rich_help_panel=_TLS)
    ] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option(
            "--client-ca", help="CA of device client certificates (mutual TLS)", rich_help_panel=_TLS
        ),
    ] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt", help="detect on this broker's events (mqtt://host:port)", rich_help_panel=_LIVE
        ),
    ] = None,
    topic: Annotated[
        str, typer.Option(help="with --mqtt: topic filter carrying JSON events", rich_help_panel=_LIVE)
    ] = "fleetwarden/events/#",
    device_level: Annotated[
        str | None,
        typer.Option(
            "--device-level",
            help="with --mqtt: the topic level naming the device (as watch)",
            rich_help_panel=_LIVE,
        ),
    ] = None,
    mqtt_tls_ca: Annotated[
        Path | None,
        typer.Option("--mqtt-tls-ca", help="with --mqtt: CA of the broker (PEM)", rich_help_panel=_LIVE),
    ] = None,
    mqtt_tls_cert: Annotated[
        Path | None,
        typer.Option("--mqtt-tls-cert", help="with --mqtt: client certificate (PEM)", rich_help_panel=_LIVE),
    ] = None,
    mqtt_tls_key: Annotated[
        Path | None,
        typer.Option("--mqtt-tls-key", help="with --mqtt: client key (PEM)", rich_help_panel=_LIVE),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option("--bus", help="detect on NATS JetStream (nats://host:port)", rich_help_panel=_LIVE),
    ] = None,
    stream: Annotated[
        str, typer.Option(help="with --bus: JetStream stream name", rich_help_panel=_LIVE)
    ] = "FLEETWARDEN",
    partitions: Annotated[
        int,
        typer.Option(min=1, max=4096, help="with --bus: the publisher's partitions", rich_help_panel=_LIVE),
    ] = 8,
    subjects: Annotated[
        str, typer.Option(help="with --bus: subject prefix (PREFIX.p<K>)", rich_help_panel=_LIVE)
    ] = "fleetwarden.events",
    record_every: Annotated[
        float,
        typer.Option(
            "--record-every", min=0.1, max=3600, help="seconds between store writes", rich_help_panel=_LIVE
        ),
    ] = 5.0,
    model: OptModel = None,
) -> None:
    """Serve the API (/api/v1, /openapi.json, /metrics) and the console (/console/) until
    interrupted; with --mqtt or --bus, also detect on the live stream and record to the same store.
    --model: the flow model of the live pipeline and of events posted to /api/v1/events."""
    from fleetwarden.web.server import serve as run

    live = None
    if mqtt is not None or bus is not None:
        live = {
            "mqtt": mqtt, "bus": bus, "topic": topic, "device_level": device_level, "tls_ca": mqtt_tls_ca,
            "tls_cert": mqtt_tls_cert, "tls_key": mqtt_tls_key, "stream": stream, "partitions": partitions,
            "subjects": subjects, "record_every": record_every, "model": model,
            "on_error": lambda line: err.print(Text(line)),
            "on_status": lambda line: err.print(Text(line)),
        }  # fmt: skip
    _run(
        run, db, host=host, port=port, log_level="info", tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca,
        live=live, say=lambda line: err.print(Text(line)), ingest_model=str(model) if model is not None else None,
    )  # fmt: skip
