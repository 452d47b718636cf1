"""What the importers share: bounded reading of foreign files, their fields and timestamps,
and the two derivations some formats need (a DAG from recorded start and end times, and
cached-token counts as hash_ids).

Foreign files are untrusted and can be large (the Copilot agent week is ~3 GB of gzip
JSONL): they are read line by line, a line or a document has a size bound, every number is
checked where it is read, and every problem is one `FormatError` line naming the file and
line and what to do. Nothing here holds a raw file.
"""

from __future__ import annotations

import gzip
import heapq
import math
import re
import zlib
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson

from mrw.formats import FormatError

# Bounds no real workload reaches (the trace model's own limits): a count above them is a
# corrupt or hostile file, said so at its line rather than after the import.
MAX_TOKENS = 10_000_000
MAX_SECONDS = 100_000_000.0
MAX_HASH_ID = 2**63 - 1
MAX_LINE = 64 << 20  # bytes in one JSONL line or CSV row
MAX_DOC = 512 << 20  # bytes in one whole-document JSON file (a Weka trace)
MAX_ID = 512  # characters kept of a foreign identifier

_GZIP_MAGIC = b"\x1f\x8b"
_REPORT_EVERY = 8 << 20  # bytes of a file between progress reports


class ReadMeter:
    """Bytes of the foreign files read so far, reported as (done, total) to `report` (the
    progress display of `mrw import`). Installed for one import with `reading`."""

    def __init__(self, report: Callable[[int, int], None]):
        self.report = report
        self.total = self.done = 0

    def expect(self, paths: Sequence[Path]) -> None:
        self.total = sum(p.stat().st_size for p in paths)

    def file(self, path: Path) -> tuple[int, int]:
        """(bytes before this file, its size); a lone file sets the total."""
        size = path.stat().st_size
        if not self.total:
            self.total = size
        return self.done, size

    def finished(self, base: int, size: int) -> None:
        self.done = base + size
        self.report(self.done, max(self.total, self.done))


_meter: ContextVar[ReadMeter | None] = ContextVar("mrw_formats_read_meter", default=None)


def reading(report: Callable[[int, int], None] | None):
    """Context: report the bytes read by this import's readers to `report` (None: nothing)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        token = _meter.set(ReadMeter(report) if report is not None else None)
        try:
            yield
        finally:
            _meter.reset(token)

    return ctx()


def is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else path.open("rb")


def read_lines(path: Path, what: str) -> Iterator[tuple[int, bytes]]:
    """(line number, stripped line) for every non-empty line of a text or gzip file, each
    line at most MAX_LINE bytes; a BOM on the first line is dropped."""
    lineno = 0
    meter = _meter.get()
    base, size = meter.file(path) if meter is not None else (0, 0)
    next_report = _REPORT_EVERY
    try:
        with _open(path) as f:
            raw = getattr(f, "fileobj", f)  # a gzip file's position in the compressed bytes
            while True:
                line = f.readline(MAX_LINE + 1)
                if not line:
                    if meter is not None:
                        meter.finished(base, size)
                    return
                lineno += 1
                if meter is not None and raw.tell() >= next_report:
                    next_report = raw.tell() + _REPORT_EVERY
                    meter.report(base + raw.tell(), meter.total)
                if len(line) > MAX_LINE:
                    raise FormatError(f"{path}:{lineno}: a line longer than {MAX_LINE:,} bytes; is this {what}?")
                if lineno == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")
                line = line.strip()
                if line:
                    yield lineno, line
    except (OSError, EOFError, zlib.error) as e:
        raise FormatError(f"{path}: unreadable after line {lineno} ({e}); re-download it or check the gzip") from None


def json_lines(path: Path, what: str) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for every line of a JSONL file (plain or gzip)."""
    for lineno, raw in read_lines(path, what):
        where = f"{path}:{lineno}"
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise FormatError(f"{where}: not JSON ({e.msg}); is this {what}?") from None
        if not isinstance(d, dict):
            raise FormatError(f"{where}: a line must be a JSON object; is this {what}?")
        yield where, d


def read_document(path: Path, what: str) -> Any:
    """One whole JSON document (plain or gzip), at most MAX_DOC bytes."""
    try:
        with _open(path) as f:
            data = f.read(MAX_DOC + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise FormatError(f"{path}: unreadable ({e}); re-download it or check the gzip") from None
    if len(data) > MAX_DOC:
        raise FormatError(f"{path}: larger than {MAX_DOC:,} bytes; is this {what}?")
    if (meter := _meter.get()) is not None:
        meter.finished(*meter.file(path))
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise FormatError(f"{path}: not JSON ({e.msg}); is this {what}?") from None


def input_files(path: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The file itself, or a directory's files (recursively, sorted) whose names end in one of
    `suffixes` (a release unpacked as it ships: date=.../shard-0000.jsonl.gz)."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise FormatError(f"{path}: no {' or '.join(suffixes)} files; is this {what}?")
    if (meter := _meter.get()) is not None:
        meter.expect(files)
    return files


# ---------------------------------------------------------------------------- fields


def count(d: dict, key: str, where: str, *, required: bool = True, bound: int = MAX_TOKENS) -> int | None:
    """A token count: an integer (3.0 is read as 3) in 0..bound."""
    v = d.get(key)
    if v is None:
        if required:
            raise FormatError(f"{where}: {key!r} is missing")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= bound) or int(v) != v:
        raise FormatError(f"{where}: {key!r} must be an integer from 0 to {bound:,}, not {_short(v)}")
    return int(v)


def seconds(d: dict, key: str, where: str, *, required: bool = False, unit: str = "seconds") -> float | None:
    """A time or duration in seconds (or milliseconds, unit="ms"): a finite number within
    +-MAX_SECONDS."""
    v = d.get(key)
    if v is None:
        if required:
            raise FormatError(f"{where}: {key!r} is missing")
        return None
    bound = MAX_SECONDS * (1000 if unit == "ms" else 1)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > bound:
        raise FormatError(f"{where}: {key!r} must be a number of {unit}, not {_short(v)}")
    return float(v)


def text(d: dict, key: str, where: str, *, required: bool = False) -> str | None:
    """A string field (ids, labels), cut to MAX_ID characters; numbers are taken as text."""
    v = d.get(key)
    if v is None:
        if required:
            raise FormatError(f"{where}: {key!r} is missing")
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise FormatError(f"{where}: {key!r} must be a string, not {_short(v)}")
    return str(v)[:MAX_ID]


def hash_ids(d: dict, key: str, where: str) -> list[int] | None:
    """A list of non-negative 63-bit integers (checked at C speed: agentic traces carry
    millions of them)."""
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or (v and (set(map(type, v)) != {int} or min(v) < 0 or max(v) > MAX_HASH_ID)):
        raise FormatError(f"{where}: {key!r} must be a list of non-negative 63-bit integers")
    return v


def listed(names: Any, most: int = 12) -> str:
    """Names for a note, sorted, each and their number bounded (a hostile file has millions)."""
    shown = sorted(str(n)[:60] for n in names)
    return ", ".join(shown[:most]) + (f", ... ({len(shown)} in all)" if len(shown) > most else "")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# ---------------------------------------------------------------------------- timestamps

_TS = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=timezone.utc)


def parse_time_ns(value: str | bytes) -> int:
    """Nanoseconds since the epoch (UTC) of an ISO-8601 date-time, in every form the public
    traces use: 'T' or a space between date and time; whole seconds or 1 to 9 fractional
    digits; a 'Z', '+HH:MM', '+HHMM' or '+HH' offset, which is applied, or none (UTC).
    Exact: integers throughout, so 100 ns digits and any offset survive. Raises ValueError."""
    s = (value.encode() if isinstance(value, str) else value).strip().strip(b'"')
    m = _TS.fullmatch(s)
    if m is None:
        raise ValueError(f"not an ISO-8601 date-time: {_short(value)}")
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    dt = datetime(y, mo, d, h, mi, sec)  # validates the calendar (month 13, Feb 30, ...)
    delta = dt - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000
    frac = m.group(7)
    if frac:
        ns += int(frac.ljust(9, b"0"))
    off = m.group(8)
    if off and off[:1] in b"+-":
        digits = off[1:].replace(b":", b"")
        minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
        if minutes >= 24 * 60:
            raise ValueError(f"UTC offset out of range: {_short(value)}")
        ns -= (1 if off[:1] == b"+" else -1) * minutes * 60_000_000_000
    return ns


def iso_utc(ns: int) -> str:
    """An epoch-nanosecond time as ISO-8601 UTC with microseconds ('...T12:00:00.269000+00:00')."""
    return (_EPOCH_UTC + timedelta(microseconds=ns // 1000)).isoformat()


# ---------------------------------------------------------------------------- derivations


def happens_before(spans: Sequence[tuple[int, int]], slack: int = 0) -> list[list[int]]:
    """Dependencies from recorded times, for calls of one session given as (start, end) in
    start order: a call depends on the latest calls that had ended when it started (the
    maximal ones: no other ended call depends on them). Calls that ran one after another
    form a chain; a call that started while another was still running runs beside it, and
    the next call after both joins them. `slack` is a tolerance in the times' unit."""
    ended: list[tuple[int, int]] = []  # heap of (end, index) of calls not yet ended
    frontier: set[int] = set()
    deps: list[list[int]] = []
    for i, (start, end) in enumerate(spans):
        while ended and ended[0][0] <= start + slack:
            _, j = heapq.heappop(ended)
            frontier.difference_update(deps[j])
            frontier.add(j)
        deps.append(sorted(frontier))
        heapq.heappush(ended, (max(start, end), i))
    return deps


class HashCounts:
    """How each call's hash_ids count fits its token count, for the import's notes: ceil(n/B)
    ids (every block hashed, the last partial one too), floor(n/B) (whole blocks only: the
    tokens after the last one have no id and share nothing at replay), or neither (a wrong
    block size?)."""

    def __init__(self, block_size: int, what: str = "requests", field: str = "input_length", hint: str = "--block-size"):
        self.block_size, self.what, self.field, self.hint = block_size, what, field, hint
        self.whole_only = self.mismatched = 0

    def add(self, hids: list[int], n_tokens: int) -> None:
        if len(hids) != -(-n_tokens // self.block_size):
            if len(hids) == n_tokens // self.block_size:
                self.whole_only += 1
            else:
                self.mismatched += 1

    def notes(self) -> list[str]:
        bs, out = self.block_size, []
        if self.whole_only:
            out.append(f"{self.whole_only} {self.what} hash only their whole blocks (floor({self.field}/{bs}) "
                       "hash_ids): the tokens after the last whole block share nothing at replay")
        if self.mismatched:
            out.append(f"{self.mismatched} {self.what} have a hash_ids count that does not match "
                       f"ceil({self.field}/{bs}) (nor floor, for whole-block hashing); is the block size right ({self.hint})?")
        return out


class CachedBlocks:
    """hash_ids for traces that record how many prompt tokens a cache already held, not which.

    A call of n tokens with c cached gets floor(n/B) ids, B the block size: the first
    floor(c/B) are those of the previous call to the same model in its session (a provider's
    cache is a prefix of what that model saw last), and the rest are new. A session's first
    call to a model takes its cached blocks from one chain per model that every session
    shares (the common system prompt and tool definitions that let a first call hit a
    cache). Cached tokens beyond the previous call's prompt (a cache also holds what the
    model generated, and a replay generates that anew) get new ids; they are counted in
    `unplaced_tokens`, out of `cached_tokens`."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._next = 1
        self._common: dict[str, list[int]] = {}
        self.cached_tokens = self.unplaced_tokens = 0

    def _fresh(self, n: int) -> list[int]:
        ids = list(range(self._next, self._next + n))
        self._next += n
        return ids

    def ids(self, n_tokens: int, n_cached: int, previous: list[int] | None, model: str) -> list[int]:
        bs = self.block_size
        n_blocks = n_tokens // bs
        want = min(n_cached, n_tokens) // bs
        self.cached_tokens += min(n_cached, n_tokens)
        if previous is None:
            previous = self._common.setdefault(model, [])
            if len(previous) < want:
                previous.extend(self._fresh(want - len(previous)))
        k = min(want, len(previous))
        self.unplaced_tokens += (want - k) * bs
        return previous[:k] + self._fresh(n_blocks - k)

    def unplaced_note(self, call: str) -> str | None:
        """The import note for cached tokens a replay cannot hit, or None."""
        if not self.unplaced_tokens:
            return None
        share = self.unplaced_tokens / max(self.cached_tokens, 1)
        return (f"{self.unplaced_tokens:,} cached tokens ({share:.1%} of all cached) lie beyond the prompt of the previous "
                f"{call} of the same model (a cache also holds what the model generated, which a replay generates "
                "anew): their blocks are new, so a replay hits the cache that much less than the recording")
