"""Launching Parrot: clear errors without it, the engine bootstrap, process cleanup, and (when
MRW_PARROT_SRC points at a ParrotServe checkout) the real serve core + OpenAI-type engine."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mrw.errors import LaunchError
from mrw.launch_parrot import ENGINE_BOOTSTRAP, PARROT_SRC_ENV, ParrotLaunchOptions, ParrotStack, find_parrot, parrot_env

REPO = Path(__file__).resolve().parent.parent


def fake_parrot(root: Path, serve_body: str) -> Path:
    """A stand-in `parrot` package: serve core and engine modules whose behaviour we choose."""
    files = {
        "parrot/__init__.py": "",
        "parrot/serve/__init__.py": "",
        "parrot/serve/http_server.py": serve_body,
        "parrot/engine/__init__.py": "",
        "parrot/engine/builtin/__init__.py": "",
        "parrot/engine/builtin/builtin_engine.py": "raise ImportError('No module named xformers')\n",
        "parrot/engine/http_server.py": (
            "import importlib, sys\n"
            "mod = importlib.import_module('parrot.engine.builtin.builtin_engine')\n"
            "print('ENGINE', __name__, mod.BuiltinEngine.__name__, sys.argv[0], sys.argv[1:])\n"
        ),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_no_tracked_python_file_imports_parrot() -> None:
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    bad = re.compile(r"^\s*(from\s+parrot[.\s]|import\s+parrot\b)", re.M)
    offenders = [f for f in files if bad.search((REPO / f).read_text())]
    assert offenders == [], "mrw talks to Parrot over HTTP only"


def test_missing_parrot_says_how_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(PARROT_SRC_ENV, raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with pytest.raises(LaunchError, match=r"not importable: clone https://github.com/microsoft/ParrotServe and set MRW_PARROT_SRC"):
        find_parrot()
    with pytest.raises(LaunchError, match=r"MRW_PARROT_SRC=.* holds no parrot/serve/http_server.py"):
        find_parrot(str(tmp_path))


def test_engine_bootstrap_stubs_the_builtin_engine(tmp_path) -> None:
    src = fake_parrot(tmp_path, "")
    r = subprocess.run([sys.executable, "-c", ENGINE_BOOTSTRAP, "--config_path", "e.json"], env=parrot_env(str(src)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[:3] == ["ENGINE", "__main__", "BuiltinEngine"]  # run as __main__, builtin engine stubbed
    assert words[3].endswith("parrot/engine/http_server.py") and words[4:] == ["['--config_path',", "'e.json']"]
    env = parrot_env(str(src))
    assert env["SIMULATE_NETWORK_LATENCY_PRT"] == "0" and env["PYTHONPATH"].split(os.pathsep)[0] == str(src.resolve())


@pytest.mark.vllm
def test_a_core_that_dies_at_start_fails_clearly_and_leaves_nothing(vllm_server, tmp_path) -> None:
    from mrw.launch import free_port

    src = fake_parrot(tmp_path / "src", "import sys\nprint('core: no module named parse')\nsys.exit(3)\n")
    opts = ParrotLaunchOptions(core_port=free_port(), engine_port=free_port(), proxy_port=free_port(), startup_timeout_s=30)
    stack = ParrotStack(tmp_path / "run", options=opts, backend_url=vllm_server.base_url, served_model=vllm_server.model.name,
                        parrot_src=str(src), quiet=True)  # fmt: skip
    me = psutil.Process()
    proxies = lambda: {p.pid for p in me.children(recursive=True) if "mrw.backend_proxy" in " ".join(p.cmdline())}  # noqa: E731
    before = proxies()  # the session's own proxy fixture may be running
    with pytest.raises(LaunchError, match=r"Parrot's serve core on port \d+ exited with code 3 while starting: core: no module named parse"):
        stack.start()
    assert stack.children == [] and proxies() == before  # the proxy it had started is stopped
    assert (tmp_path / "run" / "parrot_core.log").exists() and (tmp_path / "run" / "parrot_core.json").exists()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(PARROT_SRC_ENV), reason=f"real Parrot: set {PARROT_SRC_ENV} to a ParrotServe checkout")
def test_real_parrot_stack_replays_a_workflow(vllm_server, tmp_path) -> None:
    from mrw.launch import free_port
    from mrw.replay.engines.base import CallResult, Request
    from mrw.replay.engines.parrot import ParrotEngine, ParrotOptions
    from mrw.trace import Call, Workflow

    opts = ParrotLaunchOptions(core_port=free_port(), engine_port=free_port(), proxy_port=free_port())
    stack = ParrotStack(tmp_path, options=opts, backend_url=vllm_server.base_url, served_model=vllm_server.model.name, quiet=True)
    calls = [Call("a", "n", output_tokens=6, prompt=[{"text": "Shared prefix. First."}])]
    calls += [Call(f"b{i}", "n", deps=["a"], output_tokens=5 + i, prompt=[{"text": "Shared prefix. "}, {"ref": "a"}]) for i in range(3)]
    w = Workflow("w", 0.0, calls)
    results: list[CallResult] = []

    async def sink(r: CallResult) -> None:
        results.append(r)

    async def main() -> None:
        eng = ParrotEngine(parrot=ParrotOptions(stack.core_url, proxy_url=stack.proxy_url))
        await eng.start()
        try:
            await eng.run_workflow(w, {c.id: Request(c.id, "w", c.node, max_tokens=c.output_tokens) for c in calls}, sink)
        finally:
            await eng.close()

    with stack:
        pids = [c.proc.pid for c in stack.children]
        asyncio.run(main())
        assert stack.check_alive() is None
    assert all(r.ok and r.output_tokens == r.expected_output_tokens for r in results) and len(results) == 4
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert {"parrot_core.log", "parrot_engine.log", "parrot_proxy.log", "parrot_proxy_requests.jsonl"} <= {p.name for p in tmp_path.iterdir()}
