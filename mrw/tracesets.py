"""Trace sets: a directory of traces with a manifest, packed as one .tar.gz to share.

A trace set is what one lab hands another: the traces, a `MANIFEST.json` that names every
file with its SHA-256, the mrw and trace-format versions, the workloads and the model and
tokenizer each trace was recorded with, a licence and free-text provenance.

    pack(DIR, OUT)      DIR -> OUT.tar.gz (manifest first, deterministic bytes)
    unpack(ARCHIVE, DIR) the reverse, treating the archive as hostile
    verify(DIR|ARCHIVE)  checksums + schema + semantics of every file, one result per file

Unpacking never trusts the archive: tarfile's own extraction is not used at all. Each
member is checked (a relative path without `..`, a regular file or a directory, nothing
else: no symlink, hardlink, device or fifo), the member count, each member's size and the
total decompressed size are bounded while the gzip stream is read (so a gzip bomb stops at
the bound, not at the end of the disk), every byte is written below a staging directory
inside the target, each file's SHA-256 is checked against the manifest before anything is
moved into place, and nothing is executed or unpickled: traces are JSON, read with orjson.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

import orjson

from mrw.errors import MrwError, TraceError

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "mrw-traceset"
MANIFEST_VERSION = 1
TRACE_SUFFIXES = (".json", ".json.gz")
# Plain-text companions a set may carry (shown to people, never parsed as traces).
DOC_NAMES = re.compile(r"^(README|LICEN[CS]E|NOTICE|CITATION)(\.(md|txt|cff|rst))?$", re.IGNORECASE)


class TraceSetError(MrwError):
    """A trace set archive or directory is unsafe, malformed or does not match its manifest."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what an untrusted archive may make us read or write."""

    max_members: int = 10_000
    max_member_bytes: int = 2 * 1024**3  # one file, decompressed
    max_total_bytes: int = 8 * 1024**3  # the whole tar stream, decompressed
    max_manifest_bytes: int = 16 * 1024**2
    max_name_len: int = 255


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------- manifest


@dataclass(slots=True)
class FileEntry:
    path: str  # POSIX, relative to the set's root
    sha256: str
    bytes: int
    kind: str = "trace"  # "trace" | "doc"
    format_version: int | None = None
    workload: str | None = None
    workflows: int | None = None
    calls: int | None = None
    model: str | None = None
    tokenizer: str | None = None
    anonymized: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, d: dict) -> "FileEntry":
        return cls(**{k: d.get(k) for k in cls.__slots__ if k in d})  # type: ignore[attr-defined]


@dataclass(slots=True)
class Manifest:
    files: list[FileEntry]
    licence: str = ""
    provenance: str = ""
    mrw_version: str = ""
    created: str = ""
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    @property
    def workloads(self) -> list[str]:
        return sorted({f.workload for f in self.files if f.workload})

    @property
    def models(self) -> list[str]:
        return sorted({f.model for f in self.files if f.model})

    @property
    def tokenizers(self) -> list[str]:
        return sorted({f.tokenizer for f in self.files if f.tokenizer})

    @property
    def format_versions(self) -> list[int]:
        return sorted({f.format_version for f in self.files if f.format_version is not None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            "mrw_version": self.mrw_version,
            "created": self.created,
            "licence": self.licence,
            "provenance": self.provenance,
            # Summaries for a reader skimming the manifest; `files` is authoritative.
            "trace_format_versions": self.format_versions,
            "workloads": self.workloads,
            "models": self.models,
            "tokenizers": self.tokenizers,
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def from_dict(cls, d: Any, name: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(d, dict):
            raise TraceSetError(f"{name}: not a JSON object; is this an mrw trace set?")
        if d.get("format") != MANIFEST_FORMAT:
            raise TraceSetError(f"{name}: format is {d.get('format')!r}, not {MANIFEST_FORMAT!r}; not an mrw trace set")
        ver = d.get("version")
        if ver != MANIFEST_VERSION:
            newer = isinstance(ver, int) and ver > MANIFEST_VERSION
            hint = "upgrade mrw" if newer else "it cannot be read"
            raise TraceSetError(
                f"{name}: trace-set manifest version {ver!r}; this mrw reads version {MANIFEST_VERSION} ({hint})"
            )
        files = d.get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise TraceSetError(f"{name}: 'files' must be a list of objects")
        entries = []
        for i, f in enumerate(files):
            p, h, n = f.get("path"), f.get("sha256"), f.get("bytes")
            if not isinstance(p, str) or not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h) or not isinstance(n, int):
                raise TraceSetError(f"{name}: files[{i}] needs a string 'path', a hex 'sha256' and an integer 'bytes'")
            _check_member_name(p, DEFAULT_LIMITS)
            entries.append(FileEntry.from_dict(f))
        paths = [e.path for e in entries]
        if len(set(paths)) != len(paths):
            raise TraceSetError(f"{name}: lists a file twice")
        return cls(
            files=entries,
            licence=str(d.get("licence", "")),
            provenance=str(d.get("provenance", "")),
            mrw_version=str(d.get("mrw_version", "")),
            created=str(d.get("created", "")),
        )


def read_manifest(root: str | os.PathLike) -> Manifest:
    p = Path(root) / MANIFEST_NAME
    if not p.is_file():
        raise TraceSetError(f"{root}: no {MANIFEST_NAME}; make one with `mrw pack`, or this is not a trace set")
    data = p.read_bytes()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise TraceSetError(f"{p}: not valid JSON ({e.msg})") from None
    return Manifest.from_dict(doc, str(p))


# ---------------------------------------------------------------------------- pack


def _sha256_file(p: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def is_trace_name(name: str) -> bool:
    return name.endswith(TRACE_SUFFIXES) and PurePosixPath(name).name != MANIFEST_NAME


def _scan(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(traces, docs, other) below root, sorted, symlinks refused."""
    traces, docs, other = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise TraceSetError(f"{p}: is a symlink; a trace set holds regular files only (copy the file in)")
            if rel == MANIFEST_NAME or fn.startswith("."):
                continue
            if is_trace_name(fn):
                traces.append(p)
            elif DOC_NAMES.match(fn):
                docs.append(p)
            else:
                other.append(p)
    return traces, docs, other


def describe_trace(doc: dict) -> dict[str, Any]:
    """The manifest fields a trace document contributes."""
    h = doc.get("header", {})
    ra = h.get("recorded_against") or {}
    wfs = doc.get("workflows", [])
    calls = [c for w in wfs for c in w.get("calls", [])]
    return {
        "format_version": h.get("version"),
        "workload": h.get("workload"),
        "workflows": len(wfs),
        "calls": len(calls),
        "model": ra.get("model"),
        "tokenizer": ra.get("tokenizer") or ra.get("model"),
        "anonymized": bool(calls) and all("messages" not in c and "prompt" not in c for c in calls),
    }


def build_manifest(root: str | os.PathLike, *, licence: str = "", provenance: str = "") -> tuple[Manifest, list[Path]]:
    """Checksum and describe every trace under root; refuse an invalid trace (a set is
    only as good as its worst file). Returns the manifest and the files it did not take."""
    from mrw import __version__
    from mrw import trace as tr
    from mrw import validate as v

    root = Path(root)
    if not root.is_dir():
        raise TraceSetError(f"{root}: not a directory; `mrw pack` takes a directory of traces")
    traces, docs, other = _scan(root)
    if not traces:
        raise TraceSetError(f"{root}: no trace files (*.json, *.json.gz) to pack")
    entries: list[FileEntry] = []
    for p in traces:
        rel = p.relative_to(root).as_posix()
        doc = v.migrate(tr.parse(tr.read_bytes(p), rel), rel)
        v.raise_if_problems(v.check(doc), rel)
        sha, n = _sha256_file(p)
        entries.append(FileEntry(path=rel, sha256=sha, bytes=n, kind="trace", **describe_trace(doc)))
    for p in docs:
        sha, n = _sha256_file(p)
        entries.append(FileEntry(path=p.relative_to(root).as_posix(), sha256=sha, bytes=n, kind="doc"))
    man = Manifest(
        files=entries,
        licence=licence,
        provenance=provenance,
        mrw_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return man, other


def _tarinfo(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = mode
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def pack(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    licence: str = "",
    provenance: str = "",
    write_manifest: bool = True,
) -> tuple[Manifest, list[Path]]:
    """Pack the traces under root into a gzipped tar with MANIFEST.json first.

    Byte-for-byte reproducible for the same files and manifest (mtime 0, owner 0, sorted).
    The manifest is also written into root unless write_manifest is False.
    """
    from mrw.trace import write_atomic

    root = Path(root)
    out = Path(out)
    man, skipped = build_manifest(root, licence=licence, provenance=provenance)
    if out.resolve().is_relative_to(root.resolve()):
        raise TraceSetError(f"{out}: the archive may not be written inside the directory it packs")
    man_bytes = orjson.dumps(man.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"
    if write_manifest:
        write_atomic(root / MANIFEST_NAME, man_bytes)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(_tarinfo(MANIFEST_NAME, len(man_bytes)), io.BytesIO(man_bytes))
            for e in man.files:
                p = root / e.path
                with p.open("rb") as f:
                    tf.addfile(_tarinfo(e.path, e.bytes), f)
    write_atomic(out, buf.getvalue())
    return man, skipped


# ---------------------------------------------------------------------------- unpack


class _BoundedReader(io.RawIOBase):
    """Reads a decompressing stream and fails once more than `limit` bytes came out:
    the defence against a gzip bomb, applied while reading, not after."""

    def __init__(self, raw: BinaryIO, limit: int, what: str):
        self._raw = raw
        self._limit = limit
        self._what = what
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        try:
            data = self._raw.read(len(b))
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise TraceSetError(f"{self._what}: corrupt or truncated gzip ({e})") from None
        n = len(data)
        self.count += n
        if self.count > self._limit:
            raise TraceSetError(
                f"{self._what}: decompresses to more than {self._limit:,} bytes; refused "
                "(a gzip bomb, or raise the bound with --max-bytes if you trust it)"
            )
        b[:n] = data
        return n


_WIN_BAD = re.compile(r'[\\:<>"|?*\x00-\x1f]')


def _check_member_name(name: str, limits: Limits) -> str:
    """A safe relative POSIX path, or TraceSetError. Returns it normalized."""
    if not name or len(name) > 4096:
        raise TraceSetError(f"member {name[:80]!r}: empty or overlong name; refused")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise TraceSetError(f"member {name!r}: absolute path; refused (nothing is written outside the target)")
    if _WIN_BAD.search(name):
        raise TraceSetError(f"member {name!r}: backslash, colon or control character in the name; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise TraceSetError(f"member {name!r}: names no file; refused")
    if any(p == ".." for p in parts):
        raise TraceSetError(f"member {name!r}: contains '..' (path traversal); refused")
    if any(len(p) > limits.max_name_len for p in parts):
        raise TraceSetError(f"member {name!r}: a path component is longer than {limits.max_name_len}; refused")
    return "/".join(parts)


_KIND = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def _iter_members(archive: Path, limits: Limits) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Stream the archive's members with every bound enforced while reading."""
    try:
        f = archive.open("rb")
    except FileNotFoundError:
        raise TraceSetError(f"{archive}: no such file; check the path") from None
    with f:
        magic = f.read(2)
        f.seek(0)
        if magic == b"\x1f\x8b":
            raw: BinaryIO = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[assignment]
        else:
            raw = f
        bounded = io.BufferedReader(_BoundedReader(raw, limits.max_total_bytes, str(archive)), 1 << 16)
        try:
            tf = tarfile.open(fileobj=bounded, mode="r|")
        except tarfile.TarError as e:
            raise TraceSetError(f"{archive}: not a tar archive ({e}); expected a .tar.gz made by `mrw pack`") from None
        count = 0
        try:
            for ti in tf:
                count += 1
                if count > limits.max_members:
                    raise TraceSetError(f"{archive}: more than {limits.max_members:,} members; refused")
                yield ti, tf
        except tarfile.TarError as e:
            raise TraceSetError(f"{archive}: corrupt tar stream ({e})") from None
        finally:
            tf.close()


def unpack(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    limits: Limits = DEFAULT_LIMITS,
    strict: bool = True,
) -> Manifest:
    """Extract a trace set into target (new or empty), checking everything; all or nothing.

    strict=False (used by `verify`) still enforces every safety rule but leaves checksum
    and listing mismatches for verify_dir to report file by file.

    On any failure the target is left as it was (created-and-empty targets are removed)
    and TraceSetError says which member and why. Schema/semantic checks are `verify`'s job;
    `mrw unpack` runs it right after.
    """
    archive = Path(archive)
    target = Path(target)
    created = False
    if target.exists():
        if not target.is_dir() or target.is_symlink():
            raise TraceSetError(f"{target}: exists and is not a directory; pick a new or empty directory")
        if any(target.iterdir()):
            raise TraceSetError(f"{target}: not empty; unpack into a new or empty directory")
    else:
        target.mkdir(parents=True)
        created = True
    stage = Path(tempfile.mkdtemp(prefix=".mrw-unpack-", dir=target))
    try:
        man = _extract_to(archive, stage, limits, strict)
        for child in sorted(stage.iterdir()):
            os.replace(child, target / child.name)
        return man
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _extract_to(archive: Path, stage: Path, limits: Limits, strict: bool = True) -> Manifest:
    man: Manifest | None = None
    expected: dict[str, FileEntry] = {}
    seen: set[str] = set()
    stage_real = stage.resolve()
    for ti, tf in _iter_members(archive, limits):
        name = _check_member_name(ti.name, limits)
        if ti.type in _KIND:
            raise TraceSetError(f"member {ti.name!r}: is {_KIND[ti.type]}; a trace set holds regular files only; refused")
        if ti.isdir():
            continue  # directories are made for the files in them, never on their own say
        if not ti.isreg():
            raise TraceSetError(f"member {ti.name!r}: unsupported member type {ti.type!r}; refused")
        if ti.size > limits.max_member_bytes:
            raise TraceSetError(f"member {ti.name!r}: {ti.size:,} bytes, over the {limits.max_member_bytes:,}-byte bound; refused")
        if name in seen:
            raise TraceSetError(f"member {ti.name!r}: appears twice; refused")
        seen.add(name)
        if man is None:
            if name != MANIFEST_NAME:
                raise TraceSetError(f"{archive}: first member is {name!r}, not {MANIFEST_NAME}; not an mrw trace set (make it with `mrw pack`)")
            if ti.size > limits.max_manifest_bytes:
                raise TraceSetError(f"{MANIFEST_NAME}: {ti.size:,} bytes; refused")
            data = _read_member(tf, ti)
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise TraceSetError(f"{archive}: {MANIFEST_NAME} is not valid JSON ({e.msg})") from None
            man = Manifest.from_dict(doc, f"{archive}:{MANIFEST_NAME}")
            expected = {e.path: e for e in man.files}
            _write_below(stage, stage_real, MANIFEST_NAME, [data])
            continue
        entry = expected.get(name)
        if entry is None and strict:
            raise TraceSetError(f"member {name!r}: not listed in {MANIFEST_NAME}; refused")
        if strict and entry is not None and ti.size != entry.bytes:
            raise TraceSetError(f"member {name!r}: {ti.size} bytes, manifest says {entry.bytes}; refused")
        h = hashlib.sha256()
        src = tf.extractfile(ti)
        assert src is not None

        def chunks():
            while chunk := src.read(1 << 20):
                h.update(chunk)
                yield chunk

        _write_below(stage, stage_real, name, chunks())
        if strict and entry is not None and h.hexdigest() != entry.sha256:
            raise TraceSetError(f"{name}: SHA-256 {h.hexdigest()[:16]}... does not match the manifest's {entry.sha256[:16]}...; the archive was altered or damaged")
    if man is None:
        raise TraceSetError(f"{archive}: empty archive; not an mrw trace set")
    missing = sorted(set(expected) - seen)
    if missing and strict:
        raise TraceSetError(f"{archive}: listed in {MANIFEST_NAME} but missing from the archive: {', '.join(missing[:5])}")
    return man


def _read_member(tf: tarfile.TarFile, ti: tarfile.TarInfo) -> bytes:
    src = tf.extractfile(ti)
    assert src is not None
    return src.read()


def _write_below(stage: Path, stage_real: Path, name: str, chunks) -> None:
    """Create stage/name exclusively (O_EXCL, no following of links) after proving the
    resolved parent is inside the stage."""
    dest = stage.joinpath(*name.split("/"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    parent_real = dest.parent.resolve()
    if parent_real != stage_real and not parent_real.is_relative_to(stage_real):
        raise TraceSetError(f"member {name!r}: would be written outside the target; refused")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(dest, flags, 0o644)
    with os.fdopen(fd, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


# ---------------------------------------------------------------------------- verify


@dataclass(slots=True)
class FileResult:
    path: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    workflows: int | None = None
    calls: int | None = None


@dataclass(slots=True)
class VerifyReport:
    source: str
    manifest: Manifest | None
    files: list[FileResult]
    problems: list[str] = field(default_factory=list)  # about the set as a whole

    @property
    def ok(self) -> bool:
        return not self.problems and all(f.ok for f in self.files)


def _read_trace_bounded(p: Path, limit: int) -> bytes:
    """Like mrw.trace.read_bytes, but a .gz inside an untrusted set may not decompress
    past `limit` (a nested gzip bomb)."""
    data = p.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        reader = _BoundedReader(gz, limit, p.name)  # type: ignore[arg-type]
        buf = bytearray(1 << 20)
        while n := reader.readinto(buf):
            out.write(buf[:n])
    return out.getvalue()


def verify_dir(root: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, source: str | None = None) -> VerifyReport:
    """Check every file of an unpacked set: listed, checksum, schema, semantics, manifest facts."""
    from mrw import trace as tr
    from mrw import validate as v

    root = Path(root)
    report = VerifyReport(source=source or str(root), manifest=None, files=[])
    try:
        man = read_manifest(root)
    except TraceSetError as e:
        report.problems.append(str(e))
        return report
    report.manifest = man
    listed = {e.path for e in man.files}
    traces, docs, other = _scan(root)
    for p in traces + docs + other:
        rel = p.relative_to(root).as_posix()
        if rel not in listed:
            report.files.append(FileResult(rel, False, [f"not listed in {MANIFEST_NAME} (added after packing?)"]))
    for e in man.files:
        res = FileResult(e.path, True)
        report.files.append(res)
        p = root.joinpath(*e.path.split("/"))
        if p.is_symlink() or not p.is_file():
            res.ok = False
            res.problems.append("missing" if not p.exists() else "not a regular file")
            continue
        sha, n = _sha256_file(p)
        if sha != e.sha256:
            res.ok = False
            res.problems.append(f"checksum mismatch: SHA-256 is {sha[:16]}..., manifest says {e.sha256[:16]}... (file altered or damaged)")
        if e.kind != "trace":
            continue
        try:
            doc = v.migrate(tr.parse(_read_trace_bounded(p, limits.max_member_bytes), e.path), e.path)
            problems = v.check(doc)
        except (TraceError, TraceSetError) as err:
            res.ok = False
            res.problems.append(str(err).removeprefix(f"{e.path}: "))
            continue
        if problems:
            res.ok = False
            res.problems.extend(str(pr) for pr in problems)
            continue
        facts = describe_trace(doc)
        res.workflows, res.calls = facts["workflows"], facts["calls"]
        for k in ("workload", "format_version", "model"):
            if getattr(e, k) is not None and facts[k] != getattr(e, k):
                res.ok = False
                res.problems.append(f"manifest says {k} {getattr(e, k)!r}, the file says {facts[k]!r}")
    return report


def verify(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> VerifyReport:
    """Verify a trace-set directory, or an archive (unpacked into a private temp dir)."""
    path = Path(path)
    if path.is_dir():
        return verify_dir(path, limits=limits)
    if not path.exists():
        raise TraceSetError(f"{path}: no such file or directory")
    with tempfile.TemporaryDirectory(prefix="mrw-verify-") as tmp:
        target = Path(tmp) / "set"
        try:
            unpack(path, target, limits=limits, strict=False)
        except TraceSetError as e:
            return VerifyReport(source=str(path), manifest=None, files=[], problems=[str(e)])
        return verify_dir(target, limits=limits, source=str(path))
