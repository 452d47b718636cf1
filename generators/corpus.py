"""Input data for the workloads: bundled (generators/data/, licensed for redistribution; see
generators/data/README.md) or the user's own (`--docs DIR`, `--corpus DIR`, `--queries FILE`,
`--tasks FILE`)."""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mrw.errors import MrwError

TEXT_SUFFIXES = (".txt", ".md", ".rst")


class DataError(MrwError):
    """User-supplied workload data is missing or malformed."""


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    title: str
    text: str


def _data(name: str):
    return resources.files("mrw.generators").joinpath("data", name)


@functools.cache
def _python_docs() -> dict:
    return json.loads(gzip.decompress(_data("python-docs.json.gz").read_bytes()))


def documents(docs_dir: str | Path | None = None) -> list[Document]:
    """Long documents to summarise: every .txt/.md/.rst file of `docs_dir` (sorted by name), or
    the four bundled Python-reference documents (11.7k-15k words each)."""
    if docs_dir is None:
        return [Document(d["id"], d["title"], d["text"]) for d in _python_docs()["documents"]]
    return [Document(p.stem, p.stem, p.read_text(errors="replace")) for p in _text_files(docs_dir, "--docs")]


def passages(corpus_dir: str | Path | None = None, words: int = 120) -> list[Document]:
    """The retrieval corpus: the bundled passages (~120 words each, 470 of them), or the files
    of `corpus_dir` cut into passages of about `words` words at paragraph breaks."""
    if corpus_dir is None:
        return [Document(p["id"], p["topic"], p["text"]) for p in _python_docs()["passages"]]
    out: list[Document] = []
    for path in _text_files(corpus_dir, "--corpus"):
        buf: list[str] = []
        for para in (p.strip() for p in path.read_text(errors="replace").split("\n\n")):
            if not para:
                continue
            buf.append(para)
            if sum(len(b.split()) for b in buf) >= words:
                out.append(Document(f"{path.stem}-{len(out)}", path.stem, "\n\n".join(buf)))
                buf = []
        if buf:
            out.append(Document(f"{path.stem}-{len(out)}", path.stem, "\n\n".join(buf)))
    return out


def _text_files(d: str | Path, opt: str) -> list[Path]:
    p = Path(d)
    if not p.is_dir():
        raise DataError(f"{opt} {p}: not a directory; give a folder of .txt/.md/.rst files")
    files = sorted(f for f in p.iterdir() if f.suffix in TEXT_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"{opt} {p}: holds no .txt, .md or .rst file")
    return files


def jsonl(path: str | Path | None, bundled: str, opt: str, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON-lines file (the user's, or a bundled one), each checked for its keys."""
    if path is None:
        text, name = _data(bundled).read_text(), bundled
    else:
        try:
            text, name = Path(path).read_text(), str(path)
        except OSError as e:
            raise DataError(f"{opt} {path}: cannot read ({e.strerror})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{opt} {name} line {i}: not JSON ({e.msg})") from None
        if isinstance(row, str) and required == ("text",):
            row = {"text": row}
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{opt} {name} line {i}: missing key(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise DataError(f"{opt} {name}: no rows")
    return rows


def data_text(name: str) -> str:
    return _data(name).read_text()
