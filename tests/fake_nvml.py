"""A stand-in for `pynvml` (nvidia-ml-py) for machines without an NVIDIA GPU.

It follows the real binding's protocol: same function names and arguments, power in mW,
energy in mJ (integers), `nvmlInit` reference counting and NVML_ERROR_UNINITIALIZED before it,
the real `pynvml.NVMLError` subclasses with the real codes (INVALID_ARGUMENT for a limit out of
range, NO_PERMISSION for setters when not privileged), and the real ctypes structures for
field values, utilisation and memory. The physics is a deterministic model chosen by the test:
`energy_j(t)` cumulative energy per GPU (the counter), its derivative as the instantaneous
power, and `nvmlDeviceGetPowerUsage` as a 1 s trailing average the way Hopper reports it.

With `state_path`, knob state (limits, clock locks) lives in a JSON file, so a child process
and the test that killed it see the same GPU.
"""

from __future__ import annotations

import ctypes

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pynvml as _real

# constants the code under test reads from the binding
for _k in dir(_real):
    if _k.startswith(("NVML_ERROR_", "NVML_FI_DEV_POWER", "NVML_POWER_SCOPE", "NVML_CLOCK_", "NVML_TEMPERATURE_", "NVML_SUCCESS")):
        globals()[_k] = getattr(_real, _k)
NVMLError = _real.NVMLError


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    min_mw: int = 200_000
    max_mw: int = 700_000
    default_mw: int = 700_000
    limit_mw: int = 700_000
    sm_clocks: tuple[int, ...] = tuple(range(345, 1981, 15))
    mem_clocks: tuple[int, ...] = (2619,)
    locked: list[int] | None = None
    energy_j: Callable[[float], float] = lambda t: 100.0 * t  # cumulative, t = monotonic seconds
    has_fields: bool = True
    counter_offset_mj: int = 123_456_789  # counters run since driver load
    calls: list[tuple] = field(default_factory=list)


class FakeNvml:
    """Module-like object: pass it wherever the code takes `nvml=`."""

    NVMLError = _real.NVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None, *, privileged: bool = True,
                 state_path: str | os.PathLike | None = None, clock: Callable[[], float] = time.monotonic,
                 driver: str = "580.159.04", fail_set_on: set[str] | None = None, no_driver: bool = False):
        self.gpus = gpus if gpus is not None else [FakeGpu("GPU-11111111-aaaa")]
        self.privileged = privileged
        self.state_path = Path(state_path) if state_path else None
        self.clock = clock
        self.driver = driver
        self.fail_set_on = fail_set_on or set()
        self.no_driver = no_driver
        self.init_count = 0
        self.log: list[tuple] = []
        for k in dir(_real):
            if k.startswith(("NVML_ERROR_", "NVML_FI_DEV_POWER", "NVML_POWER_SCOPE", "NVML_CLOCK_", "NVML_TEMPERATURE_")):
                setattr(self, k, getattr(_real, k))
        self._load()

    # ---------------------------------------------------------------- shared state
    def _load(self) -> None:
        if self.state_path and self.state_path.exists():
            st = json.loads(self.state_path.read_text())
            for g in self.gpus:
                if g.uuid in st:
                    g.limit_mw = st[g.uuid]["limit_mw"]
                    g.locked = st[g.uuid]["locked"]

    def _save(self) -> None:
        if self.state_path:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({g.uuid: {"limit_mw": g.limit_mw, "locked": g.locked} for g in self.gpus}))
            os.replace(tmp, self.state_path)

    # ---------------------------------------------------------------- helpers
    def _need_init(self) -> None:
        if self.init_count <= 0:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, h) -> FakeGpu:
        self._need_init()
        i = h.contents.value if isinstance(h, ctypes._Pointer) else None
        if i is None or not 0 <= i < len(self.gpus):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[i]

    @staticmethod
    def _handle(i: int):
        """Like pynvml's handles, a ctypes pointer: it cannot be copied or pickled."""
        return ctypes.pointer(ctypes.c_int(i))

    def _need_priv(self) -> None:
        if not self.privileged:
            raise _real.NVMLError(_real.NVML_ERROR_NO_PERMISSION)

    # ---------------------------------------------------------------- init
    def nvmlInit(self) -> None:
        if self.no_driver:
            raise _real.NVMLError(_real.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._need_init()
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._need_init()
        return self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._need_init()
        return "13.580.159.04"

    # ---------------------------------------------------------------- devices
    def nvmlDeviceGetCount(self) -> int:
        self._need_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._need_init()
        if not 0 <= i < len(self.gpus):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self._handle(i)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        self._need_init()
        for i, g in enumerate(self.gpus):
            if g.uuid == uuid:
                return self._handle(i)
        raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu(h).name

    # ---------------------------------------------------------------- energy and power
    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        g = self._gpu(h)
        return g.counter_offset_mj + int(g.energy_j(self.clock()) * 1000)  # mJ resolution, truncated

    def _instant_w(self, g: FakeGpu, t: float) -> float:
        dt = 1e-4
        return (g.energy_j(t + dt) - g.energy_j(t - dt)) / (2 * dt)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        g = self._gpu(h)
        t = self.clock()
        return int((g.energy_j(t) - g.energy_j(t - 1.0)) * 1000)  # 1 s trailing average, mW

    def nvmlDeviceGetFieldValues(self, h: int, fieldIds: list) -> list:
        g = self._gpu(h)
        t = self.clock()
        out = (_real.c_nvmlFieldValue_t * len(fieldIds))()
        for i, fid in enumerate(fieldIds):
            fid, scope = fid if isinstance(fid, tuple) else (fid, 0)
            out[i].fieldId, out[i].scopeId = fid, scope
            out[i].timestamp = int(time.time() * 1e6)
            if not g.has_fields or fid not in (_real.NVML_FI_DEV_POWER_INSTANT, _real.NVML_FI_DEV_POWER_AVERAGE):
                out[i].nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
                continue
            out[i].nvmlReturn = _real.NVML_SUCCESS
            out[i].valueType = _real.NVML_VALUE_TYPE_UNSIGNED_INT
            if fid == _real.NVML_FI_DEV_POWER_INSTANT:
                out[i].value.uiVal = int(self._instant_w(g, t) * 1000)
            else:
                out[i].value.uiVal = int((g.energy_j(t) - g.energy_j(t - 1.0)) * 1000)
        return out

    # ---------------------------------------------------------------- clocks, thermal, utilisation
    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        g = self._gpu(h)
        if kind == _real.NVML_CLOCK_MEM:
            return max(g.mem_clocks)
        return g.locked[1] if g.locked else max(g.sm_clocks)

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        g = self._gpu(h)
        return max(g.mem_clocks) if kind == _real.NVML_CLOCK_MEM else max(g.sm_clocks)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        g = self._gpu(h)
        return 30 + int(self._instant_w(g, self.clock()) / 20)

    def nvmlDeviceGetUtilizationRates(self, h: int):
        g = self._gpu(h)
        u = _real.c_nvmlUtilization_t()
        p = self._instant_w(g, self.clock())
        u.gpu, u.memory = min(100, int(p / 7)), min(100, int(p / 10))
        return u

    def nvmlDeviceGetMemoryInfo(self, h: int, version=None):
        self._gpu(h)
        m = _real.c_nvmlMemory_t()
        m.total, m.used = 80 * 2**30, 60 * 2**30
        m.free = m.total - m.used
        return m

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        g = self._gpu(h)
        p = self._instant_w(g, self.clock())
        return _real.nvmlClocksEventReasonSwPowerCap if p * 1000 >= g.limit_mw * 0.98 else 0

    # ---------------------------------------------------------------- power limits
    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        g = self._gpu(h)
        return [g.min_mw, g.max_mw]

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        self._load()
        return self._gpu(h).limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return self._gpu(h).default_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._load()
        return self._gpu(h).limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, h: int, limit: int) -> None:
        g = self._gpu(h)
        self.log.append(("SetPowerManagementLimit", h, limit))
        self._need_priv()
        if g.uuid in self.fail_set_on:
            raise _real.NVMLError(_real.NVML_ERROR_UNKNOWN)
        if not g.min_mw <= limit <= g.max_mw:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        g.limit_mw = int(limit)
        self._save()

    def nvmlDeviceGetSupportedMemoryClocks(self, h: int) -> list[int]:
        return list(self._gpu(h).mem_clocks)

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: int, memoryClockMHz: int) -> list[int]:
        g = self._gpu(h)
        if memoryClockMHz not in g.mem_clocks:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)
        return sorted(g.sm_clocks, reverse=True)

    def nvmlDeviceSetGpuLockedClocks(self, h: int, minGpuClockMHz: int, maxGpuClockMHz: int) -> None:
        g = self._gpu(h)
        self.log.append(("SetGpuLockedClocks", h, minGpuClockMHz, maxGpuClockMHz))
        self._need_priv()
        g.locked = [minGpuClockMHz, maxGpuClockMHz]
        self._save()

    def nvmlDeviceResetGpuLockedClocks(self, h: int) -> None:
        g = self._gpu(h)
        self.log.append(("ResetGpuLockedClocks", h))
        self._need_priv()
        g.locked = None
        self._save()


def sine_energy(base_w: float = 300.0, amp_w: float = 200.0, period_s: float = 0.8, t0: float = 0.0) -> Callable[[float], float]:
    """Cumulative energy of P(t) = base + amp*sin(2*pi*(t-t0)/period): its exact integral."""
    w = 2 * math.pi / period_s
    return lambda t: base_w * (t - t0) + amp_w / w * (1 - math.cos(w * (t - t0)))
