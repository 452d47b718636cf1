"""The `mrw` command line. Commands stay thin: parse options, call the library, print.

Errors: every mrw.errors.MrwError becomes one line on stderr and a non-zero exit; Ctrl-C
exits 130 after the command's own cleanup has run (the library restores knobs, stops
engines and leaves valid files on disk before the interrupt reaches here).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mrw import __version__
from mrw.errors import MrwError

console = Console(stderr=True)
# Piped into a file or a CI log, rich would fit tables into 80 columns and cut every cell to
# "…"; a table for a file is read whole, so it gets the width it needs (COLUMNS still wins).
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mrw")
def cli() -> None:
    """Record, replay and measure multi-request LLM workflows (latency and energy)."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        console.print("mrw: interrupted", style="red")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("mrw: interrupted; what was measured so far is on disk", style="red")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MrwError as e:
        console.print(f"mrw: error: {e}", style="red", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


# ---------------------------------------------------------------------------- traces


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check trace FILES against the schema and the semantic rules; exit 1 on any problem."""
    from mrw import trace as tr
    from mrw import validate as v
    from mrw.errors import TraceError

    bad = 0
    for f in files:
        # The loader's own checks: one fast decode for a valid trace, and for an invalid one
        # the complete report (every problem with its JSON path), as `mrw replay` would see it.
        trace = None
        try:
            trace = tr.load(f)
            problems: list = []
        except TraceError as e:
            problems = list(e.problems) or [v.Problem("$", str(e).removeprefix(f"{f}: "))]
        if problems:
            bad += 1
            for p in problems:
                click.echo(f"{f}: {p}")
        elif not quiet and trace is not None:
            click.echo(f"{f}: ok ({len(trace.workflows)} workflows, {trace.n_calls} calls)")
    if bad:
        raise SystemExit(1)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--workflows", "show_workflows", is_flag=True, help="Also list every workflow's shape.")
def info(file: Path, as_json: bool, show_workflows: bool) -> None:
    """Summarise a trace: workflows and their arrivals, calls, DAG depth/width and dependencies,
    tokens, waits, critical path, prefix sharing (for any trace, recorded or imported)."""
    import orjson

    from mrw.info import trace_info
    from mrw.trace import load

    trace = load(file)
    summary, shapes = trace_info(trace)
    if as_json:
        from dataclasses import asdict

        d = summary.to_dict()
        if show_workflows:
            d["per_workflow"] = [asdict(s) for s in shapes]
        click.echo(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
        return
    t = Table(title=f"{file}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    ra = summary.recorded_against
    ins, outs, waits = summary.input_tokens_spread, summary.output_tokens_spread, summary.wait_spread
    rows = [
        ("workload", summary.workload),
        ("recorded against", ", ".join(f"{k}={v}" for k, v in ra.items() if v) or "-"),
        ("workflows", f"{summary.workflows}"),
        ("arrivals", _arrivals(summary)),
        ("calls", f"{summary.calls} ({summary.calls_per_workflow:.1f} per workflow)"),
        ("DAG depth / width (max)", f"{summary.depth_max} / {summary.width_max}"),
        ("dependencies", f"{summary.dependency_edges:,} edges: {summary.calls_with_deps:,} calls wait for others, "
                         f"{summary.joins:,} for two or more; a call is waited for by at most {summary.fan_out_max}"),
        ("input tokens", f"{summary.input_tokens:,} (mean {summary.mean_input_tokens:,.0f} per call{_spread(ins)})"),
        ("output tokens", f"{summary.output_tokens:,} (mean {summary.mean_output_tokens:,.0f} per call{_spread(outs)})"),
        ("tool/think wait", f"{summary.total_wait_s:.2f} s in all"
                            + (f"; {summary.waiting_calls:,} calls wait{_spread(waits, ' s')}" if waits else "")),
        (
            "critical path (mean)",
            f"{summary.critical_path_s_mean:.2f} s" if summary.critical_path_s_mean is not None else "no timings",
        ),
        (
            "shared-prefix share",
            f"{summary.shared_prefix_share:.1%} of prompt blocks (by {summary.shared_prefix_basis})"
            if summary.shared_prefix_share is not None
            else "unknown (no text or hashes)",
        ),
        ("recorded span", _recorded_span(summary)),
        ("calls per node", ", ".join(f"{k}: {v}" for k, v in summary.nodes.items())),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
    if show_workflows:
        wt = Table("workflow", "calls", "depth", "width", "critical path s", "makespan s")
        for s in shapes:
            wt.add_row(
                s.id,
                str(s.calls),
                str(s.depth),
                str(s.width),
                f"{s.critical_path_s:.2f}" if s.critical_path_s is not None else "-",
                f"{s.makespan_s:.2f}" if s.makespan_s is not None else "-",
            )
        out.print(wt)

def _spread(sp, unit: str = "") -> str:
    if sp is None:
        return ""
    f = (lambda x: f"{x:,.2f}{unit}") if unit else (lambda x: f"{x:,.0f}")
    return f"; p50 {f(sp.p50)}, p99 {f(sp.p99)}, max {f(sp.max)}"


def _arrivals(summary) -> str:
    if summary.workflows <= 1 or summary.arrival_rate_per_s is None:
        return "all at once" if summary.workflows > 1 else "one workflow"
    span = summary.arrival_span_s
    shown = f"{span:,.1f}" if span >= 1 else f"{span:.2g}"
    return f"over {shown} s ({summary.arrival_rate_per_s:,.3g} workflows/s)"


def _recorded_span(summary) -> str:
    if summary.recorded_span_s is None:
        return "no recorded times"
    if summary.duration_s is None:
        return f"{summary.recorded_span_s:,.1f} s, first to last issue (no end times recorded)"
    return f"{summary.recorded_span_s:,.1f} s, first issue to last end"


# ---------------------------------------------------------------------------- sweep / compare


@cli.command()
@click.argument("traces", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "-c", "config", type=click.Path(path_type=Path), help="TOML file with the sweep (command-line values win).")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Sweep directory (one run directory per point inside).")
@click.option("--engine", "-e", help="Engine adapter (default vllm, launched per batch size).")
@click.option("--url", help="Attach to a running server instead of launching (launch-time axes must stay unset).")
@click.option("--model", help="Model to launch: default (SmolLM2 on CPU), tiny, or a model folder.")
@click.option("--batch", help="Batch sizes (vLLM --max-num-seqs), e.g. 1,8,32,128; 'none' = engine default.")
@click.option("--cap", help="GPU power caps in W, e.g. none,300,200 ('none' = the card's own limit).")
@click.option("--out-scale", help="Output-length scales, e.g. 0.5,1,2 (docs/sweeps.md says how).")
@click.option("--in-scale", help="Input-length scales, e.g. 0.5,1,2.")
@click.option("--prefix-caching", help="Prefix caching per point: on,off (default: the engine's).")
@click.option("--max-model-len", help="vLLM --max-model-len values, e.g. 4096.")
@click.option("--repeat", type=click.IntRange(min=1), help="Repeat each point N times (reported as mean and spread).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.0, 1.0, min_open=True), help="vLLM --gpu-memory-utilization.")
@click.option("--engine-arg", "engine_args", multiple=True, help="Extra launch argument for vLLM, verbatim (repeatable).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port for the launched engine (default: a free one).")
@click.option("--time-scale", type=float, help="Multiply recorded arrival offsets (as in mrw replay).")
@click.option("--wait-scale", type=float, help="Multiply recorded tool/think waits.")
@click.option("--rate", type=float, help="Poisson arrivals, workflows/s.")
@click.option("--seed", type=int, help="Seed of the Poisson arrivals.")
@click.option("--workflows", "max_workflows", type=click.IntRange(min=1), help="Replay only the first N workflows of each trace.")
@click.option("--count-tokens", type=click.Choice(["auto", "model", "estimate"]), help="How scaled traces get input_tokens (default auto: the served model's tokenizer when it is the trace's).")
@click.option("--meter", "meter_spec", help="Energy meters around each point: any of nvml,rapl,process, or none (default all).")
@click.option("--baseline-s", type=click.FloatRange(min=0), help="Idle seconds metered before each point (default 3).")
@click.option("--meter-period-ms", type=click.FloatRange(5, 10000), help="Power timeline sampling period (default 50).")
@click.option("--reset-prefix-cache/--no-reset-prefix-cache", default=None, help="Empty the engine's prefix cache before each point (default on).")
@click.option("--dry-run", is_flag=True, help="Print the points in run order and what is done already; run nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def sweep(traces: tuple[Path, ...], config: Path | None, out: Path | None, engine: str | None, url: str | None, model: str | None,
          batch: str | None, cap: str | None, out_scale: str | None, in_scale: str | None, prefix_caching: str | None,
          max_model_len: str | None, repeat: int | None, gpu_memory_utilization: float | None, engine_args: tuple[str, ...],
          port: int | None, time_scale: float | None, wait_scale: float | None, rate: float | None, seed: int | None,
          max_workflows: int | None, count_tokens: str | None, meter_spec: str | None, baseline_s: float | None,
          meter_period_ms: float | None, reset_prefix_cache: bool | None, dry_run: bool, quiet: bool) -> None:
    """Replay TRACES over a grid of knobs, one run directory per point; rerun to resume.

    The engine is relaunched only when a launch-time knob (batch size, prefix caching, model
    length) changes; the power cap changes between points without a relaunch. Then:
    mrw analyze SWEEP_DIR."""
    import shlex

    from mrw.replay import sweep as sw

    cfg = sw.SweepConfig.from_toml(config) if config else sw.SweepConfig()
    if traces:
        cfg.traces = [str(t) for t in traces]
    for name, val, kind in (("batch", batch, "int"), ("cap", cap, "cap"), ("out_scale", out_scale, "float"),
                            ("in_scale", in_scale, "float"), ("prefix_caching", prefix_caching, "bool"),
                            ("max_model_len", max_model_len, "int")):
        if val is not None:
            setattr(cfg, name, sw.parse_list(val, kind, name.replace("_", "-")))
    for name, val in (("out", out), ("engine", engine), ("url", url), ("model", model), ("repeat", repeat),
                      ("gpu_memory_utilization", gpu_memory_utilization), ("port", port), ("count_tokens", count_tokens),
                      ("meters", meter_spec), ("baseline_s", baseline_s), ("meter_period_ms", meter_period_ms),
                      ("reset_prefix_cache", reset_prefix_cache)):
        if val is not None:
            setattr(cfg, name, str(val) if isinstance(val, Path) else val)
    if engine_args:
        cfg.engine_args = [a for arg in engine_args for a in shlex.split(arg)]
    for name, val in (("time_scale", time_scale), ("wait_scale", wait_scale), ("rate", rate), ("seed", seed),
                      ("max_workflows", max_workflows)):
        if val is not None:
            cfg.replay[name] = val
    cfg.validate()

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    if dry_run:
        res = sw.run_sweep(cfg, argv=sys.argv, progress=False, dry_run=True, log=log)
        st = {d["name"]: d["status"] for d in sw.read_manifest(res.root)["points"]}
        for name, status in st.items():
            click.echo(f"{status:10} {name}")
        return
    res = sw.run_sweep(cfg, argv=sys.argv, progress=not quiet, log=log)
    ran = res.completed - res.skipped
    console.print(
        f"sweep {res.root}: {res.completed}/{res.total} points completed ({res.skipped} before this run, {ran} now, "
        f"{res.launches} engine launch(es), {res.wall_s:.0f} s)",
        highlight=False, soft_wrap=True,
    )
    if res.failed:
        raise sw.SweepError(f"{len(res.failed)} point(s) failed ({', '.join(res.failed[:3])}{', ...' if len(res.failed) > 3 else ''}); "
                            f"see {res.root}/sweep.json; rerun the same command to retry them")
    if res.with_failed_calls:
        console.print(f"{len(res.with_failed_calls)} completed point(s) had failed calls ({', '.join(res.with_failed_calls[:3])}"
                      f"{', ...' if len(res.with_failed_calls) > 3 else ''}): `mrw analyze` names each cause; they are not a "
                      "measurement of their configuration", style="yellow", highlight=False, soft_wrap=True)
    console.print(f"next: mrw analyze {res.root}", highlight=False)


@cli.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(run_a: Path, run_b: Path, as_json: bool) -> None:
    """Two runs side by side (e.g. Parrot vs vLLM on one trace): B − A and (B − A) / A."""
    import orjson

    from mrw.analysis.compare import compare_runs, print_comparison

    cmp = compare_runs(run_a, run_b)
    if as_json:
        click.echo(orjson.dumps(cmp.to_dict(), option=orjson.OPT_INDENT_2).decode())
        for w in cmp.warnings:
            console.print(f"warning: {w}", style="yellow", highlight=False, soft_wrap=True)
        return
    print_comparison(cmp, out)


def _analyze_sweep(path: Path, *, figures: bool = True, as_json: bool = False) -> bool:
    """`mrw analyze SWEEP_DIR`: the sweep table and figures. False if `path` is no sweep."""
    from mrw.replay.sweep import MANIFEST

    if not (path / MANIFEST).exists():
        return False
    from mrw.analysis.sweep_table import analyze_sweep

    res = analyze_sweep(path, None if as_json else out, figures=figures)
    if as_json:
        import orjson

        click.echo(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
    return True


# ---------------------------------------------------------------------------- replay / analyze


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--engine", "-e", default="vllm", show_default=True, help="Engine adapter: vllm, openai, parrot, ...")
@click.option("--url", help="Attach to a running server (e.g. http://localhost:8000/v1). Default: launch the embedded vLLM.")
@click.option("--model", help="Served model name (attach; default: the only one served) or model to launch.")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Run directory (default: runs/TRACE-ENGINE-TIME).")
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="Multiply recorded arrival offsets (0.5 = twice the load, 0 = all at once).")
@click.option("--rate", type=float, help="Poisson arrivals at this many workflows/s instead of the recorded offsets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Poisson arrivals.")
@click.option("--wait-scale", type=float, default=1.0, show_default=True, help="Multiply recorded tool/think waits (0 = none).")
@click.option("--live-refs", is_flag=True, help="Splice live upstream outputs into prompts (default: the recorded text).")
@click.option("--input-lengths", type=click.Choice(["recorded", "natural"]), default=None,
              help="recorded: every prompt exactly its recorded input tokens in the served tokenizer, prefix sharing kept "
                   "(default where the engine takes token-id prompts); natural: the recorded text as is.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The served model's tokenizer folder, when the engine's model folder is not on this host.")
@click.option("--trace-tokenizer", "trace_tokenizer_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Folder of the tokenizer the trace's counts are in (exact shared-prefix lengths for recorded lengths).")
@click.option("--prompt-memory", "prompt_memory_mb", type=click.FloatRange(min=1), default=None,
              help="MB of request bodies built ahead (default: a quarter of free memory, at most 4096).")
@click.option("--force-length/--no-force-length", default=True, show_default=True, help="Force each output to its recorded token count.")
@click.option("--workflows", "max_workflows", type=click.IntRange(min=1), help="Replay only the first N workflows.")
@click.option("--max-num-seqs", type=click.IntRange(min=1), help="Engine batch size (vLLM --max-num-seqs).")
@click.option("--prefix-caching/--no-prefix-caching", default=None, help="Engine prefix caching on/off (default: engine's).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.0, 1.0, min_open=True), help="vLLM --gpu-memory-utilization.")
@click.option("--max-model-len", type=click.IntRange(min=1), help="vLLM --max-model-len.")
@click.option("--engine-arg", "engine_args", multiple=True, help="Extra launch argument passed through verbatim (repeatable).")
@click.option("--openai-extra", help="JSON object merged into every request body (vendor fields), --engine openai.")
@click.option("--openai-supports", help="Comma list of what the server honours: min_tokens,ignore_eos,token_ids,prefix_caching,metrics.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the API key (never recorded).")
@click.option("--request-timeout", type=float, default=600.0, show_default=True, help="Seconds of silence on a stream before a call fails.")
@click.option("--max-connections", type=click.IntRange(min=1), default=4096, show_default=True, help="HTTP connection pool size.")
@click.option("--save-outputs", is_flag=True, help="Keep generated text in requests.jsonl.")
@click.option("--no-token-times", is_flag=True, help="Do not keep per-chunk arrival times in requests.jsonl.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--meter", "meter_spec", default="nvml,rapl,process", show_default=True,
              help="Energy meters: any of nvml,rapl,process, or none (docs/energy.md).")
@click.option("--baseline-s", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Idle seconds metered with the engine up, before the replay (net = gross - idle).")
@click.option("--meter-period-ms", type=click.FloatRange(5, 10000), default=50.0, show_default=True,
              help="Power timeline sampling period.")
@click.option("--cap", type=float, default=None, help="GPU power cap in watts, per GPU; restored afterwards.")
@click.option("--lock-clocks", default=None, help="Lock GPU SM clocks: MHZ or MIN-MAX; reset afterwards.")
# -- Parrot (--engine parrot); see docs/engines.md
@click.option("--parrot-url", help="Attach to a running Parrot serve core. Default: launch vLLM + mrw proxy + Parrot (needs MRW_PARROT_SRC).")
@click.option("--parrot-proxy-url", help="The mrw backend proxy Parrot's engine forwards through (exact output lengths, token counts).")
@click.option("--parrot-criteria", type=click.Choice(["latency", "throughput"]), default="latency", show_default=True,
              help="Parrot's performance criteria for every output.")
@click.option("--parrot-sched/--no-parrot-sched", default=True, show_default=True,
              help="Launched Parrot: its DAG- and context-aware scheduler switches (app_fifo, graph_group, ctx_group, ctx_aware).")
def replay(trace: Path, engine: str, url: str | None, model: str | None, out: Path | None, time_scale: float, rate: float | None,
           seed: int, wait_scale: float, live_refs: bool, input_lengths: str | None, tokenizer_dir: Path | None,
           trace_tokenizer_dir: Path | None, prompt_memory_mb: float | None, force_length: bool, max_workflows: int | None,
           max_num_seqs: int | None,
           prefix_caching: bool | None, gpu_memory_utilization: float | None, max_model_len: int | None,
           engine_args: tuple[str, ...], openai_extra: str | None, openai_supports: str | None, api_key_env: str,
           request_timeout: float, max_connections: int, save_outputs: bool, no_token_times: bool, quiet: bool,
           meter_spec: str, baseline_s: float, meter_period_ms: float, cap: float | None, lock_clocks: str | None,
           parrot_url: str | None, parrot_proxy_url: str | None, parrot_criteria: str, parrot_sched: bool) -> None:
    """Replay TRACE against an engine into a run directory (then: mrw analyze RUN_DIR)."""
    import shlex

    import orjson

    from mrw.errors import KnobError
    from mrw.replay.driver import RichProgress, replay as run_replay
    from mrw.replay.engines.base import EngineKnobs, EngineOptions
    from mrw.replay.scheduler import ReplayOptions

    if rate is not None and rate <= 0:
        raise click.BadParameter("must be > 0", param_hint="--rate")
    if time_scale < 0 or wait_scale < 0:
        raise click.BadParameter("must be >= 0", param_hint="--time-scale/--wait-scale")
    extra: dict = {"api_key_env": api_key_env, "quiet": quiet}
    if openai_extra:
        try:
            extra["body"] = orjson.loads(openai_extra)
        except orjson.JSONDecodeError as e:
            raise KnobError(f"--openai-extra: not valid JSON ({e})") from None
        if not isinstance(extra["body"], dict):
            raise KnobError("--openai-extra: must be a JSON object, e.g. '{\"top_k\": 1}'")
    if openai_supports:
        extra["supports"] = [s.strip() for s in openai_supports.split(",") if s.strip()]
    if engine == "parrot":
        if url and parrot_url:
            raise click.BadParameter("give the serve core once, as --parrot-url", param_hint="--url/--parrot-url")
        url = parrot_url or url
        extra.update(parrot_proxy_url=parrot_proxy_url, parrot_criteria=parrot_criteria, parrot_scheduler=parrot_sched)
    elif parrot_url or parrot_proxy_url:
        raise click.BadParameter("only with --engine parrot", param_hint="--parrot-url/--parrot-proxy-url")
    knobs = EngineKnobs(
        max_num_seqs=max_num_seqs,
        prefix_caching=prefix_caching,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        engine_args=[a for arg in engine_args for a in shlex.split(arg)],
    )
    eo = EngineOptions(url=url, model=model, knobs=knobs, request_timeout_s=request_timeout,
                       max_connections=max_connections, extra=extra)
    ro = ReplayOptions(time_scale=time_scale, wait_scale=wait_scale, rate=rate, seed=seed, live_refs=live_refs,
                       force_output_length=force_length, max_workflows=max_workflows, save_outputs=save_outputs,
                       token_times=not no_token_times, input_lengths=input_lengths,
                       tokenizer=str(tokenizer_dir) if tokenizer_dir else None,
                       trace_tokenizer=str(trace_tokenizer_dir) if trace_tokenizer_dir else None,
                       prompt_memory_mb=prompt_memory_mb)
    from mrw.replay.meters import MeteringOptions, parse_meter_spec

    parse_meter_spec(meter_spec)  # a bad meter name fails before anything starts
    mo = MeteringOptions(meters=meter_spec, baseline_s=baseline_s, period_s=meter_period_ms / 1000,
                         cap_w=cap, lock_clocks=lock_clocks)
    res = run_replay(trace, engine, eo, ro, out, progress=None if quiet else RichProgress(), metering=mo)
    tc = res.token_check
    line = f"{res.status}: {res.finished_ok}/{res.total} calls ok, {res.failed} failed, {res.wall_s:.1f} s -> {res.run_dir}"
    console.print(line, highlight=False, soft_wrap=True)
    if res.status == "completed" and res.failed:
        console.print(f"warning: {res.failed} call(s) failed or were skipped; see `mrw analyze {res.run_dir}` and requests.jsonl",
                      style="yellow", highlight=False, soft_wrap=True)
    for kind in ("output", "input"):
        if tc.get(f"{kind}_mismatch") and (kind == "output" or res.input_lengths == "recorded"):
            ex = ", ".join(f"{e['call_id']} {e['got']}/{e['expected']}" for e in tc[f"{kind}_examples"][:3])
            console.print(f"warning: {tc[f'{kind}_mismatch']} response(s) with an {kind} token count other than recorded (e.g. {ex})",
                          style="yellow", highlight=False, soft_wrap=True)
    if res.status == "interrupted":
        import signal as _signal

        raise SystemExit(128 + (res.signal or _signal.SIGINT))
    click.echo(str(res.run_dir))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print summary.json's content instead of tables.")
@click.option("--workflows", "show_workflows", is_flag=True, help="Also list every workflow's makespan and critical path.")
@click.option("--no-write", is_flag=True, help="Do not write summary.json into the run directories.")
@click.option("--plot", is_flag=True, help="Also draw RUN_DIR/timeline.png (and compare.png for several runs; needs mrw[analysis]).")
@click.option("--plot-out", type=click.Path(path_type=Path), default=Path("compare.png"), show_default=True,
              help="Where the comparison figure of several runs goes.")
def analyze(run_dirs: tuple[Path, ...], as_json: bool, show_workflows: bool, no_write: bool, plot: bool, plot_out: Path) -> None:
    """Summarise run directories: throughput, TTFT/TPOT/E2E, makespans, critical paths, energy.
    Several RUN_DIRS are compared side by side. A SWEEP_DIR (from mrw sweep) gives the sweep's
    table and figures."""
    import orjson

    from mrw.analysis import summary as sm

    if len(run_dirs) == 1 and _analyze_sweep(run_dirs[0], as_json=as_json):
        return
    sums = [sm.summarize(d, write=not no_write) for d in run_dirs]
    if plot:
        from mrw.analysis.plots import plot_compare, plot_run

        for d in run_dirs:
            console.print(f"figure: {plot_run(d)}", highlight=False)
            if (Path(d) / "power.csv").exists():
                from mrw.analysis.energy import plot_power

                if (fig := plot_power(d)) is not None:
                    console.print(f"figure: {fig}", highlight=False)
        if len(run_dirs) > 1:
            console.print(f"figure: {plot_compare(list(run_dirs), plot_out)}", highlight=False)
    if as_json:
        doc = sums[0] if len(sums) == 1 else {"runs": sums}
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    if len(sums) == 1:
        sm.print_summary(sums[0], out, show_workflows=show_workflows)
    else:
        sm.print_comparison(sums, out)


# ---------------------------------------------------------------------------- energy


def _print_energy(doc: dict) -> None:
    from mrw.analysis.energy import summary_lines

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in summary_lines(doc):
        t.add_row(k, v)
    out.print(t)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--meter", "meter_spec", default="nvml,rapl,process", show_default=True,
              help="Meters to run: any of nvml,rapl,process, or none.")
@click.option("--baseline-s", type=float, default=5.0, show_default=True, help="Idle seconds metered before CMD starts.")
@click.option("--period-ms", type=float, default=50.0, show_default=True, help="Timeline sampling period.")
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Directory for energy.json and power.csv [default: runs/meter-TIMESTAMP].")
@click.option("--cap", type=float, default=None, help="GPU power cap in watts, per GPU, restored afterwards.")
@click.option("--lock-clocks", default=None, help="Lock SM clocks: MHZ or MIN-MAX, reset afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print energy.json instead of the summary.")
def meter(command: tuple[str, ...], meter_spec: str, baseline_s: float, period_ms: float, out_dir: Path | None,
          cap: float | None, lock_clocks: str | None, as_json: bool) -> None:
    """Meter the energy of any command: mrw meter [OPTIONS] -- CMD [ARGS]...

    Measures an idle baseline, then runs CMD with GPU (NVML), CPU/DRAM (RAPL) and process
    meters sampling in the background; writes energy.json and power.csv; exits with CMD's code.
    """
    import subprocess
    import time

    import orjson

    from mrw.analysis.energy import finalize
    from mrw.replay.knobs import apply_knobs, signals_as_exceptions
    from mrw.replay.meters import MeterSet, parse_meter_spec

    parse_meter_spec(meter_spec)  # fail on a bad name before anything runs
    run_dir = out_dir or Path("runs") / time.strftime("meter-%Y%m%d-%H%M%S")
    rc = 0
    with signals_as_exceptions(), apply_knobs(cap_w=cap, lock_clocks=lock_clocks, run_dir=run_dir):
        with MeterSet.for_run(run_dir, meters=meter_spec, baseline_s=baseline_s, period_s=period_ms / 1000) as m:
            try:
                proc = subprocess.Popen(list(command))
            except OSError as e:
                raise MrwError(f"cannot run {command[0]!r}: {e.strerror}") from e
            m.set_engine_pid(proc.pid)
            try:
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    doc = finalize(run_dir)
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_energy(doc)
        console.print(f"[dim]{run_dir}/energy.json, {run_dir}/power.csv[/dim]")
    if rc:
        raise SystemExit(rc if rc > 0 else 128 - rc)


@cli.command("restore-knobs")
def restore_knobs() -> None:
    """Put back GPU power limits and clock locks left by an mrw that was killed (SIGKILL)."""
    from mrw.replay.knobs import restore_pending

    done = restore_pending()
    for line in done:
        out.print(line, highlight=False)
    if not done:
        out.print("nothing to restore")


# ---------------------------------------------------------------------------- sharing
# Trace sets (pack/unpack/verify), anonymisation and foreign formats (import/export):
# mrw.tracesets, mrw.anonymize, mrw.formats. See docs/sharing.md.


def _print_verify(report) -> None:
    for f in report.files:
        if f.ok:
            what = f" ({f.workflows} workflows, {f.calls} calls)" if f.calls is not None else ""
            out.print(f"{f.path}: ok{what}", highlight=False, soft_wrap=True)
        else:
            for p in f.problems:
                out.print(f"{f.path}: FAILED: {p}", highlight=False, soft_wrap=True)
    for p in report.problems:
        out.print(f"{report.source}: FAILED: {p}", highlight=False, soft_wrap=True)


def _limits(max_bytes: int | None):
    from mrw.tracesets import DEFAULT_LIMITS, Limits

    if max_bytes is None:
        return DEFAULT_LIMITS
    return Limits(max_member_bytes=max_bytes, max_total_bytes=max_bytes)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Archive to write (.tar.gz).")
@click.option("--licence", "--license", "licence", default="", help="Licence of the set, e.g. CC-BY-4.0.")
@click.option("--provenance", default="", help="Free text: who recorded it, how, on what hardware, for what.")
@click.option("--provenance-file", type=click.Path(path_type=Path, dir_okay=False), help="Read --provenance from a file.")
def pack(directory: Path, output: Path, licence: str, provenance: str, provenance_file: Path | None) -> None:
    """Pack a DIRECTORY of traces into a trace set: MANIFEST.json (checksums, versions,
    workloads, models, licence, provenance) + the traces, as one .tar.gz."""
    from mrw.tracesets import pack as do_pack

    if provenance_file is not None:
        provenance = provenance_file.read_text(encoding="utf-8").strip()
    man, skipped = do_pack(directory, output, licence=licence, provenance=provenance)
    for p in skipped:
        console.print(f"mrw: note: skipped {p} (not a trace, README or LICENSE)", highlight=False)
    if not licence:
        console.print("mrw: note: no --licence given; say under which terms others may use the set", highlight=False)
    n = sum(1 for f in man.files if f.kind == "trace")
    out.print(f"{output}: {n} traces ({', '.join(man.workloads)}), manifest with SHA-256 of {len(man.files)} files", highlight=False)


@cli.command()
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="New or empty directory.")
@click.option("--max-bytes", type=int, help="Bound on the decompressed size (default 8 GiB in all, 2 GiB a file).")
def unpack(archive: Path, output: Path, max_bytes: int | None) -> None:
    """Unpack a trace set safely (nothing outside OUTPUT, no links or devices, sizes bounded),
    then verify every file; exit 1 if any fails."""
    from mrw.tracesets import unpack as do_unpack
    from mrw.tracesets import verify_dir

    limits = _limits(max_bytes)
    man = do_unpack(archive, output, limits=limits)
    report = verify_dir(output, limits=limits)
    _print_verify(report)
    if man.licence:
        out.print(f"licence: {man.licence}", highlight=False)
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--max-bytes", type=int, help="Bound on the decompressed size of an archive.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file results as JSON.")
def verify(path: Path, max_bytes: int | None, as_json: bool) -> None:
    """Verify a trace set (directory or .tar.gz): every file's checksum, schema and semantics,
    reported per file; exit 1 on any failure."""
    from mrw.tracesets import verify as do_verify

    report = do_verify(path, limits=_limits(max_bytes))
    if as_json:
        import orjson

        d = {"source": report.source, "ok": report.ok, "problems": report.problems,
             "files": [{"path": f.path, "ok": f.ok, "problems": f.problems} for f in report.files]}
        click.echo(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_verify(report)
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Anonymised trace to write.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Local tokenizer directory of the model the trace was recorded with (required).")
@click.option("--block-size", default=16, show_default=True, help="Tokens per hashed block.")
def anonymize(src: Path, output: Path, tokenizer_dir: Path | None, block_size: int) -> None:
    """Remove all text from a trace, keeping token counts, the DAG, timings and prefix sharing
    (salted chained hashes of token blocks; the salt is not kept)."""
    from mrw.anonymize import anonymize_file

    if output.resolve() == src.resolve():
        raise click.UsageError("write the anonymised trace to a new file, not over the original")
    rep = anonymize_file(src, output, tokenizer_dir=tokenizer_dir, block_size=block_size)
    out.print(f"{output}: {rep.calls} calls, text removed, hash_ids of {block_size}-token blocks", highlight=False)


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Trace to write.")
@click.option("--copies", type=click.IntRange(min=1), default=1, show_default=True,
              help="Copies of every workflow, as separate as distinct workflows (more concurrent load).")
@click.option("--stagger", "stagger_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds between the arrivals of successive copies.")
@click.option("--out-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Output-length scale (docs/sweeps.md says how).")
@click.option("--in-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Input-length scale.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Model folder whose tokenizer recounts input_tokens (default: estimated from characters).")
def transform(src: Path, output: Path, copies: int, stagger_s: float, out_scale: float, in_scale: float,
              tokenizer_dir: Path | None) -> None:
    """Make a trace of the same workload with more workflows or other lengths, deterministically
    (same source and options, same bytes); what was done goes to the header's extra.transform."""
    from mrw import transform as tf
    from mrw import validate as v
    from mrw.replay.run import sha256_file
    from mrw.trace import dump, load

    if output.resolve() == src.resolve():
        raise click.UsageError("write the transformed trace to a new file, not over the original")
    sha = sha256_file(src)  # of the file as stored, as `mrw sweep` records its sources
    trace = load(src)
    counter = tf.hf_token_counter(str(tokenizer_dir)) if tokenizer_dir else None
    name = f"the tokenizer in {tokenizer_dir}" if tokenizer_dir else None
    if out_scale != 1.0 or in_scale != 1.0 or counter is not None:
        trace = tf.scale_trace(trace, out_scale, in_scale, count_tokens=counter, token_counter_name=name, source_sha256=sha)
    if copies > 1:
        trace = tf.replicate(trace, copies, stagger_s=stagger_s, count_tokens=counter, token_counter_name=name,
                             source_sha256=sha)
    v.raise_if_problems(v.check(trace.to_dict()), str(output))
    dump(trace, output)
    out.print(f"{output}: {len(trace.workflows)} workflows, {trace.n_calls} calls", highlight=False)


def _reading_progress(src: Path):
    """A progress bar of the bytes an import has read, on a terminal (a release is gigabytes)."""
    import contextlib

    if not console.is_terminal:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn(f"reading {src.name}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as p:
            task = p.add_task("read", total=None)
            yield lambda done, total: p.update(task, completed=done, total=total)

    return bar()


def _tokenizer_opt(tokenizer_dir: Path | None):
    if tokenizer_dir is None:
        return None
    from mrw.anonymize import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@cli.command(name="import")
@click.argument("fmt", metavar="FORMAT")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="mrw trace to write.")
@click.option("--block-size", type=click.IntRange(min=1), help="Tokens per hash_ids block (mooncake: 512, bailian: 16; "
              "copilot-agent, tracelab: the block size cached tokens are cut into, 64).")
@click.option("--group", type=click.Choice(["none", "session"]), default="none", show_default=True,
              help="mooncake: make one workflow per AIPerf session_id (a chain of turns).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Tokenizer directory, to count tokens a format does not carry (aiperf-dag, otel).")
@click.option("--workload", help="Workload name for the header (default: the format).")
def import_(fmt: str, src: Path, output: Path, block_size: int | None, group: str, tokenizer_dir: Path | None,
            workload: str | None) -> None:
    """Import a foreign trace as an mrw trace. FORMAT: mooncake, bailian, azure, weka, tracelab,
    copilot-agent, aiperf-dag, otel (docs/sharing.md). SRC is a file or, for weka, tracelab and
    copilot-agent, a directory of them (gzip is read as it is). What the format cannot express
    is printed and kept in the header's extra.import; a file of another format is named as such."""
    from mrw.formats import import_trace
    from mrw.trace import dump

    with _reading_progress(src) as progress:
        trace, notes = import_trace(src, fmt, progress=progress, block_size=block_size, group=group,
                                    tokenizer=_tokenizer_opt(tokenizer_dir), workload=workload)
    dump(trace, output)
    for n in notes:
        console.print(f"mrw: note: {fmt}: {n}", highlight=False, soft_wrap=True)
    out.print(f"{output}: {len(trace.workflows)} workflows, {trace.n_calls} calls", highlight=False)


@cli.command(name="export")
@click.argument("fmt", metavar="FORMAT")
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="File to write (otel: a directory).")
@click.option("--block-size", type=int, help="mooncake: tokens per hash_ids block (a multiple of the trace's).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Tokenizer directory: hash text prompts (mooncake) or synthesise text for text-free calls.")
def export(fmt: str, src: Path, output: Path, block_size: int | None, tokenizer_dir: Path | None) -> None:
    """Export an mrw trace to a foreign FORMAT (mooncake, azure, aiperf-dag, otel); prints what is lost."""
    from mrw.formats import export_trace
    from mrw.trace import load

    notes = export_trace(load(src), output, fmt, block_size=block_size, tokenizer=_tokenizer_opt(tokenizer_dir))
    for n in notes:
        console.print(f"mrw: note: {fmt}: {n}", highlight=False, soft_wrap=True)
    out.print(f"{output}: written", highlight=False)


# ---------------------------------------------------------------------------- record (generators)

from mrw.generators.cli import record as _record  # noqa: E402

cli.add_command(_record)


# ---------------------------------------------------------------------------- demo


@cli.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Folder for the demo's trace, run directory and figures.")
@click.option("--workflows", default=2, show_default=True, help="Documents to summarise.")
@click.option("--chunks", default=3, show_default=True, help="Chunks per document (the chain's depth).")
def demo(out: Path, workflows: int, chunks: int) -> None:
    """Record -> replay -> analyze on the embedded default engine (CPU, no GPU, no API key).

    Starts one local vLLM serving SmolLM2-135M-Instruct, records a small chain-summarization
    trace, validates it, replays it against the same server and analyses the run. Each step is
    the ordinary command, printed before it runs, so you can repeat any of them by hand.
    """
    from mrw.launch import VllmOptions, VllmServer
    from mrw.models import default_model

    spec = default_model()
    trace = out / "summarization.json.gz"
    run = out / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    with VllmServer(spec, VllmOptions(max_model_len=8192), log_path=out / "vllm.log") as server:
        console.print(f"vLLM ({spec.name}) ready at {server.base_url} after {server.startup_s:.0f} s", highlight=False)
        steps = [
            ["record", "summarization", "--base-url", server.base_url, "--tokenizer", str(spec.path),
             "--workflows", str(workflows), "--max-chunks", str(chunks), "--chunk-tokens", "512",
             "--summary-tokens", "32", "-o", str(trace)],
            ["validate", str(trace)],
            ["info", str(trace)],
            ["replay", str(trace), "--url", server.base_url, "-o", str(run)],
        ]
        for args in steps:
            console.print(f"[bold]$ mrw {' '.join(args)}[/bold]", highlight=False)
            cli.main(args, standalone_mode=False)
    args = ["analyze", str(run), "--plot"]
    console.print(f"[bold]$ mrw {' '.join(args)}[/bold]", highlight=False)
    cli.main(args, standalone_mode=False)


if __name__ == "__main__":
    main()
