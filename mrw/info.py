"""The shape of a trace, as `mrw info` prints it: sizes, arrivals, DAG depth and width,
dependencies, critical path, tokens, waits and prefix sharing. Everything is computed from what
any trace has (arrivals, token counts, deps, waits), so an imported trace without recorded
end times or text gets the same summary as a recorded one."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mrw.prefix import block_hashes, hit_blocks
from mrw.trace import Trace, Workflow

# Characters per block when sharing is measured on text (about 16 tokens of English).
TEXT_BLOCK_CHARS = 64


@dataclass(slots=True)
class Spread:
    """A distribution in four numbers (nearest-rank percentiles)."""

    p50: float
    p90: float
    p99: float
    max: float


def spread(values: list[float]) -> Spread | None:
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    return Spread(*(v[min(n - 1, max(0, -(-n * q // 100) - 1))] for q in (50, 90, 99)), v[-1])


@dataclass(slots=True)
class WorkflowShape:
    id: str
    calls: int
    depth: int  # calls on the longest dependency chain
    width: int  # most calls on one level of the DAG (calls that can run at once)
    critical_path_s: float | None  # recorded LLM time + waits along the slowest chain
    makespan_s: float | None  # recorded first issue to last end


@dataclass(slots=True)
class TraceInfo:
    workload: str
    workflows: int
    calls: int
    calls_per_workflow: float
    depth_max: int
    width_max: int
    input_tokens: int
    output_tokens: int
    mean_input_tokens: float
    mean_output_tokens: float
    total_wait_s: float
    critical_path_s_mean: float | None
    shared_prefix_share: float | None  # fraction of prompt blocks an unbounded prefix cache would hit
    shared_prefix_basis: str  # "hash_ids" (tokens), "text" (characters) or "none"
    nodes: dict[str, int]
    duration_s: float | None  # the last recorded end, from the trace start
    recorded_against: dict
    arrival_span_s: float  # first to last workflow arrival
    arrival_rate_per_s: float | None  # workflows per second over that span (None: all arrive at once)
    recorded_span_s: float | None  # first recorded issue to the last recorded end (or issue, when no ends)
    input_tokens_spread: Spread | None
    output_tokens_spread: Spread | None
    dependency_edges: int
    calls_with_deps: int
    joins: int  # calls that wait for two or more calls
    fan_out_max: int  # most calls that wait for one call
    waiting_calls: int  # calls with a wait > 0
    wait_spread: Spread | None  # of the waits > 0

    def to_dict(self) -> dict:
        return asdict(self)


def workflow_shape(w: Workflow) -> WorkflowShape:
    order = w.topo_order()
    level: dict[str, int] = {}
    finish: dict[str, float] = {}
    timed = all(c.t_issue is not None and c.t_end is not None for c in w.calls)
    for c in order:
        level[c.id] = 1 + max((level[d] for d in c.deps), default=0)
        if timed:
            start = max((finish[d] for d in c.deps), default=0.0) + c.wait_s
            finish[c.id] = start + (c.t_end - c.t_issue)  # type: ignore[operator]
    widths: dict[int, int] = {}
    for lv in level.values():
        widths[lv] = widths.get(lv, 0) + 1
    makespan = None
    if timed:
        makespan = max(c.t_end for c in w.calls) - min(c.t_issue for c in w.calls)  # type: ignore[type-var,operator]
    return WorkflowShape(
        id=w.id,
        calls=len(w.calls),
        depth=max(level.values()),
        width=max(widths.values()),
        critical_path_s=max(finish.values()) if timed else None,
        makespan_s=makespan,
    )


def shared_prefix(trace: Trace) -> tuple[float | None, str]:
    """Share of prompt blocks that repeat an earlier prompt's prefix, in issue order."""
    calls = [c for _, c in trace.calls()]
    calls.sort(key=lambda c: (c.t_issue if c.t_issue is not None else 0.0))
    if calls and all(c.hash_ids is not None for c in calls):
        hits, total = hit_blocks(c.hash_ids for c in calls)  # type: ignore[misc]
        return (hits / total if total else None), "hash_ids"
    if calls and all(c.has_text for c in calls):
        outputs = trace.recorded_outputs()
        if all(r in outputs for c in calls for r in c.refs()):
            hits, total = hit_blocks(block_hashes(c.render_prompt(outputs), TEXT_BLOCK_CHARS) for c in calls)
            return (hits / total if total else None), "text"
    return None, "none"


def trace_info(trace: Trace) -> tuple[TraceInfo, list[WorkflowShape]]:
    shapes = [workflow_shape(w) for w in trace.workflows]
    calls = [c for _, c in trace.calls()]
    n = max(len(calls), 1)
    nodes: dict[str, int] = {}
    for c in calls:
        nodes[c.node] = nodes.get(c.node, 0) + 1
    share, basis = shared_prefix(trace)
    cps = [s.critical_path_s for s in shapes if s.critical_path_s is not None]
    ends = [c.t_end for c in calls if c.t_end is not None]
    issues = [c.t_issue for c in calls if c.t_issue is not None]
    arrivals = [w.arrival_s for w in trace.workflows]
    span = max(arrivals) - min(arrivals) if arrivals else 0.0
    fan_out: dict[str, int] = {}
    for c in calls:
        for d in c.deps:
            fan_out[d] = fan_out.get(d, 0) + 1
    waits = [c.wait_s for c in calls if c.wait_s > 0]
    info = TraceInfo(
        workload=trace.header.workload,
        workflows=len(trace.workflows),
        calls=len(calls),
        calls_per_workflow=len(calls) / max(len(trace.workflows), 1),
        depth_max=max((s.depth for s in shapes), default=0),
        width_max=max((s.width for s in shapes), default=0),
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        mean_input_tokens=sum(c.input_tokens for c in calls) / n,
        mean_output_tokens=sum(c.output_tokens for c in calls) / n,
        total_wait_s=sum(c.wait_s for c in calls),
        critical_path_s_mean=sum(cps) / len(cps) if cps else None,
        shared_prefix_share=share,
        shared_prefix_basis=basis,
        nodes=nodes,
        duration_s=max(ends) if ends else None,
        recorded_against=trace.header.recorded_against,
        arrival_span_s=span,
        arrival_rate_per_s=(len(arrivals) - 1) / span if span > 0 else None,
        recorded_span_s=max(ends or issues) - min(issues) if issues else None,
        input_tokens_spread=spread([c.input_tokens for c in calls]),
        output_tokens_spread=spread([c.output_tokens for c in calls]),
        dependency_edges=sum(len(c.deps) for c in calls),
        calls_with_deps=sum(1 for c in calls if c.deps),
        joins=sum(1 for c in calls if len(c.deps) >= 2),
        fan_out_max=max(fan_out.values(), default=0),
        waiting_calls=len(waits),
        wait_spread=spread(waits),
    )
    return info, shapes
