"""mrw.generators: LangGraph workloads and the recorder that turns their LLM calls into traces.

Adding a workload is one module that defines a parameter dataclass and a `plan` function
decorated with `@register(name, summary, Params)`, plus one entry in WORKLOADS below.
Imports are lazy so that `mrw validate` and friends do not pay for LangGraph.
"""

from __future__ import annotations

import importlib
from typing import Any

# Workload name -> the module that registers it.
WORKLOADS = {
    "summarization": "mrw.generators.summarization",
    "copilot": "mrw.generators.copilot",
    "coding-agents": "mrw.generators.coding_agents",
    "composite": "mrw.generators.composite",
}

_LAZY = {
    "describe": "mrw.generators.base",
    "register": "mrw.generators.base",
    "WorkloadDef": "mrw.generators.base",
    "Recorder": "mrw.generators.recorder",
    "WorkflowSpec": "mrw.generators.recorder",
    "node_name": "mrw.generators.recorder",
    "observe_httpx": "mrw.generators.recorder",
}


def registry() -> dict:
    """Name -> WorkloadDef of every built-in workload (imports them)."""
    for mod in WORKLOADS.values():
        importlib.import_module(mod)
    from mrw.generators.base import REGISTRY

    return REGISTRY


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":
        return registry()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mrw.generators' has no attribute {name!r}")


__all__ = ["WORKLOADS", "registry", "REGISTRY", *_LAZY]
