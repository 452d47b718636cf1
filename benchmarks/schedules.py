"""The open-loop schedules the replay benchmark sends, and the same schedule in each tool's format.

Three kinds:
- `independent`: N single-call workflows, the i-th due at i/rate seconds (constant spacing,
  so a tool that falls behind shows it as lateness, not as a lucky gap);
- `chains`: workflows of `chain_len` dependent calls (call k needs call k-1's output, then
  waits `wait_ms`), workflows arriving at rate/chain_len so calls flow at `rate`;
- `mooncake`: made like the public Mooncake conversation trace (generated here, not
  downloaded): single requests in same-timestamp bursts of 1 to `max_burst` calls, bursts at
  constant spacing, prompts of `min_prompt`-`max_prompt` tokens given as hash_ids of
  512-token blocks; a request continues a conversation (its whole prefix, then new blocks)
  or starts one, so prompts share block prefixes. Text-free: each tool makes the prompts
  itself (mrw and vllm bench serve token ids, AIPerf text), so no marker reaches the server
  and arrivals are matched to the schedule by order.

Every call's own text ends in a marker `[[w<j>.c<k>]]` that the zero-delay server logs, so
arrivals can be matched to the schedule at the server for tools that do not say when they
issued a request. Outputs are `max_tokens` copies of " tok", as the server streams them.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import orjson

from mrw.trace import Call, Message, Trace, Workflow, dump, new_header

TOKEN = " tok"


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: str  # "independent" | "chains" | "mooncake"
    rate: float  # calls per second, all calls together
    duration_s: float  # time over which the root arrivals are spread
    tokens: int = 16  # output tokens (= streamed chunks) per call
    chain_len: int = 4
    wait_ms: float = 0.0  # think/tool time before each dependent call
    # mooncake only
    max_burst: int = 16
    min_prompt: int = 10_000
    max_prompt: int = 130_000
    block: int = 512

    @property
    def name(self) -> str:
        if self.kind == "independent":
            return f"independent@{self.rate:g}/s"
        if self.kind == "mooncake":
            return f"mooncake-like@{self.rate:g}/s"
        return f"chains{self.chain_len}@{self.rate:g}/s"

    @property
    def n_workflows(self) -> int:
        per_wf = 1 if self.kind != "chains" else self.chain_len
        return max(2, round(self.rate * self.duration_s / per_wf))

    @property
    def calls_per_workflow(self) -> int:
        return 1 if self.kind != "chains" else self.chain_len

    @property
    def n_calls(self) -> int:
        return self.n_workflows * self.calls_per_workflow

    @property
    def workflow_rate(self) -> float:
        return self.rate / self.calls_per_workflow

    def arrival_s(self, j: int) -> float:
        if self.kind == "mooncake":
            return mooncake_requests(self)[j].t
        return j / self.workflow_rate

    def burst_position(self, j: int) -> int:
        """Position of call j in its same-timestamp burst (0 for the independent and chain kinds)."""
        return mooncake_requests(self)[j].position if self.kind == "mooncake" else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(name=self.name, n_calls=self.n_calls, n_workflows=self.n_workflows)
        if self.kind == "mooncake":
            reqs = mooncake_requests(self)
            d.update(bursts=len({r.t for r in reqs}), prompt_tokens_mean=round(sum(r.input_length for r in reqs) / len(reqs)),
                     prompt_tokens_max=max(r.input_length for r in reqs))
        return d


@dataclass(frozen=True, slots=True)
class MooncakeRequest:
    t: float
    position: int  # in its burst
    input_length: int
    hash_ids: tuple[int, ...]


@lru_cache(maxsize=8)
def mooncake_requests(s: Schedule) -> tuple[MooncakeRequest, ...]:
    """The `mooncake` schedule's requests, in time order (deterministic: seed 0)."""
    rng = random.Random(0)
    n = s.n_workflows
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(1 if rng.random() < 0.3 else rng.randint(2, s.max_burst))
    sizes[-1] -= sum(sizes) - n
    sizes = [k for k in sizes if k > 0]
    gap = s.duration_s / len(sizes)
    lo = -(-s.min_prompt // s.block)
    hi = max(lo, s.max_prompt // s.block)
    convs: list[list[int]] = []  # each conversation's prefix so far, in blocks
    next_id = 0
    out: list[MooncakeRequest] = []
    for b, k in enumerate(sizes):
        t = round(b * gap, 3)  # whole milliseconds, as the published trace
        for pos in range(k):
            if k == 1 and b % 7 == 3:  # now and then a lone call of the largest size
                prefix, new = [], hi
            elif convs and rng.random() < 0.6:
                prefix = rng.choice(convs)
                new = rng.randint(4, 40)
                if len(prefix) + new > hi:
                    prefix, new = [], rng.randint(lo, min(hi, lo * 4))
            else:
                prefix, new = [], rng.randint(lo, min(hi, lo * 4))
            ids = prefix + list(range(next_id, next_id + new))
            next_id += new
            cut = rng.randint(0, s.block - 1)
            length = len(ids) * s.block - cut
            convs.append(ids if cut == 0 else ids[:-1])  # a later turn shares the full blocks only
            out.append(MooncakeRequest(t, pos, min(max(length, s.min_prompt), s.max_prompt), tuple(ids)))
    return tuple(out)


def call_id(j: int, k: int) -> str:
    return f"w{j}.c{k}"


def call_text(j: int, k: int) -> str:
    return f"Step {k} of task {j}: continue. [[{call_id(j, k)}]]"


def mrw_trace(s: Schedule) -> Trace:
    """The schedule as an mrw trace: recorded arrivals, deps, waits, recorded outputs."""
    if s.kind == "mooncake":
        wfs = [Workflow(id=f"w{j}", arrival_s=r.t, calls=[Call(id=call_id(j, 0), node="request", input_tokens=r.input_length,
                                                                 output_tokens=s.tokens, hash_ids=list(r.hash_ids))])
               for j, r in enumerate(mooncake_requests(s))]
        return Trace(new_header("bench-mooncake", description=f"replay benchmark schedule {s.name}", block_size=s.block), wfs)
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
        if s.kind == "mooncake":
            for r in mooncake_requests(s):
                f.write(orjson.dumps({"timestamp": r.t * 1000.0, "input_length": r.input_length, "output_length": s.tokens,
                                      "hash_ids": list(r.hash_ids)}) + b"\n")
            return path
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
    if s.kind == "chains":
        raise ValueError("vllm bench serve has no dependent requests")
    with open(path, "wb") as f:
        if s.kind == "mooncake":
            for r in mooncake_requests(s):
                f.write(orjson.dumps({"timestamp": r.t, "input_length": r.input_length, "output_length": s.tokens,
                                      "hash_ids": list(r.hash_ids)}) + b"\n")
            return path
        for j in range(s.n_workflows):
            f.write(orjson.dumps({"timestamp": s.arrival_s(j), "input_length": 8, "output_length": s.tokens, "hash_ids": [j]}) + b"\n")
    return path
