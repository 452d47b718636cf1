"""Replay harness benchmark: dispatch lateness and client overhead of mrw, AIPerf and
`vllm bench serve`, side by side, against one zero-delay server, in one run.

    python -m benchmarks.replay_bench                       # the full run (several minutes)
    python -m benchmarks.replay_bench --rates 100,1000 --duration 2 --tools mrw   # quick look
    python -m benchmarks.replay_bench --rates '' --chain-rates '' --tools mrw,aiperf   # the Mooncake-like bursts only

What it does:
1. starts benchmarks/zero_server.js (Node) and measures its ceiling with `wrk` (closed loop,
   the same streamed request): the physical limit of everything below;
2. for every schedule (independent calls at each rate; dependent chains at each rate) and
   every tool: writes the schedule in the tool's format, runs the tool as a child process,
   samples its whole process tree (CPU time, RSS) from outside, then fetches the server's
   arrival log;
3. lateness is measured at the server, the same way for every tool (see `lateness`); mrw's
   own issue lateness (t_issue - t_scheduled from its requests.jsonl) is reported beside it;
4. writes benchmarks/results/replay-<time>.json and prints the table docs/performance.md shows.
"""

from __future__ import annotations

import argparse
import os
import shlex
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from benchmarks.peers import Adapter, default_adapters
from benchmarks.schedules import Schedule

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ---------------------------------------------------------------------------- the server


class ZeroServer:
    """benchmarks/zero_server.js in its own process."""

    def __init__(self, port: int, batch: bool = False):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.batch = batch
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ZeroServer":
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node not found: the zero-delay server needs Node.js (>= 18)")
        cmd = [node, str(HERE / "zero_server.js"), "--port", str(self.port)] + (["--batch"] if self.batch else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.get("/health")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise SystemExit(f"zero server exited at start (port {self.port} in use?): {out.strip()}")
                time.sleep(0.05)
        raise SystemExit(f"zero server did not answer on port {self.port} within 10 s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read()

    def reset(self) -> None:
        self.get("/_reset")

    def log(self) -> list[dict]:
        return [orjson.loads(line) for line in self.get("/_log").splitlines() if line]

    def stall(self) -> dict[str, Any]:
        """The server's own event-loop delays since the last reset: a floor under every tool's
        server-measured lateness (a request that lands in a stall is recorded late)."""
        return orjson.loads(self.get("/_stall"))

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system


def wrk_ceiling(server: ZeroServer, tokens: int, seconds: float = 5.0, connections: int = 64) -> dict[str, Any]:
    """Closed-loop requests/s of the zero server (wrk, one thread), or why not measured."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"requests_per_s": None, "note": "wrk not installed (apt-get install wrk)"}
    env = dict(os.environ, WRK_TOKENS=str(tokens))
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(HERE / "wrk_post.lua"), server.url]
    cpu0 = server.cpu_seconds()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu1 = server.cpu_seconds()
    server.reset()
    rps = None
    n = None
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        if "requests in" in line:
            n = int(line.split()[0])
    return {
        "requests_per_s": rps,
        "tool": f"wrk -t1 -c{connections} -d{seconds:g}s (closed loop)",
        "tokens": tokens,
        "server_cpu_s_per_request": (cpu1 - cpu0) / n if n else None,
        "load_avg": os.getloadavg(),
    }


# ---------------------------------------------------------------------------- measuring a child


class TreeSampler(threading.Thread):
    """Samples CPU seconds and RSS of a process and all its descendants every `interval` s.

    CPU of a tree = sum over live processes of user+system+children_user+children_system
    (children_* hold the reaped descendants), so exited workers are not lost."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float, int, int]] = []  # (perf_counter, cpu_s, rss_bytes, n_procs)
        self._halt = threading.Event()
        self._procs: dict[int, psutil.Process] = {pid: self.root}

    def sample(self) -> None:
        try:
            kids = self.root.children(recursive=True)
        except psutil.Error:
            return
        for k in kids:
            self._procs.setdefault(k.pid, k)
        cpu = 0.0
        rss = 0
        n = 0
        for pid, p in list(self._procs.items()):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    m = p.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            cpu += t.user + t.system + t.children_user + t.children_system
            rss += m
            n += 1
        if n:
            self.samples.append((time.perf_counter(), cpu, rss, n))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()

    def cpu_between(self, t0: float, t1: float) -> float | None:
        """CPU seconds the tree used in [t0, t1] (perf_counter), interpolated between samples."""
        s = self.samples
        if len(s) < 2 or t1 <= t0:
            return None

        def at(t: float) -> float:
            if t <= s[0][0]:
                return s[0][1]
            for (ta, ca, *_), (tb, cb, *_) in zip(s, s[1:]):
                if ta <= t <= tb:
                    return ca + (cb - ca) * (t - ta) / (tb - ta) if tb > ta else cb
            return s[-1][1]

        return at(t1) - at(t0)


@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    cpu_s: float  # whole tree, whole life (rusage of the child and its reaped descendants)
    peak_rss_mb: float  # largest sampled sum over the tree
    max_rss_single_mb: float  # largest single process (rusage)
    sampler: TreeSampler
    log: Path


def run_child(cmd: list[str], env: dict[str, str], workdir: Path, timeout: float) -> ChildRun:
    log = workdir / "tool.log"
    full_env = dict(os.environ, **env)
    t0 = time.perf_counter()
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=workdir, env=full_env, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        deadline = time.monotonic() + timeout
        ru = None
        status = 0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        sampler.join()
    # Workers that outlived their parent (none should): make sure nothing keeps running.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wall = time.perf_counter() - t0
    rusage_cpu = ru.ru_utime + ru.ru_stime if ru else 0.0
    sampled_cpu = max((x[1] for x in sampler.samples), default=0.0)
    return ChildRun(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=max(rusage_cpu, sampled_cpu),
        peak_rss_mb=max((x[2] for x in sampler.samples), default=0) / 2**20,
        max_rss_single_mb=(ru.ru_maxrss / 1024) if ru else 0.0,
        sampler=sampler,
        log=log,
    )


# ---------------------------------------------------------------------------- lateness at the server


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    xs = sorted(xs)
    n = len(xs)

    def q(p: float) -> float:
        return xs[min(n - 1, max(0, round(p / 100 * (n - 1))))]

    return {"p50": q(50), "p99": q(99), "max": xs[-1], "n": n}


def lateness(s: Schedule, log: list[dict], t0_ns: int | None = None) -> dict[str, Any]:
    """Issue lateness as the server saw it, in ms.

    Roots (every call of `independent`, the first call of each chain): the k-th arrival (in
    arrival order) belongs to the k-th scheduled time (rank matching: no tool has to say
    which request is which); the tool's unknown start is taken as the offset that makes its
    earliest-relative arrival exactly on time, i.e. lateness_k = d_k - min(d), d_k =
    arrival_k - scheduled_k. That credits every tool with its best request, so it is a lower
    bound; a tool that falls behind grows d_k and shows it.
    Dependent calls: arrival minus (the server's last byte of the dependency + wait): the
    whole reaction of the client, measured without any offset.
    `t0_ns`, when the tool tells its start on the same clock (mrw does), also gives the
    absolute lateness of roots (including loopback transit, ~0.1 ms)."""
    recs = [r for r in log if r["api"] in ("chat", "cmpl")]
    by_id = {r["id"]: r for r in recs if r["id"]}
    out: dict[str, Any] = {"server_requests": len(recs)}
    if s.kind == "mooncake":  # no markers: the schedule is the last n arrivals
        roots = sorted(recs, key=lambda r: r["arrive_ns"])[-s.n_calls :]
        children = []
    elif s.kind == "independent":
        if len(by_id) >= s.n_calls:
            roots = [by_id[f"w{j}.c0"] for j in range(s.n_workflows) if f"w{j}.c0" in by_id]
        else:  # no markers (token-id prompts): the schedule is the last n arrivals
            roots = sorted(recs, key=lambda r: r["arrive_ns"])[-s.n_calls :]
        children: list[float] = []
    else:
        roots = [by_id[f"w{j}.c0"] for j in range(s.n_workflows) if f"w{j}.c0" in by_id]
        children = []
        for j in range(s.n_workflows):
            for k in range(1, s.chain_len):
                r, dep = by_id.get(f"w{j}.c{k}"), by_id.get(f"w{j}.c{k - 1}")
                if r is not None and dep is not None:
                    children.append((r["arrive_ns"] - dep["end_ns"]) / 1e6 - s.wait_ms)
    arr = sorted(r["arrive_ns"] for r in roots)
    sched = [s.arrival_s(j) * 1e9 for j in range(len(arr))]
    d = [(a - t) / 1e6 for a, t in zip(arr, sched)]
    root_late = [x - min(d) for x in d] if d else []
    out["received"] = len(roots) + len(children)
    out["expected"] = s.n_calls
    out["roots_ms"] = _stats(root_late)
    if s.kind == "chains":
        out["dependent_ms"] = _stats(children)
    out["all_ms"] = _stats(root_late + children)
    if t0_ns is not None and arr:
        out["roots_abs_ms"] = _stats([(a - t0_ns - t) / 1e6 for a, t in zip(arr, sched)])
    if s.kind == "mooncake" and root_late:
        out.update(burst_lateness(s, root_late))
    if len(arr) >= 2:
        span = (arr[-1] - arr[0]) / 1e9
        out["achieved_rate"] = (len(arr) - 1) / span * s.calls_per_workflow if span > 0 else None
    allrecs = sorted(roots + [by_id[f"w{j}.c{k}"] for j in range(s.n_workflows) for k in range(1, s.calls_per_workflow) if f"w{j}.c{k}" in by_id], key=lambda r: r["arrive_ns"])
    if allrecs:
        out["window_ns"] = (allrecs[0]["arrive_ns"], max(r["end_ns"] for r in allrecs))
    return out


BURST_POSITIONS = (0, 5, 10)


def burst_lateness(s: Schedule, late_ms: list[float]) -> dict[str, Any]:
    """Lateness (ms, in schedule order) by position in same-timestamp bursts, and of the call
    with the largest prompt: whether dispatch slows with prompt size or burst size."""
    from benchmarks.schedules import mooncake_requests

    reqs = mooncake_requests(s)
    by_pos: dict[int, list[float]] = {}
    for r, x in zip(reqs, late_ms):
        by_pos.setdefault(r.position, []).append(x)
    big = max(range(min(len(reqs), len(late_ms))), key=lambda j: reqs[j].input_length)
    return {"burst_position_ms": {str(p): _stats(by_pos.get(p, [])) for p in BURST_POSITIONS},
            "largest_prompt": {"tokens": reqs[big].input_length, "late_ms": late_ms[big], "position": reqs[big].position}}


# ---------------------------------------------------------------------------- one measurement


def measure(tool: Adapter, s: Schedule, server: ZeroServer, workroot: Path, timeout: float) -> dict[str, Any]:
    workdir = workroot / f"{tool.name}-{s.kind}-{s.rate:g}"
    workdir.mkdir(parents=True, exist_ok=True)
    job = tool.job(s, server.url, workdir)
    server.reset()
    load = os.getloadavg()
    server_cpu0 = server.cpu_seconds()
    child = run_child(job.cmd, job.env, workdir, timeout)
    time.sleep(0.2)
    stall = server.stall()  # before /_log, whose own work is not the run's
    log = server.log()
    server_cpu = server.cpu_seconds() - server_cpu0
    own = tool.own_report(s, workdir)
    t0 = own.get("t0_perf_counter")
    late = lateness(s, log, int(t0 * 1e9) if t0 is not None else None)
    win = late.pop("window_ns", None)
    cpu_window = None
    if win is not None:
        c = child.sampler.cpu_between(win[0] / 1e9, win[1] / 1e9)
        cpu_window = c / s.n_calls if c is not None else None
    res = {
        "tool": tool.name,
        "schedule": s.to_dict(),
        "returncode": child.returncode,
        "ok": child.returncode == 0 and late["received"] == s.n_calls,
        "lateness": late,
        "client": {
            "wall_s": child.wall_s,
            "cpu_s_total": child.cpu_s,
            "cpu_ms_per_request_total": child.cpu_s / s.n_calls * 1e3,
            "cpu_ms_per_request_window": cpu_window * 1e3 if cpu_window is not None else None,
            "peak_rss_mb": child.peak_rss_mb,
            "max_rss_single_process_mb": child.max_rss_single_mb,
            "processes": max((x[3] for x in child.sampler.samples), default=1),
        },
        "server_cpu_ms_per_request": server_cpu / max(1, late["server_requests"]) * 1e3,
        "server_stall_ms": stall,
        "own_report": own,
        "load_avg_before": load,
        "load_avg_after": os.getloadavg(),
        "workdir": str(workdir),
    }
    if child.returncode != 0:
        res["log_tail"] = child.log.read_text(errors="replace")[-2000:]
    return res


# ---------------------------------------------------------------------------- the table


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def table(results: dict[str, Any]) -> str:
    main = [r for r in results["runs"] if r["schedule"]["kind"] != "mooncake" or r.get("skipped")]
    rows = [] if not main else [
        "| schedule | tool | sent/expected | achieved rate (/s) | lateness p50 / p99 / max (ms) | mrw own p50 / p99 (ms) | server stall p99 / max (ms) | CPU ms/request (window) | CPU ms/request (total) | peak RSS (MB) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if r["schedule"]["kind"] == "mooncake" and not r.get("skipped"):
            continue  # its own table, below
        if r.get("skipped"):
            rows.append(f"| {r['schedule']['name']} | {r['tool']} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        la, cl = r["lateness"], r["client"]
        a = la["all_ms"]
        own = (r.get("own_report") or {}).get("client_lateness_ms") or {}
        stall = r.get("server_stall_ms") or {}  # absent in results written before it was measured
        rows.append(
            f"| {r['schedule']['name']} | {r['tool']} | {la['received']}/{la['expected']}"
            f"{'' if r['returncode'] == 0 else ' (rc ' + str(r['returncode']) + ')'} | {_f(la.get('achieved_rate'), 0)} | "
            f"{_f(a['p50'])} / {_f(a['p99'])} / {_f(a['max'])} | "
            f"{_f(own.get('p50'))} / {_f(own.get('p99'))} | "
            f"{_f(stall.get('p99_ms'))} / {_f(stall.get('max_ms'))} | "
            f"{_f(cl['cpu_ms_per_request_window'], 3)} | {_f(cl['cpu_ms_per_request_total'], 3)} | {_f(cl['peak_rss_mb'], 0)} | "
            f"{r['load_avg_before'][0]:.2f} |"
        )
    bursts = [r for r in results["runs"] if r["schedule"]["kind"] == "mooncake" and not r.get("skipped")]
    if bursts:
        pos = " / ".join(str(p) for p in BURST_POSITIONS)
        rows += ([""] if rows else []) + [f"| schedule | tool | sent/expected | prompt tokens mean / max | lateness p50 at burst position {pos} (ms) | "
                 f"lateness p99 / max (ms) | largest prompt: late (ms) | mrw own p50 at {pos} / p99 (ms) | server stall p99 / max (ms) | "
                 "CPU ms/request (window) | peak RSS (MB) | load (1 min) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in bursts:
            la, sc, own = r["lateness"], r["schedule"], (r.get("own_report") or {})
            bp = la.get("burst_position_ms") or {}
            ob = own.get("burst_position_ms") or {}
            lp = la.get("largest_prompt") or {}
            stall = r.get("server_stall_ms") or {}
            rows.append(
                f"| {sc['name']} | {r['tool']} | {la['received']}/{la['expected']}{'' if r['returncode'] == 0 else ' (rc ' + str(r['returncode']) + ')'} | "
                f"{sc.get('prompt_tokens_mean', '–'):,} / {sc.get('prompt_tokens_max', '–'):,} | "
                f"{' / '.join(_f((bp.get(str(p)) or {}).get('p50')) for p in BURST_POSITIONS)} | "
                f"{_f(la['all_ms']['p99'])} / {_f(la['all_ms']['max'])} | {_f(lp.get('late_ms'))} | "
                f"{' / '.join(_f((ob.get(str(p)) or {}).get('p50')) for p in BURST_POSITIONS)} / {_f((own.get('client_lateness_ms') or {}).get('p99'))} | "
                f"{_f(stall.get('p99_ms'))} / {_f(stall.get('max_ms'))} | {_f(r['client']['cpu_ms_per_request_window'], 3)} | "
                f"{_f(r['client']['peak_rss_mb'], 0)} | {r['load_avg_before'][0]:.2f} |")
    return "\n".join(rows)


SUSTAINED_P50_MS = 5.0


def summary(results: dict[str, Any], limit_ms: float = 1.0) -> dict[str, Any]:
    """Per tool and kind:
    - the goal's measure: the highest rate whose p99 lateness <= limit with every call sent;
    - a measure that still separates the tools on a loaded machine, where no one meets the
      goal: the highest rate *sustained* (achieved >= 98% of the target, p50 lateness <=
      SUSTAINED_P50_MS), i.e. the tool kept up with the schedule;
    - the steady-state CPU per request at each of those rates."""
    out: dict[str, Any] = {}
    for r in results["runs"]:
        if r.get("skipped") or r["schedule"]["kind"] == "mooncake":
            continue
        key = f"{r['tool']}/{r['schedule']['kind']}"
        e = out.setdefault(key, {"max_rate_p99_le_1ms": None, "cpu_ms_per_request_at_max": None,
                                 "max_rate_sustained": None, "cpu_ms_per_request_at_sustained": None, "rates_tried": []})
        rate = r["schedule"]["rate"]
        e["rates_tried"].append(rate)
        la = r["lateness"]
        p50, p99 = la["all_ms"]["p50"], la["all_ms"]["p99"]
        cpu = r["client"]["cpu_ms_per_request_window"]
        if r["ok"] and p99 is not None and p99 <= limit_ms and (e["max_rate_p99_le_1ms"] is None or rate > e["max_rate_p99_le_1ms"]):
            e["max_rate_p99_le_1ms"] = rate
            e["cpu_ms_per_request_at_max"] = cpu
        ach = la.get("achieved_rate")
        if (r["ok"] and p50 is not None and p50 <= SUSTAINED_P50_MS and ach is not None and ach >= 0.98 * rate
                and (e["max_rate_sustained"] is None or rate > e["max_rate_sustained"])):
            e["max_rate_sustained"] = rate
            e["cpu_ms_per_request_at_sustained"] = cpu
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        "load_avg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.replay_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,250,500,1000,2000,3000,5000", help="calls/s of the independent schedules")
    ap.add_argument("--chain-rates", default="100,500,1000,2000", help="calls/s of the dependent-chain schedules ('' for none)")
    ap.add_argument("--chain-len", type=int, default=4)
    ap.add_argument("--wait-ms", type=float, default=0.0, help="think/tool wait before each dependent call")
    ap.add_argument("--mooncake-rates", default="25", help="requests/s of the Mooncake-like burst schedules ('' for none)")
    ap.add_argument("--mooncake-duration", type=float, default=12.0, help="seconds of the Mooncake-like schedule (25/s x 12 s = 300 requests)")
    ap.add_argument("--mooncake-max-prompt", type=int, default=130_000, help="largest prompt of the Mooncake-like schedule (tokens)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds over which each schedule's arrivals are spread")
    ap.add_argument("--tokens", type=int, default=16, help="output tokens (streamed chunks) per call")
    ap.add_argument("--tools", default="mrw,aiperf,vllm-bench")
    ap.add_argument("--port", type=int, default=8701)
    ap.add_argument("--tokenizer", default=os.environ.get("MRW_BENCH_TOKENIZER", "/tmp/smol-hf"),
                    help="local HF tokenizer directory for the peers (they need one; mrw does not)")
    ap.add_argument("--mrw-python", help="python that runs `-m mrw` (default: this one)")
    ap.add_argument("--aiperf", help="aiperf executable (default: .venv-aiperf/bin/aiperf)")
    ap.add_argument("--aiperf-args", default="", help="extra aiperf arguments, e.g. '--workers-max 1' (default: its defaults)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the wrk ceiling measurement")
    ap.add_argument("--out", type=Path, help="results file (default: benchmarks/results/replay-<time>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the tools' work directories")
    ap.add_argument("--label", help="a word the report shows beside the run, e.g. 'contended' for a shared machine")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a tool run is killed")
    a = ap.parse_args(argv)

    tok = a.tokenizer if a.tokenizer and Path(a.tokenizer).exists() else None

    adapters = {t.name: t for t in default_adapters(tok, a.mrw_python, a.aiperf, shlex.split(a.aiperf_args))}
    tools = [adapters[n] for n in a.tools.split(",") if n]
    scheds = [Schedule("independent", float(r), a.duration, a.tokens) for r in a.rates.split(",") if r]
    scheds += [Schedule("chains", float(r), a.duration, a.tokens, a.chain_len, a.wait_ms) for r in a.chain_rates.split(",") if r]
    scheds += [Schedule("mooncake", float(r), a.mooncake_duration, a.tokens, max_prompt=a.mooncake_max_prompt,
                        min_prompt=min(10_000, a.mooncake_max_prompt)) for r in a.mooncake_rates.split(",") if r]

    workroot = Path(tempfile.mkdtemp(prefix="mrw-bench-"))
    results: dict[str, Any] = {
        "benchmark": "replay",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.replay_bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "label": a.label,
        "tools": {t.name: {"version": t.version, "unavailable": t.unavailable()} for t in tools},
        "runs": [],
    }
    out = a.out or RESULTS / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ZeroServer(a.port) as server:
            if not a.no_ceiling:
                results["server_ceiling"] = wrk_ceiling(server, a.tokens)
                print(f"zero server ceiling: {results['server_ceiling'].get('requests_per_s')} requests/s (wrk)", flush=True)
            for s in scheds:
                for t in tools:
                    why = t.unavailable() or (None if t.supports(s) else f"{t.name} cannot replay this schedule")
                    if why:
                        results["runs"].append({"tool": t.name, "schedule": s.to_dict(), "skipped": why})
                        continue
                    r = measure(t, s, server, workroot, a.timeout)
                    results["runs"].append(r)
                    la = r["lateness"]["all_ms"]
                    print(f"{s.name:24s} {t.name:10s} rc={r['returncode']} sent {r['lateness']['received']}/{s.n_calls} "
                          f"p50 {_f(la['p50'])} p99 {_f(la['p99'])} max {_f(la['max'])} ms  "
                          f"cpu {_f(r['client']['cpu_ms_per_request_window'], 3)} ms/req  load {r['load_avg_before'][0]:.2f}", flush=True)
                    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    finally:
        results["summary"] = summary(results)
        out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        if not a.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    print(table(results))
    print(orjson.dumps(results["summary"], option=orjson.OPT_INDENT_2).decode())
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
