"""Trace format v1: round trips, the validator's every rule, and the CLI's one-line errors."""

from __future__ import annotations

import copy
import gzip
import subprocess
import sys

import orjson
import pytest

from mrw import validate as v
from mrw.errors import TraceError
from mrw.info import trace_info
from mrw.trace import Call, Header, Message, Trace, Workflow, dump, load, new_header
from trace_cases import CASES, EXPECTED

SYSTEM = "You are a careful summarizer. " * 20


def sample_trace() -> Trace:
    """Two workflows: a 3-call refine chain and a fan-out/fan-in sharing a system prompt."""
    chain = [
        Call("a/0", "summarize", [], 0.0, 300, 20, [Message("system", [{"text": SYSTEM}]), Message("user", [{"text": "Part one of the text."}])],
             t_issue=0.0, t_first_token=0.2, t_end=1.0, output="First summary of part one."),
        Call("a/1", "refine", ["a/0"], 0.5, 320, 20, [Message("system", [{"text": SYSTEM}]), Message("user", [{"text": "Summary: "}, {"ref": "a/0"}, {"text": " Next: part two."}])],
             t_issue=1.5, t_first_token=1.7, t_end=2.5, output="Refined summary with part two."),
        Call("a/2", "refine", ["a/1"], 0.0, 330, 20, [Message("system", [{"text": SYSTEM}]), Message("user", [{"text": "Summary: "}, {"ref": "a/1"}, {"text": " Next: part three."}])],
             t_issue=2.5, t_first_token=2.6, t_end=3.5, output="Final summary."),
    ]
    fan = [Call(f"b/m{i}", "map", [], 0.0, 200, 10, [Message("system", [{"text": SYSTEM}]), Message("user", [{"text": f"Chunk {i}"}])],
                t_issue=1.0, t_first_token=1.1, t_end=2.0, output=f"partial {i} summary text") for i in range(3)]
    fan.append(Call("b/r", "reduce", [c.id for c in fan], 0.25, 250, 30,
                    [Message("user", [{"text": "Combine: "}, {"ref": "b/m0"}, {"text": "; "}, {"ref": "b/m1"}, {"text": "; "}, {"ref": "b/m2"}])],
                    t_issue=2.25, t_first_token=2.4, t_end=3.0, output="combined"))
    return Trace(new_header("summarization", generator={"name": "test", "params": {}, "seed": 1}),
                 [Workflow("a", 0.0, chain, {"kind": "chain"}), Workflow("b", 1.0, fan, {"kind": "map-reduce"})])


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_round_trip(tmp_path, suffix) -> None:
    t = sample_trace()
    p = dump(t, tmp_path / f"t{suffix}")
    if suffix.endswith(".gz"):
        assert gzip.decompress(p.read_bytes())[:1] == b"{"
    back = load(p)
    assert back == t and back.to_dict() == t.to_dict()
    assert type(back) is Trace and type(back.header) is Header
    assert all(type(w) is Workflow for w in back.workflows) and all(type(c) is Call for _, c in back.calls())
    assert all(type(m) is Message for _, c in back.calls() for m in c.messages)
    assert back.workflows[0].calls[1].render_messages(back.recorded_outputs())[1]["content"] == (
        "Summary: First summary of part one. Next: part two."
    )


def test_valid_sample_has_no_problems() -> None:
    assert v.check(sample_trace().to_dict()) == []


def _broken(mutate) -> list[v.Problem]:
    d = copy.deepcopy(sample_trace().to_dict())
    mutate(d)
    return v.check(d)


@pytest.mark.parametrize(
    "mutate, path, words",
    [
        (lambda d: d["workflows"][0]["calls"][0]["deps"].append("a/2"), "$.workflows[0].calls[0]", "cycle"),
        (lambda d: d["workflows"][0]["calls"][1]["deps"].append("zzz"), "$.workflows[0].calls[1].deps[1]", "does not exist"),
        (lambda d: d["workflows"][0]["calls"][1]["deps"].append("b/m0"), "$.workflows[0].calls[1].deps[1]", "stay inside a workflow"),
        (lambda d: d["workflows"][0]["calls"][1].__setitem__("deps", []), "$.workflows[0].calls[1].messages[1].content[1]", "not among"),
        (lambda d: d["workflows"][1]["calls"][0].__setitem__("id", "a/0"), "$.workflows[1].calls[0].id", "duplicate call id"),
        (lambda d: d["workflows"][1].__setitem__("id", "a"), "$.workflows[1].id", "duplicate workflow id"),
        (lambda d: d["workflows"][0]["calls"][2].__setitem__("t_end", 2.0), "$.workflows[0].calls[2].t_end", "before"),
        (lambda d: d["workflows"][0]["calls"][1].__setitem__("t_issue", 0.8), "$.workflows[0].calls[1].t_issue", "before its dependency"),
        (lambda d: d["workflows"][0]["calls"][0].__setitem__("hash_ids", [1, 2]), "$.workflows[0].calls[0].hash_ids", "block_size"),
        (lambda d: d["workflows"][0]["calls"][0].__setitem__("input_tokens", -3), "$.workflows[0].calls[0].input_tokens", "minimum"),
        (lambda d: d["workflows"][0]["calls"][0].pop("node"), "$.workflows[0].calls[0]", "'node' is a required"),
        (lambda d: d["header"].__setitem__("api_key", "sk-123"), "$.header", "Additional properties"),
    ],
)
def test_each_rule_reports_its_json_path(mutate, path, words) -> None:
    probs = _broken(mutate)
    assert probs, "the validator accepted a broken trace"
    assert any(p.path.startswith(path) and words in p.message for p in probs), probs


def test_all_problems_reported_not_just_the_first() -> None:
    def two(d):
        d["workflows"][0]["calls"][1]["deps"].append("x1")
        d["workflows"][1]["calls"][3]["deps"].append("x2")
    assert len(_broken(two)) == 2


def test_future_version_is_refused_naming_both() -> None:
    d = sample_trace().to_dict()
    d["header"]["version"] = 7
    with pytest.raises(TraceError, match="version 7.*version 1"):
        v.migrate(d, "x.json")


def test_info_measures_shape_and_sharing() -> None:
    info, shapes = trace_info(sample_trace())
    assert (info.workflows, info.calls, info.depth_max, info.width_max) == (2, 7, 3, 3)
    assert [s.depth for s in shapes] == [3, 2]
    # a: 3 calls, chain: 1.0 + 0.5 + 1.0 + 0.0 + 1.0 = 3.5 s; b: max map 1.0 + 0.25 + 0.75 = 2.0 s
    assert shapes[0].critical_path_s == pytest.approx(3.5)
    assert shapes[1].critical_path_s == pytest.approx(2.0)
    # The shared system prompt (600 chars) repeats in 5 of 6 calls that carry it.
    assert info.shared_prefix_basis == "text"
    assert 0.4 < info.shared_prefix_share < 0.9


def _mrw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrw", *args], capture_output=True, text=True, timeout=60)


def test_cli_validate_and_bad_inputs(tmp_path) -> None:
    good = dump(sample_trace(), tmp_path / "good.json")
    r = _mrw("validate", str(good))
    assert r.returncode == 0 and "ok (2 workflows, 7 calls)" in r.stdout

    cyc = sample_trace().to_dict()
    cyc["workflows"][0]["calls"][0]["deps"] = ["a/2"]
    (tmp_path / "cycle.json").write_bytes(orjson.dumps(cyc))
    r = _mrw("validate", str(tmp_path / "cycle.json"), str(good))
    assert r.returncode == 1 and "cycle" in r.stdout and "good.json: ok" in r.stdout

    (tmp_path / "trunc.json").write_bytes(good.read_bytes()[:500])
    (tmp_path / "text.json").write_text("this is not json")
    for name, words in [("trunc.json", "truncated"), ("text.json", "not valid JSON"), ("cycle.json", "cycle"), ("missing.json", "no such file")]:
        r = _mrw("info", str(tmp_path / name))
        assert r.returncode == 1, r
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0], r.stderr


def test_cli_info_json(tmp_path) -> None:
    good = dump(sample_trace(), tmp_path / "good.json.gz")
    r = _mrw("info", "--json", str(good))
    assert r.returncode == 0
    d = orjson.loads(r.stdout)
    assert d["calls"] == 7 and d["input_tokens"] == 300 + 320 + 330 + 600 + 250


def test_written_trace_is_readable_by_others(tmp_path) -> None:
    """mkstemp makes 0600 files; a trace is for sharing, so dump leaves it 0644."""
    p = dump(sample_trace(), tmp_path / "t.json")
    assert p.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------- load, case by case


def _case_file(tmp_path, name: str, suffix: str):
    base, mutate = CASES[name]
    d = base()
    r = mutate(d)
    data = r if isinstance(r, bytes) else orjson.dumps(d)
    p = tmp_path / f"{name}{suffix}"
    p.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data)
    return p, (None if isinstance(r, bytes) else d)


@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".json(mapped)"])
@pytest.mark.parametrize("name", list(CASES))
def test_load_says_what_the_previous_loader_said(tmp_path, monkeypatch, name, suffix) -> None:
    """Every case loads, or is refused with the same line and the same problems at the same
    paths, as with the loader before the msgspec model. Large files are memory-mapped, not
    read: "(mapped)" lowers that threshold so that these small files are too."""
    if suffix.endswith("(mapped)"):
        import mrw.trace

        monkeypatch.setattr(mrw.trace, "_MAP_MIN", 1)
        suffix = ".json"
    p, d = _case_file(tmp_path, name, suffix)
    exp = EXPECTED[name]
    if exp[0] == "ok":
        t = load(p)
        assert t.n_calls == exp[1]
        assert t == Trace.from_dict(d)
        return
    with pytest.raises(TraceError) as e:
        load(p)
    assert str(e.value).replace(str(p), "FILE") == exp[1]
    assert [(x.path, x.message) for x in e.value.problems] == exp[2]
    if d is not None and exp[2]:  # the dict API (mrw validate, trace sets, importers) agrees
        assert [(x.path, x.message) for x in v.check(v.migrate(d))] == exp[2]


def test_valid_trace_loads_every_field_as_written(tmp_path) -> None:
    """The fast path builds exactly the document: each field's value and type, defaults only
    where the file leaves a field out."""
    for name in ("valid-text", "valid-hash"):
        p, d = _case_file(tmp_path, name, ".json")
        assert v.decode(p.read_bytes()) == (Trace.from_dict(d), []), "a plain valid trace takes the fast path"
        t = load(p)
        for w, wd in zip(t.workflows, d["workflows"], strict=True):
            assert (w.id, w.arrival_s, w.tags) == (wd["id"], wd["arrival_s"], wd.get("tags", {}))
            assert type(w.arrival_s) is float
            for c, cd in zip(w.calls, wd["calls"], strict=True):
                for f in Call.__struct_fields__:
                    got, want = getattr(c, f), cd.get(f, {"sampling": {}}.get(f))
                    if f == "messages":
                        got = [m.to_dict() for m in got] if got is not None else None
                    assert got == want, (c.id, f)
                    assert want is None or type(got) is type(want) or f in ("wait_s", "t_issue", "t_first_token", "t_end"), (c.id, f)
                assert type(c.wait_s) is float and type(c.input_tokens) is int and type(c.output_tokens) is int
        h = d["header"]
        assert t.header.to_dict() == {k: h[k] for k in ("format", "version", "workload", "generator", "recorded_against",
                                                         "created", "mrw_version", "block_size", "description", "extra") if k in h}


def test_validate_false_skips_the_semantic_rules_only(tmp_path) -> None:
    p, _ = _case_file(tmp_path, "cycle", ".json")
    t = load(p, validate=False)
    assert t.n_calls == 7 and type(t.workflows[0].calls[0]) is Call
    p, _ = _case_file(tmp_path, "float-as-int", ".json")  # the complete path, unchecked
    assert load(p, validate=False).workflows[0].calls[0].input_tokens == 128


def test_integers_written_as_floats_load_as_integers(tmp_path) -> None:
    """The schema counts 3.0 as an integer and msgspec's strict decode does not: such a file
    goes the complete way, and loads with integers."""
    p, d = _case_file(tmp_path, "float-as-int", ".json")
    assert v.decode(p.read_bytes()) is None
    t = load(p)
    c = t.workflows[0].calls[0]
    assert (c.input_tokens, c.hash_ids, t.header.block_size, t.header.version) == (128, [1, 2], 64, 1)
    assert type(c.input_tokens) is int and [type(x) for x in c.hash_ids] == [int, int]
    assert type(t.header.block_size) is int and type(t.header.version) is int
    assert type(t) is Trace and type(c) is Call


def test_dump_load_round_trip_is_exact_for_every_valid_case(tmp_path) -> None:
    for name, exp in EXPECTED.items():
        if exp[0] != "ok":
            continue
        _, d = _case_file(tmp_path, name, ".json")
        t = Trace.from_dict(d)
        for suffix in (".json", ".json.gz"):
            back = load(dump(t, tmp_path / f"rt-{name}{suffix}"))
            assert back == t, name
            assert dump(back, tmp_path / f"rt2-{name}{suffix}").read_bytes() == (tmp_path / f"rt-{name}{suffix}").read_bytes()
        assert v.schema_problems(orjson.loads((tmp_path / f"rt-{name}.json").read_bytes())) == []


def test_constructors_keep_their_defaults_and_positions() -> None:
    c = Call("x", "n")
    assert (c.deps, c.wait_s, c.input_tokens, c.output_tokens, c.messages, c.sampling, c.t_issue, c.hash_ids) == ([], 0.0, 0, 0, None, {}, None, None)
    assert Call("x", "n").deps is not Call("y", "n").deps
    c2 = Call("x", "n", ["a"], 0.5, 3, 4, None, [{"text": "p"}], {"seed": 1}, 1.0, 2.0, 3.0, "out", [7])
    assert c2.to_dict() == {"id": "x", "node": "n", "deps": ["a"], "wait_s": 0.5, "input_tokens": 3, "output_tokens": 4,
                            "prompt": [{"text": "p"}], "sampling": {"seed": 1}, "t_issue": 1.0, "t_first_token": 2.0,
                            "t_end": 3.0, "output": "out", "hash_ids": [7]}
    h = Header("w")
    assert (h.format, h.version, h.block_size, h.generator, h.description) == ("mrw-trace", 1, None, {}, "")
    assert Workflow("w", 0.0, [c]).tags == {}
    import msgspec

    assert msgspec.structs.replace(c2, id="z").id == "z" and c2.id == "x"
    assert copy.deepcopy(c2) == c2 and copy.deepcopy(c2).deps is not c2.deps


_GC_CHILD = r"""
import gc, sys
from mrw.trace import load
if sys.argv[2] == "off":
    gc.disable()
t = load(sys.argv[1])
tracked = {id(o) for o in gc.get_objects()}  # the three generations the collector walks
deps = [c.deps for w in t.workflows for c in w.calls]
print(gc.isenabled(), gc.get_freeze_count() >= len(deps), sum(id(d) in tracked for d in deps), len(deps))
"""


@pytest.mark.parametrize("n_wf, gc_state, expected", [
    (2000, "on", "True True 0 10000"),  # frozen: no collection walks the trace's lists again
    (2000, "off", "False False 10000 10000"),  # the caller's choice of GC is left alone
    (20, "on", "True False 100 100"),  # a small trace is not worth a freeze
])
def test_load_moves_a_large_trace_out_of_the_cyclic_gc(tmp_path, n_wf, gc_state, expected) -> None:
    """Left in gen 0, a million calls' lists made the first collection after load walk them
    all (0.7 s, paid by whoever allocated next) and every full collection after it again."""
    wfs = [Workflow(f"w{i}", 0.0, [Call(f"w{i}.c{k}", "n", [f"w{i}.c{k - 1}"] if k else [], output_tokens=3)
                                   for k in range(5)]) for i in range(n_wf)]
    p = dump(Trace(new_header("gc"), wfs), tmp_path / "t.json")
    out = subprocess.run([sys.executable, "-c", _GC_CHILD, str(p), gc_state], capture_output=True, text=True, check=True)
    assert out.stdout.split() == expected.split()
