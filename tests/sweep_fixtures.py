"""A small two-workflow trace for sweep tests: a summarisation chain and a fan-out/fan-in,
with a shared system prompt, recorded outputs spliced through refs, and tool waits.
Input token counts are measured with the given model's tokenizer and chat template (so
the replay's token check is exact), and the header names that tokenizer."""

from __future__ import annotations

from pathlib import Path

from mrw.trace import Call, Message, Trace, Workflow, dump, new_header

SYSTEM = "You are a concise assistant working for a city newsroom. Answer in plain sentences, without lists or headings."
DOC = [
    "The city council met on Tuesday to discuss the new bicycle lanes on Main Street. Residents complained about "
    "parking, while shop owners worried about deliveries during the busy morning hours.",
    "After two hours the council agreed to a six-month trial. Lanes will be painted in May, and delivery vans may "
    "stop in marked bays before ten in the morning on weekdays.",
]
OUT = [
    "The council discussed new bike lanes on Main Street amid parking and delivery concerns from residents.",
    "The council approved a six-month bike lane trial on Main Street from May, with morning delivery bays.",
    "1. List the pros of the lanes. 2. List the cons of the lanes.",
    "Pros: safer cycling, calmer traffic, more customers arriving by bike, cleaner air on Main Street.",
    "Cons: fewer parking spaces, harder deliveries, a costly repainting if the trial fails in November.",
    "The lanes promise safer streets but cost parking and complicate deliveries; the trial will tell.",
]


def _m(*segs: dict) -> list[Message]:
    return [Message("system", [{"text": SYSTEM}]), Message("user", list(segs))]


def build_trace(tokenizer_dir: str | Path | None, tokenizer_name: str = "mrw-tiny-bpe", out_tokens: int = 8) -> Trace:
    o = out_tokens
    wf0 = [
        Call("doc-0/c0", "summarize", [], 0.0, 0, o, messages=_m({"text": "Summarise this part of a news story:\n" + DOC[0]}), output=OUT[0]),
        Call("doc-0/c1", "refine", ["doc-0/c0"], 0.2, 0, o + 4,
             messages=_m({"text": "Current summary:\n"}, {"ref": "doc-0/c0"}, {"text": "\nRefine it with the next part:\n" + DOC[1]}),
             output=OUT[1]),
    ]
    wf1 = [
        Call("plan-0/plan", "planner", [], 0.0, 0, o, messages=_m({"text": "Plan two steps to weigh the new bicycle lanes."}), output=OUT[2]),
        Call("plan-0/w0", "worker", ["plan-0/plan"], 0.1, 0, o,
             messages=_m({"text": "Plan:\n"}, {"ref": "plan-0/plan"}, {"text": "\nDo step 1."}), output=OUT[3]),
        Call("plan-0/w1", "worker", ["plan-0/plan"], 0.1, 0, o,
             messages=_m({"text": "Plan:\n"}, {"ref": "plan-0/plan"}, {"text": "\nDo step 2."}), output=OUT[4]),
        Call("plan-0/final", "aggregator", ["plan-0/w0", "plan-0/w1"], 0.0, 0, o + 2,
             messages=_m({"text": "Combine:\n"}, {"ref": "plan-0/w0"}, {"text": "\n"}, {"ref": "plan-0/w1"}), output=OUT[5]),
    ]
    t = Trace(
        new_header("sweep-test", generator={"name": "tests.sweep_fixtures", "params": {}, "seed": 0},
                   recorded_against={"engine": "vllm", "model": "tiny-llama", "tokenizer": tokenizer_name}),
        [Workflow("doc-0", 0.0, wf0, {"workload": "summarization"}), Workflow("plan-0", 0.2, wf1, {"workload": "coding"})],
    )
    outputs = t.recorded_outputs()
    if tokenizer_dir is not None:
        from mrw.transform import hf_token_counter

        count = hf_token_counter(str(tokenizer_dir))
        for _, c in t.calls():
            c.input_tokens = count(c, outputs)
    else:
        for _, c in t.calls():
            c.input_tokens = max(1, len(c.render_prompt(outputs)) // 4)
    return t


def write_trace(path: Path, tokenizer_dir: str | Path | None, **kw) -> Path:
    return dump(build_trace(tokenizer_dir, **kw), path)
