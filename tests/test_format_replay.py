"""Each importer's fixture replayed against a real vLLM: every call completes with its token
counts, and the replay keeps the DAG and the waits the fixture implies (a call is scheduled
exactly its wait after the last of its dependencies ended). The tiny test model has a 4096-
token context, so each imported trace is first scaled with `mrw transform` (which keeps the
DAG, waits and arrivals) and replayed time-compressed (--time-scale, --wait-scale)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mrw.trace import load

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

DATA = Path(__file__).parent / "data" / "formats"

# (format, fixture, --time-scale, --wait-scale): scales that bring each fixture to seconds
CASES = [
    pytest.param("bailian", "bailian.jsonl", 0.02, 0.05, id="bailian"),
    pytest.param("weka", "weka", 1.0, 0.02, id="weka"),
    pytest.param("tracelab", "tracelab.jsonl", 1e-6, 0.02, id="tracelab"),
    pytest.param("copilot-agent", "copilot-agent", 0.05, 0.02, id="copilot-agent"),
    pytest.param("azure", "azure2023.csv", 0.5, 1.0, id="azure2023"),
    pytest.param("azure", "azure2024.csv", 0.001, 1.0, id="azure2024"),
    pytest.param("azure", "azure2025.csv", 0.5, 1.0, id="azure2025"),
]
MAX_IN, MAX_OUT = 1500, 12  # tokens per call after scaling: fits the 4096-token test model, quick on a CPU


def mrw(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "mrw", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("fmt,fixture,time_scale,wait_scale", CASES)
def test_imported_fixture_replays_with_its_dag_and_waits(vllm_url, tmp_path, fmt, fixture, time_scale, wait_scale):
    imported = tmp_path / "imported.json"
    mrw("import", fmt, DATA / fixture, "-o", imported)
    calls = [c for _, c in load(imported).calls()]
    in_scale = min(1.0, MAX_IN / max(c.input_tokens for c in calls))
    out_scale = min(1.0, MAX_OUT / max(c.output_tokens for c in calls))
    fitted = tmp_path / "fitted.json"
    mrw("transform", imported, "-o", fitted, "--in-scale", in_scale, "--out-scale", out_scale)
    trace = load(fitted)
    run = tmp_path / "run"
    mrw("replay", fitted, "--url", vllm_url, "--time-scale", time_scale, "--wait-scale", wait_scale, "-q", "-o", run)

    rows = {r["call_id"]: r for r in map(orjson.loads, (run / "requests.jsonl").read_bytes().splitlines())}
    want = {c.id: (w, c) for w, c in trace.calls()}
    assert rows.keys() == want.keys()
    first = min(w.arrival_s for w in trace.workflows)
    for cid, (w, c) in want.items():
        r = rows[cid]
        assert r["ok"], r["error"]
        assert (r["input_tokens"], r["output_tokens"]) == (c.input_tokens, c.output_tokens)
        assert r["deps"] == c.deps and r["wait_s"] == pytest.approx(c.wait_s * wait_scale, abs=1e-9)
        assert r["t_arrival"] == pytest.approx((w.arrival_s - first) * time_scale, abs=1e-6)
        if c.deps:  # issued its wait after the last dependency ended, not before
            last = max(rows[d]["t_end"] for d in c.deps)
            assert r["t_scheduled"] == pytest.approx(last + r["wait_s"], abs=1e-6)
            assert r["t_issue"] >= last
        else:
            assert r["t_scheduled"] == pytest.approx(r["t_arrival"] + r["wait_s"], abs=1e-6)
    # the shapes the fixtures were written for are there: joins and parallel branches
    joins = {cid for cid, (_, c) in want.items() if len(c.deps) >= 2}
    expected_joins = {"weka": 2, "copilot-agent": 1}.get(fmt, 0)
    assert len(joins) == expected_joins
