"""The ``simulate`` service: a simulated fleet to files, to an MQTT broker, or to the JetStream bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SimulationResult", "simulate"]


@dataclass
class SimulationResult:
    written: dict[str, Path] = field(default_factory=dict)
    sent_mqtt: int = 0
    sent_bus: int = 0


def simulate(
    *,
    devices: int = 300,
    hours: float = 24,
    seed: int = 7,
    out_dir: str | Path | None = None,
    mqtt: str | None = None,
    bus: str | None = None,
    partitions: int = 8,
    stream: str = "FLEETWARDEN",
    subjects: str = "fleetwarden.events",
    rate: float | None = None,
    per_message: int | None = None,
    stream_max_bytes: int | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> SimulationResult:
    """Simulate the fleet once and send it everywhere asked (files, broker, bus).  ``tls_ca``,
    ``tls_cert``, ``tls_key`` switch on (mutual) TLS for ``mqtt`` (the client certificate of a
    gateway whose role may publish for every device)."""
    from fleetwarden.simulate import simulate_fleet, write_files

    fleet = simulate_fleet(devices=devices, hours=hours, seed=seed)
    result = SimulationResult()
    if out_dir is not None:
        result.written = write_files(fleet, Path(out_dir))
    if mqtt is not None:
        from fleetwarden.sources.mqtt import publish_batches

        result.sent_mqtt = publish_batches(
            fleet.iter_batches(seconds=60), mqtt, per_message=per_message or 1, rate=rate, tls=_tls(tls_ca, tls_cert, tls_key)
        )
    if bus is not None:
        from fleetwarden.bus import publish_batches_nats

        result.sent_bus = publish_batches_nats(
            fleet.iter_batches(seconds=60),
            bus,
            partitions,
            per_message=per_message or 100,
            rate=rate,
            stream=stream,
            prefix=subjects,
            **({"max_bytes": stream_max_bytes} if stream_max_bytes else {}),
        )
    return result


def _tls(ca: str | None, cert: str | None, key: str | None):
    from fleetwarden.app.watch import _tls as tls_of

    return tls_of(ca, cert, key)
