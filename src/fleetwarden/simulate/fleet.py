"""The simulated fleet: inventory, firmware catalogue, event batches and scenario ground truth.

``simulate_fleet`` builds the inventory, generates each class's normal behaviour, injects the
scenarios and returns a :class:`SimulatedFleet` whose batches (one per event kind, sorted by
time) can be handed to the engine whole or replayed as a stream with ``iter_batches``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetwarden.core.errors import InputError
from fleetwarden.core.events import KINDS, EventBatch, time_windows
from fleetwarden.simulate.behaviour import NormalBehaviour
from fleetwarden.simulate.catalog import build_firmware_catalog, build_inventory
from fleetwarden.simulate.records import Parts
from fleetwarden.simulate.scenarios import SCENARIOS, ScenarioTruth, inject
from fleetwarden.simulate.signing import key_file_name, public_key_pem, sign_catalog

__all__ = ["DEFAULT_START", "SimulatedFleet", "simulate_fleet", "write_files"]

# Monday 2024-03-04 00:00 UTC: a fixed default keeps runs reproducible.
DEFAULT_START = 1709510400.0


@dataclass
class SimulatedFleet:
    """Output of :func:`simulate_fleet`."""

    inventory: list[dict]
    firmware_catalog: list[dict]
    batches: dict[str, EventBatch]
    scenarios: list[ScenarioTruth]
    start: float
    end: float
    seed: int

    def event_count(self) -> int:
        return sum(len(b) for b in self.batches.values())

    def iter_batches(self, seconds: float = 60) -> Iterator[EventBatch]:
        """All kinds in time order, in chunks of ``seconds`` of simulated time.

        Within a chunk, one batch per kind that has records in it (in :data:`KINDS` order);
        chunks without any record are skipped, so the enrolments long before ``start`` cost
        nothing.
        """
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        yield from time_windows(self.batches, seconds)

    def truth(self, name: str) -> ScenarioTruth:
        for t in self.scenarios:
            if t.name == name:
                return t
        raise KeyError(name)


# The scenarios place their steps up to half an hour into the fleet's time.
MIN_SCENARIO_HOURS = 0.5


def simulate_fleet(
    devices: int = 500,
    hours: float = 24,
    seed: int = 0,
    start: float | None = None,
    scenarios: Sequence[str] | None = None,
) -> SimulatedFleet:
    """Simulate ``devices`` devices for ``hours`` hours with the named scenarios (default: all).

    Same arguments, same output.  Raises ``ValueError`` for fewer than 24 devices, a
    non-positive duration, a duration too short for the scenarios (they play out over
    :data:`MIN_SCENARIO_HOURS`) or an unknown scenario name.
    """
    if hours <= 0:
        raise InputError(f"hours must be positive (got {hours})")
    start = DEFAULT_START if start is None else float(start)
    end = start + hours * 3600.0
    names = list(SCENARIOS) if scenarios is None else list(scenarios)
    if names and hours < MIN_SCENARIO_HOURS:
        raise InputError(
            f"attack scenarios need at least {MIN_SCENARIO_HOURS:g} simulated hours (got {hours:g})"
        )
    fleet = build_inventory(int(devices), np.random.default_rng([seed, 1]), start)
    catalog = build_firmware_catalog(start)
    nb = NormalBehaviour(fleet, start, end, seed)
    parts = Parts()
    nb.generate(parts)
    truths = inject(names, nb, parts, catalog, seed)
    batches = parts.to_batches(KINDS)
    return SimulatedFleet(fleet.inventory, catalog, batches, truths, start, end, seed)


def write_files(fleet: SimulatedFleet, out_dir: str | Path) -> dict[str, Path]:
    """Write ``conn.log`` (Zeek TSV), ``dns.log``, ``events.jsonl`` (every kind), ``inventory.json``,
    ``firmware_catalog.json`` (signed by each vendor's key, :mod:`.signing`), the vendors' public keys
    (``vendor_keys/<vendor>.pem``) and ``scenarios.json`` for replay with other tools."""
    from fleetwarden.sources.jsonl import write_jsonl
    from fleetwarden.sources.zeek import write_tsv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "conn.log": out / "conn.log",
        "dns.log": out / "dns.log",
        "events.jsonl": out / "events.jsonl",
        "inventory.json": out / "inventory.json",
        "firmware_catalog.json": out / "firmware_catalog.json",
        "scenarios.json": out / "scenarios.json",
    }
    write_tsv([fleet.batches["flow"]], paths["conn.log"])
    write_tsv([fleet.batches["dns"]], paths["dns.log"])
    # time-ordered across kinds (hour chunks), so a replay sees the fleet as it happened
    write_jsonl(fleet.iter_batches(3600.0), paths["events.jsonl"])
    paths["inventory.json"].write_text(json.dumps(fleet.inventory, indent=1))
    paths["firmware_catalog.json"].write_text(json.dumps(sign_catalog(fleet.firmware_catalog), indent=1))
    paths.update(_write_vendor_keys(fleet, out / "vendor_keys"))
    paths["scenarios.json"].write_text(json.dumps([t.to_dict() for t in fleet.scenarios], indent=1))
    return paths


def _write_vendor_keys(fleet: SimulatedFleet, key_dir: Path) -> dict[str, Path]:
    """Each catalogue vendor's public firmware key as ``key_dir/<vendor>.pem``."""
    key_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for vendor in sorted({row["vendor"] for row in fleet.firmware_catalog}):
        path = key_dir / key_file_name(vendor)
        path.write_bytes(public_key_pem(vendor))
        written[f"vendor_keys/{path.name}"] = path
    return written
