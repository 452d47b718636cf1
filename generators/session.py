"""One recording session: probe the engine, pick the tokenizer, plan the workflows, run them
through the recorder with progress, and write the trace (also on Ctrl-C: the workflows
completed so far, as a valid trace).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mrw.errors import MrwError
from mrw.generators.base import REGISTRY, ChatLLM, Env, poisson_arrivals
from mrw.generators.recorder import Recorder, WorkflowSpec, observe_httpx, run_workflows
from mrw.generators.textdeps import MIN_CHARS
from mrw.generators.tokens import (Tokenizer, approx_tokenizer, engine_tokenizer, local_tokenizer, probe_engine,
                                   root_url)
from mrw.trace import Trace, new_header


class RecordError(MrwError):
    """A recording could not run as asked."""


@dataclass
class RecordOptions:
    base_url: str
    model: str | None = None
    api_key: str | None = None
    out: str | os.PathLike = "trace.json.gz"
    seed: int = 0
    concurrency: int = 0
    temperature: float = 0.7
    natural_lengths: bool = False
    sampling_seeds: bool = False
    keep_text: bool = True
    tokenizer: str | None = None  # a local tokenizer folder
    tokenizer_name: str | None = None  # what the header calls it (e.g. the hub id of the model)
    min_ref_chars: int = MIN_CHARS
    progress: bool = True
    extra_header: dict = field(default_factory=dict)


def choose_tokenizer(opts: RecordOptions, model: str, served_root: str | None) -> Tokenizer:
    """A local tokenizer (given, or the folder the engine says it serves), else the engine's
    /tokenize, else 4 characters per token."""
    for path in (opts.tokenizer, served_root):
        if path and Path(path, "tokenizer_config.json").exists():
            return local_tokenizer(path, opts.tokenizer_name or model)
    if opts.tokenizer:
        raise RecordError(f"--tokenizer {opts.tokenizer}: no tokenizer_config.json there; give a local model folder")
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    return engine_tokenizer(root_url(opts.base_url), model, headers) or approx_tokenizer()


def _served_root(base_url: str, api_key: str | None, model: str) -> str | None:
    import httpx

    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=10)
        for m in r.json().get("data") or []:
            if m.get("id") == model and isinstance(m.get("root"), str):
                return m["root"]
    except Exception:
        pass
    return None


class _Progress:
    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled = enabled
        self.p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[extra]}"), TimeElapsedColumn(),
                              console=Console(stderr=True), transient=False)
            self.wf = self.p.add_task(f"{label}: workflows", total=total, extra="")
            self.calls = 0

    def __enter__(self):
        if self.p:
            self.p.start()
        return self

    def __exit__(self, *exc):
        if self.p:
            self.p.stop()

    def call_done(self) -> None:
        if self.p:
            self.calls += 1
            self.p.update(self.wf, extra=f"{self.calls} calls done")

    def workflow_done(self) -> None:
        if self.p:
            self.p.advance(self.wf)


def _record(opts: RecordOptions, workload: str, generator: dict, plan: Callable[[Env], list[WorkflowSpec]],
            observe_all: bool = False) -> Trace:
    api_key = opts.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    info = probe_engine(opts.base_url, api_key if api_key != "EMPTY" else None, opts.model)
    tok = choose_tokenizer(opts, info.model, _served_root(opts.base_url, api_key, info.model))
    header = new_header(
        workload,
        generator=generator,
        recorded_against={
            "engine": info.engine,
            "engine_version": info.engine_version,
            "model": info.model,
            "tokenizer": opts.tokenizer_name or (tok.name if tok.method != "approx" else None),
        },
        extra={"recording": {"chunking": f"{tok.method}:{tok.name}", "concurrency": opts.concurrency,
                             "python": sys.version.split()[0], **opts.extra_header}},
    )
    rec = Recorder(header, opts.base_url, out=opts.out, min_chars=opts.min_ref_chars, keep_text=opts.keep_text,
                   token_count=tok.count)
    llm = ChatLLM(rec, opts.base_url, info.model, api_key, temperature=opts.temperature, seed=opts.seed,
                  natural_lengths=opts.natural_lengths, sampling_seeds=opts.sampling_seeds)
    env = Env(llm, tok, opts.seed)
    specs = plan(env)
    if not specs:
        raise RecordError("the workload planned no workflow; ask for --workflows 1 or more")

    llm.client()  # build the client (and import openai) before the clock starts

    async def main() -> None:
        try:
            await run_workflows(rec, specs, opts.concurrency)
        finally:
            await llm.aclose()

    t0 = time.monotonic()
    with _Progress(opts.progress, len(specs), workload) as prog:
        rec.on_call, rec.on_workflow = prog.call_done, prog.workflow_done
        rec.t0 = time.monotonic()
        env_patch = _openai_env(opts.base_url, api_key) if observe_all else None
        old_term = _term_as_interrupt()
        try:
            if observe_all:
                with env_patch, observe_httpx(rec):
                    asyncio.run(main())
            else:
                asyncio.run(main())
        except KeyboardInterrupt:
            rec.header.extra["recording"]["interrupted"] = True
            if rec.completed:  # the whole workflows so far; none: leave any older file alone
                rec.checkpoint(force=True)
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
    rec.header.extra["recording"]["wall_s"] = round(time.monotonic() - t0, 3)
    if not rec.completed:  # write nothing: an empty trace would only clobber a good one
        first = next(iter(rec.failed.items()), ("-", "no workflow ran"))
        raise RecordError(f"no workflow completed, no trace written; {len(rec.failed)} failed, the first "
                          f"({first[0]}) with {first[1][:300]} (if the engine died, its log says why)")
    rec.checkpoint(force=True)
    return rec.trace()


def _term_as_interrupt():
    """SIGTERM ends a recording like Ctrl-C (trace written, embedded engine stopped). Returns
    the previous handler, or None off the main thread (signals cannot be set there)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


class _openai_env:
    """Point default-built OpenAI clients (OPENAI_BASE_URL, OPENAI_API_KEY) at the engine while
    a user graph is recorded; restore the environment afterwards."""

    def __init__(self, base_url: str, api_key: str):
        self.new = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": api_key}

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.new}
        os.environ.update(self.new)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def record_workload(name: str, params: Any, opts: RecordOptions) -> Trace:
    """Record a built-in workload (see `mrw.generators.REGISTRY`)."""
    wl = REGISTRY[name]
    gen = {"name": f"mrw.generators.{name}", "params": _jsonable(asdict(params)), "seed": opts.seed}
    return _record(opts, name, gen, lambda env: wl.plan(params, env))


def load_graph(ref: str) -> Any:
    """`package.module:attr` -> a compiled graph (or a zero-argument factory returning one).
    The current directory is importable, as for `python -m`."""
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise RecordError(f"--graph {ref!r}: expected package.module:graph")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise RecordError(f"--graph {ref}: cannot import {mod_name} ({e})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RecordError(f"--graph {ref}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not hasattr(obj, "ainvoke") and callable(obj):
        obj = obj()
    if hasattr(obj, "compile") and not hasattr(obj, "ainvoke"):
        obj = obj.compile()
    if not hasattr(obj, "ainvoke"):
        raise RecordError(f"--graph {ref}: {type(obj).__name__} is not a compiled LangGraph graph (no ainvoke)")
    return obj


def record_graph(ref: str, inputs_path: str | os.PathLike, opts: RecordOptions, rate: float = 0.0,
                 workload: str | None = None) -> Trace:
    """Record a user's compiled LangGraph graph, one workflow per line of the inputs JSONL.

    A line is the graph's input state; a line of the form {"input": {...}, "id": ..., "tags": {...}}
    also names the workflow and tags it."""
    from mrw.generators.corpus import jsonl

    graph = load_graph(ref)
    rows = jsonl(inputs_path, "", "--inputs", ())
    gen = {"name": "mrw.generators.graph", "params": {"graph": ref, "inputs": Path(inputs_path).name, "rate": rate},
           "seed": opts.seed}

    def plan(env: Env) -> list[WorkflowSpec]:
        arrivals = poisson_arrivals(len(rows), rate, env.rng("graph", "arrivals"))
        specs = []
        for i, row in enumerate(rows):
            wrapped = isinstance(row, dict) and "input" in row and set(row) <= {"input", "id", "tags"}
            inputs = row["input"] if wrapped else row
            wid = str(row.get("id", f"wf-{i:03d}")) if wrapped else f"wf-{i:03d}"
            tags = {"kind": "graph", "graph": ref, **(row.get("tags", {}) if wrapped else {})}
            specs.append(WorkflowSpec(wid, graph, inputs, arrivals[i], tags))
        return specs

    return _record(opts, workload or ref.rpartition(":")[2], gen, plan, observe_all=True)


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
