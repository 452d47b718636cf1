"""Engine registry: name -> adapter class, imported only when asked for.

Adding an engine is one module and one line here. Third-party packages can add engines
without touching mrw through the entry-point group `mrw.engines` (name = "module:Class").
"""

from __future__ import annotations

import importlib
from importlib import metadata

from mrw.errors import UnknownNameError

from .base import Engine

# name -> "module:Class"; lazy so that `mrw --help` never imports an engine's dependencies.
_BUILTIN: dict[str, str] = {
    "vllm": "mrw.replay.engines.vllm:VllmEngine",
    "openai": "mrw.replay.engines.openai_compat:OpenAICompatEngine",
    "parrot": "mrw.replay.engines.parrot:ParrotEngine",
}


def register(name: str, target: str) -> None:
    """Add or replace an engine: `target` is "module:Class"."""
    _BUILTIN[name] = target


def _all() -> dict[str, str]:
    found = dict(_BUILTIN)
    try:
        for ep in metadata.entry_points(group="mrw.engines"):
            found.setdefault(ep.name, ep.value)
    except Exception:  # a broken third-party install must not break the built-in engines
        pass
    return found


def names() -> list[str]:
    return sorted(_all())


def get_engine(name: str) -> type[Engine]:
    """The adapter class for `name`; UnknownNameError lists the known names."""
    targets = _all()
    if name not in targets:
        raise UnknownNameError(f"unknown engine {name!r}; known engines: {', '.join(sorted(targets))}")
    module, _, cls = targets[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise  # the adapter exists but one of its own imports is missing: show that
        raise UnknownNameError(f"engine {name!r} is not available in this mrw build (no module {module})") from None
    return getattr(mod, cls)
