"""Foreign formats both ways: round trips keep what each format can say, imports state what
it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sharing_data import text_trace, tok_dir, tokenizer, trace_file  # noqa: F401

from mrw.anonymize import anonymize
from mrw.cli import cli
from mrw.formats import FormatError, export_trace, import_trace, names
from mrw.info import shared_prefix
from mrw.prefix import block_hashes, hit_blocks
from mrw.trace import dump, load


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def by_issue(trace):
    return sorted((c for _, c in trace.calls()), key=lambda c: (c.t_issue, c.id))


def test_registry_lists_every_format():
    assert names() == ["aiperf-dag", "azure", "bailian", "copilot-agent", "mooncake", "otel", "tracelab", "weka"]
    r = run("import", "nope", "x", "-o", "y")
    assert r.exit_code != 0


# ---------------------------------------------------------------------------- Mooncake


@pytest.mark.parametrize("out_bs", [None, 64])
def test_mrw_mooncake_mrw_keeps_counts_timings_and_sharing(tmp_path, text_trace, tokenizer, out_bs):
    anon, _ = anonymize(text_trace, tokenizer, block_size=16)
    src = dump(anon, tmp_path / "anon.json")
    mc = tmp_path / "t.jsonl"
    args = ["export", "mooncake", src, "-o", mc] + (["--block-size", out_bs] if out_bs else [])
    r = run(*args)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in mc.read_text().splitlines()]
    assert set(lines[0]) == {"timestamp", "input_length", "output_length", "hash_ids"}
    assert [x["timestamp"] for x in lines] == sorted(x["timestamp"] for x in lines)
    bs = out_bs or 16
    back, notes = import_trace(mc, "mooncake", block_size=bs)
    assert back.header.block_size == bs
    assert back.header.extra["import"]["not_expressed"] == notes and any("no dependencies" in n for n in notes)
    a, b = by_issue(anon), by_issue(back)
    assert [(c.input_tokens, c.output_tokens) for c in a] == [(c.input_tokens, c.output_tokens) for c in b]
    assert all(abs(x.t_issue - y.t_issue) <= 0.0005 for x, y in zip(a, b))
    assert all(len(c.hash_ids) == -(-c.input_tokens // bs) for c in b)
    # sharing equals the original's token-level sharing at the exported block size
    outs = text_trace.recorded_outputs()
    from mrw.anonymize import prompt_token_ids

    want = hit_blocks(block_hashes(prompt_token_ids(c, outs, tokenizer), bs) for c in by_issue(text_trace))
    assert shared_prefix(back)[0] == pytest.approx(want[0] / want[1])
    if out_bs is None:
        assert shared_prefix(back)[0] == pytest.approx(shared_prefix(anon)[0])


def test_mooncake_export_of_text_trace_needs_tokenizer(tmp_path, trace_file, tok_dir):
    r = CliRunner().invoke(cli, ["export", "mooncake", str(trace_file), "-o", str(tmp_path / "m.jsonl")], standalone_mode=False)
    assert isinstance(r.exception, FormatError) and "--tokenizer" in str(r.exception)
    r = run("export", "mooncake", trace_file, "-o", tmp_path / "m.jsonl", "--tokenizer", tok_dir)
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 12


MOONCAKE = """\
{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59]}
{"timestamp": 0, "input_length": 7319, "output_length": 490, "hash_ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]}
{"timestamp": 3052, "input_length": 7234, "output_length": 794, "hash_ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 62]}
{"timestamp": 3052, "input_length": 2287, "output_length": 316, "hash_ids": [63, 64, 65, 66, 67]}
"""


def test_mooncake_import_states_what_it_cannot_express(tmp_path):
    p = tmp_path / "mooncake_trace.jsonl"
    p.write_text(MOONCAKE)
    out = tmp_path / "m.json"
    r = run("import", "mooncake", p, "-o", out)
    assert r.exit_code == 0, r.output
    assert "no dependencies: every request is its own workflow" in r.output  # on stderr (mixed in by CliRunner)
    t = load(out)
    assert len(t.workflows) == 4 and all(len(w.calls) == 1 and not w.calls[0].deps for w in t.workflows)
    assert t.header.block_size == 512 and t.workflows[2].arrival_s == 3.052
    assert shared_prefix(t)[0] == pytest.approx(14 / 49)  # 14 of 14+15+15+5 blocks repeat
    assert "no dependencies" in t.header.extra["import"]["not_expressed"][0]
    # the wrong block size is noticed, not silently used
    _, notes = import_trace(p, "mooncake", block_size=16)
    assert any("does not match ceil(input_length/16)" in n for n in notes)


def test_mooncake_sessions_become_chains(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"session_id": "s1", "timestamp": 1000, "input_length": 10, "output_length": 4, "hash_ids": [1]}\n'
                 '{"session_id": "s1", "delay": 2500, "input_length": 20, "output_length": 4, "hash_ids": [1, 2]}\n'
                 '{"session_id": "s2", "timestamp": 1500, "input_length": 10, "output_length": 4, "hash_ids": [3]}\n')
    t, notes = import_trace(p, "mooncake", group="session", block_size=16)
    assert [len(w.calls) for w in t.workflows] == [2, 1]
    c0, c1 = t.workflows[0].calls
    assert c1.deps == [c0.id] and c1.wait_s == 2.5 and t.workflows[0].arrival_s == 1.0
    assert any("chain" in n for n in notes)


# ---------------------------------------------------------------------------- Azure


def test_azure_import(tmp_path):
    p = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,396,109\n"
                 "2023-11-16 18:15:51.4405350,879,34\n")
    out = tmp_path / "a.json"
    r = run("import", "azure", p, "-o", out)
    assert r.exit_code == 0, r.output
    t = load(out)
    assert [(w.calls[0].input_tokens, w.calls[0].output_tokens) for w in t.workflows] == [(374, 44), (396, 109), (879, 34)]
    assert [w.arrival_s for w in t.workflows] == pytest.approx([0.0, 4.314579, 4.759945])
    assert shared_prefix(t) == (None, "none")
    assert any("prefix" in n for n in t.header.extra["import"]["not_expressed"])
    bad = tmp_path / "bad.csv"
    bad.write_text("time,in,out\n1,2,3\n")
    assert run("import", "azure", bad, "-o", out).exit_code != 0
    with pytest.raises(FormatError, match="only be imported"):
        export_trace(t, tmp_path / "x.json", "bailian")


# ---------------------------------------------------------------------------- OTel


def test_mrw_otel_mrw_keeps_dag_counts_timings_text(tmp_path, trace_file, text_trace):
    d = tmp_path / "otel"
    r = run("export", "otel", trace_file, "-o", d)
    assert r.exit_code == 0, r.output
    files = sorted(d.glob("*.json"))
    assert len(files) == 3
    span = json.loads(files[0].read_text())["spans"][0]
    assert span["attributes"]["gen_ai.operation.name"] == "chat" and span["name"].startswith("chat ")
    assert isinstance(span["attributes"]["gen_ai.input.messages"], str)
    back, _ = import_trace(d, "otel")
    got = {c.id: c for _, c in back.calls()}
    for w in text_trace.workflows:
        bw = next(x for x in back.workflows if x.id == w.id)
        assert bw.arrival_s == pytest.approx(w.arrival_s)
        for c in w.calls:
            g = got[c.id]
            assert (g.deps, g.node, g.input_tokens, g.output_tokens, g.output) == (c.deps, c.node, c.input_tokens, c.output_tokens, c.output)
            assert g.wait_s == pytest.approx(c.wait_s) and g.t_issue == pytest.approx(c.t_issue, abs=1e-6)
            assert g.t_end == pytest.approx(c.t_end, abs=1e-6)
            assert g.render_messages(back.recorded_outputs()) == c.render_messages(text_trace.recorded_outputs())
            assert g.refs() == c.refs()  # refs rebuilt from the verbatim outputs
    assert shared_prefix(back) == pytest.approx(shared_prefix(text_trace))


def test_foreign_otel_dependencies_inferred_from_text_only(tmp_path, trace_file, text_trace):
    d = tmp_path / "otel"
    run("export", "otel", trace_file, "-o", d)
    for f in d.glob("*.json"):  # as another tool would write them: no mrw.* attributes
        doc = json.loads(f.read_text())
        for s in doc["spans"]:
            s["attributes"] = {k: v for k, v in s["attributes"].items() if not k.startswith("mrw.")}
        doc["collected_at"] = "2099-01-01T00:00:00Z"
        f.write_text(json.dumps(doc))
    back, notes = import_trace(d, "otel")
    assert any("dependencies inferred from text" in n for n in notes)
    deps = {frozenset(c.deps) for _, c in back.calls() if c.deps}
    n_with = sum(1 for _, c in text_trace.calls() if c.deps)
    assert len([c for _, c in back.calls() if c.deps]) == n_with
    assert sorted(len(c.deps) for _, c in back.calls() if c.deps) == sorted(len(c.deps) for _, c in text_trace.calls() if c.deps)
    assert deps


# ---------------------------------------------------------------------------- AIPerf DAG


def test_aiperf_dag_export_and_import(tmp_path, trace_file, tok_dir, text_trace):
    out = tmp_path / "dag.jsonl"
    r = run("export", "aiperf-dag", trace_file, "-o", out)
    assert r.exit_code == 0, r.output
    assert "1 calls wait for calls they do not depend on" in r.output  # the N-shape: d waits for a
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    summary = next(x for x in lines if x["session_id"] == "summary")
    assert len(summary["turns"]) == 4 and summary["context_mode"] == "message_array_with_responses"
    t1 = summary["turns"][1]
    assert t1["max_tokens"] == t1["extra"]["min_tokens"] and t1["extra"]["ignore_eos"] is True and t1["delay"] == 20.0
    cop = next(x for x in lines if x["session_id"] == "copilot")
    assert cop["orchestrator"] is True and [len(r["spawns"]) for r in cop["rounds"]] == [3, 1]
    back, notes = import_trace(out, "aiperf-dag", tokenizer=__import__("mrw.anonymize", fromlist=["x"]).load_tokenizer(tok_dir))
    wf = {w.id: w for w in back.workflows}
    assert [len(wf[w.id].calls) for w in text_trace.workflows] == [4, 4, 4]
    for w in text_trace.workflows:  # counts survive: isolated turns hold the whole prompt
        assert sorted((c.input_tokens, c.output_tokens) for c in wf[w.id].calls) == sorted((c.input_tokens, c.output_tokens) for c in w.calls)
    chain = wf["summary"].calls
    assert [c.deps for c in chain] == [[], [chain[0].id], [chain[1].id], [chain[2].id]]
    ans = [c for c in wf["copilot"].calls if len(c.deps) == 3]
    assert len(ans) == 1
    assert any("no arrival times" in n for n in notes)
    with pytest.raises(FormatError, match="--tokenizer"):
        import_trace(out, "aiperf-dag")


def test_aiperf_dag_import_spawns_forks_and_accumulation(tmp_path, tokenizer):
    p = tmp_path / "g.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [
        {"session_id": "root", "turns": [
            {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "plan the work"}],
             "max_tokens": 5, "spawns": ["w1", "w2"]},
            {"messages": [{"role": "user", "content": "merge"}], "max_tokens": 7, "delay": 1500,
             "forks": ["fin"]}]},
        {"session_id": "w1", "turns": [{"messages": [{"role": "user", "content": "do a"}], "max_tokens": 3}]},
        {"session_id": "w2", "turns": [{"messages": [{"role": "user", "content": "do b"}], "max_tokens": 3},
                                       {"messages": [{"role": "user", "content": "again"}], "max_tokens": 3}]},
        {"session_id": "fin", "turns": [{"messages": [{"role": "user", "content": "final"}], "max_tokens": 2}]},
    ]) + "\n")
    t, notes = import_trace(p, "aiperf-dag", tokenizer=tokenizer)
    assert len(t.workflows) == 1
    calls = {c.id: c for c in t.workflows[0].calls}
    r0, r1 = calls["root/t0"], calls["root/t1"]
    assert calls["root/w1/t0"].deps == ["root/t0"] and calls["root/w2/t1"].deps == ["root/w2/t0"]
    assert sorted(r1.deps) == ["root/t0", "root/w1/t0", "root/w2/t1"] and r1.wait_s == 1.5
    # default context mode: the earlier turn and its live response precede this turn's messages
    assert [m.role for m in r1.messages] == ["system", "user", "assistant", "user"] and r1.refs() == ["root/t0"]
    fin = calls["root/fin/t0"]
    assert fin.deps == ["root/t1", "root/t0"] and fin.refs() == ["root/t0", "root/t1"]  # a fork inherits the conversation
    assert any("max_tokens caps" in n for n in notes)


AIPERF_PY = os.environ.get("MRW_AIPERF_PYTHON")  # an interpreter that can import aiperf (>= 0.13)


@pytest.mark.skipif(not AIPERF_PY, reason="set MRW_AIPERF_PYTHON to check exports with AIPerf's own loader")
def test_aiperf_own_loader_accepts_the_export(tmp_path, trace_file):
    out = tmp_path / "dag.jsonl"
    assert run("export", "aiperf-dag", trace_file, "-o", out).exit_code == 0
    code = ("import sys; from aiperf.dataset.loader.dag_jsonl import DagJsonlLoader as L; "
            "l = L(sys.argv[1]); c = l.load(); print(len(c), sorted(l.root_session_ids()))")
    r = subprocess.run([AIPERF_PY, "-c", code, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "['copilot', 'nshape', 'summary']" in r.stdout
