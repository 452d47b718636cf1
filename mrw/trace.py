"""The trace model: a recorded multi-request workflow workload, as plain data.

A trace is one JSON document (see docs/trace-format.md and mrw/schema/trace-v1.schema.json):

    {"header": {...}, "workflows": [{"id", "arrival_s", "tags", "calls": [Call, ...]}, ...]}

This module holds the model (msgspec `Struct`s), one reader (`load`) and one writer (`dump`),
`.json` and `.json.gz` alike. The Structs' annotations carry the schema's rules (unknown fields
forbidden, `ge=0`, `min_length=1`, the role enum), so that `load` turns the file's bytes into
the model in one msgspec decode that parses, checks the structure and builds at once
(`mrw.validate.decode`, which also holds the decode's stricter view of these classes).
Validation lives in `mrw.validate`; `load` runs it so that nothing downstream ever sees an
invalid trace.
"""

from __future__ import annotations

import gc
import gzip
import mmap
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Mapping, Union

import msgspec
import orjson
from msgspec import Meta, Struct, field

FORMAT_NAME = "mrw-trace"
FORMAT_VERSION = 1

# A prompt segment: literal text, or the output of an upstream call spliced in. Kept a plain
# dict (decoding one is cheaper than a Struct); its exactly-one-key rule is checked on load
# (mrw.validate).
Segment = dict[str, str]  # {"text": str} | {"ref": call_id}
Role = Literal["system", "user", "assistant", "tool", "developer"]

_NonEmptyStr = Annotated[str, Meta(min_length=1)]
_NonNegFloat = Annotated[float, Meta(ge=0)]
_NonNegInt = Annotated[int, Meta(ge=0)]
_Time = Union[Annotated[float, Meta(ge=0)], None]

# Every model Struct: unknown fields are an error (a typo is caught), and gc=False: a trace
# is a tree of plain data (no reference cycles), so the cyclic GC need not track its millions
# of objects (less memory, no collections walking them during a replay).
_MODEL = dict(forbid_unknown_fields=True, gc=False)


def join_segments(segments: list[Segment], outputs: Mapping[str, str]) -> str:
    """Concatenate segments, splicing `outputs[ref]` for each reference."""
    return "".join(s["text"] if "text" in s else outputs[s["ref"]] for s in segments)


class Message(Struct, **_MODEL):
    """One chat message whose content is a list of segments."""

    role: Role
    content: list[Segment]

    def to_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


class Call(Struct, **_MODEL):
    """One LLM request inside a workflow."""

    id: _NonEmptyStr
    node: str
    deps: list[str] = field(default_factory=list)
    wait_s: _NonNegFloat = 0.0
    input_tokens: _NonNegInt = 0
    output_tokens: _NonNegInt = 0
    messages: list[Message] | None = None  # chat API
    prompt: list[Segment] | None = None  # completions API (exclusive with messages)
    sampling: dict[str, Any] = field(default_factory=dict)
    t_issue: _Time = None
    t_first_token: _Time = None
    t_end: _Time = None
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
        """Build from a (schema-valid) dict: missing fields take their defaults, and numbers are
        coerced the way the schema counts them (an integer written 3.0 is read as 3)."""
        return msgspec.convert(d, cls, strict=False)


class Workflow(Struct, **_MODEL):
    """One instance of a workload: one document, one coding task, one copilot session."""

    id: _NonEmptyStr
    arrival_s: _NonNegFloat
    calls: Annotated[list[Call], Meta(min_length=1)]
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
        return msgspec.convert(d, cls, strict=False)

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


class Header(Struct, **_MODEL):
    """Who made the trace, how, and against what. Never holds a secret or a full URL."""

    workload: _NonEmptyStr
    generator: dict[str, Any] = field(default_factory=dict)  # {"name", "params", "seed"}
    recorded_against: dict[str, Any] = field(default_factory=dict)  # {"engine", "model", "tokenizer", ...}
    created: str = ""
    mrw_version: str = ""
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    block_size: Annotated[int, Meta(ge=1)] | None = None  # token block size of hash_ids, when present
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
        return msgspec.convert(d, cls, strict=False)


class Trace(Struct, **_MODEL):
    header: Header
    workflows: list[Workflow]

    def to_dict(self) -> dict:
        return {"header": self.header.to_dict(), "workflows": [w.to_dict() for w in self.workflows]}

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        return msgspec.convert(d, cls, strict=False)

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


def parse(data: bytes | memoryview, name: str = "<trace>") -> dict:
    """JSON bytes to a dict, with a one-line error for non-JSON or truncated input."""
    from mrw.errors import TraceError

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        what = "truncated" if e.pos >= len(bytes(data).rstrip()) - 1 else "not valid JSON"
        raise TraceError(f"{name}: {what} at byte {e.pos} ({e.msg}); is this an mrw trace file?") from None
    if not isinstance(doc, dict):
        raise TraceError(f"{name}: top level is {type(doc).__name__}, expected an object with 'header' and 'workflows'")
    return doc


def load(path: str | os.PathLike, *, validate: bool = True) -> Trace:
    """Read, migrate, validate and build a trace. Raises TraceError listing every problem.

    The bytes go through one msgspec decode into the model that checks the structure on the
    way and screens the semantic rules workflow by workflow (`mrw.validate.decode`). A document
    that decode refuses (invalid, an older format version, or a form the schema allows and the
    decode does not, such as an integer written 3.0) takes the complete path: parse, migrate,
    the JSON Schema report of every problem, build, then the same semantic rules."""
    from mrw import validate as v

    name = str(path)
    # Millions of new containers (each call's deps and hash_ids lists), none of them garbage:
    # CPython's cyclic GC would rescan the growing heap over and over. Off while loading;
    # and, when it was on, the loaded trace is frozen out of its sight after (`gc.freeze`),
    # else the first allocation after `gc.enable()` starts a collection that walks every one
    # of them (0.7 s for a million calls), and every later full collection walks them again.
    # The trace is acyclic and lives as long as the program uses it; `gc.unfreeze()` undoes.
    gc_was_on = gc.isenabled()
    gc.disable()
    loaded: Trace | None = None
    try:
        with _mapped(path) as data:
            got = v.decode(data, report=False, parallel=None if validate else False)
            if got is None:
                doc = parse(data, name)
        # the file is closed (unmapped) before any report is built
        if got is not None:
            trace, problems = got
            if problems is None:  # the screen doubts: the report says what is wrong, if anything
                problems = v.semantic_report(trace) if validate else []
        else:
            doc = v.migrate(doc, name)
            if validate:
                v.raise_if_problems(v.schema_problems(doc), name)
            trace = _build_consuming(doc, name)
            problems = v.trace_problems(trace) if validate else []
        if validate:
            v.raise_if_problems(problems, name)
        loaded = trace
        return trace
    finally:
        if gc_was_on:
            if loaded is not None and loaded.n_calls >= _FREEZE_MIN:
                gc.freeze()
            gc.enable()


_FREEZE_MIN = 10_000  # calls: below, the containers cost the GC nothing worth a freeze


class _mapped:
    """The file's JSON as a buffer: an uncompressed file is mapped, not read (no copy, and
    about 30 times fewer page faults than a read into a fresh bytes object); a .gz is
    decompressed. The map closes on leaving (nothing decoded from it refers to it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self.map: mmap.mmap | None = None

    def __enter__(self) -> Any:
        p = Path(self.path)
        if p.suffix != ".gz" and p.is_file():
            with open(p, "rb") as f:
                if f.read(2) != b"\x1f\x8b" and os.fstat(f.fileno()).st_size >= _MAP_MIN:
                    self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    self.view = memoryview(self.map)
                    return self.view
        return read_bytes(p)

    def __exit__(self, *exc: Any) -> None:
        if self.map is not None:
            self.view.release()
            self.map.close()


_MAP_MIN = 1 << 20  # small files: a plain read is as cheap


def _build_consuming(doc: dict, name: str = "<trace>") -> Trace:
    """Trace.from_dict that drops each workflow's dicts as soon as its Structs exist, so that
    a large trace's peak memory is about one copy of it, not the dicts plus the objects."""
    from mrw.errors import TraceError

    out: list[Workflow] = []
    build = Workflow.from_dict
    try:
        wfs = doc["workflows"]
        header = Header.from_dict(doc["header"])
        for i in range(len(wfs)):
            out.append(build(wfs[i]))
            wfs[i] = None
    except (msgspec.ValidationError, KeyError, TypeError) as e:  # only without validation
        raise TraceError(f"{name}: cannot be read as a trace ({e}); run `mrw validate {name}`") from None
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
        # mkstemp makes the file 0600; a trace or run file is for sharing: keep the mode of
        # the file being replaced, else the usual 0644.
        os.fchmod(fd, p.stat().st_mode & 0o777 if p.exists() else 0o644)
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
