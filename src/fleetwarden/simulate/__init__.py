"""Fleet simulator and tabletop attack scenarios.

``simulate_fleet(devices=500, hours=24, seed=0)`` returns a :class:`SimulatedFleet`: an
inventory of IoT/OT devices on a factory, a hospital and two retail stores, the firmware
catalogue, one time-sorted :class:`~fleetwarden.core.events.EventBatch` per event kind, and the
ground truth of the injected scenarios (:data:`SCENARIOS`).  Output is deterministic in the
seed and generated column-wise with numpy.

Modules: :mod:`.catalog` (classes, vendors, sites, people, firmware), :mod:`.behaviour`
(normal behaviour per class), :mod:`.scenarios` (attacks and the benign rollout),
:mod:`.records` (Zeek-like record builders), :mod:`.fleet` (assembly, replay, files).
"""

from fleetwarden.simulate.catalog import DEVICE_CLASSES, VENDORS
from fleetwarden.simulate.fleet import DEFAULT_START, SimulatedFleet, simulate_fleet, write_files
from fleetwarden.simulate.scenarios import SCENARIOS, ScenarioTruth

__all__ = [
    "DEFAULT_START",
    "DEVICE_CLASSES",
    "SCENARIOS",
    "VENDORS",
    "ScenarioTruth",
    "SimulatedFleet",
    "simulate_fleet",
    "write_files",
]
