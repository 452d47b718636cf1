"""GPU knobs (power cap, SM clock lock), applied before a run and undone on every exit path.

    with apply_knobs(cap_w=200, lock_clocks=None, run_dir=run_dir) as knobs:
        ... launch engine, meter, replay ...
    # the original power limit is back, and knobs.json in run_dir says so

Discipline, because a GPU left capped silently corrupts every later measurement on it:

1. Validate before changing anything: every visible GPU's [min, max] power limit
   (nvmlDeviceGetPowerManagementLimitConstraints) and supported SM clocks; permission is
   checked by setting each GPU's limit to the value it already has.
2. Before the first change, record the originals in a pending file (one per process under
   ~/.local/state/mrw/knobs/), and install the guards: SIGTERM/SIGHUP handlers that turn the
   signal into an exception (so `finally` blocks run), and an atexit hook.
3. Restore in `finally` (success, error, Ctrl-C, SIGTERM, engine crash), again at exit if
   anything is left, each GPU and knob independently so one failure cannot strand another;
   read the limit back and record whether it matches the original.
4. A process killed with SIGKILL cannot restore; its pending file can: the next
   `apply_knobs` (or `mrw restore-knobs`) restores GPUs whose owner is gone.

Clock locks have no NVML getter, so a lock set by someone else before mrw ran is not
restored: mrw resets to the driver's default (nvmlDeviceResetGpuLockedClocks). The GPU itself
is never reset.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import orjson

from mrw.launch import pid_alive

from mrw.errors import KnobError, MrwError, NotSupportedError, PermissionDeniedError

from .meters import nvml as nvmlmod

KNOBS_FILE = "knobs.json"


class Terminated(SystemExit):
    """SIGTERM/SIGHUP turned into an exception so that `finally` blocks restore the GPU."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name}"


def pending_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mrw" / "knobs"


def parse_clocks(spec: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """'1410' -> (1410, 1410); '1200-1410' -> (1200, 1410)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, tuple):
        lo, hi = spec
    elif isinstance(spec, int):
        lo = hi = spec
    else:
        parts = str(spec).replace(":", "-").split("-")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise KnobError(f"--lock-clocks {spec!r}: give MHZ or MIN-MAX in MHz, e.g. 1410 or 1200-1410") from None
        if len(nums) == 1:
            lo = hi = nums[0]
        elif len(nums) == 2:
            lo, hi = nums
        else:
            raise KnobError(f"--lock-clocks {spec!r}: give MHZ or MIN-MAX in MHz, e.g. 1410 or 1200-1410")
    if lo <= 0 or hi < lo:
        raise KnobError(f"--lock-clocks {spec!r}: need 0 < MIN <= MAX")
    return lo, hi


@dataclass(slots=True)
class GpuKnobs:
    """What was asked of one GPU, what it took, and whether it was put back."""

    index: int
    uuid: str
    name: str
    limit_range_w: tuple[float, float] | None = None
    limit_default_w: float | None = None
    limit_original_w: float | None = None
    cap_requested_w: float | None = None
    cap_effective_w: float | None = None  # nvmlDeviceGetPowerManagementLimit after setting
    cap_enforced_w: float | None = None  # nvmlDeviceGetEnforcedPowerLimit: the one in force
    clocks_supported_mhz: tuple[int, int] | None = None
    clocks_requested_mhz: tuple[int, int] | None = None
    cap_applied: bool = False
    clocks_locked: bool = False
    restored: bool | None = None  # None: nothing to restore
    limit_after_restore_w: float | None = None
    restore_errors: list[str] = field(default_factory=list)
    handle: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(): it deep-copies every field, and a real NVML handle is a ctypes
        # pointer that cannot be copied (seen on an H100; the fake handle in tests could).
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "handle"}


class AppliedKnobs:
    """The knobs in force; `restore()` is idempotent and safe from any exit path."""

    def __init__(self, nvml: Any, gpus: list[GpuKnobs], cap_w: float | None, clocks: tuple[int, int] | None,
                 run_dir: Path | None, pending: Path | None):
        self.nvml = nvml
        self.gpus = gpus
        self.cap_w = cap_w
        self.clocks = clocks
        self.run_dir = run_dir
        self.pending = pending
        self.notes: list[str] = []
        self.restoring = False
        self.done = False
        self._lock = threading.RLock()

    @property
    def active(self) -> bool:
        return any(g.cap_applied or g.clocks_locked for g in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cap_w_requested": self.cap_w,
            "lock_clocks_mhz_requested": list(self.clocks) if self.clocks else None,
            "gpus": [g.to_dict() for g in self.gpus],
            "restored": all(g.restored is not False for g in self.gpus) if self.done else None,
            "notes": self.notes,
        }

    def write(self) -> None:
        if self.run_dir is None:
            return
        from mrw.trace import write_atomic

        write_atomic(self.run_dir / KNOBS_FILE, orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))

    def restore(self) -> None:
        """Put every GPU back. Never raises: failures are recorded per GPU and knob."""
        with self._lock:
            if self.done or self.restoring:
                return
            self.restoring = True
            nv = self.nvml
            try:
                for g in self.gpus:
                    if g.cap_applied:
                        try:
                            nv.nvmlDeviceSetPowerManagementLimit(g.handle, int(round(g.limit_original_w * 1000)))
                            g.cap_applied = False
                        except Exception as e:  # keep going: the other GPUs and knobs still get restored
                            g.restore_errors.append(f"power limit: {e}")
                    if g.clocks_locked:
                        try:
                            nv.nvmlDeviceResetGpuLockedClocks(g.handle)
                            g.clocks_locked = False
                        except Exception as e:
                            g.restore_errors.append(f"clock lock: {e}")
                    if g.cap_requested_w is not None or g.clocks_requested_mhz is not None:
                        try:
                            g.limit_after_restore_w = nv.nvmlDeviceGetPowerManagementLimit(g.handle) / 1000.0
                        except Exception:
                            pass
                        ok_cap = g.limit_original_w is None or g.limit_after_restore_w == g.limit_original_w
                        g.restored = not g.restore_errors and not g.cap_applied and not g.clocks_locked and ok_cap
                self.done = True
                if self.pending is not None and all(g.restored is not False for g in self.gpus):
                    self.pending.unlink(missing_ok=True)
                with contextlib.suppress(Exception):
                    self.write()
            finally:
                self.restoring = False
                with contextlib.suppress(Exception):
                    nvmlmod.shutdown(nv)


# ---------------------------------------------------------------------------------- guards

_GUARDED_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class _Guards:
    """Signal handlers + atexit for one AppliedKnobs; removed again on exit."""

    def __init__(self, knobs: AppliedKnobs):
        self.knobs = knobs
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        atexit.register(self.knobs.restore)
        if threading.current_thread() is not threading.main_thread():
            self.knobs.notes.append("not on the main thread: no signal handlers; finally/atexit restore only")
            return
        for s in _GUARDED_SIGNALS:
            self.previous[s] = signal.signal(s, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.knobs.restoring:  # a second signal must not interrupt the restore itself
            return
        raise Terminated(signum)

    def remove(self) -> None:
        for s, h in self.previous.items():
            with contextlib.suppress(Exception):
                signal.signal(s, h)
        atexit.unregister(self.knobs.restore)


# ---------------------------------------------------------------------------------- pending file


def _write_pending(path: Path, gpus: list[GpuKnobs]) -> None:
    from mrw.trace import write_atomic

    doc = {
        "pid": os.getpid(),
        "gpus": [
            {"uuid": g.uuid, "index": g.index, "limit_original_w": g.limit_original_w,
             "cap": g.cap_requested_w is not None, "clocks": g.clocks_requested_mhz is not None}
            for g in gpus
        ],
    }
    write_atomic(path, orjson.dumps(doc))


def restore_pending(nvml: Any = None, directory: Path | None = None, *, only_dead: bool = True) -> list[str]:
    """Restore GPUs left capped/locked by mrw processes that died without restoring (SIGKILL,
    power loss of the host process). Returns what was done, one line each."""
    directory = directory or pending_dir()
    if not directory.is_dir():
        return []
    files = sorted(directory.glob("*.json"))
    todo = []
    for f in files:
        try:
            doc = orjson.loads(f.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if only_dead and pid_alive(int(doc.get("pid", -1))) and int(doc.get("pid", -1)) != os.getpid():
            continue
        todo.append((f, doc))
    if not todo:
        return []
    nv = nvmlmod.load_nvml(nvml)
    nvmlmod.init(nv, "restoring GPU knobs")
    done = []
    try:
        for f, doc in todo:
            ok = True
            for g in doc.get("gpus", []):
                try:
                    h = nv.nvmlDeviceGetHandleByUUID(g["uuid"])
                    if g.get("cap") and g.get("limit_original_w") is not None:
                        nv.nvmlDeviceSetPowerManagementLimit(h, int(round(g["limit_original_w"] * 1000)))
                        done.append(f"GPU {g['uuid']}: power limit restored to {g['limit_original_w']:g} W (left by pid {doc.get('pid')})")
                    if g.get("clocks"):
                        nv.nvmlDeviceResetGpuLockedClocks(h)
                        done.append(f"GPU {g['uuid']}: SM clock lock reset (left by pid {doc.get('pid')})")
                except Exception as e:
                    ok = False
                    done.append(f"GPU {g.get('uuid')}: could not restore ({e})")
            if ok:
                f.unlink(missing_ok=True)
    finally:
        nvmlmod.shutdown(nv)
    return done


# ---------------------------------------------------------------------------------- apply


def _held_by_others(directory: Path, uuids: set[str]) -> list[tuple[int, str]]:
    out = []
    if not directory.is_dir():
        return out
    for f in directory.glob("*.json"):
        try:
            doc = orjson.loads(f.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        pid = int(doc.get("pid", -1))
        if pid == os.getpid() or not pid_alive(pid):
            continue
        for g in doc.get("gpus", []):
            if g.get("uuid") in uuids:
                out.append((pid, g["uuid"]))
    return out


def _validate(nv: Any, gpus: list[GpuKnobs], cap_w: float | None, clocks: tuple[int, int] | None) -> None:
    """Read ranges and originals; refuse anything out of range or not permitted. Changes nothing."""
    for g in gpus:
        h = g.handle
        try:
            g.limit_original_w = nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0
        except nv.NVMLError as e:
            raise nvmlmod.translate(nv, e, f"GPU {g.index} ({g.name}): reading the power limit") from e
        with contextlib.suppress(nv.NVMLError):
            g.limit_default_w = nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0
        if cap_w is not None:
            g.cap_requested_w = cap_w
            try:
                lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            except nv.NVMLError as e:
                raise KnobError(f"--cap: GPU {g.index} ({g.name}) does not report a power-limit range ({e}); it cannot be capped") from e
            g.limit_range_w = (lo / 1000.0, hi / 1000.0)
            if not lo <= cap_w * 1000 <= hi:
                raise KnobError(
                    f"--cap {cap_w:g} W is outside GPU {g.index} ({g.name})'s power-limit range "
                    f"[{lo / 1000:g}, {hi / 1000:g}] W; choose a value inside it"
                )
        if clocks is not None:
            g.clocks_requested_mhz = clocks
            try:
                mems = nv.nvmlDeviceGetSupportedMemoryClocks(h)
                sm = nv.nvmlDeviceGetSupportedGraphicsClocks(h, max(mems))
                g.clocks_supported_mhz = (min(sm), max(sm))
            except (nv.NVMLError, ValueError):
                g.clocks_supported_mhz = None
            if g.clocks_supported_mhz and not (g.clocks_supported_mhz[0] <= clocks[0] and clocks[1] <= g.clocks_supported_mhz[1]):
                lo_, hi_ = g.clocks_supported_mhz
                raise KnobError(
                    f"--lock-clocks {clocks[0]}-{clocks[1]} MHz is outside GPU {g.index} ({g.name})'s SM clocks [{lo_}, {hi_}] MHz"
                )
    if cap_w is not None:
        # Permission: setting a limit to the value it already has changes nothing but needs root.
        for g in gpus:
            try:
                nv.nvmlDeviceSetPowerManagementLimit(g.handle, int(round(g.limit_original_w * 1000)))
            except nv.NVMLError as e:
                if nvmlmod.nvml_error_code(nv, e) == nv.NVML_ERROR_NO_PERMISSION:
                    raise PermissionDeniedError(
                        f"--cap: setting GPU power limits needs root ({e}); run mrw as root, or set the cap yourself "
                        f"(sudo nvidia-smi -i {g.index} -pl {cap_w:g}) and run without --cap"
                    ) from e
                raise nvmlmod.translate(nv, e, f"--cap: GPU {g.index} ({g.name})") from e


def _apply(nv: Any, knobs: AppliedKnobs) -> None:
    for g in knobs.gpus:
        h = g.handle
        if knobs.cap_w is not None:
            try:
                # mark first: if the call succeeds and we are interrupted right after, restore still runs
                g.cap_applied = True
                nv.nvmlDeviceSetPowerManagementLimit(h, int(round(knobs.cap_w * 1000)))
            except nv.NVMLError as e:
                g.cap_applied = False
                raise nvmlmod.translate(nv, e, f"--cap {knobs.cap_w:g} W on GPU {g.index} ({g.name})") from e
            g.cap_effective_w = nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0
            with contextlib.suppress(nv.NVMLError):
                g.cap_enforced_w = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            if g.cap_effective_w != knobs.cap_w:
                knobs.notes.append(f"GPU {g.index}: asked for {knobs.cap_w:g} W, the driver set {g.cap_effective_w:g} W")
            if g.cap_enforced_w is not None and g.cap_enforced_w < g.cap_effective_w:
                knobs.notes.append(f"GPU {g.index}: another limit is in force: {g.cap_enforced_w:g} W enforced")
        if knobs.clocks is not None:
            try:
                g.clocks_locked = True
                nv.nvmlDeviceSetGpuLockedClocks(h, knobs.clocks[0], knobs.clocks[1])
            except nv.NVMLError as e:
                g.clocks_locked = False
                if nvmlmod.nvml_error_code(nv, e) == nv.NVML_ERROR_NO_PERMISSION:
                    raise PermissionDeniedError(
                        f"--lock-clocks: locking GPU clocks needs root ({e}); run mrw as root or use "
                        f"sudo nvidia-smi -i {g.index} -lgc {knobs.clocks[0]},{knobs.clocks[1]}"
                    ) from e
                raise nvmlmod.translate(nv, e, f"--lock-clocks on GPU {g.index} ({g.name})") from e


@contextlib.contextmanager
def apply_knobs(
    cap_w: float | None = None,
    lock_clocks: str | int | tuple[int, int] | None = None,
    *,
    run_dir: str | Path | None = None,
    nvml: Any = None,
    env: Mapping[str, str] | None = None,
    pending: Path | None = None,
) -> Iterator[AppliedKnobs]:
    """Apply the GPU knobs for the body and restore them on every way out (module docstring).

    With no knob requested this touches no GPU (and needs none)."""
    clocks = parse_clocks(lock_clocks)
    if cap_w is not None and cap_w <= 0:
        raise KnobError(f"--cap {cap_w:g} W: give a positive number of watts")
    rd = Path(run_dir) if run_dir is not None else None
    if cap_w is None and clocks is None:
        k = AppliedKnobs(None, [], None, None, rd, None)
        k.done = True
        yield k
        return
    pdir = pending.parent if pending is not None else pending_dir()
    nv = nvmlmod.load_nvml(nvml)
    recovered = restore_pending(nv, pdir)
    nvmlmod.init(nv, "--cap/--lock-clocks need NVML")
    try:
        visible, notes = nvmlmod.visible_gpus(nv, env)
        if not visible:
            raise NotSupportedError("--cap/--lock-clocks: no GPU is visible to this process")
        gpus = [GpuKnobs(g.cuda_index, g.uuid, g.name, handle=g.handle) for g in visible]
        held = _held_by_others(pdir, {g.uuid for g in gpus})
        if held:
            pid, uuid = held[0]
            raise KnobError(f"GPU {uuid} has knobs applied by another running mrw (pid {pid}); wait for it or stop it")
        _validate(nv, gpus, cap_w, clocks)
    except BaseException:
        nvmlmod.shutdown(nv)
        raise
    ppath = pending if pending is not None else pdir / f"{os.getpid()}.json"
    knobs = AppliedKnobs(nv, gpus, cap_w, clocks, rd, ppath)
    knobs.notes += recovered + notes
    guards = _Guards(knobs)
    try:
        ppath.parent.mkdir(parents=True, exist_ok=True)
        _write_pending(ppath, gpus)
        guards.install()
        _apply(nv, knobs)
        knobs.write()
        yield knobs
    except BaseException:
        knobs.restore()
        guards.remove()
        raise
    knobs.restore()
    guards.remove()
    failed = [g for g in knobs.gpus if g.restored is False]
    if failed:
        g = failed[0]
        raise KnobError(
            f"GPU {g.index} ({g.name}) could not be put back ({'; '.join(g.restore_errors) or 'limit reads back wrong'}): "
            f"run `mrw restore-knobs` as root, or sudo nvidia-smi -i {g.index} -pl {g.limit_original_w:g} / -rgc"
        )


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM/SIGHUP raise Terminated for the body (main thread only), so that every
    `finally` on the way out runs: meters write their files, engines are stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    prev = {s: signal.signal(s, handler) for s in _GUARDED_SIGNALS}
    try:
        yield
    finally:
        for s, h in prev.items():
            signal.signal(s, h)
