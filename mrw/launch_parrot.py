"""Parrot (microsoft/ParrotServe) launched by mrw: vLLM, the mrw backend proxy, Parrot's serve
core and its OpenAI-type engine, started in that order, health-checked with timeouts and
progress, logged into the run directory, and stopped (each in its own process group) on
success, error and Ctrl-C.

    vLLM  <--  mrw.backend_proxy  <--  Parrot engine (openai, "chat")  <--  Parrot serve core  <--  mrw

mrw talks to Parrot over HTTP only and never imports it: Parrot runs in child processes from
its source tree (MRW_PARROT_SRC, put on PYTHONPATH) or from an installed `parrot` package.
Its engine module imports Parrot's builtin CUDA engine at start-up, which needs xformers and a
GPU, so the engine is started through a tiny bootstrap that stubs that one module before
running `parrot.engine.http_server` with runpy; only the OpenAI-type engine is ever used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from mrw.errors import LaunchError
from mrw.launch import ChildProcess, VllmOptions, VllmServer
from mrw.models import ModelSpec

PARROT_SRC_ENV = "MRW_PARROT_SRC"  # a ParrotServe checkout (the directory holding parrot/)
PARROT_PYTHON_ENV = "MRW_PARROT_PYTHON"  # the interpreter with Parrot's deps; default: this one

INSTALL_HINT = (
    "clone https://github.com/microsoft/ParrotServe and set MRW_PARROT_SRC=/path/to/ParrotServe "
    "(its setup.py builds CUDA kernels, so `pip install -e .` there works on a CUDA machine only), "
    "then install its Python deps: pip install 'mrw[parrot]'"
)

# Runs Parrot's engine server with the builtin (CUDA) engine module stubbed out. Module names
# are strings on purpose: mrw holds no import of Parrot.
ENGINE_BOOTSTRAP = """\
import runpy, sys, types
name = "parrot.engine.builtin.builtin_engine"
stub = types.ModuleType(name)
class BuiltinEngine:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("mrw stubbed Parrot's builtin engine (CUDA only); use engine_type 'openai'")
stub.BuiltinEngine = BuiltinEngine
sys.modules[name] = stub
runpy.run_module("parrot.engine.http_server", run_name="__main__", alter_sys=True)
"""

# Locates Parrot without importing it (its __init__ pulls in torch and transformers: tens of
# seconds on a busy machine).
FIND_PARROT = (
    "import importlib.machinery, os, sys\n"
    "spec = importlib.machinery.PathFinder.find_spec('parrot')\n"
    "locs = list(spec.submodule_search_locations or []) if spec else []\n"
    "found = [d for d in locs if os.path.isfile(os.path.join(d, 'serve', 'http_server.py'))]\n"
    "print(found[0] if found else '')\n"
    "sys.exit(0 if found else 3)\n"
)


@dataclass(slots=True)
class ParrotLaunchOptions:
    """Knobs of the Parrot side. Scheduler switches are Parrot's GlobalScheduler config."""

    core_port: int = 9000
    engine_port: int | None = None  # default core_port + 1
    proxy_port: int | None = None  # default core_port + 2
    app_fifo: bool = True  # deeper chains of an app first (Parrot's DAG-aware order)
    graph_group: bool = True  # co-schedule parallel chains feeding one consumer
    ctx_group: bool = True  # co-schedule tasks sharing a prefix context
    ctx_aware: bool = True  # prefer the engine already holding a task's prefix
    max_queue_size: int = 4096
    session_life_span: int = 600  # s without access before Parrot drops a session
    tasks_capacity: int = 256  # tasks one engine may hold (set to vLLM's max_num_seqs when known)
    force_length: bool = True  # the proxy injects ignore_eos + min_tokens
    release_mode: bool = True  # Parrot's release mode: no DEBUG/INFO logging (errors still logged)
    startup_timeout_s: float = 300.0

    def core_config(self, host: str) -> dict[str, Any]:
        return {
            "host": host,
            "port": self.core_port,
            "max_sessions_num": 4096,
            "max_engines_num": 64,
            "session_life_span": self.session_life_span,
            "engine_heartbeat_timeout": 600,
            "constant_prefix_var_timeout": 600,
            "global_scheduler": {
                "app_fifo": self.app_fifo,
                "graph_group": self.graph_group,
                "ctx_group": self.ctx_group,
                "ctx_aware": self.ctx_aware,
                "max_queue_size": self.max_queue_size,
            },
        }

    def engine_config(self, host: str, model_name: str, backend_v1: str) -> dict[str, Any]:
        return {
            "model": model_name,
            "engine_name": "mrw-openai-0",
            "host": host,
            "port": self.engine_port or self.core_port + 1,
            "engine_type": "openai",
            "random_seed": 0,
            "tasks_capacity": self.tasks_capacity,
            # "chat": Parrot's "completion" endpoint crashes its engine and core.
            "instance": {"api_key": "EMPTY", "api_endpoint": "chat", "base_url": backend_v1},
            "scheduler": {"max_batch_size": 256, "max_num_batched_tokens": 99999999, "max_total_tokens": 99999999},
            "serve_core": {"host": host, "port": self.core_port},
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parrot_python() -> str:
    return os.environ.get(PARROT_PYTHON_ENV) or sys.executable


def parrot_env(src: str | None = None) -> dict[str, str]:
    """Environment of Parrot's processes. SIMULATE_NETWORK_LATENCY_PRT must be set (unset, every
    submit fails) and 0 (1 adds a sampled ~0.25 s sleep to every submit)."""
    env = dict(os.environ)
    src = src if src is not None else os.environ.get(PARROT_SRC_ENV)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), *filter(None, [env.get("PYTHONPATH")])])
    env["SIMULATE_NETWORK_LATENCY_PRT"] = "0"
    env["SIMULATE_NETWORK_LATENCY_FS"] = "0"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def find_parrot(src: str | None = None) -> Path:
    """Where Parrot's `parrot` package is, as Parrot's interpreter sees it; LaunchError saying
    how to install it if it is not there."""
    src = src if src is not None else os.environ.get(PARROT_SRC_ENV)
    if src and not (Path(src) / "parrot" / "serve" / "http_server.py").is_file():
        raise LaunchError(f"{PARROT_SRC_ENV}={src} holds no parrot/serve/http_server.py; point it at a ParrotServe checkout")
    try:
        r = subprocess.run([parrot_python(), "-c", FIND_PARROT], env=parrot_env(src), capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"cannot run Parrot's Python {parrot_python()} ({e}); set {PARROT_PYTHON_ENV}") from None
    if r.returncode != 0:
        raise LaunchError(f"Parrot (microsoft/ParrotServe) is not importable: {INSTALL_HINT}")
    return Path(r.stdout.strip())


def parrot_commit(pkg_dir: Path) -> str | None:
    """The git commit of the Parrot checkout, when it is one (for run.json)."""
    try:
        r = subprocess.run(["git", "-C", str(pkg_dir.parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


class ParrotStack:
    """vLLM + mrw backend proxy + Parrot serve core + Parrot OpenAI-type engine.

    Use as a context manager; `core_url` and `proxy_url` are what ParrotEngine needs. Give
    `backend_url` to put Parrot in front of an already running OpenAI-compatible server instead
    of launching vLLM (the proxy still forces lengths; it needs vLLM's ignore_eos/min_tokens).
    """

    def __init__(
        self,
        run_dir: Path,
        model: ModelSpec | None = None,
        vllm_options: VllmOptions | None = None,
        options: ParrotLaunchOptions | None = None,
        *,
        backend_url: str | None = None,
        served_model: str | None = None,
        vllm_port: int | None = None,
        host: str = "127.0.0.1",
        parrot_src: str | None = None,
        quiet: bool = False,
    ):
        if backend_url is None and model is None:
            raise LaunchError("ParrotStack needs a model to launch vLLM with, or backend_url of a running server")
        self.run_dir = Path(run_dir).resolve()  # children run there: paths must not be relative
        self.model = model
        self.vllm_options = vllm_options or VllmOptions()
        self.opt = options or ParrotLaunchOptions()
        if self.vllm_options.max_num_seqs and options is None:
            self.opt.tasks_capacity = self.vllm_options.max_num_seqs
        self.backend_url = backend_url.rstrip("/").removesuffix("/v1") if backend_url else None
        self.served_model = served_model or (model.name if model else None)
        self.vllm_port = vllm_port
        self.host = host
        self.parrot_src = parrot_src
        self.quiet = quiet
        self.vllm: VllmServer | None = None
        self.children: list[ChildProcess] = []
        self.parrot_dir: Path | None = None
        self.startup_s: dict[str, float] = {}
        self.cpu_s_at_start: dict[str, float | None] = {}

    # ------------------------------------------------------------------ urls

    @property
    def core_url(self) -> str:
        return f"http://{self.host}:{self.opt.core_port}"

    @property
    def engine_url(self) -> str:
        return f"http://{self.host}:{self.opt.engine_port or self.opt.core_port + 1}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.opt.proxy_port or self.opt.core_port + 2}"

    @property
    def backend_root(self) -> str:
        if self.vllm is not None:
            return self.vllm.root_url
        assert self.backend_url is not None
        return self.backend_url

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "ParrotStack":
        self.parrot_dir = find_parrot(self.parrot_src)  # before anything is started
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.backend_url is None:
                t = time.monotonic()
                self.vllm = VllmServer(
                    self.model, self.vllm_options, host=self.host, port=self.vllm_port,
                    log_path=self.run_dir / "vllm.log", quiet=self.quiet,
                ).start()  # fmt: skip
                self.startup_s["vllm"] = time.monotonic() - t
            self._start_proxy()
            self._start_core()
            self._start_engine()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], healthy: Callable[[httpx.Client], bool], what: str) -> None:
        for port in self._ports_of(name):
            if _port_busy(self.host, port):
                raise LaunchError(f"port {port} on {self.host} is taken, so {what} cannot start there; stop what holds it or choose other ports")
        child = ChildProcess(name, argv, env, self.run_dir / f"{name}.log", cwd=self.run_dir)
        self.children.append(child)
        t0 = time.monotonic()
        child.start()
        from rich.console import Console

        console = Console(stderr=True, quiet=self.quiet)
        deadline = t0 + self.opt.startup_timeout_s
        with console.status("") as status, httpx.Client(timeout=2.0) as client:
            while True:
                status.update(f"starting {what}: {time.monotonic() - t0:.0f} s")
                code = child.exit_code()
                if code is not None:
                    raise LaunchError(f"{what} exited with code {code} while starting: {child.last_log_line()} (log: {child.log_path})")
                try:
                    if healthy(client):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"{what} did not become healthy within {self.opt.startup_timeout_s:.0f} s "
                        f"(last log line: {child.last_log_line()}); see {child.log_path}"
                    )
                time.sleep(0.25)
        self.startup_s[name] = time.monotonic() - t0
        self.cpu_s_at_start[name] = child.cpu_seconds()

    def _ports_of(self, name: str) -> list[int]:
        return {
            "parrot_proxy": [self.opt.proxy_port or self.opt.core_port + 2],
            "parrot_core": [self.opt.core_port],
            "parrot_engine": [self.opt.engine_port or self.opt.core_port + 1],
        }[name]

    def _start_proxy(self) -> None:
        port = self.opt.proxy_port or self.opt.core_port + 2
        argv = [sys.executable, "-m", "mrw.backend_proxy", "--backend", self.backend_root, "--host", self.host,
                "--port", str(port), "--log", str(self.run_dir / "parrot_proxy_requests.jsonl")]  # fmt: skip
        if not self.opt.force_length:
            argv.append("--no-force-length")
        self._spawn(
            "parrot_proxy", argv, dict(os.environ, PYTHONUNBUFFERED="1"),
            lambda c: c.get(f"{self.proxy_url}/health").status_code == 200, f"the mrw backend proxy on port {port}",
        )  # fmt: skip

    def _start_core(self) -> None:
        cfg = self.run_dir / "parrot_core.json"
        cfg.write_text(json.dumps(self.opt.core_config(self.host), indent=2))
        argv = [parrot_python(), "-m", "parrot.serve.http_server", "--config_path", str(cfg)]
        if self.opt.release_mode:
            argv.append("--release_mode")
        # The core has no health endpoint; deleting session -1 answers Parrot's error shape.
        probe = {"session_id": -1, "session_auth": "1"}
        self._spawn(
            "parrot_core", argv, parrot_env(self.parrot_src),
            lambda c: "ParrotError" in c.request("DELETE", f"{self.core_url}/v1/session/-1", json=probe).text,
            f"Parrot's serve core on port {self.opt.core_port}",
        )  # fmt: skip

    def _start_engine(self) -> None:
        cfg = self.run_dir / "parrot_engine.json"
        cfg.write_text(json.dumps(self.opt.engine_config(self.host, self.served_model, f"{self.proxy_url}/v1"), indent=2))
        argv = [parrot_python(), "-c", ENGINE_BOOTSTRAP, "--config_path", str(cfg)]
        if self.opt.release_mode:
            argv.append("--release_mode")
        # The engine registers with the core before it serves, so a /ping answer means registered.
        self._spawn(
            "parrot_engine", argv, parrot_env(self.parrot_src),
            lambda c: c.post(f"{self.engine_url}/ping", json={}).status_code == 200,
            f"Parrot's OpenAI-type engine on port {self.opt.engine_port or self.opt.core_port + 1}",
        )  # fmt: skip

    def check_alive(self) -> str | None:
        """None while every process runs; else which one exited and its last log line."""
        for c in self.children:
            code = c.exit_code()
            if code is not None:
                return f"{c.name} exited with code {code}: {c.last_log_line()} (log: {c.log_path})"
        if self.vllm is not None and not self.vllm.alive():
            return f"vLLM exited: {self.vllm.last_log_line()}"
        return None

    def process_cpu(self) -> dict[str, float | None]:
        """CPU seconds each Parrot-side process used since it became healthy. Parrot's engine
        loop polls every microsecond, so its engine keeps a host core busy even when idle."""
        out: dict[str, float | None] = {}
        for c in self.children:
            now, then = c.cpu_seconds(), self.cpu_s_at_start.get(c.name)
            out[c.name] = None if now is None or then is None else round(now - then, 3)
        return out

    def stop(self) -> None:
        """Stop everything, engine first (it heartbeats the core), vLLM last. Idempotent."""
        for c in reversed(self.children):
            c.stop()
        self.children = []
        if self.vllm is not None:
            self.vllm.stop()
            self.vllm = None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "parrot_package": str(self.parrot_dir) if self.parrot_dir else None,
            "parrot_commit": parrot_commit(self.parrot_dir) if self.parrot_dir else None,
            "parrot": self.opt.to_dict(),
            "served_model": self.served_model,
            "startup_s": {k: round(v, 2) for k, v in self.startup_s.items()},
        }
        if self.vllm is not None:
            d["vllm"] = self.vllm.describe()
        return d

    def __enter__(self) -> "ParrotStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_busy(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def main(argv: list[str] | None = None) -> None:
    """`python -m mrw.launch_parrot RUN_DIR`: start the stack and hold it until Ctrl-C, so that
    `mrw replay --engine parrot --parrot-url ...` can attach to it."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mrw.launch_parrot", description=main.__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--model", default=None, help="HF model folder (default: mrw's default model)")
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--backend-url", default=None, help="use this running vLLM instead of launching one")
    ap.add_argument("--core-port", type=int, default=9000)
    ap.add_argument("--vllm-port", type=int, default=None)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--no-parrot-sched", action="store_true", help="all of Parrot's scheduler switches off")
    ap.add_argument("--debug-logs", action="store_true", help="Parrot's debug mode (very verbose logs)")
    a = ap.parse_args(argv)
    import signal

    from mrw.errors import MrwError

    def _term(*_: object) -> None:
        raise KeyboardInterrupt  # so that the stack's __exit__ stops every child

    signal.signal(signal.SIGTERM, _term)
    from mrw.models import default_model

    opt = ParrotLaunchOptions(core_port=a.core_port, release_mode=not a.debug_logs)
    if a.no_parrot_sched:
        opt.app_fifo = opt.graph_group = opt.ctx_group = opt.ctx_aware = False
    if a.max_num_seqs:
        opt.tasks_capacity = a.max_num_seqs
    model = None
    if a.backend_url is None:
        model = ModelSpec(Path(a.model), a.served_model_name or Path(a.model).name, a.model) if a.model else default_model()
    stack = ParrotStack(
        a.run_dir, model, VllmOptions(max_num_seqs=a.max_num_seqs, max_model_len=a.max_model_len), opt,
        backend_url=a.backend_url, served_model=a.served_model_name, vllm_port=a.vllm_port,
    )  # fmt: skip
    try:
        with stack:
            print(json.dumps({"parrot_url": stack.core_url, "proxy_url": stack.proxy_url, "backend": stack.backend_root}), flush=True)
            while (why := stack.check_alive()) is None:
                time.sleep(1.0)
            print(f"mrw: error: {why}", file=sys.stderr)
            raise SystemExit(1)
    except KeyboardInterrupt:
        pass
    except MrwError as e:
        print(f"mrw: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
