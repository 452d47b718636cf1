"""Build python-docs.json.gz: the bundled documents (summarization) and passages (copilot
retrieval corpus).

Source: the Python Language Reference and Library Reference topics that every CPython install
carries in `pydoc_data.topics` (this file was made with CPython 3.11.7). The Python
documentation is licensed under the PSF License Agreement, version 2 (see LICENSE-PSF.txt
beside this file), which permits redistribution of derived works with the notice retained.

Run once by a maintainer (`python generators/data/make_python_docs.py`); mrw never builds it
at run time, so traces do not depend on the user's Python version.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

# Four long documents, each a themed part of the reference (the Parrot reference used
# arXiv papers of 8.9k-19.2k words; these are 7k-14k words of technical prose).
DOCUMENTS = {
    "python-data-model": ("The Python data model", [
        "objects", "types", "specialnames", "customization", "attribute-access", "callable-types",
        "sequence-types", "numeric-types", "context-managers", "specialattrs"]),
    "python-execution-and-statements": ("Python's execution model and statements", [
        "execmodel", "naming", "dynamic-features", "exceptions", "compound", "if", "while", "for",
        "try", "with", "function", "class", "async", "import", "assignment", "augassign", "assert",
        "pass", "del", "return", "yield", "raise", "break", "continue", "global", "nonlocal"]),
    "python-expressions": ("Python expressions and literals", [
        "identifiers", "id-classes", "strings", "integers", "floating", "imaginary", "formatstrings",
        "atom-identifiers", "atom-literals", "attribute-references", "subscriptions", "slicings",
        "calls", "await", "power", "unary", "binary", "shifting", "bitwise", "comparisons",
        "booleans", "lambda", "exprlists", "operator-summary", "conversions", "numbers"]),
    "python-builtin-types-and-pdb": ("Python's built-in types and the debugger", [
        "truth", "typesseq", "typesseq-mutable", "string-methods", "typesmapping", "dict", "lists",
        "in", "typesfunctions", "typesmethods", "typesmodules", "bltin-code-objects",
        "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects", "debugger"]),
}
PASSAGE_WORDS = 120


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def main() -> None:
    from pydoc_data.topics import topics

    seen: set[str] = set()
    docs = []
    for doc_id, (title, names) in DOCUMENTS.items():
        parts = []
        for n in names:
            for p in paragraphs(topics[n]):
                if p not in seen:  # topics overlap (else/if, customization/specialnames)
                    seen.add(p)
                    parts.append(p)
        text = "\n\n".join(parts)
        docs.append({"id": doc_id, "title": title, "topics": names, "words": len(text.split()), "text": text})
    passages = []
    for name in sorted(topics):
        buf: list[str] = []
        for p in paragraphs(topics[name]):
            buf.append(p)
            if sum(len(b.split()) for b in buf) >= PASSAGE_WORDS:
                passages.append({"id": f"{name}-{len(passages)}", "topic": name, "text": "\n\n".join(buf)})
                buf = []
        if buf:
            passages.append({"id": f"{name}-{len(passages)}", "topic": name, "text": "\n\n".join(buf)})
    out = {
        "source": f"CPython {sys.version.split()[0]} pydoc_data.topics",
        "license": "PSF-2.0 (Python documentation); see LICENSE-PSF.txt",
        "documents": docs,
        "passages": passages,
    }
    path = Path(__file__).with_name("python-docs.json.gz")
    path.write_bytes(gzip.compress(json.dumps(out, ensure_ascii=False).encode(), mtime=0))
    print(path, [d["words"] for d in docs], len(passages), "passages")


if __name__ == "__main__":
    main()
