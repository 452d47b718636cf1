"""The trace model: a recorded multi-request workflow workload, as plain data.

A trace is one JSON document (see docs/trace-format.md and mrw/schema/trace-v1.schema.json):

    {"header": {...}, "workflows": [{"id", "arrival_s", "tags", "calls": [Call, ...]}, ...]}

This module holds the dataclasses, one reader (`load`) and one writer (`dump`), both over
orjson, `.json` and `.json.gz` alike. Validation lives in `mrw.validate`; `load` runs it so
that nothing downstream ever sees an invalid trace.
"""

from __future__ import annotations

import gc
import gzip
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import orjson

FORMAT_NAME = "mrw-trace"
FORMAT_VERSION = 1

# A prompt segment: literal text, or the output of an upstream call spliced in.
Segment = dict[str, Any]  # {"text": str} | {"ref": call_id}


def join_segments(segments: list[Segment], outputs: Mapping[str, str]) -> str:
    """Concatenate segments, splicing `outputs[ref]` for each reference."""
    return "".join(s["text"] if "text" in s else outputs[s["ref"]] for s in segments)


@dataclass(slots=True)
class Message:
    """One chat message whose content is a list of segments."""

    role: str
    content: list[Segment]

    def to_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


@dataclass(slots=True)
class Call:
    """One LLM request inside a workflow."""

    id: str
    node: str
    deps: list[str] = field(default_factory=list)
    wait_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    messages: list[Message] | None = None  # chat API
    prompt: list[Segment] | None = None  # completions API (exclusive with messages)
    sampling: dict[str, Any] = field(default_factory=dict)
    t_issue: float | None = None
    t_first_token: float | None = None
    t_end: float | None = None
    output: str | None = None
    hash_ids: list[int] | None = None  # salted block hashes (anonymised traces)

    @property
    def has_text(self) -> bool:
        return self.messages is not None or self.prompt is not None

    def segments(self) -> Iterator[Segment]:
        """Every segment of the prompt, in order, across messages."""
        if self.messages is not None:
            for m in self.messages:
                yield from m.content
        elif self.prompt is not None:
            yield from self.prompt

    def refs(self) -> list[str]:
        return [s["ref"] for s in self.segments() if "ref" in s]

    def render_messages(self, outputs: Mapping[str, str]) -> list[dict[str, str]]:
        """Chat messages with every ref replaced by `outputs[ref]` (recorded or live text)."""
        if self.messages is None:
            raise ValueError(f"call {self.id} has no chat messages")
        return [{"role": m.role, "content": join_segments(m.content, outputs)} for m in self.messages]

    def render_prompt(self, outputs: Mapping[str, str]) -> str:
        """The whole prompt as one string: the completions prompt, or the chat messages joined
        role-tagged (for prefix analysis, not for sending)."""
        if self.prompt is not None:
            return join_segments(self.prompt, outputs)
        if self.messages is not None:
            return "".join(f"<{m.role}>{join_segments(m.content, outputs)}" for m in self.messages)
        return ""

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "id": self.id,
            "node": self.node,
            "deps": self.deps,
            "wait_s": self.wait_s,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.messages is not None:
            d["messages"] = [m.to_dict() for m in self.messages]
        if self.prompt is not None:
            d["prompt"] = self.prompt
        if self.sampling:
            d["sampling"] = self.sampling
        for k in ("t_issue", "t_first_token", "t_end", "output", "hash_ids"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Call":
        """Build from a (validated) dict. Positional and copy-free: a million-call trace
        spends most of its load time here. Lists are taken over, not copied."""
        g = d.get
        msgs = g("messages")
        return cls(
            d["id"],
            d["node"],
            d.get("deps") or [],
            float(g("wait_s", 0.0)),
            int(d["input_tokens"]),
            int(d["output_tokens"]),
            [Message(m["role"], m["content"]) for m in msgs] if msgs is not None else None,
            g("prompt"),
            g("sampling") or {},
            g("t_issue"),
            g("t_first_token"),
            g("t_end"),
            g("output"),
            g("hash_ids"),
        )


@dataclass(slots=True)
class Workflow:
    """One instance of a workload: one document, one coding task, one copilot session."""

    id: str
    arrival_s: float
    calls: list[Call]
    tags: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "arrival_s": self.arrival_s,
            "tags": self.tags,
            "calls": [c.to_dict() for c in self.calls],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Workflow":
        call = Call.from_dict
        return cls(d["id"], float(d.get("arrival_s", 0.0)), [call(c) for c in d["calls"]], d.get("tags") or {})

    def by_id(self) -> dict[str, Call]:
        return {c.id: c for c in self.calls}

    def topo_order(self) -> list[Call]:
        """Calls in an order where every call comes after its dependencies (stable)."""
        by_id = self.by_id()
        done: set[str] = set()
        order: list[Call] = []
        pending = list(self.calls)
        while pending:
            rest = []
            for c in pending:
                if all(d in done for d in c.deps):
                    order.append(c)
                    done.add(c.id)
                else:
                    rest.append(c)
            if len(rest) == len(pending):
                raise ValueError(f"cycle among calls {[c.id for c in rest]} in workflow {self.id}")
            pending = rest
        assert len(order) == len(by_id)
        return order


@dataclass(slots=True)
class Header:
    """Who made the trace, how, and against what. Never holds a secret or a full URL."""

    workload: str
    generator: dict[str, Any] = field(default_factory=dict)  # {"name", "params", "seed"}
    recorded_against: dict[str, Any] = field(default_factory=dict)  # {"engine", "model", "tokenizer", ...}
    created: str = ""
    mrw_version: str = ""
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    block_size: int | None = None  # token block size of hash_ids, when present
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for importers/tools

    def to_dict(self) -> dict:
        d = {
            "format": self.format,
            "version": self.version,
            "workload": self.workload,
            "generator": self.generator,
            "recorded_against": self.recorded_against,
            "created": self.created,
            "mrw_version": self.mrw_version,
        }
        if self.block_size is not None:
            d["block_size"] = self.block_size
        if self.description:
            d["description"] = self.description
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Header":
        return cls(
            workload=d["workload"],
            generator=d.get("generator") or {},
            recorded_against=d.get("recorded_against") or {},
            created=d.get("created", ""),
            mrw_version=d.get("mrw_version", ""),
            format=d["format"],
            version=d["version"],
            block_size=d.get("block_size"),
            description=d.get("description", ""),
            extra=d.get("extra") or {},
        )


@dataclass(slots=True)
class Trace:
    header: Header
    workflows: list[Workflow]

    def to_dict(self) -> dict:
        return {"header": self.header.to_dict(), "workflows": [w.to_dict() for w in self.workflows]}

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        return cls(
            header=Header.from_dict(d["header"]),
            workflows=[Workflow.from_dict(w) for w in d["workflows"]],
        )

    def calls(self) -> Iterator[tuple[Workflow, Call]]:
        for w in self.workflows:
            for c in w.calls:
                yield w, c

    @property
    def n_calls(self) -> int:
        return sum(len(w.calls) for w in self.workflows)

    def recorded_outputs(self) -> dict[str, str]:
        """Call id -> recorded output text, for every call that kept its text."""
        return {c.id: c.output for _, c in self.calls() if c.output is not None}


def new_header(workload: str, **kw: Any) -> Header:
    """A header stamped with this mrw's version and the current UTC time."""
    from mrw import __version__

    return Header(
        workload=workload,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mrw_version=__version__,
        **kw,
    )


# ---------------------------------------------------------------------------- I/O


def read_bytes(path: str | os.PathLike) -> bytes:
    """The raw JSON bytes of a trace file, gunzipped if it ends in .gz."""
    from mrw.errors import TraceError

    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TraceError(f"{p}: no such file; check the path") from None
    except IsADirectoryError:
        raise TraceError(f"{p}: is a directory, not a trace file") from None
    if p.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise TraceError(f"{p}: corrupt or truncated gzip ({e}); re-download or re-record it") from None
    return data


def parse(data: bytes, name: str = "<trace>") -> dict:
    """JSON bytes to a dict, with a one-line error for non-JSON or truncated input."""
    from mrw.errors import TraceError

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        what = "truncated" if e.pos >= len(data.rstrip()) - 1 else "not valid JSON"
        raise TraceError(f"{name}: {what} at byte {e.pos} ({e.msg}); is this an mrw trace file?") from None
    if not isinstance(doc, dict):
        raise TraceError(f"{name}: top level is {type(doc).__name__}, expected an object with 'header' and 'workflows'")
    return doc


def load(path: str | os.PathLike, *, validate: bool = True) -> Trace:
    """Read, migrate, validate and build a trace. Raises TraceError listing every problem."""
    from mrw import validate as v

    name = str(path)
    # Millions of new containers, none of them garbage: CPython's cyclic GC would rescan the
    # growing heap over and over (3/4 of the load time of a 1M-call trace). Off while loading.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        doc = parse(read_bytes(path), name)
        doc = v.migrate(doc, name)
        if validate:
            v.raise_if_problems(v.check(doc), name)
        return _build_consuming(doc)
    finally:
        if gc_was_on:
            gc.enable()


def _build_consuming(doc: dict) -> Trace:
    """Trace.from_dict that drops each workflow's dicts as soon as its dataclasses exist, so
    that a large trace's peak memory is about one copy of it, not the dicts plus the objects."""
    wfs = doc["workflows"]
    header = Header.from_dict(doc["header"])
    out: list[Workflow] = []
    build = Workflow.from_dict
    for i in range(len(wfs)):
        out.append(build(wfs[i]))
        wfs[i] = None
    return Trace(header, out)


def dumps(trace: Trace | dict, *, indent: bool = False) -> bytes:
    d = trace.to_dict() if isinstance(trace, Trace) else trace
    opts = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(d, option=opts | orjson.OPT_SERIALIZE_NUMPY)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump(trace: Trace | dict, path: str | os.PathLike) -> Path:
    """Write a trace; `.gz` suffix compresses. Atomic."""
    p = Path(path)
    data = dumps(trace, indent=p.suffix != ".gz")
    if p.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    write_atomic(p, data)
    return p


TraceLike = Union[Trace, str, os.PathLike]
