"""NVIDIA GPUs through NVML (nvidia-ml-py), written directly over the library.

Energy comes from `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver was loaded, Volta
and newer): the window's energy is the difference of two readings, per GPU and summed. The
background timeline adds `nvmlDeviceGetPowerUsage` (on Hopper a 1 s running average), the
instantaneous and averaged power fields of `nvmlDeviceGetFieldValues` where the driver has
them, SM and memory clocks, temperature, utilisation, memory used and the clock-event reasons
(power cap, thermal) so that a capped run shows why its clocks dropped. docs/energy.md lists
NVML's pitfalls and why this is not built on Zeus.

Which GPUs: those CUDA would show this process, i.e. `CUDA_VISIBLE_DEVICES` parsed as CUDA
parses it (indices, full or prefix UUIDs, the list ending at the first invalid entry). The
NVML calls go through `nvml`, a module-like object (the real `pynvml` by default) so that
tests can pass a fake with the same call signatures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from mrw.errors import NotSupportedError, PermissionDeniedError

from .base import Channel, Meter


def load_nvml(nvml: Any = None) -> Any:
    """The NVML binding to use: the one given, or the real `pynvml` of nvidia-ml-py."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - nvidia-ml-py is a core dependency
        raise NotSupportedError("NVML: the nvidia-ml-py package is not installed (pip install nvidia-ml-py)") from e
    if not hasattr(pynvml, "_nvmlGetFunctionPointer"):  # the unofficial `pynvml` package shadows it
        raise NotSupportedError(
            "NVML: an unofficial `pynvml` package shadows nvidia-ml-py; pip uninstall pynvml && pip install -U nvidia-ml-py"
        )
    return pynvml


def nvml_error_code(nvml: Any, err: BaseException) -> int | None:
    return getattr(err, "value", None) if isinstance(err, nvml.NVMLError) else None


def translate(nvml: Any, err: BaseException, what: str) -> Exception:
    """Map an NVMLError to mrw's typed errors with a message that says what to change."""
    code = nvml_error_code(nvml, err)
    if code in (nvml.NVML_ERROR_LIBRARY_NOT_FOUND, nvml.NVML_ERROR_DRIVER_NOT_LOADED):
        return NotSupportedError(f"{what}: no NVIDIA driver on this machine ({err})")
    if code == nvml.NVML_ERROR_NO_PERMISSION:
        return PermissionDeniedError(f"{what}: not permitted for this user ({err}); run as root (sudo) or in a privileged container")
    if code in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
        return NotSupportedError(f"{what}: not supported by this GPU or driver ({err})")
    return NotSupportedError(f"{what}: NVML error ({err})")


def init(nvml: Any, what: str = "NVML") -> None:
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise translate(nvml, e, what) from e


def shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


@dataclass(slots=True)
class Gpu:
    """A GPU as CUDA numbers it for this process and as NVML finds it."""

    cuda_index: int  # 0.. in the order CUDA_VISIBLE_DEVICES lists them
    nvml_index: int
    uuid: str
    name: str
    handle: Any


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def visible_gpus(nvml: Any, env: Mapping[str, str] | None = None) -> tuple[list[Gpu], list[str]]:
    """The GPUs CUDA would show this process, in CUDA's order, and notes on the mapping.

    CUDA_VISIBLE_DEVICES: unset = all; "" = none; entries are indices, `GPU-<uuid>` (a unique
    prefix is enough) or `MIG-<uuid>`; CUDA stops at the first entry it cannot resolve (so
    "-1" means no GPU) and so does this. NVML has no per-MIG-instance energy, so MIG entries
    are refused with a message rather than silently metering the whole GPU.
    Needs NVML initialised.
    """
    env = os.environ if env is None else env
    n = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
    uuids = [_s(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    names = [_s(nvml.nvmlDeviceGetName(h)) for h in handles]
    notes: list[str] = []
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        order = list(range(n))
    else:
        order = []
        for raw in spec.split(","):
            e = raw.strip()
            if e.startswith("MIG-"):
                raise NotSupportedError(
                    f"CUDA_VISIBLE_DEVICES names a MIG instance ({e}); NVML has no energy counter per MIG instance: "
                    "meter whole GPUs (list GPU indices or GPU- UUIDs)"
                )
            if e.startswith("GPU-"):
                hits = [i for i, u in enumerate(uuids) if u.startswith(e)]
                if len(hits) != 1:
                    notes.append(f"CUDA_VISIBLE_DEVICES entry {e!r} matches {len(hits)} GPUs; CUDA stops the list there")
                    break
                i = hits[0]
            else:
                try:
                    i = int(e)
                except ValueError:
                    if e:
                        notes.append(f"CUDA_VISIBLE_DEVICES entry {e!r} is not a GPU; CUDA stops the list there")
                    break
                if not 0 <= i < n:
                    if i >= 0:
                        notes.append(f"CUDA_VISIBLE_DEVICES entry {i} is beyond the {n} GPUs; CUDA stops the list there")
                    break
            if i in order:
                notes.append(f"CUDA_VISIBLE_DEVICES lists GPU {i} twice; CUDA stops the list there")
                break
            order.append(i)
        # Integer entries count in CUDA's order, which is PCI order only with CUDA_DEVICE_ORDER=PCI_BUS_ID
        # or (in practice) identical GPUs; say so when the machine mixes models.
        if (
            any(not x.strip().startswith("GPU-") for x in spec.split(",") if x.strip())
            and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
            and len(set(names)) > 1
        ):
            notes.append(
                "mixed GPU models and integer CUDA_VISIBLE_DEVICES without CUDA_DEVICE_ORDER=PCI_BUS_ID: "
                "CUDA's order may differ from NVML's; use GPU- UUIDs to be sure"
            )
    gpus = [Gpu(k, i, uuids[i], names[i], handles[i]) for k, i in enumerate(order)]
    return gpus, notes


# What the timeline reads per GPU besides the energy counter, each probed once at open().
_OPTIONAL = ("power", "fields", "sm_clock", "mem_clock", "temp", "util", "mem", "clock_events")


class NvmlMeter(Meter):
    """Energy counter per visible GPU, plus a power/clock/thermal timeline."""

    name = "nvml"

    def __init__(self, nvml: Any = None, env: Mapping[str, str] | None = None):
        self._nvml_arg = nvml
        self._env = env
        self.nvml: Any = None
        self.gpus: list[Gpu] = []
        self._start_mj: dict[int, int] = {}
        self._has: dict[str, bool] = {}
        self._notes: list[str] = []
        self._field_ids: list[tuple[int, int]] = []
        self._opened = False

    # -------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        self.nvml = nv = load_nvml(self._nvml_arg)
        init(nv, "NVML")
        self._opened = True
        try:
            self.gpus, notes = visible_gpus(nv, self._env)
            self._notes += notes
            if not self.gpus:
                raise NotSupportedError("NVML: no GPU is visible to this process (CUDA_VISIBLE_DEVICES hides them all)")
            for g in self.gpus:
                try:
                    self._start_mj[g.cuda_index] = nv.nvmlDeviceGetTotalEnergyConsumption(g.handle)
                except nv.NVMLError as e:
                    raise translate(
                        nv, e, f"NVML: GPU {g.cuda_index} ({g.name}) has no total-energy counter (Volta or newer needed)"
                    ) from e
            self._probe()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._opened:
            self._opened = False
            shutdown(self.nvml)

    def _probe(self) -> None:
        """Find which optional readings this driver answers, once, so sampling never retries."""
        nv = self.nvml
        h = self.gpus[0].handle
        scope = getattr(nv, "NVML_POWER_SCOPE_GPU", 0)
        self._field_ids = [(nv.NVML_FI_DEV_POWER_INSTANT, scope), (nv.NVML_FI_DEV_POWER_AVERAGE, scope)]
        probes = {
            "power": lambda: nv.nvmlDeviceGetPowerUsage(h),
            "fields": lambda: self._read_fields(h),
            "sm_clock": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            "mem_clock": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
            "temp": lambda: self._temp(h),
            "util": lambda: nv.nvmlDeviceGetUtilizationRates(h),
            "mem": lambda: nv.nvmlDeviceGetMemoryInfo(h),
            "clock_events": lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
        }
        for key in _OPTIONAL:
            try:
                v = probes[key]()
                ok = True
                if key == "fields" and v == (None, None):
                    ok = False
                    self._notes.append("NVML: the driver has neither the instant nor the average power field")
            except (nv.NVMLError, AttributeError) as e:
                ok = False
                self._notes.append(f"NVML: {key} not available ({e})")
            self._has[key] = ok

    # -------------------------------------------------------------------------- counters

    def channels(self) -> list[Channel]:
        return [Channel(f"gpu:{g.cuda_index}", "gpu", "J", str(g.cuda_index)) for g in self.gpus]

    def _energy_j(self, g: Gpu) -> float:
        mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle)
        return (mj - self._start_mj[g.cuda_index]) / 1000.0

    def read(self) -> dict[str, float]:
        return {f"gpu:{g.cuda_index}": self._energy_j(g) for g in self.gpus}

    def _read_fields(self, h: Any) -> tuple[float | None, float | None]:
        vals = self.nvml.nvmlDeviceGetFieldValues(h, self._field_ids)
        out: list[float | None] = []
        for v in vals:
            out.append(v.value.uiVal / 1000.0 if v.nvmlReturn == 0 else None)
        return out[0], out[1]

    def sample(self, t: float) -> list[dict[str, Any]]:
        nv = self.nvml
        rows = []
        for g in self.gpus:
            h = g.handle
            row: dict[str, Any] = {"t_s": t, "source": "gpu", "device": str(g.cuda_index)}
            row["energy_j"] = self._energy_j(g)
            try:
                if self._has["power"]:
                    row["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                if self._has["fields"]:
                    row["power_instant_w"], row["power_avg_w"] = self._read_fields(h)
                if self._has["sm_clock"]:
                    row["sm_clock_mhz"] = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
                if self._has["mem_clock"]:
                    row["mem_clock_mhz"] = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)
                if self._has["temp"]:
                    row["temp_c"] = self._temp(h)
                if self._has["util"]:
                    u = nv.nvmlDeviceGetUtilizationRates(h)
                    row["util_gpu_pct"], row["util_mem_pct"] = u.gpu, u.memory
                if self._has["mem"]:
                    row["mem_used_mib"] = round(nv.nvmlDeviceGetMemoryInfo(h).used / 2**20, 1)
                if self._has["clock_events"]:
                    row["clock_events"] = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
            except nv.NVMLError as e:  # a transient failure loses this row's extras, not the counter
                self._note_once(f"NVML: a timeline reading failed on GPU {g.cuda_index} ({e})")
            rows.append(row)
        return rows

    def _temp(self, h: Any) -> int:
        """nvmlDeviceGetTemperature is deprecated in newer NVML; fall back to the V form."""
        nv = self.nvml
        try:
            return nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
        except (nv.NVMLError, AttributeError):
            return nv.nvmlDeviceGetTemperatureV(h, nv.NVML_TEMPERATURE_GPU)

    def _note_once(self, msg: str) -> None:
        if msg not in self._notes:
            self._notes.append(msg)

    def notes(self) -> list[str]:
        return list(self._notes)

    # -------------------------------------------------------------------------- facts

    def describe(self) -> dict[str, Any]:
        nv = self.nvml

        def get(fn: str, *args: Any) -> Any:
            try:
                return getattr(nv, fn)(*args)
            except (nv.NVMLError, AttributeError):
                return None

        def w(mw: Any) -> float | None:
            return None if mw is None else mw / 1000.0

        gpus = []
        for g in self.gpus:
            h = g.handle
            cons = get("nvmlDeviceGetPowerManagementLimitConstraints", h)
            gpus.append(
                {
                    "index": g.cuda_index,
                    "nvml_index": g.nvml_index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "power_limit_w": {
                        "current": w(get("nvmlDeviceGetPowerManagementLimit", h)),
                        "enforced": w(get("nvmlDeviceGetEnforcedPowerLimit", h)),
                        "default": w(get("nvmlDeviceGetPowerManagementDefaultLimit", h)),
                        "min": w(cons[0]) if cons else None,
                        "max": w(cons[1]) if cons else None,
                    },
                    "max_sm_clock_mhz": get("nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_SM),
                    "energy_counter_at_open_mj": self._start_mj.get(g.cuda_index),
                }
            )
        return {
            "driver": _s(v) if (v := get("nvmlSystemGetDriverVersion")) is not None else None,
            "nvml": _s(v) if (v := get("nvmlSystemGetNVMLVersion")) is not None else None,
            "cuda_visible_devices": (os.environ if self._env is None else self._env).get("CUDA_VISIBLE_DEVICES"),
            "readings": {k: v for k, v in self._has.items()},
            "gpus": gpus,
        }
