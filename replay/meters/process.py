"""CPU time of the harness, of the engine's process tree and of the whole machine (psutil).

RAPL measures the CPU package as a whole: the replay harness, the engine's tokenizer and
scheduler threads and everything else on the machine are in one number. CPU seconds per
process tree are what lets a report separate them: the harness's share of the busy CPU time
bounds how much of the package energy the measuring itself cost. Counters:

- `process:harness`: user+system seconds of this Python process (all its threads, the
  sampler included);
- `process:engine`: the same summed over the engine process and all its descendants, each
  process's last reading kept after it exits so the sum never drops;
- `process:system`: busy seconds of all CPUs (total minus idle and iowait).

A process that starts and is reaped between two readings (every 50 ms) is not seen.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from mrw.errors import NotSupportedError

from .base import Channel, Meter


def _busy(ct: Any) -> float:
    total = sum(ct)
    return total - getattr(ct, "idle", 0.0) - getattr(ct, "iowait", 0.0)


class ProcessMeter(Meter):
    name = "process"

    def __init__(self, engine_pid: int | None = None, harness_pid: int | None = None):
        self.harness_pid = harness_pid or os.getpid()
        self.engine_pid = engine_pid
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[float, float]] = {}  # pid -> (create_time, cpu seconds)
        self._start: dict[str, float] = {}
        self._notes: list[str] = []
        self._engine_start: float = 0.0

    def open(self) -> None:
        try:
            import psutil
        except ImportError as e:  # pragma: no cover - psutil is a core dependency
            raise NotSupportedError("process meter: psutil is not installed") from e
        self.psutil = psutil
        self._harness = psutil.Process(self.harness_pid)
        self._start = {"harness": self._harness_s(), "system": _busy(psutil.cpu_times())}
        with self._lock:
            self._engine_start = self._engine_s_locked()

    def set_engine_pid(self, pid: int | None) -> None:
        """Follow this process tree from now on (e.g. once the launcher has started vLLM)."""
        with self._lock:
            self.engine_pid = pid
            self._seen.clear()
            self._engine_start = self._engine_s_locked()

    def channels(self) -> list[Channel]:
        return [
            Channel("process:harness", "harness_cpu", "s", "harness"),
            Channel("process:engine", "engine_cpu", "s", "engine"),
            Channel("process:system", "system_cpu", "s", "system"),
        ]

    def _harness_s(self) -> float:
        t = self._harness.cpu_times()
        return t.user + t.system

    def _engine_s_locked(self) -> float:
        if self.engine_pid is None:
            return 0.0
        ps = self.psutil
        try:
            root = ps.Process(self.engine_pid)
            procs = [root] + root.children(recursive=True)
        except (ps.NoSuchProcess, ps.ZombieProcess):
            procs = []
        except ps.AccessDenied:
            self._note(f"process meter: no access to engine pid {self.engine_pid}")
            procs = []
        for p in procs:
            try:
                with p.oneshot():
                    ct, created = p.cpu_times(), p.create_time()
            except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
                continue
            prev = self._seen.get(p.pid)
            if prev is not None and prev[0] != created:  # pid reused by a new process
                self._seen[-len(self._seen) - 1] = prev
            self._seen[p.pid] = (created, ct.user + ct.system)
        return sum(v for _, v in self._seen.values())

    def read(self) -> dict[str, float]:
        ps = self.psutil
        with self._lock:
            eng = self._engine_s_locked() - self._engine_start if self.engine_pid is not None else None
        out = {
            "process:harness": self._harness_s() - self._start["harness"],
            "process:system": _busy(ps.cpu_times()) - self._start["system"],
        }
        if eng is not None:
            out["process:engine"] = eng
        return out

    def sample(self, t: float) -> list[dict[str, Any]]:
        vals = self.read()
        return [
            {"t_s": t, "source": "process", "device": ch.device, "cpu_s": vals[ch.name]}
            for ch in self.channels()
            if ch.name in vals
        ]

    def _note(self, msg: str) -> None:
        if msg not in self._notes:
            self._notes.append(msg)

    def notes(self) -> list[str]:
        n = list(self._notes)
        if self.engine_pid is None:
            n.append("process meter: no engine process known (engine not launched by mrw); engine CPU time not measured")
        return n

    def describe(self) -> dict[str, Any]:
        return {"harness_pid": self.harness_pid, "engine_pid": self.engine_pid, "cpus": os.cpu_count()}
