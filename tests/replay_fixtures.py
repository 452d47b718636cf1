"""A small, realistic trace for replay tests, built with the mrw.trace dataclasses.

Two workflows, the two shapes the replay core must get right:
  - "doc-0": sequential chain summarisation (3 calls, each refines the previous summary),
  - "plan-0": fan-out / fan-in (a planner, two workers in parallel, an aggregator),
with recorded outputs spliced through {"ref": ...} segments, tool/think waits, and input
token counts measured with the model's own tokenizer and chat template (so the replay's
input-token check can pass exactly).
"""

from __future__ import annotations

from pathlib import Path

from mrw.trace import Call, Message, Trace, Workflow, new_header

DOC = [
    "The city council met on Tuesday to discuss the new bicycle lanes on Main Street. Residents "
    "complained about parking, while shop owners worried about deliveries.",
    "After two hours the council agreed to a six-month trial. Lanes will be painted in May, and "
    "delivery vans may stop in marked bays before ten in the morning.",
    "The trial will be reviewed in November using counts of cyclists, accident reports and a "
    "survey of shops. If the results are poor, the lanes will be removed.",
]
SUMMARY_OUT = [
    "The council discussed new bike lanes on Main Street amid parking and delivery concerns.",
    "The council approved a six-month bike lane trial on Main Street starting in May, with morning delivery bays.",
    "A six-month Main Street bike lane trial starts in May with delivery bays; a November review of "
    "cycling counts, accidents and shop surveys decides whether the lanes stay.",
]
PLAN_OUT = "1. List the pros of remote work. 2. List the cons of remote work."
WORKER_OUT = [
    "Pros: no commute, flexible hours, fewer office costs, access to talent anywhere.",
    "Cons: isolation, blurred work-life boundaries, harder mentoring, time-zone friction.",
]
FINAL_OUT = "Remote work saves time and money but needs deliberate effort on mentoring and boundaries."

SYSTEM = "You are a concise assistant. Answer in plain sentences."


def _msgs(*parts: list[dict]) -> list[Message]:
    return [Message("system", [{"text": SYSTEM}]), Message("user", [seg for p in parts for seg in p])]


def build_trace(model_dir: str | Path | None = None, *, out_tokens: tuple[int, ...] = (12, 16, 20, 10, 14, 14, 12)) -> Trace:
    """The test trace. With `model_dir`, input_tokens are counted with that model's chat template."""
    o = list(out_tokens)
    chain = [
        Call("doc-0/c0", "summarize", [], 0.0, 0, o[0], messages=_msgs([{"text": "Summarise this part of a news story:\n" + DOC[0]}]), output=SUMMARY_OUT[0]),
        Call(
            "doc-0/c1", "refine", ["doc-0/c0"], 0.3, 0, o[1],
            messages=_msgs([{"text": "Current summary:\n"}, {"ref": "doc-0/c0"}, {"text": "\nRefine it with the next part:\n" + DOC[1]}]),
            output=SUMMARY_OUT[1],
        ),
        Call(
            "doc-0/c2", "refine", ["doc-0/c1"], 0.3, 0, o[2],
            messages=_msgs([{"text": "Current summary:\n"}, {"ref": "doc-0/c1"}, {"text": "\nRefine it with the next part:\n" + DOC[2]}]),
            output=SUMMARY_OUT[2],
        ),
    ]
    fan = [
        Call("plan-0/plan", "planner", [], 0.1, 0, o[3], messages=_msgs([{"text": "Plan two steps to weigh remote work."}]), output=PLAN_OUT),
        Call(
            "plan-0/w0", "worker", ["plan-0/plan"], 0.2, 0, o[4],
            messages=_msgs([{"text": "Plan:\n"}, {"ref": "plan-0/plan"}, {"text": "\nDo step 1."}]), output=WORKER_OUT[0],
        ),
        Call(
            "plan-0/w1", "worker", ["plan-0/plan"], 0.2, 0, o[5],
            messages=_msgs([{"text": "Plan:\n"}, {"ref": "plan-0/plan"}, {"text": "\nDo step 2."}]), output=WORKER_OUT[1],
        ),
        Call(
            "plan-0/final", "aggregator", ["plan-0/w0", "plan-0/w1"], 0.0, 0, o[6],
            messages=_msgs([{"text": "Combine:\n"}, {"ref": "plan-0/w0"}, {"text": "\n"}, {"ref": "plan-0/w1"}]),
            output=FINAL_OUT,
        ),
    ]
    wfs = [Workflow("doc-0", 0.0, chain, {"workload": "summarization"}), Workflow("plan-0", 0.5, fan, {"workload": "coding"})]
    trace = Trace(new_header("test-mix", generator={"name": "tests.replay_fixtures", "params": {}, "seed": 0},
                             recorded_against={"engine": "vllm", "model": "SmolLM2-135M-Instruct"}), wfs)
    if model_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        outputs = trace.recorded_outputs()
        for _, c in trace.calls():
            ids = tok.apply_chat_template(c.render_messages(outputs), add_generation_prompt=True, tokenize=True)
            c.input_tokens = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        for _, c in trace.calls():
            c.input_tokens = max(1, len(c.render_prompt(trace.recorded_outputs())) // 4)
    return trace
