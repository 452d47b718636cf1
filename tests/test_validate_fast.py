"""The fast checks never accept what the complete ones refuse.

The fast structure check (msgspec decoding into the trace Structs, plus `mrw.validate._admit`)
runs before jsonschema on every load; if it ever said yes to an invalid document, a bad trace
would reach the replayer. Each mutation below breaks one rule of the schema (or, for the last
few, none), and the verdicts are compared, for bytes (`decode`, what `load` uses) and for a
parsed document (`convert`, what `check` uses).

Likewise the semantic screen (`_screen_workflow`, run on each workflow as it is decoded) must
never pass a trace in which the semantic report (`semantic_report`, the one statement of those
rules) finds a problem."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import orjson
import pytest
from trace_cases import CASES

from mrw import validate as v
from mrw.trace import Call, Header, Message, Trace, Workflow, dumps


def doc() -> dict:
    return {
        "header": {"format": "mrw-trace", "version": 1, "workload": "w", "generator": {"name": "g", "params": {}, "seed": 1},
                   "recorded_against": {"engine": "vllm", "model": None}, "created": "", "mrw_version": "0", "block_size": 16,
                   "description": "d", "extra": {"x": 1}},
        "workflows": [
            {"id": "w0", "arrival_s": 0, "tags": {"k": 1}, "calls": [
                {"id": "a", "node": "n", "deps": [], "wait_s": 0.0, "input_tokens": 3, "output_tokens": 2,
                 "messages": [{"role": "user", "content": [{"text": "hi"}]}], "sampling": {"temperature": 0.5, "top_p": 1,
                 "max_tokens": 2, "seed": None, "stop": ["x"]}, "t_issue": 0.1, "t_first_token": 0.2, "t_end": 0.3, "output": "yo"},
                {"id": "b", "node": "n", "deps": ["a"], "wait_s": 1, "input_tokens": 0, "output_tokens": 0,
                 "prompt": [{"ref": "a"}, {"text": "more"}], "hash_ids": [1, 2], "output": None, "t_issue": None},
            ]},
        ],
    }


def _set(path, value):
    def f(d):
        *head, last = path
        x = d
        for p in head:
            x = x[p]
        if value is _DEL:
            del x[last]
        else:
            x[last] = value
    return f


_DEL = object()
C0 = ("workflows", 0, "calls", 0)
C1 = ("workflows", 0, "calls", 1)
H = ("header",)
W = ("workflows", 0)

MUTATIONS = [
    _set(("extra_top",), 1), _set(H, []), _set(H + ("format",), "other"), _set(H + ("version",), 2), _set(H + ("version",), True),
    _set(H + ("workload",), ""), _set(H + ("workload",), _DEL), _set(H + ("generator",), []), _set(H + ("generator", "seed"), "1"),
    _set(H + ("generator", "params"), 3), _set(H + ("recorded_against", "engine"), 1), _set(H + ("block_size",), 0),
    _set(H + ("block_size",), 1.5), _set(H + ("created",), 1), _set(H + ("extra",), []), _set(H + ("nope",), 1),
    _set(("workflows",), {}), _set(W, []), _set(W + ("id",), ""), _set(W + ("id",), 1), _set(W + ("arrival_s",), -1),
    _set(W + ("arrival_s",), "0"), _set(W + ("arrival_s",), _DEL), _set(W + ("tags",), []), _set(W + ("calls",), []),
    _set(W + ("more",), 1), _set(C0 + ("id",), ""), _set(C0 + ("node",), None), _set(C0 + ("deps",), "a"),
    _set(C1 + ("deps", 0), 1), _set(C0 + ("wait_s",), -0.1), _set(C0 + ("wait_s",), None), _set(C0 + ("input_tokens",), 1.5),
    _set(C0 + ("input_tokens",), -1), _set(C0 + ("output_tokens",), True), _set(C0 + ("output_tokens",), _DEL),
    _set(C0 + ("messages", 0, "role"), "robot"), _set(C0 + ("messages", 0, "role"), ["user"]),
    _set(C0 + ("messages", 0, "content", 0), {"text": "a", "ref": "b"}), _set(C0 + ("messages", 0, "content", 0), {"text": 1}),
    _set(C0 + ("messages", 0, "content", 0), {"blob": "x"}), _set(C0 + ("messages", 0, "extra"), 1), _set(C0 + ("messages",), None),
    _set(C1 + ("prompt", 0), "a"), _set(C1 + ("prompt",), {}), _set(C0 + ("sampling", "temperature"), -1),
    _set(C0 + ("sampling", "top_p"), 1.5), _set(C0 + ("sampling", "max_tokens"), 0), _set(C0 + ("sampling", "stop"), 3),
    _set(C0 + ("sampling",), []), _set(C0 + ("t_issue",), -1), _set(C0 + ("t_end",), "1"), _set(C0 + ("output",), 3),
    _set(C1 + ("hash_ids", 0), "1"), _set(C1 + ("hash_ids",), None), _set(C1 + ("hash_ids", 1), True), _set(C0 + ("bogus",), 1),
    # what the model has a default for, or None as "absent", but the schema requires or refuses
    _set(C0 + ("deps",), _DEL), _set(C0 + ("wait_s",), _DEL), _set(C0 + ("input_tokens",), _DEL), _set(H + ("format",), _DEL),
    _set(H + ("version",), _DEL), _set(H + ("block_size",), None), _set(C1 + ("prompt",), None), _set(C0 + ("sampling",), None),
    _set(W + ("tags",), None), _set(H + ("generator",), None), _set(H + ("description",), None), _set(C0 + ("node",), _DEL),
    _set(C0 + ("messages", 0, "content", 0), {}), _set(C0 + ("messages", 0, "content", 0), {"ref": None}),
    _set(C1 + ("prompt", 0), {"ref": "a", "x": "y"}), _set(C0 + ("messages", 0, "content"), None),
    _set(C0 + ("messages", 0, "role"), _DEL), _set(C0 + ("sampling", "temperature"), True), _set(C0 + ("sampling", "top_p"), "1"),
    _set(C0 + ("sampling", "max_tokens"), 1.5), _set(C0 + ("sampling", "seed"), 1.5), _set(C0 + ("sampling", "stop"), {}),
    _set(H + ("generator", "name"), 1), _set(H + ("recorded_against",), []), _set(H + ("recorded_against", "tokenizer"), 3),
    _set(H + ("version",), "1"), _set(H + ("version",), 0), _set(W + ("arrival_s",), True), _set(C0 + ("t_first_token",), True),
    _set(C0 + ("output",), ["x"]), _set(("header",), _DEL), _set(("workflows",), _DEL), _set(W + ("calls", 0), []),
    _set(W + ("calls", 0), None),
    # valid variants (the fast check may refuse them; the schema has the last word)
    _set(C0 + ("sampling", "top_k"), 5), _set(H + ("generator",), {}), _set(C1 + ("t_end",), 0), _set(W + ("arrival_s",), 2.5),
    _set(C1 + ("messages",), None), _set(C0 + ("input_tokens",), 3.0), _set(H + ("version",), 1.0), _set(C1 + ("hash_ids", 0), 1.0),
    _set(C0 + ("sampling", "max_tokens"), None), _set(C0 + ("sampling", "stop"), "x"), _set(H + ("generator", "extra"), [1]),
    _set(H + ("recorded_against", "gpu"), 1), _set(C0 + ("t_issue",), 0), _set(C0 + ("messages", 0, "content"), []),
]


def test_valid_document_passes_fast() -> None:
    d = doc()
    assert v.schema_problems(d) == []
    for t, problems in (v.convert(d), v.decode(orjson.dumps(d))):
        assert problems == []
        assert type(t) is Trace and type(t.header) is Header
        assert {type(w) for w in t.workflows} == {Workflow} and {type(c) for _, c in t.calls()} == {Call}
        assert t == Trace.from_dict(d)


@pytest.mark.parametrize("i", range(len(MUTATIONS)))
def test_fast_check_never_looser_than_schema(i: int) -> None:
    d = copy.deepcopy(doc())
    MUTATIONS[i](d)
    schema_ok = v.schema_problems(d) == []
    if v.convert(copy.deepcopy(d)) is not None:
        assert schema_ok, "convert accepted a document the schema refuses"
    if v.decode(orjson.dumps(d)) is not None:
        assert schema_ok, "decode accepted a document the schema refuses"
    # and where the fast check refuses a valid document, the complete path still takes it
    assert v.check(d) == (v.semantic_problems(d) if schema_ok else v.schema_problems(d))


def test_fast_check_refuses_what_it_should() -> None:
    """Not vacuous: most of the invalid mutations are refused by the fast check itself."""
    refused = 0
    for m in MUTATIONS:
        d = copy.deepcopy(doc())
        m(d)
        if v.schema_problems(d):
            assert v.decode(orjson.dumps(d)) is None
            refused += 1
    assert refused > 80


def test_invalid_documents_still_get_every_problem_with_its_path() -> None:
    d = doc()
    d["workflows"][0]["calls"][0]["input_tokens"] = -1
    d["workflows"][0]["calls"][1]["node"] = 3
    paths = [p.path for p in v.check(d)]
    assert paths == ["$.workflows[0].calls[0].input_tokens", "$.workflows[0].calls[1].node"]


def test_cycle_found_only_through_a_forward_dependency() -> None:
    d = doc()
    calls = d["workflows"][0]["calls"]
    calls[0]["deps"] = ["b"]  # a <- b <- a
    calls[0]["t_issue"] = calls[0]["t_first_token"] = calls[0]["t_end"] = None
    probs = v.check(d)
    assert [p.message for p in probs if "cycle" in p.message] == ["dependency cycle among calls ['a', 'b']"]
    calls[1]["deps"] = []  # a depends on the later b: fine, no cycle
    calls[1]["prompt"] = [{"text": "x"}]
    assert v.check(d) == []


def test_schema_report_is_the_full_jsonschema_report() -> None:
    """Walking only the refused workflows loses no problem and changes no message."""
    d = doc()
    d["workflows"].append(copy.deepcopy(d["workflows"][0]))
    d["workflows"][1]["id"] = "w1"
    for c in d["workflows"][1]["calls"]:
        c["id"] += "1"
    d["header"]["block_size"] = 0
    d["workflows"][0]["calls"][1]["hash_ids"] = ["x"]
    d["workflows"][1]["arrival_s"] = -1
    full = sorted((v._json_path(e.absolute_path), e.message) for e in v._validator().iter_errors(d))
    assert sorted((p.path, p.message) for p in v.schema_problems(d)) == full
    assert len(full) == 3


# ---------------------------------------------------------------------------- semantic screen


def _screen_ok(t: Trace) -> bool:
    screen = v._Screen()
    for w in t.workflows:
        v._screen_workflow(w, screen)
    return v._whole_trace_ok(t, screen)


def _semantic_cases() -> list[str]:
    return [name for name, (base, mutate) in CASES.items() if _structurally_valid(name)]


def _structurally_valid(name: str) -> bool:
    base, mutate = CASES[name]
    d = base()
    if mutate(d) is not None:
        return False
    return v.schema_problems(d) == [] and d["header"]["version"] == 1


@pytest.mark.parametrize("name", _semantic_cases())
def test_semantic_screen_never_passes_a_reported_problem(name: str) -> None:
    base, mutate = CASES[name]
    d = base()
    mutate(d)
    t = Trace.from_dict(d)
    report = v.semantic_report(t)
    if _screen_ok(t):
        assert report == [], "the screen passed a trace with problems"
    assert v.trace_problems(t) == report
    assert v.semantic_problems(d) == report
    # and the screen that runs inside the decode says the same (the decode refuses 3.0 tokens)
    for got in (v.convert(copy.deepcopy(d)), v.decode(orjson.dumps(d)), v.decode(orjson.dumps(d), parallel=True)):
        assert (got is None) == (name == "float-as-int")
        assert got is None or (got[0] == t and got[1] == report)


def test_semantic_screen_passes_valid_traces() -> None:
    """Not vacuous: a valid trace whose deps all point backwards, with times, passes the screen."""
    for name in ("valid-text", "valid-hash", "no-times-no-text", "int-as-number"):
        t = Trace.from_dict(CASES[name][0]() if name.startswith("valid") else _mutated(name))
        assert v.semantic_report(t) == [] and _screen_ok(t), name


def _mutated(name: str) -> dict:
    base, mutate = CASES[name]
    d = base()
    mutate(d)
    return d


def _random_trace(rng) -> Trace:
    wfs = []
    # "." makes the call ids scoped (`<workflow id>.<suffix>`: the screen then skips the set of
    # all ids), "/" does not; a workflow id with a "." is never scoped, and its calls may take
    # another workflow's ids
    sep = rng.choice(("/", "."))
    for wi in range(rng.randint(1, 4)):
        calls = []
        n = rng.randint(1, 6)
        wid = f"w{wi}" if rng.random() > 0.1 else f"w{wi}.x"
        for ci in range(n):
            cid = f"{wid}{sep}c{ci}" if rng.random() > 0.03 else f"w{rng.randrange(wi + 1)}{sep}c0"
            pool = [f"{wid}{sep}c{j}" for j in range(n)] + [f"w{rng.randrange(4)}{sep}c0", "nope"]
            k = rng.choice([0, 0, 1, 1, 2, 3])
            back = [f"{wid}{sep}c{j}" for j in range(ci)]
            deps = rng.sample(back, min(k, len(back))) if rng.random() < 0.8 else [rng.choice(pool) for _ in range(k)]
            c = Call(cid, "n", deps, 0.0, 1, 1)
            if rng.random() < 0.7:
                t0 = rng.uniform(0.4, 4)
                c.t_issue, c.t_first_token, c.t_end = t0, t0 + rng.uniform(-0.01, 0.5), t0 + rng.uniform(-0.01, 1.0)
                if rng.random() < 0.1:
                    setattr(c, rng.choice(("t_issue", "t_first_token", "t_end")), None)
            if rng.random() < 0.3:
                refs = deps if rng.random() < 0.8 else deps + ["zz"]
                segs = [{"ref": r} for r in refs] + [{"text": "x"}]
                if rng.random() < 0.5:
                    c.prompt = segs
                else:
                    c.messages = [Message("system", [{"text": "s"}]), Message("user", segs)]
                    if rng.random() < 0.05:
                        c.prompt = [{"text": "both"}]
            if rng.random() < 0.2:
                c.hash_ids = [1, 2]
            calls.append(c)
        wfs.append(Workflow(wid if rng.random() > 0.05 else "w0", rng.uniform(0, 0.5), calls))
    return Trace(Header("x", block_size=16 if rng.random() < 0.9 else None), wfs)


def test_semantic_screen_on_random_traces() -> None:
    """Random workflows with random (often broken) deps, refs, times and hash_ids: whenever the
    screen passes a trace the report finds nothing, and the screen passes many of the clean ones (not those with forward deps or partial times)."""
    import random

    rng = random.Random(7)
    clean = passed = dup_ids = forked = 0
    for _ in range(4000):
        t = _random_trace(rng)
        report = v.semantic_report(t)
        ok = _screen_ok(t)
        if ok:
            assert report == [], (t, report)
        clean += report == []
        passed += ok
        dup_ids += any("duplicate call id" in p.message and "also in workflow" in p.message for p in report)
        assert v.trace_problems(t) == report
        if _ % 20 == 0:  # the screen in a child process, on its own lean decode, says the same
            forked += 1
            assert v.decode(dumps(t), parallel=True) == (t, report)
    assert clean > 150 and passed > clean // 3 and dup_ids > 100 and forked == 200, (clean, passed, dup_ids)


def test_scoped_call_ids_skip_the_global_set_and_still_catch_collisions() -> None:
    """Ids `<workflow id>.<suffix>` are unique across workflows by construction (the screen
    compares only each workflow's own); one workflow named otherwise brings back the set of
    all ids, so its calls cannot take a scoped workflow's id unseen."""
    def trace(wids: list[str], cids: list[list[str]]) -> Trace:
        return Trace(Header("x"), [Workflow(w, 0.0, [Call(c, "n") for c in cs]) for w, cs in zip(wids, cids)])

    screen = v._Screen()
    t = trace(["a", "b"], [["a.0", "a.1"], ["b.0"]])
    for w in t.workflows:
        v._screen_workflow(w, screen)
    assert screen.scoped and v._whole_trace_ok(t, screen)
    for bad in (trace(["a", "b.x"], [["a.0"], ["a.0"]]),  # "b.x" holds a ".": not scoped
                trace(["a", "a.x"], [["a.x.0"], ["a.x.0"]]),  # each id starts with its workflow's
                trace(["a", "b"], [["a.0"], ["a.0"]]),  # "a.0" is not b's
                trace(["a"], [["a.0", "a.0"]])):  # twice inside one workflow
        assert not _screen_ok(bad)
        dup = bad.workflows[-1].calls[-1].id
        assert [p.message for p in v.semantic_report(bad)] == [f"duplicate call id {dup!r} (also in workflow 'a')"], bad


_FORK_CHILD = r"""
import os, sys
from mrw import validate as v
from mrw.errors import TraceError
from mrw.trace import load
v._PARALLEL_MIN = 0  # every trace is screened in a child process
seen = []
real = v._ScreenChild.__init__
def spy(self, data):
    real(self, data)
    seen.append(self.pid)
v._ScreenChild.__init__ = spy
try:
    out = f"ok {load(sys.argv[1]).n_calls}"
except TraceError as e:
    out = "error " + " | ".join(map(str, e.problems))
try:
    os.waitpid(-1, os.WNOHANG)
    left = "child left"
except ChildProcessError:
    left = "no child left"
print(out, "/", len(seen), "screen child(ren) /", left)
"""


@pytest.mark.parametrize("mutate, expected", [
    (None, "ok 2 / 1 screen child(ren) / no child left"),
    (_set(C1 + ("deps",), ["zz"]), "error $.workflows[0].calls[1].deps[0]: dependency 'zz' does not exist"
                                   " | $.workflows[0].calls[1].prompt[0]: refers to 'a', which is not among this call's deps"
                                   " / 1 screen child(ren) / no child left"),
    (_set(C1 + ("output_tokens",), -1), "error $.workflows[0].calls[1].output_tokens: -1 is less than the minimum of 0"
                                        " / 1 screen child(ren) / no child left"),
])
def test_load_screens_a_large_trace_in_a_child_process(tmp_path, mutate, expected) -> None:
    """The forked screen gives `load` the same verdicts (a refusal by the parent's decode
    stops the child early) and leaves no process behind."""
    d = doc()
    if mutate is not None:
        mutate(d)
    p = tmp_path / "t.json"
    p.write_bytes(orjson.dumps(d))
    out = subprocess.run([sys.executable, "-c", _FORK_CHILD, str(p)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected, out.stderr


def test_no_fork_while_another_thread_runs() -> None:
    """A fork copies only the calling thread; with another one alive the screen stays here."""
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not v._can_fork()
    finally:
        stop.set()
        t.join()
    out = subprocess.run([sys.executable, "-c", "from mrw import validate as v; print(v._can_fork())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(len(os.sched_getaffinity(0)) >= 2)
