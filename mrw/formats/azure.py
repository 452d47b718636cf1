"""Azure LLM inference traces (Azure/AzurePublicDataset, 2023, 2024 and 2025), both ways.

CSV (or .csv.gz) with a header naming its columns; each row is one request:

- 2023 (AzureLLMInferenceTrace_{code,conv}.csv): `TIMESTAMP,ContextTokens,GeneratedTokens`,
  TIMESTAMP a UTC date-time with 7 fractional digits, no offset: `2023-11-16 18:15:46.6805900`;
- 2024 (..._1week.csv): the same columns; TIMESTAMP has an offset and 6 fractional digits,
  or none at all on a whole second: `2024-05-12 00:00:00.001163+00:00`, `2024-05-12 00:00:00+00:00`;
- 2025 (AzureLMMInferenceTrace_multimodal.csv.gz): `TIMESTAMP,NumImages,ContextTokens,
  GeneratedTokens`, TIMESTAMP as `2024-10-15T12:00:00.269Z`.

Every form is read by one exact parser (mrw.formats.common.parse_time_ns): any number of
fractional digits, 'T' or a space, and a UTC offset that is applied (a row at 12:00+05:30 is
5.5 h before one at 12:00Z); no offset means UTC. Columns are found by name, in any order.

Import: each row becomes its own workflow of one call; times are seconds after the earliest
row, whose date-time is kept in header.extra.import.start. NumImages, where present, is kept
as the workflow tag `num_images` (replay sends text only). Export writes the 2023 form
(`TIMESTAMP,ContextTokens,GeneratedTokens`, 7 fractional digits, UTC), with a NumImages
column when the trace has `num_images` tags, one row per call in issue order, dated from
header.extra.import.start (or the trace's creation time).

What the format cannot express: dependencies and workflows, prefix sharing (no hash_ids:
replay prompts share nothing), text, node names, first-token and end times.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mrw.formats import Format, FormatError, import_header, issue_time, register
from mrw.formats.common import MAX_TOKENS, iso_utc, listed, parse_time_ns, read_lines
from mrw.trace import Call, Trace, Workflow, write_atomic

REQUIRED = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
IMAGES = "NumImages"
WHAT = "an Azure LLM inference trace (CSV with TIMESTAMP,ContextTokens,GeneratedTokens)"


def parse_timestamp(s: str) -> float:
    """Seconds since the epoch (UTC) of an Azure trace timestamp, in any of its forms."""
    return parse_time_ns(s) / 1e9


def _format_ns(ns: int) -> str:
    """The 2023 form: `2023-11-16 18:15:46.6805900` (UTC, 100 ns digits)."""
    whole, frac = divmod(ns, 1_000_000_000)
    return iso_utc(whole * 1_000_000_000)[:19].replace("T", " ") + f".{frac // 100:07d}"


@register
class Azure(Format):
    name = "azure"
    description = "Azure LLM inference CSV: TIMESTAMP, ContextTokens, GeneratedTokens (+ NumImages, 2025)"

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        return head.lstrip().upper().startswith(b"TIMESTAMP,")

    def read(self, path: Path, *, workload: str | None = None, **_: Any):
        lines = read_lines(path, WHAT)
        head = next(lines, None)
        columns = [c.strip().strip('"') for c in head[1].decode("utf-8", "replace").split(",")] if head else []
        if not all(c in columns for c in REQUIRED):
            shown = ",".join(columns)[:60]
            raise FormatError(f"{path}: first line is {shown!r}, expected columns {','.join(REQUIRED)}; is this {WHAT}?")
        i_ts, i_in, i_out = (columns.index(c) for c in REQUIRED)
        i_img = columns.index(IMAGES) if IMAGES in columns else None
        others = [c for c in columns if c not in REQUIRED and c != IMAGES]
        rows: list[tuple[int, int, int, int | None]] = []
        for lineno, raw in lines:
            row = next(csv.reader([raw.decode("utf-8", "replace")]))
            where = f"{path}:{lineno}"
            try:
                t = parse_time_ns(row[i_ts])
                n_in, n_out = int(row[i_in]), int(row[i_out])
                n_img = int(row[i_img]) if i_img is not None else None
            except (ValueError, IndexError):
                raise FormatError(f"{where}: cannot read {raw[:80].decode('utf-8', 'replace')!r} as "
                                  f"{','.join(columns)}") from None
            if not (0 <= n_in <= MAX_TOKENS and 0 <= n_out <= MAX_TOKENS) or (n_img is not None and n_img < 0):
                raise FormatError(f"{where}: token and image counts must be from 0 to {MAX_TOKENS:,}")
            rows.append((t, n_in, n_out, n_img))
        if not rows:
            raise FormatError(f"{path}: no requests")
        t0 = min(r[0] for r in rows)
        workflows = []
        for i, (t, n_in, n_out, n_img) in enumerate(rows):
            t_rel = (t - t0) / 1e9
            workflows.append(Workflow(id=f"a{i}", arrival_s=t_rel, tags={} if n_img is None else {"num_images": n_img},
                                      calls=[Call(id=f"a{i}", node="request", input_tokens=n_in, output_tokens=n_out,
                                                  t_issue=t_rel)]))
        start = iso_utc(t0)
        notes = [
            "no dependencies: every request is its own workflow",
            "no prefix-sharing information: replay prompts share nothing",
            "no text, node names, first-token or end times",
            f"times are seconds after the first request ({start})",
        ]
        with_images = sum(1 for r in rows if r[3])
        if with_images:
            notes.append(f"{with_images} requests carry images (NumImages, kept as the workflow tag num_images): "
                         "replay sends their ContextTokens as text, no images")
        if others:
            notes.append(f"columns not kept: {listed(others)}")
        header = import_header(self.name, path, notes, workload=workload)
        header.extra["import"]["start"] = start
        return Trace(header=header, workflows=workflows), notes

    def write(self, trace: Trace, path: Path, **_: Any) -> list[str]:
        start = (trace.header.extra.get("import") or {}).get("start") or trace.header.created
        try:
            t0 = parse_time_ns(start)
        except (ValueError, TypeError):
            raise FormatError(f"the trace's start time {start!r} is not a date-time; set header.created") from None
        images = any("num_images" in w.tags for w in trace.workflows)
        rows: list[tuple[int, int, str]] = []
        untimed = seq = 0
        for w in trace.workflows:
            for c in w.calls:
                untimed += c.t_issue is None
                ns = t0 + round(issue_time(w.arrival_s, c) * 1e9)
                cells = [_format_ns(ns)]
                if images:
                    cells.append(str(int(w.tags.get("num_images", 0))))
                cells += [str(c.input_tokens), str(c.output_tokens)]
                rows.append((ns, seq, ",".join(cells)))
                seq += 1
        rows.sort()
        head = "TIMESTAMP," + (f"{IMAGES}," if images else "") + "ContextTokens,GeneratedTokens"
        write_atomic(path, ("\n".join([head] + [r[2] for r in rows]) + "\n").encode())
        notes = [f"times are UTC date-times from {iso_utc(t0)} (the trace's start)",
                 "lost: dependencies, waits, workflows, node names, hash_ids (prefix sharing), text, "
                 "first-token/end times, sampling"]
        if untimed:
            notes.append(f"{untimed} calls had no recorded issue time; written at their workflow's arrival")
        return notes
