"""The fast structure check (mrw.validate.structure_ok) never accepts what the schema refuses.

It runs before jsonschema on every load; if it ever said yes to an invalid document, a bad
trace would reach the replayer. Each mutation below breaks one rule of the schema (or, for
the last few, none), and the two verdicts are compared."""

from __future__ import annotations

import copy

import pytest

from mrw import validate as v


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
    # valid variants (the fast check may refuse them; the schema has the last word)
    _set(C0 + ("sampling", "top_k"), 5), _set(H + ("generator",), {}), _set(C1 + ("t_end",), 0), _set(W + ("arrival_s",), 2.5),
    _set(C1 + ("messages",), None),
]


def test_valid_document_passes_fast() -> None:
    d = doc()
    assert v.structure_ok(d)
    assert v.schema_problems(d) == []


@pytest.mark.parametrize("i", range(len(MUTATIONS)))
def test_fast_check_never_looser_than_schema(i: int) -> None:
    d = copy.deepcopy(doc())
    MUTATIONS[i](d)
    if v.structure_ok(d):
        assert v.schema_problems(d) == [], "fast check accepted a document the schema refuses"


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
