"""One replay, end to end: checks, run directory, engine, scraper, scheduler, the end.

Order matters for the "nothing half-made, nothing lost" rules:
1. load + validate the trace, refuse what cannot be replayed, resolve the engine and its
   knobs, and `preflight()` it (an unreachable URL fails here, before any directory exists);
2. create the run directory and write run.json (status "running");
3. `start()` the engine (launching it, log into the run directory, if embedded);
4. scrape /metrics, run the scheduler, append each result to requests.jsonl;
5. on every exit path (done, engine death, SIGINT/SIGTERM, a bug): mark unfinished calls,
   stop the scraper, close the engine (stopping what was launched), write the final status.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mrw.errors import EngineError, MrwError
from mrw.trace import load

from . import run as runmod
from .engines.base import CallResult, Engine, EngineOptions
from .engines.openai_compat import redact_url
from .engines.registry import get_engine
from .knobs import AppliedKnobs, apply_knobs
from .meters import TIMELINE_FILE, MeteringOptions, MeterSet
from .metrics_scrape import MetricsScraper
from .prompts import PromptStore, make_plan, resolve_mode, resolve_served
from .scheduler import EngineDied, ReplayOptions, Scheduler, arrival_times, check_feasible, select_workflows


@dataclass(slots=True)
class ReplayOutcome:
    run_dir: Path
    status: str  # completed | interrupted | failed
    error: str | None
    total: int
    finished_ok: int
    failed: int
    wall_s: float
    token_check: dict[str, Any] = field(default_factory=dict)
    signal: int | None = None
    input_lengths: str | None = None  # the mode the replay used


class Progress:
    """Progress display hook: `start(total)`, `update(done, failed)`, `stop()`."""

    def start(self, total: int, label: str) -> None: ...
    def update(self, done: int, failed: int) -> None: ...
    def stop(self) -> None: ...


class RichProgress(Progress):
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

        self._p = RP(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
        )
        self._task = None

    def start(self, total: int, label: str) -> None:
        self._p.start()
        self._task = self._p.add_task(label, total=total, failed="")

    def update(self, done: int, failed: int) -> None:
        if self._task is not None:
            self._p.update(self._task, completed=done, failed=f"{failed} failed" if failed else "")

    def stop(self) -> None:
        self._p.stop()


class RunHook:
    """Something that runs around the replay proper, e.g. the energy meters.

    `begin` is called once the engine is up, just before the run's t0 (a meter set measures
    its idle baseline here); it may return the t0 to use (a `time.perf_counter()` value) so
    that its marks and the requests share one origin. `end` is called on every exit path
    with the final status and error; it must not raise. Both run on the event loop's thread
    and may block briefly."""

    def begin(self, run_dir: Path, engine: Engine) -> float | None:
        return None

    def end(self, status: str, error: str | None) -> None:
        return None


def _engine_options_record(o: EngineOptions) -> dict[str, Any]:
    return {
        "url": redact_url(o.url) if o.url else None,
        "model": o.model,
        "request_timeout_s": o.request_timeout_s,
        "connect_timeout_s": o.connect_timeout_s,
        "max_connections": o.max_connections,
    }


def engine_pid(engine: Engine, options: EngineOptions | None) -> int | None:
    """The engine's main process, for the process meter: the one mrw launched, else the local
    process listening at the URL mrw attached to (None for a remote engine)."""
    proc = getattr(getattr(engine, "server", None), "proc", None)
    if getattr(proc, "pid", None):
        return proc.pid
    url = getattr(options, "url", None)
    if url:
        from .meters.process import pid_listening_at

        try:
            return pid_listening_at(url)
        except Exception:
            return None
    return None


def _finalize_energy(run_dir: Path) -> None:
    """Windows, cross-check and attribution into energy.json, once the run and the knobs'
    restore are on disk. A failure here must not hide the replay's own outcome."""
    if not (run_dir / runmod.ENERGY).exists():
        return
    try:
        from mrw.analysis.energy import finalize

        finalize(run_dir)
    except Exception as e:  # noqa: BLE001
        import sys

        print(f"mrw: warning: energy analysis of {run_dir} failed ({type(e).__name__}: {e}); "
              "the measurements are in energy.json and power.csv", file=sys.stderr)


WARM_MAX = 64  # connections opened before t0, at most


def largest_burst(arrivals: list[float], limit: int) -> int:
    """How many workflows arrive at one instant at most (to the microsecond): the connections
    worth opening before t0."""
    from collections import Counter

    most = max(Counter(round(t, 6) for t in arrivals).values(), default=0)
    return min(most, limit, WARM_MAX)


def _mark_all(sched: Scheduler | None, trace, workflows, engine, record, opts, why: str) -> None:
    """Give every call without a result its "not finished" line (also when the run never began,
    e.g. the engine failed to start), so requests.jsonl always covers the whole trace."""
    try:
        s = sched or Scheduler(trace, workflows, engine, record, opts)
        s._mark_unfinished(why)
    except Exception:
        pass


async def replay_async(
    trace_path: str | os.PathLike,
    engine_name: str,
    engine_options: EngineOptions,
    opts: ReplayOptions,
    out: str | os.PathLike | None = None,
    *,
    progress: Progress | None = None,
    on_scheduler: Callable[[Scheduler | None, asyncio.Task], None] | None = None,
    hooks: list[RunHook] | None = None,
    metering: MeteringOptions | None = None,
    knobs: AppliedKnobs | None = None,
    on_metered: Callable[[Path], None] | None = None,
) -> ReplayOutcome:
    trace = load(trace_path)
    workflows = select_workflows(trace, opts)
    engine_cls = get_engine(engine_name)
    engine: Engine = engine_cls.from_options(engine_options)
    notes = check_feasible(trace, workflows, engine.capabilities, opts)
    mode, _ = resolve_mode(opts.input_lengths, engine.capabilities, opts.live_refs)
    if not opts.force_output_length:
        notes.append("output lengths not forced (--no-force-length): responses end where the model stops")
    await engine.preflight()

    run_dir = Path(out) if out is not None else runmod.default_run_dir(trace_path, engine_name)
    n_calls = sum(len(w.calls) for w in workflows)
    writer = runmod.RunWriter.create(
        run_dir,
        {
            "trace": {
                "path": str(Path(trace_path).resolve()),
                "sha256": runmod.sha256_file(trace_path),
                "workload": trace.header.workload,
                "recorded_against": trace.header.recorded_against,
                "workflows": len(workflows),
                "calls": n_calls,
            },
            "engine": {"engine": engine.name, **_engine_options_record(engine_options)},
            "capabilities": engine.capabilities.to_dict(),
            "knobs": engine_options.knobs.set(),
            "options": opts.to_dict(),
            "host": runmod.host_info(),
            "versions": runmod.versions(),
            "progress": {"total": n_calls, "finished": 0, "failed": 0},
        },
    )
    if isinstance(getattr(engine, "options", None), EngineOptions):
        engine.options.log_dir = run_dir
    # energy: meters around the replay, GPU knobs (applied by `replay` before the engine starts)
    metering = metering if metering is not None and metering.enabled else None
    meters: MeterSet | None = None
    if knobs is not None and knobs.active:
        knobs.run_dir = run_dir
        knobs.write()
    if metering is not None or (knobs is not None and knobs.active):
        writer.update(metering=(metering or MeteringOptions.off()).to_dict())
    scraper: MetricsScraper | None = None
    sched: Scheduler | None = None
    meta_writes: list[asyncio.Future] = []
    begun: list[RunHook] = []
    status, error = "failed", None
    t_start = time.perf_counter()

    def record(res: CallResult) -> None:
        writer.append(res.to_dict(with_output=opts.save_outputs))

    try:
        try:
            await engine.start()
        except MrwError as e:
            error = str(e)
            raise
        desc = engine.describe()
        # What every call sends (recorded or natural input lengths), then every call-level
        # request built ahead: before the meters' idle baseline, so that neither the baseline
        # nor the run pays for it.
        plan = await asyncio.to_thread(
            make_plan, trace, workflows, mode, trace_tokenizer_dir=opts.trace_tokenizer,
            served=lambda: resolve_served(opts.tokenizer or desc.get("model_path"), engine),
        )
        notes.extend(plan.notes)
        store = PromptStore(trace, workflows, plan, engine, opts, trace.recorded_outputs(), arrival_times(workflows, opts),
                            budget_bytes=int(opts.prompt_memory_mb * 2**20) if opts.prompt_memory_mb is not None else None)
        await asyncio.to_thread(store.prebuild, progress)
        fid = engine.fidelity()
        fid.notes.extend(notes)
        fid.input_lengths = mode
        if not opts.force_output_length:
            fid.output_length_forced = False
        tok = plan.vocab
        files = {"requests": runmod.REQUESTS}
        if engine.log_path() is not None:
            files["engine_log"] = os.path.relpath(engine.log_path(), run_dir)  # type: ignore[arg-type]
        murl = engine.metrics_url() if engine.capabilities.metrics_endpoint else None
        if murl:
            files["metrics"] = runmod.METRICS
            scraper = MetricsScraper(murl, run_dir / runmod.METRICS, t0=0.0)
        writer.update(
            engine=desc,
            prompts={**plan.info, **store.to_dict()},
            fidelity=fid.to_dict(),
            versions=runmod.versions(engine=desc.get("server_version")),
            files=files,
        )
        if metering is not None:
            meters = MeterSet.for_run(run_dir, meters=metering.meters, baseline_s=metering.baseline_s,
                                      period_s=metering.period_s, engine_pid=engine_pid(engine, engine_options))
            await asyncio.to_thread(meters.start)
            if on_metered is not None:
                on_metered(run_dir)
            files.update(energy=runmod.ENERGY, power_timeline=TIMELINE_FILE)
            writer.update(files=files)
            await meters.measure_baseline_async()  # idle, engine up: what "net" subtracts
        sched = Scheduler(trace, workflows, engine, record, opts, tok, prompts=store if store.enabled else None)
        if not engine.capabilities.whole_workflow:
            await engine.warm(largest_burst(arrival_times(workflows, opts), engine_options.max_connections))
        if on_scheduler is not None:
            on_scheduler(sched, asyncio.current_task())  # type: ignore[arg-type]
        # The trace and everything built so far live for the whole run: move them out of the
        # cyclic GC's sight, so a full collection mid-run (a dispatch stall that grows with
        # the trace) has only the run's own new objects to scan.
        gc.collect()
        gc.freeze()
        t0_hook = None  # last: nothing slow may sit between a hook's t0 and the first arrival
        for h in hooks or ():
            begun.append(h)
            t0_hook = await asyncio.to_thread(h.begin, run_dir, engine) or t0_hook
        # t0: the zero of every time in requests.jsonl and metrics.jsonl. Set last, so that
        # nothing slow (run.json's fsync, client set-up) sits between it and the first arrival.
        t0 = t0_hook if t0_hook is not None else time.perf_counter()
        engine.t0 = t0
        writer.meta["clock"] = {"t0_unix": time.time() - (time.perf_counter() - t0), "t0_perf_counter": t0, "unit": "s"}
        if scraper is not None:
            scraper.start(t0)
        if progress is not None:
            progress.start(n_calls, f"replay {engine.name}")

        async def tick() -> None:
            last_meta = time.perf_counter()
            while True:
                await asyncio.sleep(0.25)
                if progress is not None:
                    progress.update(sched.finished, sched.failed)
                if time.perf_counter() - last_meta > 5.0:
                    last_meta = time.perf_counter()
                    # run.json is fsynced: off the loop, so dispatch is not held up. Shielded
                    # and awaited before the final write, so a late progress write can never
                    # replace the final status.
                    prog = {"total": n_calls, "finished": sched.finished, "failed": sched.failed}
                    meta_writes.append(asyncio.ensure_future(asyncio.to_thread(writer.update, progress=prog)))
                    await asyncio.shield(meta_writes[-1])

        ticker = asyncio.ensure_future(tick())
        try:
            await sched.run()
        finally:
            ticker.cancel()
            if progress is not None:
                progress.update(sched.finished, sched.failed)
                progress.stop()
        if sched.crash is not None:
            raise sched.crash
        if sched.stop_reason is not None:
            status, error = "interrupted", sched.stop_reason
        else:
            status = "completed"
    except EngineDied as e:
        status, error = "failed", f"engine died mid-run: {e}"
        raise EngineError(f"{error}; finished requests are in {run_dir}") from None
    except asyncio.CancelledError:
        status, error = "interrupted", (sched.stop_reason if sched and sched.stop_reason else "interrupted before the replay began")
        _mark_all(sched, trace, workflows, engine, record, opts, error)
        raise
    except BaseException as e:
        if error is None:
            error = f"{type(e).__name__}: {e}" if not isinstance(e, MrwError) else str(e)
        status = "failed"
        _mark_all(sched, trace, workflows, engine, record, opts, error if sched is None else f"mrw stopped: {error}")
        raise
    finally:
        if meters is not None:
            meters.stop(status={"completed": "complete"}.get(status, status if error is None else f"{status}: {error}"))
        pending = [f for f in meta_writes if not f.done()]
        if pending:
            await asyncio.wait(pending)
        if scraper is not None:
            await scraper.stop()
        for h in reversed(begun):  # before the engine stops: its shutdown is not the run's energy
            try:
                await asyncio.to_thread(h.end, status, error)
            except Exception:
                pass
        await engine.close()
        t_end = time.perf_counter()
        extra: dict[str, Any] = {"wall_s": round(t_end - t_start, 3)}  # engine start-up included
        if engine.t0 >= t_start and sched is not None:
            extra["duration_s"] = round(t_end - engine.t0, 3)  # the replay itself, from t0
        if sched is not None:
            extra["progress"] = {"total": n_calls, "finished": sched.finished, "failed": sched.failed}
            extra["token_check"] = sched.check.to_dict()
            fid = engine.fidelity()
            fid.notes.extend(notes)
            fid.input_lengths = mode
            if not opts.force_output_length:
                fid.output_length_forced = False
            if sched.check.output_mismatch:
                fid.notes.append(f"{sched.check.output_mismatch} response(s) had an output token count other than the recorded one")
            if sched.check.input_mismatch:
                why = "" if mode == "recorded" else " (input lengths natural: the served tokenizer counts the recorded text)"
                fid.notes.append(f"{sched.check.input_mismatch} response(s) had an input token count other than the recorded one{why}")
            extra["fidelity"] = fid.to_dict()
            if sched.prompts is not None:
                extra["prompts"] = {**(writer.meta.get("prompts") or {}), **sched.prompts.to_dict()}
        if scraper is not None:
            extra["metrics_scrape"] = scraper.to_dict()
        writer.finish(status, error, **extra)
        gc.unfreeze()
    ok = sum(1 for r in sched.results.values() if r.ok)
    return ReplayOutcome(
        run_dir=run_dir,
        status=status,
        error=error,
        total=n_calls,
        finished_ok=ok,
        failed=sched.failed,
        wall_s=time.perf_counter() - t_start,
        token_check=sched.check.to_dict(),
        input_lengths=mode,
    )


def run_loop(coro: Any) -> Any:
    """asyncio.run on uvloop where it is installed (less CPU per request than the default
    loop; docs/performance.md), else on asyncio's own loop. MRW_EVENT_LOOP=asyncio forces the
    default loop, for comparison."""
    if os.environ.get("MRW_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def replay(
    trace_path: str | os.PathLike,
    engine_name: str,
    engine_options: EngineOptions,
    opts: ReplayOptions,
    out: str | os.PathLike | None = None,
    *,
    progress: Progress | None = None,
    hooks: list[RunHook] | None = None,
    metering: MeteringOptions | None = None,
) -> ReplayOutcome:
    """Run one replay in a fresh event loop. SIGINT/SIGTERM stop it cleanly: the run directory
    ends "interrupted" with every unfinished call marked, and the outcome says which signal.

    With `metering`: GPU knobs are validated and applied before anything starts and restored
    on every way out; meters run around the replay; energy.json is finalized at the end."""
    got: dict[str, Any] = {"signal": None, "sched": None, "task": None}

    def bind(sched: Scheduler | None, task: asyncio.Task) -> None:
        got["sched"], got["task"] = sched, task

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        first = got["signal"] is None
        got["signal"] = got["signal"] or signum
        sched: Scheduler | None = got["sched"]
        if first and sched is not None:
            sched.stop(f"interrupted by {name}")
        elif got["task"] is not None:
            got["task"].cancel()  # second signal, or before the run began: stop now

    async def main() -> ReplayOutcome:
        loop = asyncio.get_running_loop()
        got["task"] = asyncio.current_task()
        installed = []
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(s, on_signal, s)
                installed.append(s)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            return await replay_async(trace_path, engine_name, engine_options, opts, out, progress=progress,
                                      on_scheduler=bind, hooks=hooks, metering=metering, knobs=got.get("knobs"),
                                      on_metered=lambda d: got.__setitem__("metered", d))
        finally:
            for s in installed:
                loop.remove_signal_handler(s)

    m = metering or MeteringOptions.off()
    try:
        with apply_knobs(cap_w=m.cap_w, lock_clocks=m.lock_clocks) as knobs:
            got["knobs"] = knobs
            try:
                outcome = run_loop(main())
            except asyncio.CancelledError:
                raise KeyboardInterrupt from None
    finally:
        if got.get("metered") is not None:  # only a run directory this replay metered
            _finalize_energy(got["metered"])
    outcome.signal = got["signal"]
    return outcome
