"""mrw.generators: LangGraph workloads and the recorder that turns their LLM calls into traces.

Adding a workload is one module that defines a parameter dataclass and a `plan` function
decorated with `@register(name, summary, Params)`, imported below.
"""

from mrw.generators.base import REGISTRY, WorkloadDef, describe, register  # noqa: F401
from mrw.generators.recorder import Recorder, WorkflowSpec, node_name, observe_httpx  # noqa: F401

# Workloads register themselves on import.
from mrw.generators import coding_agents, composite, copilot, summarization  # noqa: E402,F401  isort: skip

__all__ = ["REGISTRY", "WorkloadDef", "describe", "register", "Recorder", "WorkflowSpec", "node_name",
           "observe_httpx"]
