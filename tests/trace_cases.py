"""Trace documents, valid and broken, one per class of problem, for the loader's tests.

`CASES` maps a name to (base, mutate): `base()` makes a fresh valid document, `mutate(doc)`
breaks it in place (or returns replacement bytes, for what is not JSON). tests/test_trace.py
loads each through `mrw.trace.load` and compares what it says with `EXPECTED`: what the
loader said before the trace model became msgspec Structs (orjson + hand-written structure
check + jsonschema + dict-based semantic checks), recorded from that loader; FILE stands for
the file's name."""

from __future__ import annotations

from typing import Any, Callable


def text_doc() -> dict:
    """Two workflows with text, refs, sampling and recorded times (test_trace's sample)."""
    from test_trace import sample_trace

    d = sample_trace().to_dict()
    d["header"]["created"] = "2026-01-01T00:00:00+00:00"
    d["header"]["mrw_version"] = "0.1.0"
    for w in d["workflows"]:
        for c in w["calls"]:
            c["sampling"] = {"temperature": 0.0, "max_tokens": c["output_tokens"], "seed": 1, "top_k": 5}
    return d


def hash_doc() -> dict:
    """Text-free: hash_ids with header.block_size, a chain and a fan-in, recorded times."""
    calls = [
        {"id": "h/0", "node": "a", "deps": [], "wait_s": 0.0, "input_tokens": 128, "output_tokens": 8,
         "t_issue": 0.0, "t_first_token": 0.1, "t_end": 0.5, "hash_ids": [1, 2]},
        {"id": "h/1", "node": "a", "deps": [], "wait_s": 0.0, "input_tokens": 64, "output_tokens": 8,
         "t_issue": 0.0, "t_first_token": 0.1, "t_end": 0.4, "hash_ids": [1]},
        {"id": "h/2", "node": "b", "deps": ["h/0", "h/1"], "wait_s": 0.25, "input_tokens": 192, "output_tokens": 16,
         "t_issue": 0.75, "t_first_token": 0.8, "t_end": 1.0, "hash_ids": [1, 2, 3]},
    ]
    return {"header": {"format": "mrw-trace", "version": 1, "workload": "w", "generator": {"name": "g", "params": {}, "seed": 0},
                       "recorded_against": {"engine": "vllm", "model": None}, "created": "", "mrw_version": "0",
                       "block_size": 64},
            "workflows": [{"id": "h", "arrival_s": 0.0, "tags": {}, "calls": calls},
                          {"id": "g", "arrival_s": 2, "calls": [dict(calls[0], id="g/0", t_issue=2.0, t_first_token=2.1, t_end=2.5)]}]}


def _set(*path_value) -> Callable[[dict], None]:
    *path, value = path_value

    def f(d: dict) -> None:
        x: Any = d
        for p in path[:-1]:
            x = x[p]
        if value is DEL:
            del x[path[-1]]
        else:
            x[path[-1]] = value
    return f


def _all(*fs) -> Callable[[dict], None]:
    def f(d: dict) -> None:
        for g in fs:
            g(d)
    return f


DEL = object()
W0C0 = ("workflows", 0, "calls", 0)
W0C1 = ("workflows", 0, "calls", 1)
W1C3 = ("workflows", 1, "calls", 3)
H = ("header",)
T, X = text_doc, hash_doc

CASES: dict[str, tuple[Callable[[], dict], Callable[[dict], Any]]] = {
    # --- valid, or valid in a form the fast decode refuses: must load
    "valid-text": (T, lambda d: None),
    "valid-hash": (X, lambda d: None),
    "float-as-int": (X, _all(_set(*W0C0, "input_tokens", 128.0), _set(*W0C0, "hash_ids", [1.0, 2]), _set(*H, "block_size", 64.0),
                             _set(*H, "version", 1.0), _set(*H, "generator", "seed", 0.0))),
    "int-as-number": (T, _all(_set(*W0C0, "wait_s", 0), _set(*W0C0, "t_issue", 0), _set("workflows", 1, "arrival_s", 1))),
    "no-times-no-text": (X, lambda d: [c.pop(k) for w in d["workflows"] for c in w["calls"] for k in ("t_issue", "t_first_token", "t_end")]),
    "partial-times": (X, _all(_set(*W0C0, "t_first_token", None), _set(*W0C1, "t_end", DEL))),
    "forward-dep": (X, lambda d: d["workflows"][0]["calls"].reverse()),  # a call may depend on a later one
    # --- schema problems
    "negative-tokens": (X, _set(*W0C0, "output_tokens", -5)),
    "node-not-string": (X, _set(*W0C1, "node", 7)),
    "missing-deps": (X, _set(*W0C0, "deps", DEL)),
    "missing-wait": (X, _set(*W0C1, "wait_s", DEL)),
    "missing-input-tokens": (X, _set(*W0C0, "input_tokens", DEL)),
    "missing-output-tokens": (T, _set(*W0C0, "output_tokens", DEL)),
    "missing-format": (X, _set(*H, "format", DEL)),
    "missing-version": (X, _set(*H, "version", DEL)),
    "null-messages": (T, _set(*W0C0, "messages", None)),
    "null-prompt": (X, _set(*W0C0, "prompt", None)),
    "null-hash-ids": (X, _set(*W0C0, "hash_ids", None)),
    "null-block-size": (X, _set(*H, "block_size", None)),
    "segment-two-keys": (T, _set(*W0C1, "messages", 1, "content", 1, {"ref": "a/0", "text": "x"})),
    "segment-empty": (T, _set(*W0C0, "messages", 0, "content", 0, {})),
    "segment-other-key": (T, _set(*W0C0, "messages", 0, "content", 0, {"blob": "x"})),
    "segment-not-string": (T, _set(*W0C0, "messages", 0, "content", 0, {"text": 1})),
    "role-unknown": (T, _set(*W0C0, "messages", 0, "role", "robot")),
    "message-extra-key": (T, _set(*W0C0, "messages", 0, "name", "x")),
    "sampling-temperature": (T, _set(*W0C0, "sampling", "temperature", -1)),
    "sampling-max-tokens": (T, _set(*W0C1, "sampling", "max_tokens", 0)),
    "sampling-top-p": (T, _set(*W0C1, "sampling", "top_p", 1.5)),
    "sampling-stop": (T, _set(*W0C1, "sampling", "stop", 3)),
    "generator-seed": (X, _set(*H, "generator", "seed", "1")),
    "recorded-engine": (X, _set(*H, "recorded_against", "engine", 1)),
    "header-extra-key": (T, _set(*H, "api_key", "sk-123")),
    "top-extra-key": (X, _set("more", 1)),
    "calls-empty": (X, _set("workflows", 1, "calls", [])),
    "workflow-id-empty": (X, _set("workflows", 1, "id", "")),
    "call-extra-key": (X, _set(*W0C1, "bogus", 1)),
    "bool-as-int": (X, _set(*W0C0, "input_tokens", True)),
    "bool-as-number": (X, _set(*W0C0, "wait_s", True)),
    "arrival-string": (X, _set("workflows", 0, "arrival_s", "0")),
    "time-negative": (X, _set(*W0C0, "t_issue", -1)),
    "schema-two-workflows": (T, _all(_set(*W0C0, "input_tokens", -1), _set(*W1C3, "node", 3))),
    "schema-and-semantic": (T, _all(_set(*W0C0, "input_tokens", -1), _set(*W1C3, "deps", ["nope"]))),
    # --- semantic problems
    "cycle": (T, lambda d: d["workflows"][0]["calls"][0]["deps"].append("a/2")),
    "dep-missing": (T, lambda d: d["workflows"][0]["calls"][1]["deps"].append("zzz")),
    "dep-other-workflow": (T, lambda d: d["workflows"][0]["calls"][1]["deps"].append("b/m0")),
    "ref-not-dep": (T, _set(*W0C1, "deps", [])),
    "dup-call-id": (T, _set("workflows", 1, "calls", 0, "id", "a/0")),
    "dup-workflow-id": (X, _set("workflows", 1, "id", "h")),
    "end-before-issue": (T, _set("workflows", 0, "calls", 2, "t_end", 2.0)),
    "first-before-issue": (X, _set("workflows", 0, "calls", 2, "t_first_token", 0.5)),
    "issue-before-dep": (T, _set(*W0C1, "t_issue", 0.8)),
    "issue-before-arrival": (X, _set("workflows", 1, "arrival_s", 3.0)),
    "hash-without-block-size": (X, _set(*H, "block_size", DEL)),
    "messages-and-prompt": (T, _set(*W0C0, "prompt", [{"text": "x"}])),
    "self-dep": (X, _set(*W0C0, "deps", ["h/0"])),
    "dep-twice": (X, _set("workflows", 0, "calls", 2, "deps", ["h/0", "h/1", "h/0"])),
    "partial-times-bad": (X, _all(_set(*W0C1, "t_end", None), _set("workflows", 0, "calls", 2, "t_issue", 0.3))),
    "semantic-many": (T, _all(lambda d: d["workflows"][0]["calls"][1]["deps"].append("x1"),
                              lambda d: d["workflows"][1]["calls"][3]["deps"].append("x2"),
                              _set("workflows", 1, "calls", 2, "id", "b/m0"))),
    # --- versions and files that are not traces
    "version-newer": (X, _set(*H, "version", 2)),
    "version-older": (X, _set(*H, "version", 0)),
    "format-other": (X, _set(*H, "format", "other")),
    "top-level-list": (X, lambda d: b"[1, 2]"),
    "not-json": (X, lambda d: b"this is not json"),
    "truncated": (T, lambda d: __import__("orjson").dumps(d)[:500]),
}


# Recorded with the dataclass/orjson loader (main at 5547cf5), one entry per case:
# ("ok", number of calls) or ("error", the TraceError's line, [(path, message) of each problem]).
EXPECTED: dict[str, tuple] = {'valid-text': ('ok', 7),
 'valid-hash': ('ok', 4),
 'float-as-int': ('ok', 4),
 'int-as-number': ('ok', 7),
 'no-times-no-text': ('ok', 4),
 'partial-times': ('ok', 4),
 'forward-dep': ('ok', 4),
 'negative-tokens': ('error',
                     'FILE: invalid trace: $.workflows[0].calls[0].output_tokens: -5 is less than the minimum of 0',
                     [('$.workflows[0].calls[0].output_tokens', '-5 is less than the minimum of 0')]),
 'node-not-string': ('error', "FILE: invalid trace: $.workflows[0].calls[1].node: 7 is not of type 'string'", [('$.workflows[0].calls[1].node', "7 is not of type 'string'")]),
 'missing-deps': ('error', "FILE: invalid trace: $.workflows[0].calls[0]: 'deps' is a required property", [('$.workflows[0].calls[0]', "'deps' is a required property")]),
 'missing-wait': ('error', "FILE: invalid trace: $.workflows[0].calls[1]: 'wait_s' is a required property", [('$.workflows[0].calls[1]', "'wait_s' is a required property")]),
 'missing-input-tokens': ('error', "FILE: invalid trace: $.workflows[0].calls[0]: 'input_tokens' is a required property", [('$.workflows[0].calls[0]', "'input_tokens' is a required property")]),
 'missing-output-tokens': ('error', "FILE: invalid trace: $.workflows[0].calls[0]: 'output_tokens' is a required property", [('$.workflows[0].calls[0]', "'output_tokens' is a required property")]),
 'missing-format': ('error', "FILE: invalid trace: $.header: 'format' is a required property", [('$.header', "'format' is a required property")]),
 'missing-version': ('error', "FILE: invalid trace: $.header: 'version' is a required property", [('$.header', "'version' is a required property")]),
 'null-messages': ('error', "FILE: invalid trace: $.workflows[0].calls[0].messages: None is not of type 'array'", [('$.workflows[0].calls[0].messages', "None is not of type 'array'")]),
 'null-prompt': ('error', "FILE: invalid trace: $.workflows[0].calls[0].prompt: None is not of type 'array'", [('$.workflows[0].calls[0].prompt', "None is not of type 'array'")]),
 'null-hash-ids': ('error', "FILE: invalid trace: $.workflows[0].calls[0].hash_ids: None is not of type 'array'", [('$.workflows[0].calls[0].hash_ids', "None is not of type 'array'")]),
 'null-block-size': ('error', "FILE: invalid trace: $.header.block_size: None is not of type 'integer'", [('$.header.block_size', "None is not of type 'integer'")]),
 'segment-two-keys': ('error',
                      "FILE: invalid trace: $.workflows[0].calls[1].messages[1].content[1]: {'ref': 'a/0', 'text': 'x'} is not valid under any of the given schemas",
                      [('$.workflows[0].calls[1].messages[1].content[1]', "{'ref': 'a/0', 'text': 'x'} is not valid under any of the given schemas")]),
 'segment-empty': ('error',
                   'FILE: invalid trace: $.workflows[0].calls[0].messages[0].content[0]: {} is not valid under any of the given schemas',
                   [('$.workflows[0].calls[0].messages[0].content[0]', '{} is not valid under any of the given schemas')]),
 'segment-other-key': ('error',
                       "FILE: invalid trace: $.workflows[0].calls[0].messages[0].content[0]: {'blob': 'x'} is not valid under any of the given schemas",
                       [('$.workflows[0].calls[0].messages[0].content[0]', "{'blob': 'x'} is not valid under any of the given schemas")]),
 'segment-not-string': ('error',
                        "FILE: invalid trace: $.workflows[0].calls[0].messages[0].content[0]: {'text': 1} is not valid under any of the given schemas",
                        [('$.workflows[0].calls[0].messages[0].content[0]', "{'text': 1} is not valid under any of the given schemas")]),
 'role-unknown': ('error',
                  "FILE: invalid trace: $.workflows[0].calls[0].messages[0].role: 'robot' is not one of ['system', 'user', 'assistant', 'tool', 'developer']",
                  [('$.workflows[0].calls[0].messages[0].role', "'robot' is not one of ['system', 'user', 'assistant', 'tool', 'developer']")]),
 'message-extra-key': ('error',
                       "FILE: invalid trace: $.workflows[0].calls[0].messages[0]: Additional properties are not allowed ('name' was unexpected)",
                       [('$.workflows[0].calls[0].messages[0]', "Additional properties are not allowed ('name' was unexpected)")]),
 'sampling-temperature': ('error',
                          'FILE: invalid trace: $.workflows[0].calls[0].sampling.temperature: -1 is less than the minimum of 0',
                          [('$.workflows[0].calls[0].sampling.temperature', '-1 is less than the minimum of 0')]),
 'sampling-max-tokens': ('error',
                         'FILE: invalid trace: $.workflows[0].calls[1].sampling.max_tokens: 0 is less than the minimum of 1',
                         [('$.workflows[0].calls[1].sampling.max_tokens', '0 is less than the minimum of 1')]),
 'sampling-top-p': ('error',
                    'FILE: invalid trace: $.workflows[0].calls[1].sampling.top_p: 1.5 is greater than the maximum of 1',
                    [('$.workflows[0].calls[1].sampling.top_p', '1.5 is greater than the maximum of 1')]),
 'sampling-stop': ('error',
                   "FILE: invalid trace: $.workflows[0].calls[1].sampling.stop: 3 is not of type 'array', 'string', 'null'",
                   [('$.workflows[0].calls[1].sampling.stop', "3 is not of type 'array', 'string', 'null'")]),
 'generator-seed': ('error', "FILE: invalid trace: $.header.generator.seed: '1' is not of type 'integer', 'null'", [('$.header.generator.seed', "'1' is not of type 'integer', 'null'")]),
 'recorded-engine': ('error', "FILE: invalid trace: $.header.recorded_against.engine: 1 is not of type 'string', 'null'", [('$.header.recorded_against.engine', "1 is not of type 'string', 'null'")]),
 'header-extra-key': ('error',
                      "FILE: invalid trace: $.header: Additional properties are not allowed ('api_key' was unexpected)",
                      [('$.header', "Additional properties are not allowed ('api_key' was unexpected)")]),
 'top-extra-key': ('error', "FILE: invalid trace: $: Additional properties are not allowed ('more' was unexpected)", [('$', "Additional properties are not allowed ('more' was unexpected)")]),
 'calls-empty': ('error', 'FILE: invalid trace: $.workflows[1].calls: [] should be non-empty', [('$.workflows[1].calls', '[] should be non-empty')]),
 'workflow-id-empty': ('error', "FILE: invalid trace: $.workflows[1].id: '' should be non-empty", [('$.workflows[1].id', "'' should be non-empty")]),
 'call-extra-key': ('error',
                    "FILE: invalid trace: $.workflows[0].calls[1]: Additional properties are not allowed ('bogus' was unexpected)",
                    [('$.workflows[0].calls[1]', "Additional properties are not allowed ('bogus' was unexpected)")]),
 'bool-as-int': ('error', "FILE: invalid trace: $.workflows[0].calls[0].input_tokens: True is not of type 'integer'", [('$.workflows[0].calls[0].input_tokens', "True is not of type 'integer'")]),
 'bool-as-number': ('error', "FILE: invalid trace: $.workflows[0].calls[0].wait_s: True is not of type 'number'", [('$.workflows[0].calls[0].wait_s', "True is not of type 'number'")]),
 'arrival-string': ('error', "FILE: invalid trace: $.workflows[0].arrival_s: '0' is not of type 'number'", [('$.workflows[0].arrival_s', "'0' is not of type 'number'")]),
 'time-negative': ('error', 'FILE: invalid trace: $.workflows[0].calls[0].t_issue: -1 is less than the minimum of 0', [('$.workflows[0].calls[0].t_issue', '-1 is less than the minimum of 0')]),
 'schema-two-workflows': ('error',
                          'FILE: invalid trace: $.workflows[0].calls[0].input_tokens: -1 is less than the minimum of 0 (and 1 more problem(s); run `mrw validate FILE` for all)',
                          [('$.workflows[0].calls[0].input_tokens', '-1 is less than the minimum of 0'), ('$.workflows[1].calls[3].node', "3 is not of type 'string'")]),
 'schema-and-semantic': ('error',
                         'FILE: invalid trace: $.workflows[0].calls[0].input_tokens: -1 is less than the minimum of 0',
                         [('$.workflows[0].calls[0].input_tokens', '-1 is less than the minimum of 0')]),
 'cycle': ('error',
           "FILE: invalid trace: $.workflows[0].calls[0].t_issue: issued (0.0) before its dependency 'a/2' ended (3.5) (and 1 more problem(s); run `mrw validate FILE` for all)",
           [('$.workflows[0].calls[0].t_issue', "issued (0.0) before its dependency 'a/2' ended (3.5)"), ('$.workflows[0].calls[0].deps', "dependency cycle among calls ['a/0', 'a/1', 'a/2']")]),
 'dep-missing': ('error', "FILE: invalid trace: $.workflows[0].calls[1].deps[1]: dependency 'zzz' does not exist", [('$.workflows[0].calls[1].deps[1]', "dependency 'zzz' does not exist")]),
 'dep-other-workflow': ('error',
                        "FILE: invalid trace: $.workflows[0].calls[1].deps[1]: dependency 'b/m0' does not exist (it is in workflow 'b'; dependencies stay inside a workflow)",
                        [('$.workflows[0].calls[1].deps[1]', "dependency 'b/m0' does not exist (it is in workflow 'b'; dependencies stay inside a workflow)")]),
 'ref-not-dep': ('error',
                 "FILE: invalid trace: $.workflows[0].calls[1].messages[1].content[1]: refers to 'a/0', which is not among this call's deps",
                 [('$.workflows[0].calls[1].messages[1].content[1]', "refers to 'a/0', which is not among this call's deps")]),
 'dup-call-id': ('error',
                 "FILE: invalid trace: $.workflows[1].calls[0].id: duplicate call id 'a/0' (also in workflow 'a') (and 1 more problem(s); run `mrw validate FILE` for all)",
                 [('$.workflows[1].calls[0].id', "duplicate call id 'a/0' (also in workflow 'a')"), ('$.workflows[1].calls[3].deps[0]', "dependency 'b/m0' does not exist")]),
 'dup-workflow-id': ('error', "FILE: invalid trace: $.workflows[1].id: duplicate workflow id 'h'", [('$.workflows[1].id', "duplicate workflow id 'h'")]),
 'end-before-issue': ('error',
                      'FILE: invalid trace: $.workflows[0].calls[2].t_end: ends (2.0) before it is issued (2.5) (and 1 more problem(s); run `mrw validate FILE` for all)',
                      [('$.workflows[0].calls[2].t_end', 'ends (2.0) before it is issued (2.5)'), ('$.workflows[0].calls[2].t_end', 'ends (2.0) before its first token (2.6)')]),
 'first-before-issue': ('error',
                        'FILE: invalid trace: $.workflows[0].calls[2].t_first_token: first token (0.5) before issue (0.75)',
                        [('$.workflows[0].calls[2].t_first_token', 'first token (0.5) before issue (0.75)')]),
 'issue-before-dep': ('error',
                      "FILE: invalid trace: $.workflows[0].calls[1].t_issue: issued (0.8) before its dependency 'a/0' ended (1.0)",
                      [('$.workflows[0].calls[1].t_issue', "issued (0.8) before its dependency 'a/0' ended (1.0)")]),
 'issue-before-arrival': ('error',
                          'FILE: invalid trace: $.workflows[1].calls[0].t_issue: issued (2.0) before its workflow arrives (3.0)',
                          [('$.workflows[1].calls[0].t_issue', 'issued (2.0) before its workflow arrives (3.0)')]),
 'hash-without-block-size': ('error',
                             'FILE: invalid trace: $.workflows[0].calls[0].hash_ids: hash_ids need header.block_size (and 3 more problem(s); run `mrw validate FILE` for all)',
                             [('$.workflows[0].calls[0].hash_ids', 'hash_ids need header.block_size'),
                              ('$.workflows[0].calls[1].hash_ids', 'hash_ids need header.block_size'),
                              ('$.workflows[0].calls[2].hash_ids', 'hash_ids need header.block_size'),
                              ('$.workflows[1].calls[0].hash_ids', 'hash_ids need header.block_size')]),
 'messages-and-prompt': ('error',
                         "FILE: invalid trace: $.workflows[0].calls[0]: has both 'messages' and 'prompt'; keep one",
                         [('$.workflows[0].calls[0]', "has both 'messages' and 'prompt'; keep one")]),
 'self-dep': ('error',
              'FILE: invalid trace: $.workflows[0].calls[0].deps[0]: a call cannot depend on itself (and 1 more problem(s); run `mrw validate FILE` for all)',
              [('$.workflows[0].calls[0].deps[0]', 'a call cannot depend on itself'), ('$.workflows[0].calls[0].t_issue', "issued (0.0) before its dependency 'h/0' ended (0.5)")]),
 'dep-twice': ('error', 'FILE: invalid trace: $.workflows[0].calls[2].deps: lists a dependency twice', [('$.workflows[0].calls[2].deps', 'lists a dependency twice')]),
 'partial-times-bad': ('error',
                       "FILE: invalid trace: $.workflows[0].calls[2].t_issue: issued (0.3) before its dependency 'h/0' ended (0.5)",
                       [('$.workflows[0].calls[2].t_issue', "issued (0.3) before its dependency 'h/0' ended (0.5)")]),
 'semantic-many': ('error',
                   "FILE: invalid trace: $.workflows[0].calls[1].deps[1]: dependency 'x1' does not exist (and 3 more problem(s); run `mrw validate FILE` for all)",
                   [('$.workflows[0].calls[1].deps[1]', "dependency 'x1' does not exist"),
                    ('$.workflows[1].calls[2].id', "duplicate call id 'b/m0' (also in workflow 'b')"),
                    ('$.workflows[1].calls[3].deps[2]', "dependency 'b/m2' does not exist"),
                    ('$.workflows[1].calls[3].deps[3]', "dependency 'x2' does not exist")]),
 'version-newer': ('error', 'FILE: trace format version 2 is newer than this mrw reads (version 1); upgrade mrw', []),
 'version-older': ('error', 'FILE: trace format version 0 is unknown or too old to migrate (this mrw reads version 1)', []),
 'format-other': ('error', "FILE: format is 'other', not 'mrw-trace'; import it with `mrw import` instead", []),
 'top-level-list': ('error', "FILE: top level is list, expected an object with 'header' and 'workflows'", []),
 'not-json': ('error', "FILE: not valid JSON at byte 0 (invalid literal, expected 'true'); is this an mrw trace file?", []),
 'truncated': ('error', 'FILE: truncated at byte 500 (unexpected end of data); is this an mrw trace file?', [])}
