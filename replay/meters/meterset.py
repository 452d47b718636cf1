"""Several meters run together around a run: idle baseline, background timeline, marks.

    with MeterSet.for_run(run_dir, meters="nvml,rapl,process", baseline_s=5, engine_pid=pid) as m:
        t0 = m.t0            # time.perf_counter() of the run's origin (the replay's clock)
        ... replay ...
    # run_dir/energy.json and run_dir/power.csv are on disk, also after an exception.

Entering opens every meter (a meter that cannot measure here is recorded as unavailable with
its reason, and the run goes on), starts one background thread that samples all of them at
`period_s` into the timeline, measures `baseline_s` of idle, and marks the run's start. Every
mark reads every counter at once, so the energy of the baseline and of the run are counter
differences, not integrated samples. Leaving marks the end, stops the thread, and writes
energy.json atomically with the status (complete, or interrupted by what), even when the body
raised. The timeline is flushed about once a second, so a crash loses at most that.
"""

from __future__ import annotations

import csv
from array import array
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from mrw.errors import MrwError, NotSupportedError, PermissionDeniedError, UnknownNameError

from .base import TIMELINE_COLUMNS, Availability, Meter

ENERGY_FORMAT = "mrw-energy"
ENERGY_VERSION = 1
TIMELINE_FILE = "power.csv"
ENERGY_FILE = "energy.json"


def _registry() -> dict[str, Callable[..., Meter]]:
    from .nvml import NvmlMeter
    from .process import ProcessMeter
    from .rapl import RaplMeter

    return {"nvml": NvmlMeter, "rapl": RaplMeter, "process": ProcessMeter}


METER_NAMES = ("nvml", "rapl", "process")


def parse_meter_spec(spec: str | Iterable[str] | None) -> list[str]:
    """'nvml,rapl,process' | 'none' | '' -> names, validated."""
    if spec is None:
        return list(METER_NAMES)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names in ([], ["none"]):
        return []
    bad = [n for n in names if n not in METER_NAMES]
    if bad or "none" in names:
        raise UnknownNameError(f"unknown meter {', '.join(bad) or 'none (alone only)'}: choose from {', '.join(METER_NAMES)} or none")
    return list(dict.fromkeys(names))


@dataclass(slots=True)
class MeteringOptions:
    """What `mrw replay` meters and which GPU knobs it applies (all off: `MeteringOptions.off()`)."""

    meters: str = "nvml,rapl,process"
    baseline_s: float = 3.0
    period_s: float = 0.05
    cap_w: float | None = None
    lock_clocks: str | None = None

    @classmethod
    def off(cls) -> "MeteringOptions":
        return cls(meters="none", baseline_s=0.0)

    @property
    def enabled(self) -> bool:
        return bool(parse_meter_spec(self.meters))

    def to_dict(self) -> dict[str, Any]:
        return {"meters": parse_meter_spec(self.meters), "baseline_s": self.baseline_s, "period_s": self.period_s,
                "cap_w": self.cap_w, "lock_clocks": self.lock_clocks}


@dataclass(slots=True)
class Mark:
    label: str
    t: float  # the MeterSet's clock (time.perf_counter)
    counters: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # meters whose read failed at this mark


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e12 else repr(v)
    return "" if v is None else v


class MeterSet:
    """Runs meters together; see the module docstring."""

    def __init__(
        self,
        meters: list[Meter],
        run_dir: str | Path | None = None,
        *,
        period_s: float = 0.05,
        baseline_s: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        requested: list[str] | None = None,
    ):
        if not 0.005 <= period_s <= 10:
            raise MrwError(f"sampling period {period_s} s is out of range [0.005, 10] s")
        if baseline_s < 0:
            raise MrwError(f"baseline {baseline_s} s must be >= 0")
        self.meters_all = meters
        self.meters: list[Meter] = []  # the ones that opened
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.period_s = period_s
        self.baseline_s = baseline_s
        self.clock = clock
        self.requested = requested if requested is not None else [m.name for m in meters]
        self.availability: dict[str, Availability] = {}
        self.marks: dict[str, Mark] = {}
        self.t0: float | None = None  # clock() at the run's start; set when the baseline ends
        self.t0_unix: float | None = None
        self.status = "running"
        self.extra: dict[str, Any] = {}  # callers may add sections to energy.json (e.g. knobs)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._buf: list[dict[str, Any]] = []  # rows waiting for t0 / the next flush
        self._buf_lock = threading.Lock()
        self._file = None
        self._writer: csv.DictWriter | None = None
        self._ticks = array("d")  # 8 bytes a tick: a day at 20 Hz is 14 MB
        self._costs = array("d")
        self._errors: list[str] = []
        self._channel_domain: dict[str, tuple[str, str]] = {}
        self._started_at: str | None = None
        self._describe: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_run(
        cls,
        run_dir: str | Path | None,
        *,
        meters: str | Iterable[str] | None = None,
        baseline_s: float = 5.0,
        period_s: float = 0.05,
        engine_pid: int | None = None,
        nvml: Any = None,
        rapl_root: str | Path | None = None,
        env: Any = None,
    ) -> "MeterSet":
        """The meters named in `meters` ('nvml,rapl,process' by default, 'none' for none)."""
        names = parse_meter_spec(meters)
        reg = _registry()
        ms: list[Meter] = []
        for n in names:
            if n == "nvml":
                ms.append(reg[n](nvml=nvml, env=env))
            elif n == "rapl":
                ms.append(reg[n](**({"root": rapl_root} if rapl_root is not None else {})))
            else:
                ms.append(reg[n](engine_pid=engine_pid))
        return cls(ms, run_dir, period_s=period_s, baseline_s=baseline_s, requested=names)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "MeterSet":
        self.start()
        try:
            self.measure_baseline()
        except BaseException as e:
            self.stop(e)
            raise
        return self

    def __exit__(self, et, ev, tb) -> None:
        self.stop(ev)

    def start(self) -> None:
        """Open every meter (recording why not, where not) and start the sampler thread."""
        self._started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for m in self.meters_all:
            try:
                m.open()
            except (NotSupportedError, PermissionDeniedError) as e:
                kind = "permission" if isinstance(e, PermissionDeniedError) else "not_supported"
                self.availability[m.name] = Availability(m.name, False, str(e), {"kind": kind})
                continue
            self.meters.append(m)
            try:
                self._describe[m.name] = m.describe()  # while the library is open: limits in force for the run
            except Exception as e:
                self._describe[m.name] = {"error": str(e)}
            chans = m.channels()
            for c in chans:
                self._channel_domain[c.name] = (c.domain, c.unit)
            self.availability[m.name] = Availability(m.name, True, None, {"channels": [c.name for c in chans]})
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / TIMELINE_FILE, "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=TIMELINE_COLUMNS, extrasaction="ignore")
            self._writer.writeheader()
        if self.meters:
            self._thread = threading.Thread(target=self._loop, name="mrw-meters", daemon=True)
            self._thread.start()

    def measure_baseline(self) -> None:
        """Sit idle for baseline_s while sampling, then mark the run's start (t0)."""
        if self._baseline_wanted():
            self.mark("baseline_start")
            deadline = self.clock() + self.baseline_s
            while (left := deadline - self.clock()) > 0:
                time.sleep(min(left, 0.1))
        self.mark("run_start")

    async def measure_baseline_async(self) -> None:
        """measure_baseline for an event loop: the idle wait yields instead of blocking."""
        import asyncio

        if self._baseline_wanted():
            self.mark("baseline_start")
            await asyncio.sleep(self.baseline_s)
        self.mark("run_start")

    def _baseline_wanted(self) -> bool:
        """An idle baseline only where something measures energy: without NVML or RAPL it
        would only cost the run time (CI machines), so it is skipped and the skip recorded."""
        if self.baseline_s <= 0:
            return False
        if any(u == "J" for _, u in self._channel_domain.values()):
            return True
        self._error(f"idle baseline of {self.baseline_s:g} s skipped: no energy source available")
        return False

    def mark(self, label: str) -> float:
        """Read every counter now; returns the time relative to t0 (or 0 for the run start)."""
        counters: dict[str, float] = {}
        failed: set[str] = set()

        def read(m: Meter) -> None:
            try:
                counters.update(m.read(refresh=True) if m.name == "process" else m.read())
            except Exception as e:  # a failed read loses this meter's mark, never the run
                failed.add(m.name)
                self._error(f"{m.name}: read at mark {label!r} failed: {e}")

        # CPU-time meters first (walking the process table takes ms), then the energy counters
        # inside the timing bracket, so the mark's time is that of the energy readings.
        slow = [m for m in self.meters if m.name == "process"]
        fast = [m for m in self.meters if m.name != "process"]
        for m in slow:
            read(m)
        t = self.clock()
        for m in fast:
            read(m)
        t = (t + self.clock()) / 2
        self.marks[label] = Mark(label, t, counters, failed)
        if label == "run_start":
            self.t0 = t
            self.t0_unix = time.time() - (self.clock() - t)
        return t - (self.t0 if self.t0 is not None else t)

    def set_engine_pid(self, pid: int | None) -> None:
        for m in self.meters:
            if hasattr(m, "set_engine_pid"):
                m.set_engine_pid(pid)  # type: ignore[attr-defined]
                self._describe[m.name] = m.describe()

    def stop(self, exc: BaseException | None = None, status: str | None = None) -> None:
        """Mark the end, stop sampling, close meters and write energy.json. Idempotent.
        `status` overrides the one derived from `exc` (e.g. a replay stopped gracefully)."""
        if self.status != "running":
            return
        if self.t0 is None:  # interrupted during the baseline: the run never started
            self.mark("run_start")
        self.mark("run_end")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 + self.period_s * 2)
        self._flush(final=True)
        for m in self.meters:
            try:
                m.close()
            except Exception:
                pass
        if exc is None:
            self.status = "complete"
        elif isinstance(exc, KeyboardInterrupt):
            self.status = "interrupted"
        elif isinstance(exc, SystemExit):
            self.status = f"interrupted ({exc})" if str(exc) else "interrupted"
        else:
            self.status = f"failed: {type(exc).__name__}: {exc}".strip()
        if status is not None:
            self.status = status
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.run_dir is not None:
            self.write()

    # ------------------------------------------------------------------ sampler

    def _loop(self) -> None:
        period = self.period_s
        nxt = self.clock()
        last_flush = nxt
        last_sample: dict[str, float] = {}
        while not self._stop.is_set():
            t = self.clock()
            rows: list[dict[str, Any]] = []
            for m in self.meters:
                per = m.sample_period_s
                if per is not None and t - last_sample.get(m.name, -1e18) < per - period / 2:
                    continue
                last_sample[m.name] = t
                try:
                    rows.extend(m.sample(t))
                except Exception as e:
                    self._error(f"{m.name}: sample failed: {e}")
            cost = self.clock() - t
            self._ticks.append(t)
            self._costs.append(cost)
            with self._buf_lock:
                self._buf.extend(rows)
            if t - last_flush >= 1.0:
                self._flush()
                last_flush = t
            nxt += period
            now = self.clock()
            if nxt < now:  # fell behind (slow NVML, loaded machine): skip, don't burst
                nxt = now + period - ((now - nxt) % period)
            self._stop.wait(max(0.0, nxt - now))

    def _flush(self, final: bool = False) -> None:
        if self._writer is None:
            with self._buf_lock:
                if final or self.t0 is not None:
                    self._buf.clear()
            return
        if self.t0 is None and not final:
            return  # baseline rows wait until the origin is known
        origin = self.t0 if self.t0 is not None else (self._ticks[0] if self._ticks else 0.0)
        with self._buf_lock:
            rows, self._buf = self._buf, []
        for r in rows:
            r = dict(r)
            r["t_s"] = r["t_s"] - origin
            self._writer.writerow({k: _fmt(v) for k, v in r.items()})
        if self._file is not None:
            self._file.flush()

    def _error(self, msg: str) -> None:
        if msg not in self._errors and len(self._errors) < 50:
            self._errors.append(msg)

    # ------------------------------------------------------------------ results

    def delta(self, a: str, b: str) -> dict[str, float]:
        """Counter differences between two marks, per channel."""
        ma, mb = self.marks[a], self.marks[b]
        # A channel that appeared between the marks (the engine's CPU time once its pid is known)
        # counts from zero: every counter starts at 0 when its meter begins tracking it. A channel
        # whose read failed at the first mark has no difference.
        lost = {ch for m in self.meters if m.name in ma.failed for ch in (c.name for c in m.channels())}
        return {k: mb.counters[k] - ma.counters.get(k, 0.0) for k in mb.counters if k not in lost}

    def by_domain(self, d: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for ch, v in d.items():
            dom = self._channel_domain.get(ch, ("?", "?"))[0]
            out[dom] = out.get(dom, 0.0) + v
        return out

    def _window(self, a: str, b: str) -> dict[str, Any]:
        dur = self.marks[b].t - self.marks[a].t
        per = self.delta(a, b)
        dom = self.by_domain(per)
        energy = {k: v for k, v in dom.items() if self._unit(k) == "J"}
        cpu = {k: v for k, v in dom.items() if self._unit(k) == "s"}
        return {
            "start_s": self.marks[a].t - (self.t0 or 0.0),
            "duration_s": dur,
            "energy_j": energy,
            "avg_power_w": {k: v / dur for k, v in energy.items()} if dur > 0 else {},
            "cpu_s": cpu,
            "per_channel": per,
        }

    def _unit(self, domain: str) -> str:
        for d, u in self._channel_domain.values():
            if d == domain:
                return u
        return "J"

    def sampler_stats(self) -> dict[str, Any]:
        ticks = self._ticks
        gaps = [ticks[i + 1] - ticks[i] for i in range(len(ticks) - 1)]
        if not gaps:
            return {"ticks": len(self._ticks)}
        gaps_s = sorted(gaps)
        return {
            "ticks": len(self._ticks),
            "period_median_s": statistics.median(gaps_s),
            "period_p99_s": gaps_s[min(len(gaps_s) - 1, int(0.99 * len(gaps_s)))],
            "period_max_s": gaps_s[-1],
            "tick_cost_mean_ms": 1000 * statistics.fmean(self._costs),
            "tick_cost_max_ms": 1000 * max(self._costs),
        }

    def to_dict(self) -> dict[str, Any]:
        """energy.json as the meters know it; analysis.energy.finalize adds windows/attribution."""
        t0 = self.t0 or 0.0
        d: dict[str, Any] = {
            "format": ENERGY_FORMAT,
            "version": ENERGY_VERSION,
            "status": self.status,
            "started_at": self._started_at,
            "clock": "seconds since the run's start (time.perf_counter, as the replay's clock); the baseline is at negative times",
            "t0_perf_counter": self.t0,
            "t0_unix": self.t0_unix,
            "meters_requested": self.requested,
            "sampling": {"period_s": self.period_s, **self.sampler_stats()},
            "timeline_file": TIMELINE_FILE if self.run_dir is not None else None,
            "sources": {k: v.to_dict() for k, v in self.availability.items()},
            "devices": self._describe,
            "channels": {k: {"domain": d_, "unit": u} for k, (d_, u) in self._channel_domain.items()},
            "marks": {k: {"t_s": m.t - t0, "counters": m.counters} for k, m in self.marks.items()},
            "notes": [n for m in self.meters for n in m.notes()] + self._errors,
            "baseline_s_requested": self.baseline_s,
        }
        if "baseline_start" in self.marks:
            d["baseline"] = self._window("baseline_start", "run_start")
        if "run_end" in self.marks:
            d["run"] = self._window("run_start", "run_end")
        d.update(self.extra)
        return d

    def write(self) -> Path:
        from mrw.trace import write_atomic

        assert self.run_dir is not None
        p = self.run_dir / ENERGY_FILE
        write_atomic(p, orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        return p
