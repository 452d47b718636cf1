"""Azure LLM inference traces (Azure/AzurePublicDataset, 2023 and 2024): import only.

CSV with a header `TIMESTAMP,ContextTokens,GeneratedTokens`; TIMESTAMP is a UTC date-time
with up to 7 fractional digits ("2023-11-16 18:15:46.6805900"). Each row is one request.

What the format cannot express: dependencies and workflows (each request becomes its own
workflow), prefix sharing (no hash_ids: replay prompts share nothing), text, node names,
first-token and end times. Issue times are seconds after the first row's timestamp.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mrw.formats import Format, FormatError, import_header, register
from mrw.trace import Call, Trace, Workflow

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def parse_timestamp(s: str) -> float:
    """Seconds since the epoch (UTC) of an Azure trace timestamp; 7 fractional digits allowed."""
    s = s.strip().strip('"').replace("T", " ").rstrip("Z")
    frac = ""
    if "." in s:
        s, frac = s.split(".", 1)
        frac = "".join(ch for ch in frac if ch.isdigit())
    dt = datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


@register
class Azure(Format):
    name = "azure"
    description = "Azure LLM inference CSV: TIMESTAMP, ContextTokens, GeneratedTokens (import only)"
    can_export = False

    def read(self, path: Path, *, workload: str | None = None, **_: Any):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            head = next(reader, None)
            if head is None or tuple(h.strip() for h in head[:3]) != COLUMNS:
                shown = ",".join(head or [])[:60]
                raise FormatError(f"{path}: first line is {shown!r}, expected {','.join(COLUMNS)}; is this an Azure LLM inference trace?")
            rows = []
            for lineno, row in enumerate(reader, 2):
                if not row or not "".join(row).strip():
                    continue
                try:
                    rows.append((parse_timestamp(row[0]), int(row[1]), int(row[2])))
                except (ValueError, IndexError):
                    raise FormatError(f"{path}:{lineno}: cannot read {row!r} as TIMESTAMP,ContextTokens,GeneratedTokens") from None
        if not rows:
            raise FormatError(f"{path}: no requests")
        t0 = min(r[0] for r in rows)
        workflows = []
        for i, (t, n_in, n_out) in enumerate(rows):
            if n_in < 0 or n_out < 0:
                raise FormatError(f"{path}: row {i + 2} has a negative token count")
            t_rel = round(t - t0, 6)
            workflows.append(Workflow(id=f"a{i}", arrival_s=t_rel, calls=[
                Call(id=f"a{i}", node="request", input_tokens=n_in, output_tokens=n_out, t_issue=t_rel)]))
        notes = [
            "no dependencies: every request is its own workflow",
            "no prefix-sharing information: replay prompts share nothing",
            "no text, node names, first-token or end times",
            f"times are seconds after the first request ({datetime.fromtimestamp(t0, timezone.utc).isoformat()})",
        ]
        return Trace(header=import_header(self.name, path, notes, workload=workload), workflows=workflows), notes
