"""The public agentic and inference traces of 2023-2026, read exactly: each importer on a
fixture written by hand from its published format (tests/data/formats/, versions in
docs/sharing.md), the DAG edges, waits and times it implies, what it could not keep, and
hostile input. Replays of the same fixtures against vLLM: tests/test_format_replay.py."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from mrw import validate as v
from mrw.cli import cli
from mrw.formats import FormatError, detect, export_trace, import_trace
from mrw.formats.common import happens_before, parse_time_ns
from mrw.info import trace_info
from mrw.trace import dump, load

DATA = Path(__file__).parent / "data" / "formats"
FIXTURES = {
    "bailian": DATA / "bailian.jsonl",
    "weka": DATA / "weka",
    "tracelab": DATA / "tracelab.jsonl",
    "copilot-agent": DATA / "copilot-agent",
    "azure": DATA / "azure2023.csv",
}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def mrw(*args, timeout=60):
    env = {**os.environ, "COLUMNS": "250"}  # rich tables unwrapped, whatever the terminal pytest runs in
    return subprocess.run([sys.executable, "-m", "mrw", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def calls_of(trace):
    return {c.id: c for _, c in trace.calls()}


def imported(fmt, path=None, **opts):
    trace, notes = import_trace(path or FIXTURES[fmt], fmt, **opts)
    assert v.check(trace.to_dict()) == []  # valid, schema and semantics
    assert trace.header.extra["import"]["not_expressed"] == notes
    return trace, notes


def note(notes, *words):
    hits = [n for n in notes if all(w in n for w in words)]
    assert len(hits) == 1, (words, notes)
    return hits[0]


# ---------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize("s,utc", [
    ("2023-11-16 18:15:46.6805900", "2023-11-16 18:15:46.6805900"),  # 2023: 7 digits, no offset (UTC)
    ("2024-05-12 00:00:00.001163+00:00", "2024-05-12 00:00:00.001163"),  # 2024: offset, 6 digits
    ("2024-05-12 00:00:00+00:00", "2024-05-12 00:00:00"),  # 2024: a whole second has no fraction
    ("2024-10-15T12:00:00.269Z", "2024-10-15 12:00:00.269"),  # 2025: T and Z
    ("2024-05-12 05:30:00.25+05:30", "2024-05-12 00:00:00.25"),  # a non-UTC offset is applied
    ("2024-05-11T23:00:00-0100", "2024-05-12 00:00:00"),
    ("2026-06-01T12:00:00.000000001+02", "2026-06-01 10:00:00.000000001"),
])
def test_timestamps_in_every_form_are_exact(s, utc):
    assert parse_time_ns(s) == parse_time_ns(utc)
    assert parse_time_ns("2024-05-12 00:00:00.001163+00:00") - parse_time_ns("2024-05-12 00:00:00+00:00") == 1_163_000


@pytest.mark.parametrize("bad", ["2024-13-01 00:00:00", "2024-05-12", "12:00:00", "2024-05-12 00:00:00+25:00", "nan", ""])
def test_bad_timestamps_are_refused(bad):
    with pytest.raises(ValueError):
        parse_time_ns(bad)


def test_happens_before_chains_sequential_calls_and_keeps_parallel_ones_parallel():
    # a [0,10], b [5,8] (started while a ran), c [12,..] after both, d [12.5,..] after c? no: c still runs
    spans = [(0, 10), (5, 8), (12, 20), (12, 13), (25, 30)]
    assert happens_before(spans) == [[], [], [0, 1], [0, 1], [2, 3]]
    assert happens_before([(0, 1), (1, 2), (2, 3)]) == [[], [0], [1]]  # back to back: a chain


# ---------------------------------------------------------------------------- detection


def test_each_fixture_is_detected_as_its_own_format_only():
    for fmt, path in FIXTURES.items():
        assert detect(path) == [fmt], fmt
    for f in ("azure2024.csv", "azure2025.csv"):
        assert detect(DATA / f) == ["azure"]


def test_a_file_given_to_the_wrong_format_is_named(tmp_path):
    mc = tmp_path / "mooncake_trace.jsonl"
    mc.write_text('{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [46, 47, 48]}\n')
    r = run("import", "aiperf-dag", mc, "-o", tmp_path / "x.json")  # it used to ask for --tokenizer
    assert r.exit_code != 0 and "--tokenizer" not in str(r.exception)
    assert "looks like Mooncake" in str(r.exception) and "mrw import mooncake" in str(r.exception)
    # Bailian lines carry Mooncake's keys too; they used to be read with seconds as milliseconds
    with pytest.raises(FormatError, match="Bailian.*mrw import bailian"):
        import_trace(FIXTURES["bailian"], "mooncake")
    with pytest.raises(FormatError, match="looks like TraceLab"):
        import_trace(FIXTURES["tracelab"], "copilot-agent")


# ---------------------------------------------------------------------------- Copilot agent sessions


def test_copilot_sessions_chain_calls_with_tool_and_user_time_as_waits():
    t, notes = imported("copilot-agent")
    assert t.header.block_size == 64 and [w.id for w in t.workflows] == ["s-gamma", "s-alpha", "s-beta"]
    # times from the earliest call (s-gamma, read last; written without an offset: UTC), offsets applied
    assert [w.arrival_s for w in t.workflows] == [0.0, 15.0, 30.0]
    c = calls_of(t)
    a = [c[f"s-alpha.t{ti}.c{ci}"] for ti, ci in ((0, 0), (0, 1), (0, 2), (1, 0))]
    assert [x.deps for x in a] == [[], [a[0].id], [a[1].id], [a[2].id]]
    # the gap after each call: a 1.5 s tool batch + 0.2 s, a 3.0 s batch + 0.05 s, 60 s of the user
    assert [x.wait_s for x in a] == pytest.approx([0.0, 1.7, 3.1, 60.0])
    assert [x.t_issue for x in a] == pytest.approx([15.0, 18.7, 23.3, 85.8])
    assert [x.t_end for x in a] == pytest.approx([17.0, 20.2, 25.8, 87.6])
    assert [(x.input_tokens, x.output_tokens, x.node) for x in a[:2]] == [(10000, 120, "Model A"), (10500, 80, "Model A")]
    # parallel calls stay parallel: b1 (the tool model) started while b0 ran; b2 joins both
    b0, b1, b2 = (c[f"s-beta.t0.c{i}"] for i in range(3))
    assert (b0.deps, b1.deps, b2.deps) == ([], [], [b0.id, b1.id])
    assert (b1.wait_s, b2.wait_s) == pytest.approx((1.5, 1.0))
    assert "s-beta.t0.c3" not in c  # 0 prompt tokens: never reached a model
    g0, g1 = c["s-gamma.t0.c0"], c["s-gamma.t0.c1"]
    assert g1.deps == [g0.id] and g1.wait_s == pytest.approx(2.25)  # 11:59:53.25+02:00 after 09:59:51Z
    # cached tokens as shared blocks: a call shares cached//64 blocks of its model's previous call
    assert [len(x.hash_ids) for x in a] == [10000 // 64, 10500 // 64, 11000 // 64, 11500 // 64]
    assert a[1].hash_ids[:156] == a[0].hash_ids and a[1].hash_ids[156] not in a[0].hash_ids
    assert a[3].hash_ids[:171] == a[2].hash_ids  # 176 cached blocks, but the previous prompt had 171
    assert b2.hash_ids[:62] == b0.hash_ids and not set(b1.hash_ids) & set(b0.hash_ids)
    # a session's first call to a model shares its cached blocks with other sessions' (one system prompt)
    assert g0.hash_ids[:32] == a[0].hash_ids[:32] and g0.hash_ids[32] != a[0].hash_ids[32]
    note(notes, "3 batches, 5.0 s")
    note(notes, "320 cached tokens", "beyond the prompt of the previous call")
    note(notes, "1 calls started while an earlier call", "beside it")
    note(notes, "1 LLM calls with 0 prompt tokens are left out")
    note(notes, "1 tool batches name a request_id")
    note(notes, "UserCancel 1")
    note(notes, "message_metadata")


def test_copilot_release_layout_reads_gzip_shards(tmp_path):
    shard = tmp_path / "downloaded_data" / "date=2026-06-01" / "shard-0000.jsonl.gz"
    shard.parent.mkdir(parents=True)
    src = FIXTURES["copilot-agent"] / "date=2026-06-01" / "shard-0000.jsonl"
    shard.write_bytes(gzip.compress(src.read_bytes()))
    (shard.parent / "manifest.json").write_text('{"sessions": 3}')
    a, _ = imported("copilot-agent", tmp_path / "downloaded_data")
    b, _ = imported("copilot-agent", shard)
    want = imported("copilot-agent")[0].to_dict()["workflows"]
    assert a.to_dict()["workflows"] == want == b.to_dict()["workflows"]
    # the next day's shard repeats a session that crossed midnight, and has an empty one
    day2 = tmp_path / "downloaded_data" / "date=2026-06-02" / "shard-0000.jsonl.gz"
    day2.parent.mkdir()
    beta = json.loads(src.read_text().splitlines()[1])
    for c in beta["turns"][0]["llm_calls"]:
        c["timestamp"] = c["timestamp"].replace("2026-06-01", "2026-06-02")
    day2.write_bytes(gzip.compress(json.dumps(beta).encode() + b"\n" + b'{"session_id": "s-idle", "turns": []}\n'))
    t, notes = imported("copilot-agent", tmp_path / "downloaded_data")
    assert [w.id for w in t.workflows][-1] == "s-beta~2" and t.workflows[-1].arrival_s == 30.0 + 86400
    note(notes, "1 records repeat a session_id")
    note(notes, "1 sessions have no LLM call")


# ---------------------------------------------------------------------------- Bailian


def test_bailian_chats_follow_parent_chat_id_with_times_in_seconds():
    t, notes = imported("bailian")
    assert t.header.block_size == 16
    wf = {w.id: w for w in t.workflows}
    assert [(w.id, w.arrival_s) for w in t.workflows] == [("chat1001", 0.512), ("chat2001", 61.0), ("chat3001", 62.5),
                                                          ("chat4001", 120.0)]  # 61 s, not 0.061 s
    c = calls_of(t)
    assert {x.id: x.deps for x in wf["chat1001"].calls} == {
        "1001.t1": [], "1002.t2": ["1001.t1"], "1004.t2": ["1001.t1"], "1003.t3": ["1002.t2"]}  # a branch: two follow-ups
    assert [c[i].wait_s for i in ("1002.t2", "1004.t2", "1003.t3")] == pytest.approx([2.738, 4.488, 5.75])
    assert [c[i].node for i in ("1001.t1", "1004.t2", "1003.t3", "2001.t1")] == ["text", "image", "search", "file"]
    assert c["1003.t3"].hash_ids[:43] == c["1002.t2"].hash_ids[:43] != c["1004.t2"].hash_ids[:43]
    assert c["3001.t4"].deps == []  # its parent 9999 is not in the file
    note(notes, "1 requests name a parent_chat_id that is not in the file")
    note(notes, "parent's own service time is part of the wait")
    note(notes, "2 requests hash only their whole blocks")
    assert not any("no hash_ids" in n for n in notes)


@pytest.mark.parametrize("lines,error", [
    (['{"chat_id": 1, "parent_chat_id": 2, "timestamp": 0, "input_length": 1, "output_length": 1}',
      '{"chat_id": 2, "parent_chat_id": 1, "timestamp": 1, "input_length": 1, "output_length": 1}'], "cycle"),
    (['{"chat_id": 1, "parent_chat_id": -1, "timestamp": 0, "input_length": 1, "output_length": 1}',
      '{"chat_id": 1, "parent_chat_id": -1, "timestamp": 1, "input_length": 1, "output_length": 1}'], "unique"),
    (['{"chat_id": 1, "parent_chat_id": -1, "timestamp": 5, "input_length": 1, "output_length": 1}',
      '{"chat_id": 2, "parent_chat_id": 1, "timestamp": 1, "input_length": 1, "output_length": 1}'], "before its parent"),
    (['{"chat_id": 3, "parent_chat_id": 3, "timestamp": 0, "input_length": 1, "output_length": 1}'], "its own parent"),
    (['{"chat_id": "x", "parent_chat_id": -1, "timestamp": 0, "input_length": 1, "output_length": 1}'], "chat id"),
])
def test_bailian_bad_links_are_refused(tmp_path, lines, error):
    p = tmp_path / "b.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=error):
        import_trace(p, "bailian")


def test_bailian_without_hash_ids_says_so(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"chat_id": 7, "parent_chat_id": -1, "timestamp": 2, "input_length": 40, "output_length": 3, '
                 '"type": "text", "turn": 1}\n')
    t, notes = imported("bailian", p)
    assert t.workflows[0].calls[0].hash_ids is None and t.header.block_size is None
    note(notes, "1 requests have no hash_ids")


# ---------------------------------------------------------------------------- Weka / Claude Code


def test_weka_subagents_branch_and_join_with_think_time_as_waits():
    t, notes = imported("weka")
    assert t.header.block_size == 64 and all(w.arrival_s == 0.0 for w in t.workflows)
    w1 = t.workflows[0]
    assert w1.id == "trace_0001" and w1.tags == {"tool_tokens": 12974, "system_tokens": 2771}
    c = calls_of(t)
    m = [c[f"trace_0001.m{i}"] for i in range(5)]
    sa0 = [c[f"trace_0001.sa0.c{i}"] for i in range(3)]
    sa1 = [c[f"trace_0001.sa1.c{i}"] for i in range(2)]
    bg = c["trace_0001.sa2.c0"]
    # sub-agents branch from the main call before their markers; the next main call joins both
    # (not the async_launched one)
    assert sa0[0].deps == sa1[0].deps == bg.deps == [m[0].id]
    assert m[1].deps == [m[0].id, sa0[2].id, sa1[1].id]
    assert [x.deps for x in m[2:]] == [[m[1].id], [m[2].id], [m[3].id]]
    # relative sub-agent times from its start = marker t - duration_ms (28.5 - 20.0)
    assert [x.t_issue for x in sa0] == [8.5, 14.5, 22.5] and [x.t_issue for x in sa1] == [9.0, 19.0]
    assert bg.t_issue == 31.0  # no duration_ms: the marker is its start
    # waits: think_time within an agent; from the last dependency's end after a spawn or a join
    assert [x.wait_s for x in sa0] == pytest.approx([8.5 - 7.27, 3.0, 3.0])
    assert m[1].wait_s == pytest.approx(45.0 - 24.72)  # the join: after sub-agent 0's last call ended
    assert [x.wait_s for x in m[2:]] == pytest.approx([8.0, 0.0, 100.0 - 94.07])  # no think_time: the gap
    assert (m[0].t_first_token, m[0].t_end, m[1].t_first_token) == (1.5, 7.27, 47.0)
    assert m[2].t_end == 83.0  # 76 + 7.04 ran past m3's whole-second t: cut to it
    assert [x.node for x in (m[0], sa0[0], sa1[0])] == ["main", "Explore", "general-purpose"]
    # absolute sub-agent times (SemiAnalysis' traces) in the second file
    w2 = t.workflows[1]
    c2 = {x.id[len(w2.id) + 1:]: x for x in w2.calls}
    assert c2["sa0.c0"].t_issue == 2.1 and c2["sa0.c1"].t_first_token == pytest.approx(4.6)
    assert c2["m1"].wait_s == pytest.approx(8.25 - 6.5)
    # local hash ids: the two files' ids 1.. mean different blocks, and stay apart
    assert not set(m[0].hash_ids) & set(c2["m0"].hash_ids)
    assert m[1].hash_ids[:258] == m[0].hash_ids
    note(notes, "2 sub-agents' request times were relative", "minus duration_ms")
    note(notes, "1 sub-agents' request times were relative to the marker's t")
    note(notes, "1 sub-agents' request times were absolute")
    note(notes, "1 sub-agents ran in the background")
    note(notes, "1 calls' end", "set to that t")
    note(notes, "11 calls hash only their whole blocks", "floor(in/64)")
    note(notes, "fields not kept: capture_note")
    assert not any("is the block size right" in n for n in notes)


def test_weka_one_trace_per_line_reads_the_same(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b"".join(orjson.dumps(json.loads(f.read_text())) + b"\n" for f in sorted(FIXTURES["weka"].iterdir())))
    a, _ = imported("weka", p)
    assert a.to_dict()["workflows"] == imported("weka")[0].to_dict()["workflows"]
    other = tmp_path / "bs.json"
    d = json.loads((FIXTURES["weka"] / "trace_0002.json").read_text())
    d["block_size"], d["id"] = 16, "other"
    other.write_text(json.dumps(d))
    shutil.copy(FIXTURES["weka"] / "trace_0001.json", tmp_path / "a.json")
    (tmp_path / "rows.jsonl").unlink()
    with pytest.raises(FormatError, match="block_size 16 differs"):
        import_trace(tmp_path, "weka")


# ---------------------------------------------------------------------------- TraceLab


def test_tracelab_rounds_are_chained_by_their_events():
    t, notes = imported("tracelab")
    assert t.header.block_size == 64
    codex, claude, sub = t.workflows
    assert codex.id.startswith("codex:") and codex.arrival_s == 0.0
    assert claude.arrival_s == pytest.approx(parse_time_ns("2026-06-01T05:40:20.151Z") / 1e9
                                             - parse_time_ns("2026-03-21T10:05:59.328Z") / 1e9)
    cl = claude.calls
    assert [x.deps for x in cl] == [[]] + [[cl[i].id] for i in range(3)]
    # issued at the last tool_result / user_message, after the previous round's last output event
    assert [x.wait_s for x in cl] == pytest.approx([0.0, 50.938 - 31.647, 77.550 - 64.862, 163.333 - 87.159])
    assert cl[0].t_end - cl[0].t_issue == pytest.approx(31.647 - 20.151)
    assert len(cl) == 4  # the round without timing events is left out; the duplicate round_index 2 is kept
    assert [x.output_tokens for x in codex.calls] == [444, 94, 59]  # reasoning tokens are part of them
    assert codex.calls[2].t_end == codex.calls[2].t_issue  # no output event
    assert [len(x.hash_ids) for x in cl] == [32272 // 64, 35740 // 64, 38592 // 64, 42876 // 64]
    assert cl[1].hash_ids[:29380 // 64] == cl[0].hash_ids[:29380 // 64] and cl[1].hash_ids[459] not in cl[0].hash_ids
    # a sub-agent session is its own workflow; its first round's cached prefix is the shared one
    assert sub.calls[0].deps == [] and sub.calls[0].hash_ids[:171] == cl[0].hash_ids[:171]
    note(notes, "1 rounds have no timing events and are left out")
    note(notes, "1 rounds have no output event")
    note(notes, "sub-agent sessions are not linked")
    note(notes, "3,264 cached tokens")


# ---------------------------------------------------------------------------- Azure


def test_azure_2023_is_read_exactly():
    t, notes = imported("azure")
    assert [w.arrival_s for w in t.workflows] == [0.0, 4.314579, 4.541877, 4.710427, 5.892655, 6.3194101]
    assert [(w.id, w.calls[0].input_tokens, w.calls[0].output_tokens) for w in t.workflows][:2] == [("a0", 374, 44), ("a1", 396, 109)]
    assert all(w.calls[0].t_issue == w.arrival_s and not w.tags for w in t.workflows)
    assert t.header.extra["import"]["start"] == "2023-11-16T18:15:46.680590+00:00"
    note(notes, "times are seconds after the first request (2023-11-16T18:15:46.680590+00:00)")


def test_azure_2024_mixed_forms_and_offsets():
    t, _ = imported("azure", DATA / "azure2024.csv")
    # whole-second rows are read, fractions are not mixed with offsets, and +05:30/-01:00 are applied
    assert [w.arrival_s for w in t.workflows] == [0.0, 0.001163, 0.157988, 1.0, 0.248279, 3602.5, 0.0]


def test_azure_2025_keeps_num_images(tmp_path):
    gz = tmp_path / "AzureLMMInferenceTrace_multimodal.csv.gz"
    gz.write_bytes(gzip.compress((DATA / "azure2025.csv").read_bytes()))
    t, notes = imported("azure", gz)
    assert [w.tags["num_images"] for w in t.workflows] == [0, 1, 1, 0, 16]
    assert [w.arrival_s for w in t.workflows] == [0.0, 5.55, 6.244, 7.063, 7.297]
    note(notes, "3 requests carry images")


@pytest.mark.parametrize("name", ["azure2023.csv", "azure2024.csv", "azure2025.csv"])
def test_azure_round_trip(tmp_path, name):
    a, _ = imported("azure", DATA / name)
    src = dump(a, tmp_path / "a.json")
    out = tmp_path / "out.csv"
    r = run("export", "azure", src, "-o", out)
    assert r.exit_code == 0, r.output
    rows = out.read_text().splitlines()
    assert rows[0] == ("TIMESTAMP,NumImages,ContextTokens,GeneratedTokens" if "2025" in name
                       else "TIMESTAMP,ContextTokens,GeneratedTokens")
    b, _ = imported("azure", out)
    key = lambda t: sorted((w.arrival_s, w.calls[0].input_tokens, w.calls[0].output_tokens, tuple(w.tags.items()))
                           for w in t.workflows)
    assert key(a) == key(b)
    assert b.header.extra["import"]["start"] == a.header.extra["import"]["start"]


def test_azure_export_of_a_dag_writes_one_row_per_call_in_issue_order(tmp_path):
    t, _ = imported("weka")
    out = tmp_path / "w.csv"
    notes = export_trace(t, out, "azure")
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == t.n_calls and rows == sorted(rows)
    assert any("lost: dependencies" in n for n in notes)


# ---------------------------------------------------------------------------- the notes that misled


def test_mooncake_full_block_hashing_is_not_called_a_wrong_block_size(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 150, "output_length": 5, "hash_ids": [1, 2]}\n'  # 150 // 64 = 2
                 '{"timestamp": 10, "input_length": 128, "output_length": 5, "hash_ids": [1, 2]}\n')
    _, notes = import_trace(p, "mooncake", block_size=64)
    assert not any("block size right" in n for n in notes)
    note(notes, "1 requests hash only their whole blocks")


def test_mooncake_chained_turns_without_timestamps_do_not_arrive_at_0(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text("".join(json.dumps(d) + "\n" for d in [
        {"session_id": "s1", "timestamp": 1000, "input_length": 10, "output_length": 4, "hash_ids": [1]},
        *({"session_id": "s1", "delay": 500, "input_length": 10 + k, "output_length": 4, "hash_ids": [1]} for k in range(5)),
        {"session_id": "s2", "input_length": 10, "output_length": 4, "hash_ids": [3]}]))
    t, notes = import_trace(p, "mooncake", group="session", block_size=16)
    assert [len(w.calls) for w in t.workflows] == [6, 1]
    assert note(notes, "no timestamp") == "1 sessions have no timestamp; they arrive at 0 s"  # s2, not s1's 5 turns


def test_info_shows_arrivals_tokens_and_dependencies_of_an_imported_trace(tmp_path):
    t, _ = imported("bailian")
    info, _ = trace_info(t)
    assert info.duration_s is None  # no end times ...
    assert info.arrival_span_s == pytest.approx(119.488) and info.arrival_rate_per_s == pytest.approx(3 / 119.488)
    assert info.recorded_span_s == pytest.approx(121 - 0.512)  # ... but the issues span this much
    assert (info.dependency_edges, info.calls_with_deps, info.joins, info.fan_out_max) == (4, 4, 0, 2)
    assert (info.input_tokens_spread.p50, info.input_tokens_spread.max) == (410, 900)
    assert info.waiting_calls == 4 and info.wait_spread.max == pytest.approx(5.75)
    p = dump(t, tmp_path / "b.json")
    r = mrw("info", p)
    assert r.returncode == 0, r.stderr
    assert "over 119.5 s (0.0251 workflows/s)" in r.stdout and "first to last issue (no end times recorded)" in r.stdout
    assert "4 edges" in r.stdout and "p50 410, p99 900, max 900" in r.stdout
    assert json.loads(mrw("info", p, "--json").stdout)["arrival_rate_per_s"] == pytest.approx(3 / 119.488)
    w, _ = imported("weka")
    assert trace_info(w)[0].joins == 2 and "all at once" in mrw("info", dump(w, tmp_path / "w.json")).stdout


def test_transform_in_scale_of_a_text_free_trace_is_recorded(tmp_path):
    src = dump(imported("bailian")[0], tmp_path / "b.json")
    out = tmp_path / "half.json"
    r = run("transform", src, "-o", out, "--in-scale", "0.5")
    assert r.exit_code == 0, r.output
    t = load(out)
    assert calls_of(t)["1003.t3"].input_tokens == 450
    assert t.header.extra["transform"]["input_tokens"] == "scaled by 0.5 and rounded (calls without text)"


# ---------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("fmt,name,content,error", [
    ("copilot-agent", "s.jsonl", b'{"session_id": "x", "turns": [{"llm_calls": [{"timestamp": "2026-06-01T00:00:00Z", '
     b'"tokens": {"prompt": -5, "completion": 1}}]}]}\n', "'prompt' must be an integer"),
    ("copilot-agent", "s.jsonl", b'{"session_id": "x", "turns": "lots"}\n', "'turns' must be a list"),
    ("copilot-agent", "s.jsonl", b'{"session_id": "x", "turns": [{"llm_calls": [{"timestamp": "2026-06-01T00:00:00Z", '
     b'"duration_ms": "long", "tokens": {"prompt": 5, "completion": 1}}]}]}\n', "'duration_ms' must be a number of ms"),
    ("copilot-agent", "s.jsonl", b'{"session_id": "x", "turns": [{"llm_calls": [{"timestamp": "2026-06-01T00:00:00Z", '
     b'"tokens": {"prompt": 5, "completion": 1e300}}]}]}\n', "'completion' must be an integer"),
    ("bailian", "b.jsonl", b'{"chat_id": 1, "parent_chat_id": -1, "timestamp": NaN, "input_length": 1}\n', "not JSON"),
    ("bailian", "b.jsonl", b'{"chat_id": 1, "parent_chat_id": -1, "timestamp": 1e30, "input_length": 1, "output_length": 1}\n',
     "must be a number of seconds"),
    ("tracelab", "t.jsonl", b'{"session_id": "s", "round_index": 0, "input_tokens_total": 5, "output_tokens": 1, '
     b'"timing_events": [{"event_type": "text", "timestamp": "yesterday"}]}\n', "not an ISO-8601"),
    ("weka", "w.json", b'{"id": "x", "block_size": 64, "requests": [{"t": 0, "type": "subagent", "requests": [{"t": 0}]}]}',
     "type 'n' or 's'"),
    ("weka", "w.json", b'[' * 100_000 + b']' * 100_000, "not JSON"),
    ("azure", "a.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-12 00:00:00,-3,4\n", "from 0 to"),
    ("azure", "a.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-12 00:00:00+00:00,3\n", "cannot read"),
    ("mooncake", "m.jsonl", b'{"timestamp": 0, "input_length": 99999999999, "output_length": 1}\n', "from 0 to"),
])
def test_hostile_input_is_one_clear_line(tmp_path, fmt, name, content, error):
    p = tmp_path / name
    p.write_bytes(content)
    r = mrw("import", fmt, p, "-o", tmp_path / "out.json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert error in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out.json").exists()


def test_huge_lines_and_broken_gzip_are_bounded(tmp_path, monkeypatch):
    from mrw.formats import common

    monkeypatch.setattr(common, "MAX_LINE", 1000)
    p = tmp_path / "b.jsonl"
    p.write_text('{"chat_id": 1, "parent_chat_id": -1, "timestamp": 0, "input_length": 1, "output_length": 1, '
                 '"hash_ids": [' + ", ".join(["7"] * 1000) + "]}\n")
    with pytest.raises(FormatError, match="longer than"):
        import_trace(p, "bailian")
    monkeypatch.undo()
    gz = tmp_path / "s.jsonl.gz"
    gz.write_bytes(gzip.compress((FIXTURES["copilot-agent"] / "date=2026-06-01" / "shard-0000.jsonl").read_bytes())[:-40])
    with pytest.raises(FormatError, match="unreadable after line"):
        import_trace(gz, "copilot-agent")


def test_import_reports_the_bytes_it_has_read(tmp_path, monkeypatch):
    from mrw.formats import common

    monkeypatch.setattr(common, "_REPORT_EVERY", 1000)
    for name, fmt in (("copilot-agent", "copilot-agent"), ("weka", "weka"), ("azure2024.csv", "azure")):
        seen: list[tuple[int, int]] = []
        import_trace(DATA / name, fmt, progress=lambda done, total: seen.append((done, total)))
        total = sum(f.stat().st_size for f in ([DATA / name] if (DATA / name).is_file() else (DATA / name).rglob("*.json*")))
        assert seen and seen[-1] == (total, total), name
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) >= 1 and common._meter.get() is None  # and gone after the import
