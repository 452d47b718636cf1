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
import time
from typing import Any

from mrw.errors import NotSupportedError

from .base import Channel, Meter


def _busy(ct: Any) -> float:
    total = sum(ct)
    return total - getattr(ct, "idle", 0.0) - getattr(ct, "iowait", 0.0)


class ProcessMeter(Meter):
    name = "process"
    # Walking the process table for the engine's tree is the costly part (ms per walk with a
    # few hundred processes): it happens every TREE_REFRESH_S and at every mark. Reading the
    # engine's known processes' CPU times is cheap (~20 us each) and happens every tick, so a
    # process that exits loses at most one tick of CPU time. Timeline rows (and the harness
    # and system readings): once per ROW_PERIOD_S.
    TREE_REFRESH_S = 5.0
    ROW_PERIOD_S = 1.0

    def __init__(self, engine_pid: int | None = None, harness_pid: int | None = None):
        self.harness_pid = harness_pid or os.getpid()
        self.engine_pid = engine_pid
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[float, float]] = {}  # pid -> (create_time, cpu seconds)
        self._gone: float = 0.0  # last readings of processes that exited or whose pid was reused
        self._procs: list[Any] = []
        self._tree_at = -1e18
        self._start: dict[str, float] = {}
        self._notes: list[str] = []
        self._engine_start: float = 0.0
        self._row_at = -1e18

    def open(self) -> None:
        try:
            import psutil
        except ImportError as e:  # pragma: no cover - psutil is a core dependency
            raise NotSupportedError("process meter: psutil is not installed") from e
        self.psutil = psutil
        self._harness = psutil.Process(self.harness_pid)
        self._start = {"harness": self._harness_s(), "system": _busy(psutil.cpu_times())}
        with self._lock:
            self._engine_start = self._engine_s_locked(refresh=True)

    def set_engine_pid(self, pid: int | None) -> None:
        """Follow this process tree from now on (e.g. once the launcher has started vLLM)."""
        with self._lock:
            self.engine_pid = pid
            self._seen.clear()
            self._gone = 0.0
            self._procs = []
            self._engine_start = self._engine_s_locked(refresh=True)

    def channels(self) -> list[Channel]:
        return [
            Channel("process:harness", "harness_cpu", "s", "harness"),
            Channel("process:engine", "engine_cpu", "s", "engine"),
            Channel("process:system", "system_cpu", "s", "system"),
        ]

    def _harness_s(self) -> float:
        t = self._harness.cpu_times()
        return t.user + t.system

    def _engine_s_locked(self, refresh: bool = False) -> float:
        if self.engine_pid is None:
            return 0.0
        ps = self.psutil
        now = time.monotonic()
        if refresh or now - self._tree_at >= self.TREE_REFRESH_S or not self._procs:
            self._tree_at = now
            try:
                root = ps.Process(self.engine_pid)
                self._procs = [root] + root.children(recursive=True)
            except (ps.NoSuchProcess, ps.ZombieProcess):
                self._procs = []
            except ps.AccessDenied:
                self._note(f"process meter: no access to engine pid {self.engine_pid}")
                self._procs = []
        alive = []
        for p in self._procs:
            try:
                ct = p.cpu_times()
                created = p.create_time()  # cached by psutil after the first call
            except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
                continue
            alive.append(p)
            prev = self._seen.get(p.pid)
            if prev is not None and prev[0] != created:  # pid reused by a new process
                self._gone += prev[1]
            self._seen[p.pid] = (created, ct.user + ct.system)
        self._procs = alive
        return self._gone + sum(v for _, v in self._seen.values())

    def read(self, refresh: bool = False) -> dict[str, float]:
        ps = self.psutil
        with self._lock:
            eng = self._engine_s_locked(refresh=refresh) - self._engine_start if self.engine_pid is not None else None
        out = {
            "process:harness": self._harness_s() - self._start["harness"],
            "process:system": _busy(ps.cpu_times()) - self._start["system"],
        }
        if eng is not None:
            out["process:engine"] = eng
        return out

    def sample(self, t: float) -> list[dict[str, Any]]:
        if t - self._row_at < self.ROW_PERIOD_S:
            # Between rows only the engine's processes are read: one that exits takes its CPU
            # time with it. The harness and the system totals are cumulative counters that
            # lose nothing by being read once per row.
            if self.engine_pid is not None:
                with self._lock:
                    self._engine_s_locked()
            return []
        vals = self.read()
        self._row_at = t
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


def pid_listening_at(url: str) -> int | None:
    """The local process accepting connections at `url`'s port (an engine mrw attached to),
    or None when the host is not this machine or the socket's owner cannot be seen."""
    import socket
    from urllib.parse import urlsplit

    import psutil

    u = urlsplit(url if "://" in url else f"http://{url}")
    host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()}
    try:
        local |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    if host not in local:
        return None
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    return None
