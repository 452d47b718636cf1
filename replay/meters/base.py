"""The one interface every meter implements, and the records that cross it.

A meter is one source of measurements (NVML for GPUs, RAPL for CPU package and DRAM, psutil
for process CPU time). Each exposes *channels*: cumulative counters that only grow (joules, or
CPU seconds), read at any instant with `read()`. Energy over any window is then the difference
of two readings, which is how the hardware counters are meant to be used; the background
timeline (`sample()`) adds power, clocks and the like for plots and for the cross-check of the
counters against integrated power.

A meter that cannot measure here says so by raising `NotSupportedError` (nothing to read: no
GPU, no RAPL) or `PermissionDeniedError` (something to read but not for this user) from
`open()`, with a message that says what to change. It never reports a number it did not read.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from mrw.errors import NotSupportedError, PermissionDeniedError

__all__ = [
    "Availability",
    "Channel",
    "Meter",
    "NotSupportedError",
    "PermissionDeniedError",
    "TIMELINE_COLUMNS",
]

# The power timeline is one long-format CSV: one row per (instant, source, device). A column a
# source does not have is left empty. `t_s` is seconds since the run's origin (negative during
# the idle baseline); `energy_j` and `cpu_s` are cumulative since the meter was opened.
TIMELINE_COLUMNS: tuple[str, ...] = (
    "t_s",
    "source",  # gpu | cpu | dram | psys | process
    "device",  # gpu index, package-N, harness/engine/system
    "energy_j",
    "power_w",  # gpu: nvmlDeviceGetPowerUsage; rapl: from consecutive counter readings
    "power_avg_w",  # gpu: NVML_FI_DEV_POWER_AVERAGE
    "power_instant_w",  # gpu: NVML_FI_DEV_POWER_INSTANT
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temp_c",
    "util_gpu_pct",
    "util_mem_pct",
    "mem_used_mib",
    "clock_events",  # gpu: bitmask of nvmlClocksEventReason* (power cap, thermal, ...)
    "cpu_s",  # process: user+system CPU seconds
)


@dataclass(frozen=True, slots=True)
class Channel:
    """One cumulative counter. `domain` groups channels that add up (all GPUs, all packages);
    channels of different domains never add up except where a report says so."""

    name: str  # unique within a MeterSet, e.g. "gpu:0", "cpu:package-0", "dram:package-0"
    domain: str  # gpu | cpu | dram | psys | cpu_core | cpu_uncore | harness_cpu | engine_cpu | system_cpu
    unit: str = "J"  # J for energy, s for CPU time
    device: str = ""  # as in the timeline's `device` column


@dataclass(slots=True)
class Availability:
    """Whether a source measured, and if not why not and what to change."""

    source: str
    available: bool
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["details"]:
            d.pop("details")
        if d["reason"] is None:
            d.pop("reason")
        return d


class Meter(abc.ABC):
    """A source of cumulative counters and timeline rows.

    Lifecycle: `open()` (raise NotSupportedError/PermissionDeniedError if it cannot measure),
    then `read()` and `sample()` from any thread, then `close()`. `read()` and `sample()` must
    be cheap (they run at 10-20 Hz) and thread-safe against each other.
    """

    name: ClassVar[str]
    # Timeline rows at most this often (None: every tick). Marks always read every meter.
    sample_period_s: ClassVar[float | None] = None

    @abc.abstractmethod
    def open(self) -> None:
        """Find the devices and take the starting counter values."""

    @abc.abstractmethod
    def channels(self) -> list[Channel]:
        """The counters `read()` returns, valid after `open()`."""

    @abc.abstractmethod
    def read(self) -> dict[str, float]:
        """Every channel's cumulative value since `open()` (J or s). Monotone non-decreasing."""

    def sample(self, t: float) -> list[dict[str, Any]]:
        """Timeline rows for this instant (`t` is filled in by the caller). Default: one row per
        channel with its cumulative value."""
        vals = self.read()
        rows = []
        for ch in self.channels():
            row: dict[str, Any] = {"t_s": t, "source": ch.domain, "device": ch.device}
            row["energy_j" if ch.unit == "J" else "cpu_s"] = vals.get(ch.name)
            rows.append(row)
        return rows

    def describe(self) -> dict[str, Any]:
        """Static facts for energy.json: devices, models, driver, limits. Never a credential."""
        return {}

    def notes(self) -> list[str]:
        """Caveats found while measuring (e.g. a counter that wrapped, a field not supported)."""
        return []

    def close(self) -> None:
        """Release the library or files. Never raises."""
