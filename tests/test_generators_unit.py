"""The recorder's pure parts: text dependencies, BM25, chunking, parameter plumbing."""

from __future__ import annotations

import pytest

from mrw.generators import REGISTRY, describe
from mrw.generators.composite import overrides
from mrw.generators.corpus import DataError, documents, jsonl, passages
from mrw.generators.retrieval import BM25
from mrw.generators.textdeps import OutputRegistry
from mrw.generators.tokens import approx_tokenizer
from mrw.trace import join_segments

A = "The running summary says that objects have identity, type and value."
B = "A second, longer output that quotes the first: The running summary says that objects have identity, type and value."


def test_verbatim_output_becomes_ref_and_dependency():
    reg = OutputRegistry()
    reg.add("w.c1", A, 1.0)
    prompt = f"Refine this summary:\n{A}\nwith the next part."
    segs, deps = reg.split(prompt)
    assert deps == ["w.c1"]
    assert segs == [{"text": "Refine this summary:\n"}, {"ref": "w.c1"}, {"text": "\nwith the next part."}]
    assert join_segments(segs, {"w.c1": A}) == prompt


def test_longest_match_wins_and_most_recent_duplicate():
    reg = OutputRegistry()
    reg.add("w.c1", A, 1.0)
    reg.add("w.c2", B, 2.0)
    segs, deps = reg.split(f"x {B} y {A}")
    assert deps == ["w.c2", "w.c1"]  # c1 inside c2's span is not a second match
    assert [s.get("ref") for s in segs if "ref" in s] == ["w.c2", "w.c1"]
    reg.add("w.c3", A, 3.0)  # the same text again: the latest call is the dependency
    _, deps = reg.split(f"only {A}")
    assert deps == ["w.c3"]


def test_short_outputs_never_match():
    reg = OutputRegistry(min_chars=24)
    reg.add("w.c1", "Yes.", 1.0)
    reg.add("w.c2", "   the value   ", 1.0)
    segs, deps = reg.split("Yes. the value is Yes.")
    assert deps == [] and segs == [{"text": "Yes. the value is Yes."}]


def test_stripped_match_is_dependency_but_literal_text():
    reg = OutputRegistry()
    reg.add("w.c1", f"\n  {A}\n", 1.0)
    segs, deps = reg.split(f"Q: {A} end")
    assert deps == ["w.c1"]
    assert segs == [{"text": f"Q: {A} end"}]


def test_bm25_ranks_the_passage_about_the_query_first():
    docs = ["the with statement calls __enter__ and __exit__", "lists are mutable sequences", "tuples are immutable"]
    assert BM25(docs).top("how does with call __exit__", 2)[0] == 0
    assert BM25(docs).top("immutable tuples", 1) == [2]


def test_bundled_data_is_long_enough_for_the_reference_sizes():
    docs = documents()
    assert len(docs) == 4 and all(8_000 <= len(d.text.split()) <= 20_000 for d in docs)
    assert len(passages()) > 300
    chunks = approx_tokenizer().chunks(docs[0].text, 1024)
    assert "".join(chunks).strip() == docs[0].text.strip()  # chunks cover the document
    assert 10 <= len(chunks) <= 40


def test_user_data_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        documents(tmp_path / "nope")
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(DataError, match="line 1: missing key"):
        jsonl(bad, "", "--tasks", ("id", "title"))


def test_composite_set_parses_and_types_values():
    o = overrides("copilot.answer_tokens_max=40, summarization.max_chunks=2,coding.tool_timeout_s=1.5")
    assert o["copilot"] == {"answer_tokens_max": 40}
    assert o["summarization"] == {"max_chunks": 2}
    assert o["coding"] == {"tool_timeout_s": 1.5}
    with pytest.raises(DataError, match="has no parameter"):
        overrides("copilot.nope=1")


def test_every_workload_documents_every_parameter():
    assert set(REGISTRY) == {"summarization", "copilot", "coding-agents", "composite"}
    for wl in REGISTRY.values():
        for p in describe(wl.params):
            assert p["help"], (wl.name, p["name"])


def test_docs_list_every_option_of_every_workload():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "workloads.md").read_text()
    for wl in REGISTRY.values():
        section = doc.split(f"\n## {wl.name}\n", 1)[1].split("\n## ", 1)[0]
        for p in describe(wl.params):
            assert f"`{p['flag']}`" in section, (wl.name, p["flag"])


@pytest.mark.parametrize("args, message", [
    (["summarization", "--base-url", "http://127.0.0.1:9/v1"], "nothing answers at http://127.0.0.1:9"),
    (["--graph", "no_such_pkg.mod:graph", "--inputs", "x.jsonl", "--base-url", "http://127.0.0.1:9/v1"],
     "cannot import no_such_pkg.mod"),
    (["--graph", "tests.graphs.research:graph"], "--graph needs --inputs"),
    (["nope"], "No such command"),
])
def test_record_errors_are_one_clear_line(args, message, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "mrw", "record", *args, "-o", str(tmp_path / "t.json")],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
