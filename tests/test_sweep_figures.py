"""The sweep table's folding of repeats and the study's figures, on tables built here with
known values (so the frontier and the fit have known answers), and the power timeline on a
real power.csv written by the meters (through the fake NVML binding: no GPU here)."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from mrw.analysis import figures as fg
from mrw.analysis import sweep_table as st


def assert_png(path: str | Path, size_px: tuple[int, int] | None = None, min_colors: int = 8) -> np.ndarray:
    """A real, decodable, non-blank PNG of the expected pixel size."""
    p = Path(path)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG"
    img = mpimg.imread(p)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    if size_px is not None:
        assert (img.shape[1], img.shape[0]) == tuple(size_px), f"{p}: {img.shape[1]}x{img.shape[0]} != {size_px}"
    rgb = img[..., :3]
    assert rgb.std() > 0.02, f"{p} is blank"
    colors = np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colors) >= min_colors, f"{p} has {len(colors)} colours: blank or nearly"
    return img


def _energy_model(batch: int, cap: float | None, out_scale: float, trace: str) -> tuple[float, float]:
    """(J per workflow, makespan s): larger batches and lower caps save energy, cost latency."""
    base = 100.0 if trace == "summ" else 60.0
    capf = 1.0 if cap is None else cap / 400.0
    tokens = 200 * out_scale
    joules = (base / batch + 0.5) * tokens * (0.8 + 0.2 * capf) + 40.0
    makespan = (1.0 + 0.05 * batch) * tokens / 100 / capf ** 0.3
    return joules, makespan


def _runs_frame() -> "pd.DataFrame":
    rows = []
    for trace in ("summ", "copilot"):
        for batch in (1, 4, 16):
            for cap in (None, 300.0, 200.0):
                for out in (0.5, 1.0, 2.0):
                    for rep in (1, 2):
                        j, ms = _energy_model(batch, cap, out, trace)
                        j *= 1 + (0.01 if rep == 2 else -0.01)
                        out_tok = 200 * out * 4
                        rows.append({
                            "point": f"{trace}-b{batch}-cap{cap or 'none'}-out{out:g}-in1-r{rep}", "run_dir": "",
                            "trace": trace, "workload": trace, "engine": "vllm", "batch": batch, "prefix_caching": None,
                            "max_model_len": None, "cap_w": cap, "cap_effective_w": cap, "out_scale": out, "in_scale": 1.0,
                            "repeat": rep, "status": "completed", "workflows_complete": 4, "output_tokens": out_tok,
                            "output_tokens_per_workflow": out_tok / 4, "makespan_mean_s": ms, "e2e_p90_s": ms / 3,
                            "energy_j": 4 * j, "energy_domains": "gpu", "j_per_workflow": j, "j_per_output_token": 4 * j / out_tok,
                            "avg_power_w": 250.0, "gpu_util_pct": None, "cp_llm_s": ms * 0.7, "cp_ttft_s": ms * 0.1,
                            "cp_wait_s": ms * 0.25, "cp_delay_s": ms * 0.05,
                        })  # fmt: skip
    return st.runs_frame(rows)


def test_aggregate_folds_repeats_into_mean_and_std():
    runs = _runs_frame()
    agg = st.aggregate(runs)
    assert len(runs) == 2 * len(agg) and set(agg["n"]) == {2}
    row = agg[(agg.trace == "summ") & (agg.batch == 4) & agg.cap_w.isna() & (agg.out_scale == 1.0)].iloc[0]
    j, _ = _energy_model(4, None, 1.0, "summ")
    assert row["j_per_workflow"] == pytest.approx(j)
    assert row["j_per_workflow_std"] == pytest.approx(np.std([0.99 * j, 1.01 * j], ddof=1))
    assert row["point"] == "summ-b4-capnone-out1-in1"
    assert pd.isna(row["gpu_util_pct"])  # not measured stays empty, not zero


def test_pareto_front_and_fit_have_known_answers():
    xs = [1.0, 2.0, 3.0, 1.5, 2.5, 4.0]
    ys = [9.0, 5.0, 4.0, 9.5, 6.0, 1.0]
    assert fg.pareto_front(xs, ys) == [0, 1, 2, 5]
    slope, icpt, r2 = fg.linear_fit([100, 200, 400], [70, 120, 220])
    assert (slope, icpt, r2) == (pytest.approx(0.5), pytest.approx(20.0), pytest.approx(1.0))


def test_sweep_figures_with_measured_energy(tmp_path):
    runs = _runs_frame()
    agg = st.aggregate(runs)
    figs = {f.name: f for f in fg.make_figures(tmp_path, runs, agg, per_run=False)}
    for name in ("energy_per_token_vs_batch", "pareto_latency_energy", "cap_energy_latency", "energy_vs_output_length", "latency_breakdown"):
        f = figs[name]
        assert f.path, f"{name} skipped: {f.reason}"
        assert_png(f.path, f.size_px)
    assert figs["energy_per_token_vs_batch"].size_px == (960, 600)
    assert figs["cap_energy_latency"].size_px == (1440, 600)
    # the fit's slope is reported: J per output token of the constructed model at batch 16,
    # uncapped: (base/16 + 0.5) per token of the workflow
    note = figs["energy_vs_output_length"].note
    assert "summ: " in note and "J per output token" in note
    slope = float(note.split("summ: ")[1].split(" ")[0])
    assert slope == pytest.approx(100 / 16 + 0.5, rel=1e-3)
    assert (tmp_path / "analysis" / "figures" / "figures.json").exists()


def test_energy_figures_fall_back_to_cpu_time_or_skip(tmp_path):
    runs = _runs_frame()
    for c in ("energy_j", "j_per_workflow", "j_per_output_token", "energy_domains"):
        runs[c] = None
    agg = st.aggregate(runs)
    figs = {f.name: f for f in fg.make_figures(tmp_path / "a", runs, agg, per_run=False)}
    for name in ("energy_per_token_vs_batch", "pareto_latency_energy", "cap_energy_latency", "energy_vs_output_length"):
        assert figs[name].path is None and "no run was metered" in figs[name].reason
    runs["energy_status"] = "complete"  # metered, but no source could measure energy here
    agg = st.aggregate(runs)
    figs = {f.name: f for f in fg.make_figures(tmp_path / "a", runs, agg, per_run=False)}
    for name in ("energy_per_token_vs_batch", "pareto_latency_energy", "cap_energy_latency", "energy_vs_output_length"):
        assert figs[name].path is None and "no run measured energy" in figs[name].reason
    assert figs["latency_breakdown"].path  # not an energy figure: still drawn
    # with the process meter's CPU time, the stand-in axis is used and says so
    runs["engine_cpu_s"] = runs["makespan_mean_s"] * 1.7
    runs["engine_cpu_ms_per_output_token"] = 1000 * runs["engine_cpu_s"] / runs["output_tokens"]
    runs["engine_cpu_s_per_workflow"] = runs["engine_cpu_s"] / 4
    agg = st.aggregate(runs)
    figs = {f.name: f for f in fg.make_figures(tmp_path / "b", runs, agg, per_run=False)}
    for name in ("energy_per_token_vs_batch", "pareto_latency_energy", "cap_energy_latency", "energy_vs_output_length"):
        assert figs[name].path and "stand-in" in figs[name].note
        assert_png(figs[name].path, figs[name].size_px)


def test_power_timeline_from_real_meter_files(tmp_path, monkeypatch):
    import fake_nvml
    from mrw.replay.meters import MeterSet

    nv = fake_nvml.FakeNvml([fake_nvml.FakeGpu("GPU-aaaa", energy_j=fake_nvml.sine_energy(250, 80, 0.5))])
    run = tmp_path / "run"
    with MeterSet.for_run(run, meters="nvml", baseline_s=0.2, period_s=0.02, nvml=nv):
        time.sleep(1.0)
    f = fg.fig_timeline_run(run, tmp_path / "timeline.png", "test run", 300.0)
    assert f.path and f.note is None, f.reason
    assert_png(f.path, f.size_px)
    # a run with neither power nor CPU samples is skipped with its reason
    empty = tmp_path / "empty"
    empty.mkdir()
    f = fg.fig_timeline_run(empty, tmp_path / "none.png", "x", None)
    assert f.path is None and "no power samples" in f.reason


def test_energy_columns_from_finalised_meter_files(tmp_path):
    """Table energy columns from an energy.json the real meters wrote (GPU through the fake
    NVML binding at a constant 150 W) and the energy layer finalised."""
    import fake_nvml
    import orjson

    from mrw.analysis.energy import finalize
    from mrw.replay.meters import MeterSet

    nv = fake_nvml.FakeNvml([fake_nvml.FakeGpu("GPU-aaaa", energy_j=lambda t: 150.0 * t)])
    run = tmp_path / "run"
    with MeterSet.for_run(run, meters="nvml", baseline_s=0.3, period_s=0.02, nvml=nv) as m:
        time.sleep(1.0)
        t = m.clock() - m.t0
    reqs = [{"call_id": f"c{i}", "workflow_id": f"w{i % 2}", "node": "n", "ok": True, "t_issue": 0.1 * i,
             "t_first_token": 0.1 * i + 0.05, "t_end": min(0.1 * i + 0.4, t), "input_tokens": 50, "output_tokens": 25}
            for i in range(4)]
    (run / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in reqs))
    doc = finalize(run)
    cols = st.energy_columns({"energy": doc}, run, out_tokens=100, all_tokens=300, workflows=2)
    dur = doc["windows"]["run"]["duration_s"]
    assert cols["energy_gpu_j"] == pytest.approx(150.0 * dur, rel=0.02)
    assert cols["energy_j"] == cols["energy_gpu_j"] and cols["energy_domains"] == "gpu"
    assert cols["energy_cpu_j"] is None and cols["energy_dram_j"] is None  # not metered: empty, not 0
    assert cols["j_per_output_token"] == pytest.approx(cols["energy_j"] / 100)
    assert cols["j_per_token"] == pytest.approx(cols["energy_j"] / 300)
    assert cols["j_per_workflow"] == pytest.approx(cols["energy_j"] / 2)
    assert cols["avg_power_gpu_w"] == pytest.approx(150.0, rel=0.02)
    assert cols["energy_net_j"] == pytest.approx(0.0, abs=0.05 * cols["energy_j"])  # constant power: all of it is idle
    # the same columns from the raw (not finalised) meter output
    raw = orjson.loads((run / "energy.json").read_bytes())
    raw.pop("windows")
    cols_raw = st.energy_columns({"energy": raw}, run, out_tokens=100, all_tokens=300, workflows=2)
    assert cols_raw["energy_j"] == pytest.approx(cols["energy_j"]) and cols_raw["energy_domains"] == "gpu"


def test_real_h200_excerpt_run_with_failed_calls_stays_in_the_table_and_out_of_the_figures(tmp_path):
    """Two points of the H200 sweep in docs/results/h200-2026-11-30 (sweep 1): summarization,
    every call ok, and copilot, 18 of 72 calls refused by vLLM (prompt over the context).
    The table keeps both, each row agreeing with its run's own summary; the figures draw only
    the run whose calls all finished, and the warning names the failed one and its cause."""
    import io
    import tarfile

    from rich.console import Console

    with tarfile.open(Path(__file__).parent / "data" / "h200-sweep-excerpt.tar.gz") as tf:
        tf.extractall(tmp_path, filter="data")
    root = tmp_path / "sweep"
    buf = io.StringIO()
    res = st.analyze_sweep(root, Console(file=buf, width=400), refresh=False)
    ok, bad = "sum_x8-b32-len16384-capnone-out1-in1-r1", "cop_x6-b32-len16384-capnone-out1-in1-r1"
    assert res["runs_with_failed_calls"] == [bad]
    text = buf.getvalue()
    assert f"warning: {bad}: 18 of 72 calls failed" in text and "maximum context length is 16384" in text
    runs = pd.read_csv(root / "analysis" / "sweep_runs.csv").set_index("point")
    assert runs.loc[bad, "requests_failed"] == 18 and runs.loc[ok, "requests_failed"] == 0
    import orjson

    s = orjson.loads((root / "runs" / ok / "summary.json").read_bytes())
    assert runs.loc[ok, "output_tokens"] == s["tokens"]["output"] == 384 * 50  # 384 calls, 50 tokens each
    assert runs.loc[ok, "energy_gpu_j"] > 0 and runs.loc[ok, "energy_domains"] == "gpu"  # NVML measured; no RAPL there
    assert runs.loc[ok, "j_per_output_token"] == pytest.approx(runs.loc[ok, "energy_j"] / runs.loc[ok, "output_tokens"])
    per_run = [f for f in res["figures"] if f["path"] and "/runs/" in f["path"]]
    assert per_run and all(f"/runs/{ok}/" in f["path"] for f in per_run)  # nothing drawn for the failed run
    timeline = next(f["path"] for f in per_run if f["path"].endswith("timeline.png"))
    assert_png(timeline)
