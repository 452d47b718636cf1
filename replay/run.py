"""The run directory: what a replay leaves on disk, valid at every moment.

    RUN_DIR/
      run.json        what ran (trace + sha256, engine, capabilities, fidelity, knobs, host,
                      versions, clock, start/end, status, token check); rewritten atomically
      requests.jsonl  one line per call, appended and flushed as each finishes; calls that
                      never finished get a line with ok=false and error "not finished: ..."
      metrics.jsonl   the engine's /metrics timeline (when it has one)
      engine.log      the engine's log (when mrw launched it)
      energy.json     meters and energy attribution (written by the energy layer)
      summary.json    written by `mrw analyze`

A crash, Ctrl-C or SIGKILL loses at most the line being written: requests.jsonl is flushed
per line, run.json is replaced atomically, and `mrw analyze` reads any of these states.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import orjson

from mrw.errors import MrwError
from mrw.trace import write_atomic

RUN_FORMAT = "mrw-run"
RUN_VERSION = 1
STATUSES = ("running", "completed", "interrupted", "failed")

REQUESTS = "requests.jsonl"
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
ENGINE_LOG = "engine.log"
ENERGY = "energy.json"
SUMMARY = "summary.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    import psutil

    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def versions(**extra: str | None) -> dict[str, str | None]:
    from mrw import __version__

    v: dict[str, str | None] = {"mrw": __version__, "python": platform.python_version()}
    for mod in ("httpx", "orjson"):
        m = sys.modules.get(mod)
        v[mod] = getattr(m, "__version__", None) if m else None
    v.update(extra)
    return v


def default_run_dir(trace_path: str | os.PathLike, engine: str, root: str | os.PathLike = "runs") -> Path:
    stem = Path(trace_path).name
    for suf in (".gz", ".json"):
        stem = stem.removesuffix(suf)
    return Path(root) / f"{stem}-{engine}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunWriter:
    """Owns one run directory. Not thread-safe: used from the replay's event loop."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self._requests: IO[bytes] | None = None
        self.lines = 0

    @classmethod
    def create(cls, path: str | os.PathLike, meta: dict[str, Any]) -> "RunWriter":
        """Make the directory (refusing one that already holds a run) and write run.json."""
        p = Path(path)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise MrwError(f"run directory {p} already exists and is not empty; choose another --out or remove it")
        p.mkdir(parents=True, exist_ok=True)
        w = cls(p, {"format": RUN_FORMAT, "version": RUN_VERSION, "status": "running", "error": None, **meta})
        w.meta.setdefault("pid", os.getpid())
        w.meta.setdefault("started", now_iso())
        w.meta.setdefault("files", {"requests": REQUESTS})
        w._requests = open(p / REQUESTS, "ab")
        w.write_meta()
        return w

    def write_meta(self) -> None:
        write_atomic(self.path / RUN_JSON, orjson.dumps(self.meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))

    def update(self, **kw: Any) -> None:
        self.meta.update(kw)
        self.write_meta()

    def append(self, record: dict[str, Any]) -> None:
        """One request line, flushed at once so that a crash cannot take it back."""
        f = self._requests
        if f is None:
            raise RuntimeError("run writer is closed")
        f.write(orjson.dumps(record) + b"\n")
        f.flush()
        self.lines += 1

    def finish(self, status: str, error: str | None = None, **kw: Any) -> None:
        """Set the final status (completed | interrupted | failed), close the request log."""
        assert status in STATUSES, status
        if self._requests is not None:
            try:
                os.fsync(self._requests.fileno())
            except OSError:
                pass
            self._requests.close()
            self._requests = None
        self.meta.update(kw)
        self.meta["status"] = status
        self.meta["error"] = error
        self.meta["ended"] = now_iso()
        self.write_meta()


# ---------------------------------------------------------------------------- reading


def read_run(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run.json, request lines) of a run directory in any state.

    A torn last line (the process died mid-write) is skipped; a run.json that still says
    "running" whose process is gone is reported as status "abandoned"."""
    p = Path(path)
    rj = p / RUN_JSON
    if not p.is_dir():
        raise MrwError(f"{p}: not a run directory (no such directory)")
    if not rj.exists():
        raise MrwError(f"{p}: not a run directory (no {RUN_JSON}); pass the directory `mrw replay` wrote")
    try:
        meta = orjson.loads(rj.read_bytes())
    except orjson.JSONDecodeError as e:
        raise MrwError(f"{rj}: unreadable ({e})") from None
    if meta.get("format") != RUN_FORMAT:
        raise MrwError(f"{rj}: not an mrw run (format {meta.get('format')!r})")
    rows: list[dict[str, Any]] = []
    rq = p / REQUESTS
    if rq.exists():
        with open(rq, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue  # torn final line of a killed process
    if meta.get("status") == "running" and not _alive(meta.get("pid"), meta.get("host", {}).get("hostname")):
        meta["status"] = "abandoned"
        meta["error"] = meta.get("error") or "the replay process is gone (killed?); requests.jsonl holds what finished"
    return meta, rows


def first_call_error(path: str | os.PathLike) -> str:
    """The error of the first failed call in a run directory, for a one-line report."""
    _, rows = read_run(path)
    for r in rows:
        if not r.get("ok") and r.get("error"):
            return f"first: {r.get('call_id')}: {str(r['error'])[:200]}"
    return "no error recorded"


def _alive(pid: Any, hostname: str | None) -> bool:
    if not isinstance(pid, int):
        return False
    if hostname and hostname != socket.gethostname():
        return True  # cannot tell from here; trust the file
    from mrw.launch import pid_alive

    return pid_alive(pid)
