"""Dependencies from the text itself: which earlier outputs does a new prompt contain?

Every output of a workflow is registered as it completes. A later prompt that contains a
registered output verbatim depends on that call, and the prompt is split into segments
around it: `{"text": ...}` for literal text and `{"ref": call_id}` where the output sits,
so a replay can splice the recorded or the live upstream text back in.

Why text and not graph edges: it captures what really flowed (a node that read the state but
did not use it adds no edge), works for any graph without the author declaring anything,
and gives the ref segments for free.

Guards:
- outputs shorter than `min_chars` (after stripping) never match: "Yes." or "4" would turn
  up in unrelated prompts;
- overlapping matches are resolved longest first (a revised file that quotes the first draft
  verbatim is the dependency, not the draft inside it);
- when two calls produced the same text, the most recent one is the dependency;
- an output that appears only stripped of surrounding whitespace still makes a dependency,
  but stays literal text (a ref must splice back exactly what the prompt held).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_CHARS = 24


@dataclass(slots=True)
class Registered:
    call_id: str
    output: str
    t_end: float


@dataclass(slots=True)
class OutputRegistry:
    """The completed outputs of one workflow, in completion order."""

    min_chars: int = MIN_CHARS
    items: list[Registered] = field(default_factory=list)

    def add(self, call_id: str, output: str, t_end: float) -> None:
        self.items.append(Registered(call_id, output, t_end))

    def split(self, text: str) -> tuple[list[dict], list[str]]:
        """Segments of `text` and the ids of the calls it depends on (in order of first
        appearance). Ids of calls matched only in stripped form are included in deps but not
        as refs."""
        spans: list[tuple[int, int, int, str, bool]] = []  # start, end, -t_end rank, id, exact
        for rank, reg in enumerate(self.items):
            core = reg.output.strip()
            if len(core) < self.min_chars:
                continue
            exact = reg.output
            for needle, is_exact in ((exact, True), (core, False)) if core != exact else ((exact, True),):
                start = text.find(needle)
                while start != -1:
                    spans.append((start, start + len(needle), rank, reg.call_id, is_exact))
                    start = text.find(needle, start + len(needle))
        if not spans:
            return ([{"text": text}] if text else []), []
        # Longest first; among equal lengths the exact form, then the most recent call.
        spans.sort(key=lambda s: (-(s[1] - s[0]), not s[4], -s[2], s[0]))
        taken: list[tuple[int, int, str, bool]] = []
        for start, end, _rank, cid, is_exact in spans:
            if any(start < e and s < end for s, e, _, _ in taken):
                continue
            taken.append((start, end, cid, is_exact))
        taken.sort()
        segments: list[dict] = []
        deps: list[str] = []
        pos = 0
        for start, end, cid, is_exact in taken:
            if cid not in deps:
                deps.append(cid)
            if not is_exact:
                continue  # stays inside the surrounding literal text
            if start > pos:
                _append_text(segments, text[pos:start])
            segments.append({"ref": cid})
            pos = end
        if pos < len(text):
            _append_text(segments, text[pos:])
        return segments, deps


def _append_text(segments: list[dict], s: str) -> None:
    if segments and "text" in segments[-1]:
        segments[-1]["text"] += s
    else:
        segments.append({"text": s})
