"""Typed errors. Every error a user can cause or meet carries a one-line message that says
what is wrong and what to do; the CLI prints it and exits non-zero."""

from __future__ import annotations


class MrwError(Exception):
    """Base class: `str(err)` is the one line the CLI prints."""

    exit_code = 1


class TraceError(MrwError):
    """A trace file is unreadable, malformed or semantically invalid."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = problems or []


class UnknownNameError(MrwError):
    """An unknown workload, engine, meter or format name."""


class EngineError(MrwError):
    """The engine failed: unreachable, refused a request, or died mid-run."""


class EngineUnreachable(EngineError):
    """Nothing answers at the engine's URL."""


class LaunchError(MrwError):
    """An engine process could not be started or did not become healthy."""


class KnobError(MrwError):
    """A knob cannot be applied (out of range, not supported by this engine, no permission)."""


class NotSupportedError(MrwError):
    """The hardware or engine does not support this operation."""


class PermissionDeniedError(MrwError):
    """The operation needs privileges this process does not have."""
