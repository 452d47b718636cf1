"""`mrw sweep`: a grid of replays (traces x batch x power cap x length scales x repeats).

    SWEEP_DIR/
      sweep.json        the manifest: settings, grid, every point with its status; rewritten
                        atomically at every change, so it is valid at any moment
      sweep.lock        held (flock) while a sweep runs here: two sweeps never share a dir
      traces/           the (scaled) traces the points replay, built deterministically
      runs/POINT/       one run directory per point (run.json, requests.jsonl, ...,
                        point.json: the point's knobs, summary.json: `mrw analyze`)
      attempts/POINT.N/ earlier, unfinished attempts of a point (moved aside, never deleted)
      engines/KEY.log   the log of each engine launch
      analysis/         what `mrw analyze SWEEP_DIR` writes (table, figures)

Point names are stable functions of the knob values (`summarization-b8-cap300-out0.5-in1-r1`),
so a rerun of the same command finds its finished points by name and skips them; an
unfinished one (interrupted, failed, or killed mid-write) is moved to attempts/ and redone.
The truth about a point is its run directory's run.json, not the manifest: a sweep killed
with SIGKILL loses nothing that finished.

Order: points are grouped by launch-time knobs (batch size, prefix caching, model length),
so the engine is launched once per group; within a group repeats are outermost (spreading
them in time), then power caps (changed between points through NVML, never by relaunching; in snake
order, so that one block ends at the cap the next begins with), then traces and length
scales. Before each point the engine's prefix cache is reset, so a
point never profits from the KV cache its predecessor left behind and results do not depend
on the order (or on where a resume started).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import signal
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson

from mrw.errors import EngineError, KnobError, LaunchError, MrwError
from mrw.replay.run import first_call_error
from mrw.trace import write_atomic

SWEEP_FORMAT = "mrw-sweep"
SWEEP_VERSION = 1
MANIFEST = "sweep.json"
LOCK = "sweep.lock"
POINT_FILE = "point.json"
RUNS = "runs"
TRACES = "traces"
ATTEMPTS = "attempts"
ENGINES = "engines"

LAUNCH_KNOBS = ("batch", "prefix_caching", "max_model_len")  # changing one means a relaunch


class SweepError(MrwError):
    """A sweep cannot start or continue (bad grid, settings changed, directory in use)."""


# ---------------------------------------------------------------------------- values


def fmt_num(x: float | int) -> str:
    """1.0 -> '1', 0.5 -> '0.5', 300.0 -> '300': the spelling used in point names."""
    if isinstance(x, bool):
        raise TypeError("bool is not a number here")
    xf = float(x)
    if xf.is_integer():
        return str(int(xf))
    return f"{xf:g}"


def parse_list(value: str | Sequence[Any] | None, kind: str, name: str) -> list[Any]:
    """'1,8,32' | [1, 8, 32] -> typed values. kind: int | float | cap | bool | str.

    'none' (or 'default') stands for the engine's or the card's default: None."""
    if value is None:
        return []
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    out: list[Any] = []
    for it in items:
        if isinstance(it, str):
            low = it.strip().lower()
            if low == "":
                raise SweepError(f"--{name}: empty value in {value!r}")
            if low in ("none", "default") or (kind == "cap" and low in ("off", "uncapped")):
                out.append(None)
                continue
        try:
            if kind == "bool":
                if isinstance(it, bool):
                    v: Any = it
                elif str(it).lower() in ("true", "on", "yes", "1"):
                    v = True
                elif str(it).lower() in ("false", "off", "no", "0"):
                    v = False
                else:
                    raise ValueError(it)
            elif kind == "int":
                if isinstance(it, bool) or float(it) != int(float(it)):
                    raise ValueError(it)
                v = int(float(it))
                if v < 1:
                    raise ValueError(it)
            elif kind in ("float", "cap"):
                if isinstance(it, bool):
                    raise ValueError(it)
                v = float(it)
                if not (v > 0) or math.isinf(v):
                    raise ValueError(it)
            else:
                v = str(it)
        except (TypeError, ValueError):
            what = {"int": "a positive integer", "float": "a positive number", "cap": "watts (> 0) or none",
                    "bool": "true/false or none", "str": "a string"}[kind]
            raise SweepError(f"--{name}: {it!r} is not {what}") from None
        out.append(v)
    if len(set(map(repr, out))) != len(out):
        raise SweepError(f"--{name}: a value appears twice in {value!r}")
    return out


# ---------------------------------------------------------------------------- config


REPLAY_OPTION_TYPES = {"time_scale": float, "wait_scale": float, "rate": float, "seed": int, "live_refs": bool,
                       "force_output_length": bool, "max_workflows": int, "save_outputs": bool, "token_times": bool}


@dataclass(slots=True)
class SweepConfig:
    """Everything that defines a sweep. Built from the command line, a TOML file, or both
    (command-line values win)."""

    traces: list[str] = field(default_factory=list)
    out: str | None = None
    engine: str = "vllm"
    # grid axes
    batch: list[int | None] = field(default_factory=lambda: [None])
    cap: list[float | None] = field(default_factory=lambda: [None])
    out_scale: list[float] = field(default_factory=lambda: [1.0])
    in_scale: list[float] = field(default_factory=lambda: [1.0])
    prefix_caching: list[bool | None] = field(default_factory=lambda: [None])
    max_model_len: list[int | None] = field(default_factory=lambda: [None])
    repeat: int = 1
    # engine (fixed over the sweep)
    url: str | None = None  # attach instead of launching (launch-time axes must then stay unset)
    model: str | None = None  # launch: None = the default model, "tiny", or a model folder
    gpu_memory_utilization: float | None = None
    engine_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 900.0
    port: int | None = None  # port for launched engines (default: a free one)
    # replay options, passed to every point (mrw.replay.scheduler.ReplayOptions fields)
    replay: dict[str, Any] = field(default_factory=dict)
    # energy meters around every point (mrw.replay.meters.MeteringOptions; the cap is the sweep's)
    meters: str = "nvml,rapl,process"
    baseline_s: float = 3.0
    meter_period_ms: float = 50.0
    # hygiene between points
    reset_prefix_cache: bool = True
    warmup: bool = True
    count_tokens: str = "auto"  # auto | model | estimate (input_tokens of scaled traces)

    # --------------------------------------------------------------- building

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "SweepConfig":
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise SweepError(f"{p}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise SweepError(f"{p}: not valid TOML ({e})") from None
        return cls.from_dict(doc, base=p.parent, name=str(p))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path | None = None, name: str = "config") -> "SweepConfig":
        """The TOML layout: top-level traces/out/engine/repeat, [grid], [engine], [replay], [sweep]."""
        allowed_top = {"traces", "out", "engine", "repeat", "grid", "replay", "metering", "sweep"}
        unknown = set(doc) - allowed_top
        if unknown:
            raise SweepError(f"{name}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed_top))}")
        c = cls()
        traces = doc.get("traces", [])
        if isinstance(traces, str):
            traces = [traces]
        c.traces = [str((base / t) if base and not Path(t).is_absolute() else t) for t in traces]
        if "out" in doc:
            c.out = str((base / doc["out"]) if base and not Path(doc["out"]).is_absolute() else doc["out"])
        eng = doc.get("engine", "vllm")
        if isinstance(eng, dict):  # [engine] table
            c.apply_engine_table(eng, name)
        else:
            c.engine = str(eng)
        if "repeat" in doc:
            c.repeat = int(doc["repeat"])
        grid = doc.get("grid", {})
        axes = {"batch": "int", "cap": "cap", "out_scale": "float", "in_scale": "float", "prefix_caching": "bool", "max_model_len": "int"}
        bad = set(grid) - set(axes)
        if bad:
            raise SweepError(f"{name}: unknown [grid] axis {', '.join(sorted(bad))}; axes: {', '.join(axes)}")
        for k, kind in axes.items():
            if k in grid:
                v = grid[k]
                setattr(c, k, parse_list(v if isinstance(v, (list, str)) else [v], kind, k.replace("_", "-")))
        rp = doc.get("replay", {})
        c.replay = dict(rp)
        me = doc.get("metering", {})
        bad = set(me) - {"meters", "baseline_s", "period_ms"}
        if bad:
            raise SweepError(f"{name}: unknown [metering] key(s) {', '.join(sorted(bad))}; allowed: meters, baseline_s, period_ms")
        if "meters" in me:
            c.meters = ",".join(me["meters"]) if isinstance(me["meters"], list) else str(me["meters"])
        if "baseline_s" in me:
            c.baseline_s = float(me["baseline_s"])
        if "period_ms" in me:
            c.meter_period_ms = float(me["period_ms"])
        sw = doc.get("sweep", {})
        for k in ("reset_prefix_cache", "warmup", "count_tokens"):
            if k in sw:
                setattr(c, k, sw[k])
        bad = set(sw) - {"reset_prefix_cache", "warmup", "count_tokens"}
        if bad:
            raise SweepError(f"{name}: unknown [sweep] key(s) {', '.join(sorted(bad))}")
        return c

    def apply_engine_table(self, eng: dict[str, Any], name: str = "config") -> None:
        keys = {"name", "url", "model", "gpu_memory_utilization", "engine_args", "startup_timeout_s", "port"}
        bad = set(eng) - keys
        if bad:
            raise SweepError(f"{name}: unknown [engine] key(s) {', '.join(sorted(bad))}; allowed: {', '.join(sorted(keys))}")
        self.engine = str(eng.get("name", self.engine))
        for k in keys - {"name"}:
            if k in eng:
                setattr(self, k, eng[k])

    def validate(self) -> None:
        if not self.traces:
            raise SweepError("no trace given: mrw sweep TRACE... (or traces = [...] in the config)")
        if not self.out:
            raise SweepError("no sweep directory: pass --out SWEEP_DIR (or out = \"...\" in the config)")
        if self.repeat < 1:
            raise SweepError(f"--repeat must be >= 1, got {self.repeat}")
        for name in ("batch", "cap", "out_scale", "in_scale", "prefix_caching", "max_model_len"):
            if not getattr(self, name):
                raise SweepError(f"--{name.replace('_', '-')}: no values")
        if None in self.out_scale or None in self.in_scale:
            raise SweepError("--out-scale/--in-scale: 'none' is not a scale; use 1 for the recorded lengths")
        if self.count_tokens not in ("auto", "model", "estimate"):
            raise SweepError(f"count_tokens must be auto, model or estimate, not {self.count_tokens!r}")
        launched = self.launches_engine
        for k in LAUNCH_KNOBS:
            vals = getattr(self, k)
            if not launched and vals != [None]:
                raise SweepError(
                    f"--{k.replace('_', '-')} is a launch-time knob, but the sweep does not launch the engine "
                    f"({'--url given' if self.url else 'engine ' + self.engine}); drop it, or use --engine vllm without --url"
                )
        if not launched and self.gpu_memory_utilization is not None:
            raise SweepError("--gpu-memory-utilization needs an engine the sweep launches (vllm without --url)")
        if self.baseline_s < 0:
            raise SweepError(f"--baseline-s must be >= 0, got {self.baseline_s}")
        if not 5 <= self.meter_period_ms <= 10_000:
            raise SweepError(f"--meter-period-ms must be in [5, 10000], got {self.meter_period_ms}")
        try:
            from mrw.replay.meters import parse_meter_spec

            parse_meter_spec(self.meters)
        except ImportError:
            pass
        known = set(_replay_option_names() or REPLAY_OPTION_TYPES)
        bad = set(self.replay) - known
        if bad:
            raise SweepError(f"unknown replay option(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(known))}")
        _coerce_replay(self.replay)

    @property
    def launches_engine(self) -> bool:
        return self.engine == "vllm" and self.url is None

    def fixed_settings(self) -> dict[str, Any]:
        """What every point shares; a resumed sweep must have the same (else results mix)."""
        from mrw.replay.engines.openai_compat import redact_url  # noqa: PLC0415

        return {
            "engine": self.engine,
            "url": redact_url(self.url) if self.url else None,
            "model": self.model,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "engine_args": list(self.engine_args),
            "replay": {k: self.replay[k] for k in sorted(self.replay)},
            "metering": {"meters": self.meters, "baseline_s": self.baseline_s, "period_ms": self.meter_period_ms},
            "reset_prefix_cache": self.reset_prefix_cache,
            "warmup": self.warmup,
            "count_tokens": self.count_tokens,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metering_options(cfg: SweepConfig) -> Any:
    """The replay's MeteringOptions for every point (None when this build's replay does not
    meter). The power cap is not in it: the sweep holds caps across points itself."""
    import inspect

    try:
        from mrw.replay.driver import replay
        from mrw.replay.meters import MeteringOptions
    except ImportError:
        return None
    if "metering" not in inspect.signature(replay).parameters:
        return None
    return MeteringOptions(meters=cfg.meters, baseline_s=cfg.baseline_s, period_s=cfg.meter_period_ms / 1000.0)


def _coerce_replay(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        t = REPLAY_OPTION_TYPES.get(k)
        if t is not None and v is not None and not isinstance(v, t):
            try:
                v = t(v) if t is not bool else str(v).lower() in ("1", "true", "yes", "on")
            except (TypeError, ValueError):
                raise SweepError(f"replay option {k}: {v!r} is not a {t.__name__}") from None
        out[k] = v
    return out


def _replay_option_names() -> list[str]:
    try:
        from mrw.replay.scheduler import ReplayOptions
    except ImportError:
        return []
    return [f.name for f in fields(ReplayOptions)]


# ---------------------------------------------------------------------------- points


@dataclass(frozen=True, slots=True)
class TraceRef:
    label: str  # stable short name used in point names
    path: str  # the source trace as given
    sha256: str


@dataclass(frozen=True, slots=True)
class Point:
    trace: str  # TraceRef.label
    engine: str
    batch: int | None
    prefix_caching: bool | None
    max_model_len: int | None
    cap: float | None
    out_scale: float
    in_scale: float
    repeat: int  # 1-based

    @property
    def name(self) -> str:
        parts = [self.trace]
        if self.engine != "vllm":
            parts.append(self.engine)
        parts.append(f"b{self.batch}" if self.batch is not None else "bdef")
        if self.prefix_caching is not None:
            parts.append("pc" if self.prefix_caching else "nopc")
        if self.max_model_len is not None:
            parts.append(f"len{self.max_model_len}")
        parts.append(f"cap{fmt_num(self.cap)}" if self.cap is not None else "capnone")
        parts.append(f"out{fmt_num(self.out_scale)}")
        parts.append(f"in{fmt_num(self.in_scale)}")
        parts.append(f"r{self.repeat}")
        return "-".join(parts)

    @property
    def launch_key(self) -> tuple:
        return (self.engine, self.batch, self.prefix_caching, self.max_model_len)

    @property
    def launch_name(self) -> str:
        b = f"b{self.batch}" if self.batch is not None else "bdef"
        pc = "" if self.prefix_caching is None else ("-pc" if self.prefix_caching else "-nopc")
        ln = "" if self.max_model_len is None else f"-len{self.max_model_len}"
        return f"{self.engine}-{b}{pc}{ln}"

    @property
    def trace_key(self) -> tuple:
        return (self.trace, self.out_scale, self.in_scale)

    def knobs(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "prefix_caching": self.prefix_caching,
            "max_model_len": self.max_model_len,
            "cap_w": self.cap,
            "out_scale": self.out_scale,
            "in_scale": self.in_scale,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trace": self.trace, "engine": self.engine, "repeat": self.repeat, "knobs": self.knobs()}


def trace_label(path: str) -> str:
    stem = Path(path).name
    for suf in (".gz", ".json"):
        stem = stem.removesuffix(suf)
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in stem) or "trace"


def trace_refs(paths: Sequence[str]) -> list[TraceRef]:
    """Labels (file stems, made unique by position) and hashes of the sweep's traces."""
    from mrw.replay.run import sha256_file

    refs: list[TraceRef] = []
    seen: dict[str, int] = {}
    for p in paths:
        if not Path(p).is_file():
            raise SweepError(f"{p}: no such trace file")
        lab = trace_label(p)
        if lab in seen:
            seen[lab] += 1
            lab = f"{lab}_{seen[lab]}"
        else:
            seen[lab] = 1
        refs.append(TraceRef(lab, str(p), sha256_file(p)))
    return refs


def expand(cfg: SweepConfig, traces: Sequence[TraceRef]) -> list[Point]:
    """Every point of the grid, in run order (see the module docstring). The cap order
    alternates from one block to the next (snake order), so consecutive blocks meet at the
    same cap and no limit is changed at the seam."""
    points: list[Point] = []
    block = 0
    for batch in cfg.batch:
        for pc in cfg.prefix_caching:
            for mml in cfg.max_model_len:
                for rep in range(1, cfg.repeat + 1):
                    caps = cfg.cap if block % 2 == 0 else list(reversed(cfg.cap))
                    block += 1
                    for cap in caps:
                        for t in traces:
                            for o in cfg.out_scale:
                                for i in cfg.in_scale:
                                    points.append(Point(t.label, cfg.engine, batch, pc, mml, cap, float(o), float(i), rep))
    return points


def count_switches(points: Sequence[Point]) -> tuple[int, int]:
    """(engine launches, cap changes) the order costs."""
    launches = caps = 0
    prev: Point | None = None
    for p in points:
        if prev is None or p.launch_key != prev.launch_key:
            launches += 1
        if (prev is None and p.cap is not None) or (prev is not None and p.cap != prev.cap):
            caps += 1
        prev = p
    return launches, caps


# ---------------------------------------------------------------------------- manifest


@dataclass(slots=True)
class PointState:
    point: Point
    status: str = "pending"  # pending | running | completed | interrupted | failed | skipped
    run_dir: str = ""
    attempts: int = 0
    started: str | None = None
    ended: str | None = None
    duration_s: float | None = None
    error: str | None = None
    cap_effective_w: float | None = None
    failed_calls: int = 0  # calls of a completed point that failed (an engine's 400, a timeout, ...)

    def to_dict(self) -> dict[str, Any]:
        d = self.point.to_dict()
        d.update(status=self.status, run_dir=self.run_dir, attempts=self.attempts, started=self.started,
                 ended=self.ended, duration_s=self.duration_s, error=self.error, cap_effective_w=self.cap_effective_w,
                 failed_calls=self.failed_calls)
        return d


def _now() -> str:
    from mrw.replay.run import now_iso

    return now_iso()


class Manifest:
    """sweep.json: written atomically at every change."""

    def __init__(self, root: Path, cfg: SweepConfig, traces: list[TraceRef], states: list[PointState], argv: list[str] | None):
        self.root = root
        self.cfg = cfg
        self.traces = traces
        self.states = states
        self.argv = argv
        self.created = _now()
        self.launches: list[dict[str, Any]] = []
        self.status = "running"
        self.error: str | None = None
        self.sessions: list[dict[str, Any]] = []

    def write(self) -> None:
        doc = {
            "format": SWEEP_FORMAT,
            "version": SWEEP_VERSION,
            "status": self.status,
            "error": self.error,
            "created": self.created,
            "updated": _now(),
            "pid": os.getpid(),
            "command": self.argv,
            "settings": self.cfg.fixed_settings(),
            "grid": {k: getattr(self.cfg, k) for k in ("batch", "prefix_caching", "max_model_len", "cap", "out_scale", "in_scale")}
            | {"repeat": self.cfg.repeat},
            "traces": [asdict(t) for t in self.traces],
            "counts": self.counts(),
            "points": [s.to_dict() for s in self.states],
            "launches": self.launches,
            "sessions": self.sessions,
        }
        write_atomic(self.root / MANIFEST, orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {"total": len(self.states)}
        for s in self.states:
            c[s.status] = c.get(s.status, 0) + 1
        return c


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    p = Path(root) / MANIFEST
    if not p.exists():
        raise SweepError(f"{root}: not a sweep directory (no {MANIFEST})")
    try:
        doc = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError as e:
        raise SweepError(f"{p}: unreadable ({e})") from None
    if doc.get("format") != SWEEP_FORMAT:
        raise SweepError(f"{p}: not an mrw sweep manifest")
    return doc


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


# ---------------------------------------------------------------------------- traces


def _model_spec(cfg: SweepConfig):
    from mrw.models import ModelSpec, cache_dir, default_model, tiny_model

    if cfg.model in (None, "", "default"):
        return default_model()
    if cfg.model == "tiny":
        return tiny_model(cache_dir() / "models" / "tiny-llama")
    p = Path(cfg.model).expanduser()
    if not p.is_dir():
        raise SweepError(f"--model {cfg.model}: not a model folder (nor 'default' or 'tiny')")
    return ModelSpec(p.resolve(), p.name, p.name)


def prepare_traces(root: Path, cfg: SweepConfig, traces: list[TraceRef], points: Sequence[Point], model: Any | None,
                   log: Any = None) -> dict[tuple, Path]:
    """Write each (trace, out, in) the grid needs under SWEEP_DIR/traces; reuse files that are
    already there (they are deterministic: same source, same scales, same bytes)."""
    from mrw import transform
    from mrw.trace import dump, load

    out_dir = root / TRACES
    out_dir.mkdir(parents=True, exist_ok=True)
    by_label = {t.label: t for t in traces}
    counter = None
    counter_name = None
    result: dict[tuple, Path] = {}
    loaded: dict[str, Any] = {}
    for key in dict.fromkeys(p.trace_key for p in points):
        label, o, i = key
        ref = by_label[label]
        if o == 1.0 and i == 1.0:
            dst = out_dir / f"{label}{_suffix(ref.path)}"
            if not dst.exists():
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(ref.path, tmp)
                os.replace(tmp, dst)
            load(dst)  # validate now, before anything runs
            result[key] = dst
            continue
        dst = out_dir / f"{label}-out{fmt_num(o)}-in{fmt_num(i)}.json.gz"
        if dst.exists():
            result[key] = dst
            continue
        if label not in loaded:
            loaded[label] = load(ref.path)
        src = loaded[label]
        use = _use_counter(cfg, src, model)
        if use and counter is None:
            if log:
                log(f"loading the tokenizer of {model.name} to count the scaled prompts' tokens")
            counter = transform.hf_token_counter(str(model.path))
            counter_name = f"the tokenizer of {model.name}"
        scaled = transform.scale_trace(src, o, i, count_tokens=counter if use else None,
                                       token_counter_name=counter_name if use else None, source_sha256=ref.sha256)
        dump(scaled, dst)
        result[key] = dst
    return result


def _suffix(path: str) -> str:
    return ".json.gz" if str(path).endswith(".gz") else ".json"


def _use_counter(cfg: SweepConfig, trace: Any, model: Any | None) -> bool:
    if model is None or cfg.count_tokens == "estimate":
        return False
    if cfg.count_tokens == "model":
        return True
    ra = trace.header.recorded_against or {}
    return bool(ra.get("tokenizer") and ra.get("tokenizer") == model.tokenizer) or bool(
        ra.get("model") and ra.get("model") == model.name
    )


# ---------------------------------------------------------------------------- power cap


class CapController:
    """Holds the GPU power limit at the current point's cap, changing it (through the energy
    layer's `apply_knobs`: validated, read back, restored on every exit path) only when the cap
    changes between consecutive points. The engine keeps running across a change.

    `nvml` is passed through to the knob layer (a test double in tests; the real binding else)."""

    def __init__(self, caps: Sequence[float | None], nvml: Any = None):
        self.nvml = nvml
        self.wanted = sorted({c for c in caps if c is not None})
        self.current: float | None = None
        self.changes = 0
        self.applied: Any = None  # mrw.replay.knobs.AppliedKnobs while a cap is held
        self._cm: contextlib.AbstractContextManager | None = None
        if self.wanted:
            check_caps(self.wanted, nvml)

    def set(self, watts: float | None) -> dict[str, Any] | None:
        """Apply `watts` (None: the card's own limit); returns the knob record while capped."""
        if watts != self.current:
            self.release()
            if watts is not None:
                from mrw.replay.knobs import apply_knobs

                cm = apply_knobs(cap_w=watts, nvml=self.nvml)
                self.applied = cm.__enter__()
                self._cm = cm
            self.current = watts
            self.changes += 1
        return self.record()

    def record(self) -> dict[str, Any] | None:
        return self.applied.to_dict() if self.applied is not None else None

    @property
    def effective_w(self) -> float | None:
        if self.applied is None:
            return None
        eff = [g.cap_effective_w for g in self.applied.gpus if g.cap_effective_w is not None]
        return min(eff) if eff else None

    def release(self) -> None:
        """Put the original limit back (idempotent)."""
        cm, self._cm = self._cm, None
        self.applied, self.current = None, None
        if cm is not None:
            cm.__exit__(None, None, None)


def check_caps(watts: Sequence[float], nvml: Any = None) -> None:
    """Refuse, before anything runs, caps that cannot be applied here: no NVML, no GPU, a
    value outside a GPU's range, or no permission. Changes nothing."""
    try:
        from mrw.replay import knobs as K
        from mrw.replay.meters import nvml as nvmlmod
    except ImportError:
        raise KnobError("--cap: this mrw build has no power-cap knob (mrw.replay.knobs); update mrw") from None
    try:
        nv = nvmlmod.load_nvml(nvml)
        nvmlmod.init(nv, "--cap needs NVML (an NVIDIA GPU and driver)")
    except MrwError as e:
        raise KnobError(f"{e}; use --cap none on this machine") from None
    try:
        K.restore_pending(nv)  # a limit left by a killed mrw is put back before it is read as the original
        visible, _ = nvmlmod.visible_gpus(nv)
        if not visible:
            raise KnobError("--cap: no GPU is visible to this process; use --cap none on this machine")
        gpus = [K.GpuKnobs(g.cuda_index, g.uuid, g.name, handle=g.handle) for g in visible]
        for w in watts:
            K._validate(nv, gpus, w, None)  # range and permission (sets each limit to itself)
    finally:
        nvmlmod.shutdown(nv)


# ---------------------------------------------------------------------------- engine


class EngineSlot:
    """The engine the current points run against: launched per launch key, or attached."""

    def __init__(self, root: Path, cfg: SweepConfig, model: Any | None, quiet: bool = True):
        self.root = root
        self.cfg = cfg
        self.model = model
        self.server: Any = None
        self.key: tuple | None = None
        self.quiet = quiet
        self.launch_info: dict[str, Any] | None = None

    @property
    def url(self) -> str | None:
        if self.server is not None:
            return self.server.base_url
        return self.cfg.url

    def ensure(self, p: Point, on_status: Any = None) -> dict[str, Any] | None:
        """Make sure the engine for `p` runs; returns launch info when it (re)launched."""
        if not self.cfg.launches_engine:
            return None
        if self.server is not None and self.key == p.launch_key and self.server.alive():
            return None
        self.stop()
        from mrw.launch import VllmOptions, VllmServer

        opts = VllmOptions(
            max_num_seqs=p.batch,
            prefix_caching=p.prefix_caching,
            max_model_len=p.max_model_len,
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            extra_args=list(self.cfg.engine_args),
        )
        log = self.root / ENGINES / f"{p.launch_name}.log"
        server = VllmServer(self.model, opts, port=self.cfg.port, log_path=log, startup_timeout_s=self.cfg.startup_timeout_s, quiet=True)
        if on_status:
            on_status(f"launching vLLM ({p.launch_name})")
        t0 = time.monotonic()
        # Dev mode exposes POST /reset_prefix_cache (bound to the same host as the server).
        with _env(VLLM_SERVER_DEV_MODE="1"):
            server.start()
        self.server, self.key = server, p.launch_key
        self.launch_info = {
            "launch": p.launch_name,
            "flags": opts.flags(server.cpu),
            "port": server.port,
            "startup_s": round(time.monotonic() - t0, 2),
            "started": _now(),
            "log": os.path.relpath(log, self.root),
        }
        if self.cfg.warmup:
            self.warmup()
        return self.launch_info

    def engine_extra(self) -> dict[str, Any]:
        """What the replay's engine adapter and meters may use about an engine the sweep owns."""
        if self.server is None or self.server.proc is None:
            return {}
        return {"engine_pid": self.server.proc.pid, "launched_by": "mrw sweep",
                "launch_flags": self.launch_info["flags"] if self.launch_info else None}

    def warmup(self) -> None:
        """One short request, so that the first point does not pay for lazy initialisation."""
        import httpx

        try:
            with httpx.Client(timeout=120.0, trust_env=False) as c:
                c.post(self.url + "/completions", json={"model": self.model.name, "prompt": "Hello", "max_tokens": 4})
        except httpx.HTTPError:
            pass  # the point itself will report an engine that does not answer

    def reset_prefix_cache(self) -> str | None:
        """Empty the engine's prefix cache; returns a note when it could not."""
        url = self.url
        if self.cfg.engine != "vllm":
            return f"prefix cache not reset: mrw knows no way to empty the cache of engine {self.cfg.engine}"
        if url is None:
            return None
        import httpx

        root = url.rstrip("/").removesuffix("/v1")
        last = ""
        for _ in range(20):
            try:
                with httpx.Client(timeout=10.0, trust_env=False) as c:
                    r = c.post(root + "/reset_prefix_cache")
            except httpx.HTTPError as e:
                return f"prefix cache not reset ({type(e).__name__})"
            if r.status_code == 404:
                return "prefix cache not reset: the server has no /reset_prefix_cache (start it with VLLM_SERVER_DEV_MODE=1)"
            if r.status_code == 200:
                try:
                    ok = r.json().get("success", True)
                except ValueError:
                    ok = True
                if ok:
                    return None
                last = "engine refused (blocks still held)"
            else:
                last = f"HTTP {r.status_code}"
            time.sleep(0.25)
        return f"prefix cache not reset: {last}"

    def alive(self) -> bool:
        return self.server is None or self.server.alive()

    def stop(self) -> None:
        srv, self.server, self.key = self.server, None, None
        if srv is not None:
            srv.stop()


@contextlib.contextmanager
def _env(**kv: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------- progress


class SweepProgress:
    """Sweep-wide progress: points done/total with an ETA, the current point, and its
    requests (as the replay reports them)."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.total, self.done = total, done
        self.enabled = enabled
        self.t_session = time.monotonic()
        self.run_here = 0
        self.p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                refresh_per_second=4,
            )
            self.p.start()
            self.t_sweep = self.p.add_task("sweep", total=total, completed=done, info=self._eta())
            self.t_point = self.p.add_task("", total=None, info="")

    def log(self, msg: str) -> None:
        if self.p is not None:
            self.p.console.print(msg, highlight=False, soft_wrap=True)
        else:
            from rich.console import Console

            Console(stderr=True).print(msg, highlight=False, soft_wrap=True)

    def _eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return "done"
        if self.run_here == 0:
            return "ETA after the first point"
        per = (time.monotonic() - self.t_session) / self.run_here
        s = per * left
        return f"ETA {int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"ETA {int(s // 60)}m{int(s % 60):02d}s"

    def status(self, text: str) -> None:
        if self.p is not None:
            self.p.update(self.t_point, description=text, total=None, completed=0, info="")

    def point_done(self, ran: bool = True) -> None:
        self.done += 1
        if ran:
            self.run_here += 1
        if self.p is not None:
            self.p.update(self.t_sweep, completed=self.done, info=self._eta())

    def replay_progress(self, name: str) -> Any:
        from mrw.replay.driver import Progress

        outer = self

        class _P(Progress):
            def start(self, total: int, label: str) -> None:
                if outer.p is not None:
                    outer.p.update(outer.t_point, description=name, total=total, completed=0, info="requests")

            def update(self, done: int, failed: int) -> None:
                if outer.p is not None:
                    outer.p.update(outer.t_point, completed=done, info=f"requests, {failed} failed" if failed else "requests")
                    outer.p.update(outer.t_sweep, info=outer._eta())

            def stop(self) -> None:
                pass

        return _P()

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
            self.p = None


# ---------------------------------------------------------------------------- running


@dataclass(slots=True)
class SweepResult:
    root: Path
    total: int
    completed: int
    skipped: int  # finished before this invocation
    failed: list[str]
    interrupted: str | None  # the point being run when a signal came
    launches: int
    wall_s: float
    with_failed_calls: list[str] = field(default_factory=list)  # completed, but some calls failed


class _Terminated(BaseException):
    """SIGTERM/SIGHUP: unwinds like Ctrl-C so the cap is restored and the engine stopped."""


_TERM_SIGNALS = tuple(x for x in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if x)


def _term_handler(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def _install_term_handlers() -> None:
    """(Re)install the SIGTERM/SIGHUP handlers. Needed after every replay: asyncio's
    remove_signal_handler resets a signal to SIG_DFL when the replay's loop ends."""
    for sig in _TERM_SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, _term_handler)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    prev = {}
    for sig in _TERM_SIGNALS:
        with contextlib.suppress(ValueError):
            prev[sig] = signal.getsignal(sig)
    _install_term_handlers()
    try:
        yield
    finally:
        for sig, h in prev.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, h)


def _terminated_types() -> tuple[type[BaseException], ...]:
    try:
        from mrw.replay.knobs import Terminated  # the knob layer's own SIGTERM exception

        return (_Terminated, Terminated)
    except ImportError:
        return (_Terminated,)


def _lock(root: Path) -> Any:
    f = open(root / LOCK, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        who = f.read().strip()
        f.close()
        raise SweepError(f"{root}: another sweep is running in this directory ({who or 'unknown pid'}); wait for it or use another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def _point_status(run_dir: Path) -> str | None:
    """completed | interrupted | failed | abandoned | running | None (no run yet)."""
    from mrw.replay.run import RUN_JSON, read_run

    if not (run_dir / RUN_JSON).exists():
        return None if not run_dir.exists() or not any(run_dir.iterdir()) else "failed"
    try:
        meta, _ = read_run(run_dir)
    except MrwError:
        return "failed"
    return meta.get("status")


def _move_aside(root: Path, run_dir: Path) -> Path:
    dst_dir = root / ATTEMPTS
    dst_dir.mkdir(exist_ok=True)
    n = 1
    while (dst_dir / f"{run_dir.name}.{n}").exists():
        n += 1
    dst = dst_dir / f"{run_dir.name}.{n}"
    os.replace(run_dir, dst)
    return dst


def write_point_file(run_dir: Path, st: PointState, traces: dict[str, TraceRef], trace_file: Path, root: Path,
                     extra: dict[str, Any]) -> None:
    p = st.point
    ref = traces[p.trace]
    doc = {
        "format": "mrw-sweep-point",
        "version": 1,
        "sweep": os.path.relpath(root, run_dir),
        "name": p.name,
        "trace": {"label": p.trace, "source": ref.path, "source_sha256": ref.sha256,
                  "replayed": os.path.relpath(trace_file, run_dir)},
        "engine": p.engine,
        "repeat": p.repeat,
        "knobs": p.knobs() | {"cap_effective_w": st.cap_effective_w},
        "launch": p.launch_name,
        **extra,
    }
    write_atomic(run_dir / POINT_FILE, orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def run_sweep(cfg: SweepConfig, *, argv: list[str] | None = None, progress: bool = True, dry_run: bool = False,
              nvml: Any = None, log: Any = None) -> SweepResult:
    """Run (or resume) a sweep. Raises KeyboardInterrupt after a clean stop on SIGINT/SIGTERM.
    `log(line)` gets the plan once the checks have passed."""
    cfg.validate()
    root = Path(cfg.out)  # type: ignore[arg-type]
    traces = trace_refs(cfg.traces)
    points = expand(cfg, traces)
    launches_needed, cap_changes = count_switches(points)

    # Checks that must fail before anything runs or is written.
    caps = CapController(cfg.cap, nvml=nvml) if not dry_run else None
    if cfg.url is not None and any(c is not None for c in cfg.cap):
        from urllib.parse import urlparse

        host = urlparse(cfg.url).hostname or ""
        if host not in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
            raise SweepError(f"--cap limits this machine's GPUs, but the engine runs at {host}; run the sweep on that host")

    if log is not None:
        for line in plan_lines(cfg):
            log(line)
    root.mkdir(parents=True, exist_ok=True)
    lockf = _lock(root)
    try:
        old = None
        if (root / MANIFEST).exists():
            old = read_manifest(root)
            diffs = _diff(old.get("settings"), cfg.fixed_settings())
            if diffs:
                raise SweepError(
                    f"{root} holds a sweep made with other settings ({'; '.join(diffs[:3])}); "
                    "its points would not be comparable: use another --out, or the same settings"
                )
            old_sha = {t["label"]: t["sha256"] for t in old.get("traces", [])}
            for t in traces:
                if t.label in old_sha and old_sha[t.label] != t.sha256:
                    raise SweepError(
                        f"trace {t.path} changed since {root} was made (sha256 differs); use another --out, "
                        "or restore the original file"
                    )
        states = [PointState(p, run_dir=str(Path(RUNS) / p.name)) for p in points]
        man = Manifest(root, cfg, traces, states, argv)
        if old is not None:
            man.created = old.get("created", man.created)
            man.launches = list(old.get("launches", []))
            man.sessions = list(old.get("sessions", []))
            prev = {d["name"]: d for d in old.get("points", [])}
            for s in states:
                if s.point.name in prev:
                    s.attempts = int(prev[s.point.name].get("attempts", 0))
        # The truth is on disk: each point's run.json.
        todo: list[PointState] = []
        for s in states:
            st = _point_status(root / s.run_dir)
            if st == "completed":
                s.status = "completed"
                prevd = prev.get(s.point.name, {}) if old is not None else {}
                for k in ("started", "ended", "duration_s", "cap_effective_w"):
                    setattr(s, k, prevd.get(k))
                s.failed_calls = int(prevd.get("failed_calls") or 0)
            else:
                todo.append(s)
        man.sessions.append({"started": _now(), "pid": os.getpid(), "to_run": len(todo)})
        man.write()
        if dry_run:
            return SweepResult(root, len(states), len(states) - len(todo), len(states) - len(todo), [], None, launches_needed, 0.0)
        return _run(cfg, root, man, traces, todo, caps, progress)  # type: ignore[arg-type]
    finally:
        lockf.close()


def _run(cfg: SweepConfig, root: Path, man: Manifest, traces: list[TraceRef], todo: list[PointState],
         caps: CapController, show: bool) -> SweepResult:
    from mrw.replay.driver import replay
    from mrw.replay.engines.base import EngineOptions
    from mrw.replay.scheduler import ReplayOptions

    t_start = time.perf_counter()
    total = len(man.states)
    done_before = total - len(todo)
    prog = SweepProgress(total, done_before, enabled=show)
    by_label = {t.label: t for t in traces}
    failed: list[str] = []
    interrupted: str | None = None
    launches = 0
    model = None
    slot: EngineSlot | None = None
    current: PointState | None = None
    bad_launch: dict[tuple, str] = {}
    try:
        with _sigterm_raises():
            if todo:
                if cfg.launches_engine or cfg.count_tokens == "model":
                    prog.status("resolving the model")
                    model = _model_spec(cfg)
                prog.status("preparing traces")
                trace_files = prepare_traces(root, cfg, traces, [s.point for s in todo], model, log=prog.log)
                slot = EngineSlot(root, cfg, model)
            ropts = ReplayOptions(**_coerce_replay(cfg.replay))
            metering = metering_options(cfg)
            meter_kw = {"metering": metering} if metering is not None else {}
            if todo and metering is None and cfg.meters not in ("none", ""):
                prog.log("note: this mrw's replay does not meter energy; the points get no energy.json")
            for s in todo:
                current = s
                p = s.point
                run_dir = root / s.run_dir
                if run_dir.exists():
                    moved = _move_aside(root, run_dir)
                    prog.log(f"{p.name}: earlier attempt was not completed; kept in {moved.relative_to(root)}, redoing it")
                # A group whose launch failed: its other points fail at once, without retrying.
                if p.launch_key in bad_launch:
                    s.status, s.error = "failed", bad_launch[p.launch_key]
                    failed.append(p.name)
                    man.write()
                    prog.point_done()
                    continue
                try:
                    info = slot.ensure(p, on_status=prog.status)  # type: ignore[union-attr]
                except LaunchError as e:
                    s.status, s.error = "failed", f"engine launch failed: {e}"
                    bad_launch[p.launch_key] = s.error
                    failed.append(p.name)
                    man.launches.append({"launch": p.launch_name, "error": str(e), "started": _now()})
                    man.write()
                    prog.log(f"{p.name}: {s.error} (the other points of {p.launch_name} are skipped)")
                    prog.point_done()
                    continue
                if info is not None:
                    launches += 1
                    man.launches.append(info)
                    prog.log(f"launched vLLM {info['launch']} in {info['startup_s']:.0f} s ({' '.join(info['flags'])})")
                prog.status(f"{p.name}: setting cap" if p.cap is not None else f"{p.name}")
                knob_rec = caps.set(p.cap)
                s.cap_effective_w = caps.effective_w
                notes: list[str] = []
                if cfg.reset_prefix_cache:
                    n = slot.reset_prefix_cache()  # type: ignore[union-attr]
                    if n:
                        notes.append(n)
                s.status, s.started, s.attempts, s.error = "running", _now(), s.attempts + 1, None
                man.write()
                eo = EngineOptions(url=slot.url, model=model.name if model is not None else None,  # type: ignore[union-attr]
                                   extra=slot.engine_extra())  # type: ignore[union-attr]
                trace_file = trace_files[p.trace_key]
                t0 = time.perf_counter()
                outcome = None
                try:
                    outcome = replay(trace_file, cfg.engine, eo, ropts, run_dir, progress=prog.replay_progress(p.name), **meter_kw)
                except EngineError as e:
                    s.status, s.error = "failed", str(e)
                except MrwError as e:
                    if not run_dir.exists():  # failed before the run began: a setup problem, not the point
                        raise
                    s.status, s.error = "failed", str(e)
                finally:
                    _install_term_handlers()
                s.duration_s = round(time.perf_counter() - t0, 3)
                s.ended = _now()
                if outcome is not None:
                    s.status = outcome.status
                    s.error = outcome.error
                    s.failed_calls = outcome.failed
                if run_dir.exists() and (run_dir / "run.json").exists():
                    if knob_rec is not None:
                        _write_knobs(run_dir, knob_rec)
                    _finish_point(run_dir, s, by_label, trace_file, root, notes, slot, knob_rec)
                man.write()
                if s.status == "interrupted":
                    interrupted = p.name
                    prog.log(f"{p.name}: interrupted; finished points are kept, rerun the same command to resume")
                    raise KeyboardInterrupt
                if s.status == "completed":
                    if s.failed_calls:
                        prog.log(f"{p.name}: completed, but {s.failed_calls} of {outcome.total} calls failed "  # type: ignore[union-attr]
                                 f"({first_call_error(run_dir)}); `mrw analyze` leaves it out of the figures")
                    prog.point_done()
                else:
                    failed.append(p.name)
                    prog.log(f"{p.name}: {s.status}: {s.error}")
                    prog.point_done()
                    if not slot.alive():  # type: ignore[union-attr]
                        slot.stop()  # type: ignore[union-attr]
            current = None
    except (KeyboardInterrupt, *_terminated_types()) as e:  # type: ignore[misc]
        if current is not None and current.status == "running":
            current.status = "interrupted"
            current.error = "interrupted" if isinstance(e, KeyboardInterrupt) else "interrupted by SIGTERM/SIGHUP"
            interrupted = current.point.name
        man.status = "interrupted"
        raise KeyboardInterrupt from None
    except BaseException as e:
        man.status = "failed"
        man.error = str(e) if isinstance(e, MrwError) else f"{type(e).__name__}: {e}"
        if current is not None and current.status == "running":
            current.status, current.error = "failed", man.error
        raise
    else:
        man.status = "completed" if not failed else "completed with failures"
    finally:
        prog.close()
        try:
            caps.release()
        finally:
            if slot is not None:
                slot.stop()
            man.sessions[-1]["ended"] = _now()
            man.sessions[-1]["status"] = man.status
            man.write()
    completed = sum(1 for s in man.states if s.status == "completed")
    with_failed_calls = [s.point.name for s in man.states if s.status == "completed" and s.failed_calls]
    return SweepResult(root, total, completed, done_before, failed, interrupted, launches, time.perf_counter() - t_start,
                       with_failed_calls)


def _write_knobs(run_dir: Path, rec: dict[str, Any]) -> None:
    """knobs.json as the knob layer writes it, for a cap the sweep holds across points (the
    energy analysis reads the cap from it). `restored` stays null: the sweep restores the
    limit when the cap changes or the sweep ends, and sweep.json's sessions say it did."""
    doc = dict(rec)
    doc["held_by"] = "mrw sweep (across consecutive points with this cap)"
    write_atomic(run_dir / "knobs.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def _finish_point(run_dir: Path, s: PointState, traces: dict[str, TraceRef], trace_file: Path, root: Path,
                  notes: list[str], slot: EngineSlot | None, knob_rec: dict[str, Any] | None = None) -> None:
    """point.json, the energy analysis and summary.json for a run directory (any status)."""
    extra: dict[str, Any] = {"notes": notes}
    if slot is not None and slot.launch_info is not None:
        extra["engine_launch"] = slot.launch_info
    if knob_rec is not None:
        extra["power_cap"] = knob_rec
    write_point_file(run_dir, s, traces, trace_file, root, extra)
    if (run_dir / "energy.json").exists():
        # (again) after knobs.json: the cap in force and the batch size the sweep launched
        # with are what the cross-check and the steady-state window need; finalize is idempotent
        try:
            from mrw.analysis.energy import finalize

            finalize(run_dir, max_num_seqs=s.point.batch)
        except ImportError:
            pass
        except Exception as e:  # the raw energy.json stays; `mrw analyze` can redo this
            extra["notes"].append(f"energy analysis failed: {type(e).__name__}: {e}")
            write_point_file(run_dir, s, traces, trace_file, root, extra)
    try:
        from mrw.analysis.summary import summarize

        summarize(run_dir, write=True)
    except MrwError:
        pass  # analysis can be redone with `mrw analyze`; the run itself is on disk


def finalize_completed(root: Path) -> int:
    """Write point.json / summary.json for completed points that lack them (a sweep killed
    between a point's end and its bookkeeping). Returns how many were fixed."""
    doc = read_manifest(root)
    traces = {t["label"]: TraceRef(t["label"], t["path"], t["sha256"]) for t in doc.get("traces", [])}
    fixed = 0
    for d in doc.get("points", []):
        run_dir = root / d["run_dir"]
        if _point_status(run_dir) != "completed" or (run_dir / POINT_FILE).exists():
            continue
        k = d["knobs"]
        p = Point(d["trace"], d["engine"], k["batch"], k["prefix_caching"], k["max_model_len"], k["cap_w"],
                  k["out_scale"], k["in_scale"], d["repeat"])
        st = PointState(p, status="completed", run_dir=d["run_dir"], cap_effective_w=d.get("cap_effective_w"))
        from mrw.replay.run import read_run

        meta, _ = read_run(run_dir)
        tf = Path(meta.get("trace", {}).get("path", ""))
        _finish_point(run_dir, st, traces, tf, root, ["point.json written after the fact (the sweep stopped before it)"], None)
        fixed += 1
    return fixed


def _axis(vals: Sequence[Any]) -> str:
    return ",".join("none" if v is None else (("on" if v else "off") if isinstance(v, bool) else fmt_num(v)) for v in vals)


def plan_lines(cfg: SweepConfig) -> list[str]:
    """A human summary of what the sweep will do (printed before it starts, and by --dry-run)."""
    traces = trace_refs(cfg.traces)
    pts = expand(cfg, traces)
    launches, caps = count_switches(pts)
    axes = [f"{len(traces)} trace(s)", f"batch {_axis(cfg.batch)}", f"cap {_axis(cfg.cap)}",
            f"out-scale {_axis(cfg.out_scale)}", f"in-scale {_axis(cfg.in_scale)}"]
    if cfg.prefix_caching != [None]:
        axes.append(f"prefix-caching {_axis(cfg.prefix_caching)}")
    if cfg.max_model_len != [None]:
        axes.append(f"max-model-len {_axis(cfg.max_model_len)}")
    axes.append(f"{cfg.repeat} repeat(s)")
    return [
        f"{len(pts)} points: " + " x ".join(axes),
        f"engine launches: {launches if cfg.launches_engine else 0}, power-cap changes: {caps}",
    ]


__all__ = [
    "CapController",
    "Point",
    "SweepConfig",
    "SweepError",
    "SweepResult",
    "count_switches",
    "expand",
    "parse_list",
    "run_sweep",
]

