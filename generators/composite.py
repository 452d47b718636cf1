"""A mix of the other workloads in one trace, each kind with its own arrival process: chat-like
copilot sessions at a steady Poisson rate beside map-reduce summarization and coding-team
workflows. Every workflow's tags say its kind, so analyses can split by kind.

Each part uses its workload's defaults except the counts, rates, mode and rounds set here.

Reference (Parrot, mixed workload): ShareGPT chat at 1 req/s (prompts of 4-1024 tokens) beside
9 map-reduce summarization apps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from mrw.generators import coding_agents, copilot, summarization
from mrw.generators.base import Env, param, register
from mrw.generators.recorder import WorkflowSpec


@dataclass
class CompositeParams:
    copilot_sessions: int = param(6, "Copilot sessions.", reference="ShareGPT chat")
    copilot_rate: float = param(0.5, "Poisson arrival rate of copilot sessions per second.", reference="1 req/s")
    summarization_workflows: int = param(2, "Summarization workflows.", reference="9 apps")
    summarization_rate: float = param(0.2, "Poisson arrival rate of summarization workflows per second.")
    summarization_mode: str = param("map-reduce", "chain or map-reduce.", choices=("chain", "map-reduce"),
                                    reference="map-reduce")
    coding_workflows: int = param(1, "Coding-team workflows.")
    coding_rate: float = param(0.1, "Poisson arrival rate of coding workflows per second.")
    coding_rounds: int = param(1, "Rounds of each coding workflow.")
    set: str = param("", "Other parameters of the parts, comma-separated KIND.PARAM=VALUE, e.g. "
                         "'copilot.answer_tokens_max=200,summarization.max_chunks=4' "
                         "(KIND: copilot, summarization, coding).", flag="--set")


def overrides(spec: str) -> dict[str, dict]:
    """'copilot.top_k=3,coding.code_tokens=200' -> {"copilot": {"top_k": 3}, "coding": {...}}, each
    value converted to the type of the part's parameter."""
    from mrw.generators.corpus import DataError

    classes = {"copilot": copilot.CopilotParams, "summarization": summarization.SummarizationParams,
               "coding": coding_agents.CodingParams}
    out: dict[str, dict] = {k: {} for k in classes}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, eq, value = item.partition("=")
        kind, dot, name = key.strip().partition(".")
        if not eq or not dot or kind not in classes:
            raise DataError(f"--set {item!r}: expected KIND.PARAM=VALUE with KIND one of {', '.join(classes)}")
        fields = {f.name: f for f in dataclasses.fields(classes[kind])}
        name = name.replace("-", "_")
        if name not in fields:
            raise DataError(f"--set {item!r}: {kind} has no parameter {name!r} (it has {', '.join(fields)})")
        typ = str(fields[name].type)
        try:
            out[kind][name] = int(value) if typ == "int" else float(value) if typ == "float" else value
        except ValueError:
            raise DataError(f"--set {item!r}: {name} takes a number") from None
    return out


@register("composite", "Copilot sessions, summarization and coding workflows mixed in one trace, "
          "each with its own arrival process.", CompositeParams)
def plan(p: CompositeParams, env: Env) -> list[WorkflowSpec]:
    specs: list[WorkflowSpec] = []
    extra = overrides(p.set)
    if p.copilot_sessions > 0:
        cp = replace(copilot.CopilotParams(), workflows=p.copilot_sessions, rate=p.copilot_rate, **extra["copilot"])
        specs += copilot.plan(cp, env, prefix="copilot", first_at_start=False)
    if p.summarization_workflows > 0:
        sp = replace(summarization.SummarizationParams(), workflows=p.summarization_workflows,
                     rate=p.summarization_rate, mode=p.summarization_mode, **extra["summarization"])
        specs += summarization.plan(sp, env, prefix="sum", first_at_start=False)
    if p.coding_workflows > 0:
        kp = replace(coding_agents.CodingParams(), workflows=p.coding_workflows, rate=p.coding_rate,
                     rounds=p.coding_rounds, **extra["coding"])
        specs += coding_agents.plan(kp, env, prefix="code", first_at_start=False)
    for s in specs:
        s.tags.setdefault("kind", s.id.split("-")[0])
    return sorted(specs, key=lambda s: (s.arrival_s, s.id))
