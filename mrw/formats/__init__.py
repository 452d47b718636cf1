"""Foreign trace formats, both ways: one module per format behind a small registry.

A format is a class with a `name`, what it can do (`can_import`, `can_export`), and
`read(path, **opts) -> (Trace, notes)` / `write(trace, path, **opts) -> notes`. The notes
say what the other side cannot express (dependencies in Mooncake, token counts in AIPerf's
DAG files, ...): an import records them in `header.extra["import"]` and the CLI prints them,
so nothing a format lacks is ever silently invented or silently dropped.

Adding a format: one module here with a `Format` subclass decorated with `@register`, and
an entry in `_MODULES`; the round-trip tests in tests/test_formats.py are what it must pass.
A format that can tell its own files (`looks_like`) lets `mrw import` name the right format
when a file is given to the wrong one (a Bailian trace to `mooncake`, a Mooncake trace to
`aiperf-dag`) instead of misreading it. What importers share (bounded line reading, fields,
timestamps) is in `mrw.formats.common`.
"""

from __future__ import annotations

import abc
import importlib
import os
from pathlib import Path
from typing import Any, ClassVar

from mrw.errors import MrwError, UnknownNameError
from mrw.trace import Header, Trace, new_header


class FormatError(MrwError):
    """A foreign trace file is malformed, or a trace cannot be written in a format."""


class Format(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    can_import: ClassVar[bool] = True
    can_export: ClassVar[bool] = True

    def read(self, path: Path, **opts: Any) -> tuple[Trace, list[str]]:
        raise FormatError(f"format {self.name!r} can only be exported, not imported")

    def write(self, trace: Trace, path: Path, **opts: Any) -> list[str]:
        raise FormatError(f"format {self.name!r} can only be imported, not exported")

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        """Whether a file is of this format, from its first bytes (`head`, decompressed) and its
        first line parsed as a JSON object (`first`, None if it is not one). Specific enough
        that no other format's files match."""
        return False


REGISTRY: dict[str, type[Format]] = {}
# Modules that register formats; imported on first use so `mrw --help` stays fast.
_MODULES = ("mooncake", "bailian", "azure", "aiperf", "otel", "weka", "tracelab", "copilot")


def register(cls: type[Format]) -> type[Format]:
    REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"mrw.formats.{m}")


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def get(name: str) -> Format:
    _load_all()
    cls = REGISTRY.get(name)
    if cls is None:
        raise UnknownNameError(f"unknown trace format {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return cls()


def import_header(fmt: str, source: str | os.PathLike, notes: list[str], *, workload: str | None = None, **kw: Any) -> Header:
    """The header of an imported trace: which format, which file, what it could not say."""
    h = new_header(workload or fmt, generator={"name": f"import:{fmt}"}, **kw)
    h.extra["import"] = {"format": fmt, "source": Path(source).name, "not_expressed": list(notes)}
    return h


def import_trace(path: str | os.PathLike, fmt: str, progress: Any = None, **opts: Any) -> tuple[Trace, list[str]]:
    """Read a foreign file into a validated mrw trace; returns it and the notes. `progress`,
    if given, is called with (bytes read, bytes in all) as the files are read."""
    from mrw import validate as v
    from mrw.formats.common import reading

    f = get(fmt)
    if not f.can_import:
        raise FormatError(f"format {fmt!r} can only be exported")
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file or directory")
    looks = detect(p)
    if looks and fmt not in looks:
        raise FormatError(f"{p} looks like {REGISTRY[looks[0]].description.split(':')[0]}, not {fmt}: "
                          f"run `mrw import {looks[0]} {p}`")
    with reading(progress):
        trace, notes = f.read(p, **opts)
    v.raise_if_problems(v.check(trace.to_dict()), f"{p} (imported as {fmt})")
    return trace, notes


_SNIFF_BYTES = 1 << 20
_SNIFF_SUFFIXES = (".json", ".jsonl", ".gz", ".csv")


def detect(path: Path) -> list[str]:
    """The formats whose `looks_like` accepts the file (or, for a directory, its first file
    with a trace-like name); [] when none does or the file cannot be read."""
    import gzip
    import zlib

    import orjson

    _load_all()
    if path.is_dir():
        files = sorted(q for q in path.rglob("*") if q.is_file() and q.name.endswith(_SNIFF_SUFFIXES))
        if not files:
            return []
        path = files[0]
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                head = g.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error):
        return []
    head = head.removeprefix(b"\xef\xbb\xbf")
    first: dict | None = None
    line = head.lstrip().split(b"\n", 1)[0]
    try:
        d = orjson.loads(line)
        first = d if isinstance(d, dict) else None
    except orjson.JSONDecodeError:
        pass
    return [n for n, cls in sorted(REGISTRY.items()) if cls().looks_like(head, first)]


def export_trace(trace: Trace, path: str | os.PathLike, fmt: str, **opts: Any) -> list[str]:
    f = get(fmt)
    if not f.can_export:
        raise FormatError(f"format {fmt!r} can only be imported")
    return f.write(trace, Path(path), **opts)


def issue_time(wf_arrival: float, call: Any) -> float:
    """When a call was issued, seconds from the trace start: recorded, else its workflow's arrival."""
    return call.t_issue if call.t_issue is not None else wf_arrival


def text_messages(trace: Trace, call: Any, tokenizer: Any | None, block_size: int | None, fmt: str) -> list[dict[str, str]]:
    """Chat messages for a call: its own (refs filled with recorded outputs), or, for a
    text-free call, synthetic text from its hash_ids (mrw.synth) when a tokenizer is given."""
    try:
        if call.messages is not None:
            return call.render_messages(_outputs(trace))
        if call.prompt is not None:
            return [{"role": "user", "content": call.render_prompt(_outputs(trace))}]
    except KeyError as e:
        raise FormatError(f"call {call.id}: splices the output of {e.args[0]!r}, which the trace did not record; "
                          f"{fmt} needs the text") from None
    if tokenizer is None:
        raise FormatError(
            f"{fmt} needs prompt text and call {call.id} has none (an anonymised or imported trace); "
            "pass --tokenizer DIR to synthesise text from its hash_ids"
        )
    from mrw import synth

    return [{"role": "user", "content": synth.text(call, block_size or 16, tokenizer)}]


_OUT_CACHE: list[tuple[Trace, dict[str, str]]] = []


def _outputs(trace: Trace) -> dict[str, str]:
    if _OUT_CACHE and _OUT_CACHE[0][0] is trace:
        return _OUT_CACHE[0][1]
    outs = trace.recorded_outputs()
    _OUT_CACHE[:] = [(trace, outs)]
    return outs
