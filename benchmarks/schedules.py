"""The open-loop schedules the replay benchmark sends, and the same schedule in each tool's format.

Two kinds:
- `independent`: N single-call workflows, the i-th due at i/rate seconds (constant spacing,
  so a tool that falls behind shows it as lateness, not as a lucky gap);
- `chains`: workflows of `chain_len` dependent calls (call k needs call k-1's output, then
  waits `wait_ms`), workflows arriving at rate/chain_len so calls flow at `rate`.

Every call's own text ends in a marker `[[w<j>.c<k>]]` that the zero-delay server logs, so
arrivals can be matched to the schedule at the server for tools that do not say when they
issued a request. Outputs are `max_tokens` copies of " tok", as the server streams them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from mrw.trace import Call, Message, Trace, Workflow, dump, new_header

TOKEN = " tok"


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: str  # "independent" | "chains"
    rate: float  # calls per second, all calls together
    duration_s: float  # time over which the root arrivals are spread
    tokens: int = 16  # output tokens (= streamed chunks) per call
    chain_len: int = 4
    wait_ms: float = 0.0  # think/tool time before each dependent call

    @property
    def name(self) -> str:
        if self.kind == "independent":
            return f"independent@{self.rate:g}/s"
        return f"chains{self.chain_len}@{self.rate:g}/s"

    @property
    def n_workflows(self) -> int:
        per_wf = 1 if self.kind == "independent" else self.chain_len
        return max(2, round(self.rate * self.duration_s / per_wf))

    @property
    def calls_per_workflow(self) -> int:
        return 1 if self.kind == "independent" else self.chain_len

    @property
    def n_calls(self) -> int:
        return self.n_workflows * self.calls_per_workflow

    @property
    def workflow_rate(self) -> float:
        return self.rate / self.calls_per_workflow

    def arrival_s(self, j: int) -> float:
        return j / self.workflow_rate

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(name=self.name, n_calls=self.n_calls, n_workflows=self.n_workflows)
        return d


def call_id(j: int, k: int) -> str:
    return f"w{j}.c{k}"


def call_text(j: int, k: int) -> str:
    return f"Step {k} of task {j}: continue. [[{call_id(j, k)}]]"


def mrw_trace(s: Schedule) -> Trace:
    """The schedule as an mrw trace: recorded arrivals, deps, waits, recorded outputs."""
    out = TOKEN * s.tokens
    wfs = []
    for j in range(s.n_workflows):
        calls = []
        for k in range(s.calls_per_workflow):
            content = [{"text": call_text(j, k)}] if k == 0 else [{"ref": call_id(j, k - 1)}, {"text": call_text(j, k)}]
            calls.append(
                Call(
                    id=call_id(j, k),
                    node=f"step{k}",
                    deps=[] if k == 0 else [call_id(j, k - 1)],
                    wait_s=0.0 if k == 0 else s.wait_ms / 1000.0,
                    input_tokens=0,
                    output_tokens=s.tokens,
                    messages=[Message("user", content)],
                    output=out,
                )
            )
        wfs.append(Workflow(id=f"w{j}", arrival_s=s.arrival_s(j), calls=calls))
    return Trace(new_header("bench-" + s.kind, description=f"replay benchmark schedule {s.name}"), wfs)


def write_mrw(s: Schedule, path: Path) -> Path:
    return dump(mrw_trace(s), path)


def write_aiperf(s: Schedule, path: Path) -> Path:
    """AIPerf's mooncake_trace JSONL: `timestamp` (ms) for each root, `session_id` + `delay`
    (ms after the previous turn finished) for the dependent turns of a chain."""
    with open(path, "wb") as f:
        for j in range(s.n_workflows):
            for k in range(s.calls_per_workflow):
                row: dict = {"text_input": call_text(j, k), "output_length": s.tokens}
                if s.kind == "chains":
                    row["session_id"] = f"w{j}"
                if k == 0:
                    row["timestamp"] = s.arrival_s(j) * 1000.0
                else:
                    row["delay"] = s.wait_ms
                f.write(orjson.dumps(row) + b"\n")
    return path


def write_vllm(s: Schedule, path: Path) -> Path:
    """`vllm bench serve --dataset-name timed_trace` JSONL: `timestamp` (s), lengths, hash ids.
    vLLM sends token-id prompts it draws from the hash ids, so no marker reaches the server:
    its arrivals are matched to the schedule by order."""
    if s.kind != "independent":
        raise ValueError("vllm bench serve has no dependent requests")
    with open(path, "wb") as f:
        for j in range(s.n_workflows):
            f.write(orjson.dumps({"timestamp": s.arrival_s(j), "input_length": 8, "output_length": s.tokens, "hash_ids": [j]}) + b"\n")
    return path
