"""Energy and resource meters: one module per source behind one interface (base.Meter).

- nvml: NVIDIA GPU energy counters + power/clock/thermal timeline (nvidia-ml-py)
- rapl: CPU package and DRAM energy (/sys/class/powercap, amd_energy hwmon)
- process: CPU time of the harness, the engine's process tree and the machine (psutil)

`MeterSet` runs several together around a run and writes energy.json + power.csv.
"""

from .base import Availability, Channel, Meter, NotSupportedError, PermissionDeniedError
from .meterset import ENERGY_FILE, METER_NAMES, TIMELINE_FILE, MeteringOptions, MeterSet, parse_meter_spec

__all__ = [
    "Availability",
    "Channel",
    "ENERGY_FILE",
    "METER_NAMES",
    "Meter",
    "MeterSet",
    "MeteringOptions",
    "NotSupportedError",
    "PermissionDeniedError",
    "TIMELINE_FILE",
    "parse_meter_spec",
]
