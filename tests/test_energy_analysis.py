"""Windows, attribution and cross-check arithmetic on constructed timelines with known answers."""

from __future__ import annotations

import math

import orjson
import pytest

from mrw.analysis.energy import (
    Counter,
    Req,
    Timeline,
    attribute,
    cross_check,
    finalize,
    group,
    inflight_steps,
    integrate,
    place,
    steady_window,
    tokens_in_window,
)


def grid(t_end: float, dt: float, power) -> Counter:
    """Cumulative energy of power(t) sampled every dt (exact integral by fine steps)."""
    n = round(t_end / dt)
    ts = [k * dt for k in range(n + 1)]
    e, vs, fine = 0.0, [0.0], 1000
    for k in range(n):
        h = dt / fine
        e += sum(power(ts[k] + (m + 0.5) * h) * h for m in range(fine))
        vs.append(e)
    return Counter(ts, vs)


def const(w):
    return lambda t: w


def test_counter_interpolates_and_refuses_outside():
    c = Counter([0.0, 1.0, 2.0], [0.0, 10.0, 30.0])
    assert c.at(0.5) == pytest.approx(5.0)
    assert c.at(1.5) == pytest.approx(20.0)
    assert c.delta(0.5, 1.5) == pytest.approx(15.0)
    assert c.at(2.5) is None and c.delta(-1, 1) is None


def test_integrate_ramp_exact_and_partial_edges():
    t = [0, 1, 2, 3, 4]
    p = [0, 10, 20, 30, 40]  # P = 10 t: integral over [a, b] = 5 (b^2 - a^2)
    assert integrate(t, p, 0, 4) == pytest.approx(80.0)
    assert integrate(t, p, 0.5, 2.5) == pytest.approx(5 * (2.5**2 - 0.5**2))
    assert integrate(t, p, 0, 5) is None  # not covered
    assert integrate(t, [0, None, 20, 30, 40], 0, 4) == pytest.approx(80.0)  # missing sample skipped


def test_single_request_gets_its_span_and_net_subtracts_idle():
    c = grid(10, 0.1, const(100.0))
    r = Req("a", "w", "n", 1.0, None, 3.0, n_in=10, n_out=10)
    at = attribute(c, [r], idle_power_w=60.0)
    assert at.per_request["a"]["gross"] == pytest.approx(200.0)
    assert at.per_request["a"]["net"] == pytest.approx(80.0)
    assert at.unattributed_j == pytest.approx(800.0)
    assert at.attributed_j + at.unattributed_j == pytest.approx(at.total_j)


def test_time_weight_overlapping_requests():
    c = grid(8, 0.25, const(100.0))
    a = Req("a", "w1", "x", 0.0, None, 4.0, 1, 1)
    b = Req("b", "w2", "y", 2.0, None, 6.0, 1, 1)
    at = attribute(c, [a, b], weight="time")
    # [0,2]: a alone 200 J; [2,4]: shared 100/100; [4,6]: b alone 200 J; [6,8] idle
    assert at.per_request["a"]["gross"] == pytest.approx(300.0)
    assert at.per_request["b"]["gross"] == pytest.approx(300.0)
    assert at.unattributed_j == pytest.approx(200.0)


def test_token_weight_prefill_decode_split_known_answer():
    c = grid(4, 0.05, const(100.0))
    # A: prefill 100 tokens (+ first output token) over [0,1], 200 decode tokens over (1,3]
    # B: prefill 300 (+1) over [0,1], 100 decode over (1,3]
    a = Req("a", "w", "x", 0.0, 1.0, 3.0, n_in=100, n_out=201)
    b = Req("b", "w", "y", 0.0, 1.0, 3.0, n_in=300, n_out=101)
    at = attribute(c, [a, b])
    pa = 100 * 101 / 402
    assert at.per_request["a"]["prefill"] == pytest.approx(pa)
    assert at.per_request["b"]["prefill"] == pytest.approx(100 - pa)
    assert at.per_request["a"]["decode"] == pytest.approx(200 * 2 / 3)
    assert at.per_request["b"]["decode"] == pytest.approx(200 / 3)
    assert at.per_request["a"]["gross"] == pytest.approx(pa + 400 / 3)
    assert at.attributed_j + at.unattributed_j == pytest.approx(at.total_j)
    assert at.unattributed_j == pytest.approx(100.0)  # [3,4]
    # the prefill weight knob shifts prefill energy: prefill tokens cost nothing -> only first tokens weigh
    at0 = attribute(c, [a, b], prefill_weight=0.0)
    assert at0.per_request["a"]["prefill"] == pytest.approx(50.0)


def test_varying_power_goes_to_whoever_is_in_flight():
    c = grid(2, 0.1, lambda t: 100.0 if t < 1 else 300.0)
    r = Req("a", "w", "x", 0.5, None, 1.5, 5, 5)
    at = attribute(c, [r])
    assert at.per_request["a"]["gross"] == pytest.approx(50 + 150, rel=1e-6)


def test_streamed_token_times_are_point_masses():
    c = grid(2, 0.5, const(10.0))  # intervals of 5 J
    # A streams 3 decode tokens at 0.6, 0.7, 1.6; B decodes 2 tokens spread uniformly over (0.5, 2]
    a = Req("a", "w", "x", 0.0, 0.5, 1.6, n_in=0, n_out=4, token_times=[0.5, 0.6, 0.7, 1.6])
    b = Req("b", "w", "x", 0.0, 0.5, 2.0, n_in=0, n_out=3)
    at = attribute(c, [a, b])
    # prefill spans [0,0.5] carry each request's first output token (weight 1 each): 2.5 J each
    # [0.5,1): A's streamed tokens at 0.6, 0.7 (2) vs B's uniform 2 tokens over (0.5,2] (2/3): A 3.75, B 1.25
    # [1,1.5): B alone: 5; [1.5,2): A's token at 1.6 (1) vs B (2/3): A 3.0, B 2.0
    assert at.per_request["a"]["gross"] == pytest.approx(2.5 + 3.75 + 3.0)
    assert at.per_request["b"]["gross"] == pytest.approx(2.5 + 1.25 + 5 + 2.0)
    assert at.per_request["a"]["prefill"] == pytest.approx(2.5)
    assert at.unattributed_j == pytest.approx(0.0)


def test_request_outside_timeline_is_noted_not_invented():
    c = grid(2, 0.5, const(10.0))
    r = Req("a", "w", "x", 1.0, None, 4.0, 0, 30)
    at = attribute(c, [r])
    assert at.per_request["a"]["gross"] == pytest.approx(10.0)  # only [1,2] has data
    assert any("outside" in n for n in at.notes)


def test_group_by_stage_and_workflow():
    c = grid(4, 0.1, const(100.0))
    rs = [Req("a", "w1", "map", 0, None, 1, 1, 10), Req("b", "w1", "reduce", 1, None, 2, 1, 10),
          Req("c", "w2", "map", 2, None, 4, 1, 20)]
    at = attribute(c, rs)
    st = group(at, rs, "node")
    assert st["map"]["gross_j"] == pytest.approx(300.0) and st["map"]["requests"] == 2
    assert st["map"]["j_per_output_token"] == pytest.approx(10.0)
    wf = group(at, rs, "workflow")
    assert wf["w1"]["gross_j"] == pytest.approx(200.0)


def test_inflight_steps_and_steady_window_known_answer():
    # 4 requests ramp up one per second, hold the batch full, one dips at 6..6.5, drain from 10
    rs = [Req(f"r{i}", "w", "x", float(i), None, 10.0 + i, 1, 1) for i in range(4)]
    rs.append(Req("late", "w", "x", 6.5, None, 9.0, 1, 1))
    rs[3].t_end = 6.0  # r3 leaves at 6, "late" joins at 6.5 -> a dip to 3 in [6, 6.5)
    steps = inflight_steps(rs)
    assert steps[0] == (0.0, 1) and (3.0, 4) in steps
    sw, why = steady_window(steps)
    assert why is None
    assert (sw.start, sw.full_batch) == (3.0, 4)
    assert sw.end == 9.0  # "late" ends at 9: the batch is never full again
    assert sw.full_fraction == pytest.approx((9 - 3 - 0.5) / 6)
    assert "peak concurrency" in sw.notes[0]
    sw8, _ = steady_window(steps, max_num_seqs=8)
    assert sw8.full_batch == 4 and "never reached max_num_seqs=8" in sw8.notes[0]
    sw3, _ = steady_window(steps, max_num_seqs=3)
    assert (sw3.start, sw3.end, sw3.full_batch) == (2.0, 10.0, 3)


def test_steady_window_from_sampled_metrics_ends_at_last_full_sample():
    steps = [(0.0, 0), (0.5, 2), (1.0, 4), (1.5, 4), (2.0, 4), (2.5, 3), (3.0, 1), (3.5, 0)]
    sw, _ = steady_window(steps, max_num_seqs=4, sampled=True, basis="vllm:num_requests_running")
    assert (sw.start, sw.end, sw.full_fraction) == (1.0, 2.0, 1.0)
    none, why = steady_window([(0.0, 0), (1.0, 1), (1.0, 0)])
    assert none is None and why


def test_tokens_in_window_counts_placed_tokens():
    r = Req("a", "w", "x", 0.0, 1.0, 3.0, n_in=100, n_out=21)
    p = place(r)
    n_in, n_out = tokens_in_window([p], 0.5, 2.0)
    assert n_in == pytest.approx(50.0)
    assert n_out == pytest.approx(1 + 10)  # first token at 1.0 + half of the 20 decode tokens


def test_cross_check_counter_vs_integrated_power():
    # P(t) = 300 + 200 sin(2 pi t / 0.8); the counter is its exact integral, sampled at 20 Hz
    w = 2 * math.pi / 0.8
    E = lambda t: 300 * t + 200 / w * (1 - math.cos(w * t))  # noqa: E731
    P = lambda t: 300 + 200 * math.sin(w * t)  # noqa: E731
    rows = []
    for k in range(0, 201):
        t = k * 0.05
        rows.append({"t_s": t, "source": "gpu", "device": "0", "energy_j": E(t), "power_instant_w": P(t),
                     "power_w": (E(t) - E(t - 1)) if t >= 1 else None})
    tl = Timeline.from_rows(rows)
    xc = cross_check(tl, 0.0, 10.0, cap_w=450.0)
    d = xc["0"]
    assert d["counter_j"] == pytest.approx(E(10.0))
    assert abs(d["power_instant"]["rel_diff"]) < 0.01
    assert d["power_instant"]["max_w"] == pytest.approx(500.0, abs=1.0)
    assert 0.15 < d["power_instant"]["samples_above_cap"] < 0.3  # sin > 0.75: 23% of a period
    assert "power_usage" not in d or d["power_usage"]["integrated_j"] is not None


def test_finalize_on_a_constructed_run_dir(tmp_path):
    # 1 GPU at 100 W idle baseline for 2 s, then 400 W for the 10 s run; two requests
    rows = []
    for k in range(-40, 201):
        t = k * 0.05
        e = 100 * (t + 2) if t < 0 else 200 + 400 * t
        rows.append(f"{t:.2f},gpu,0,{e:.4f},,,,,,,,,,,")
    hdr = "t_s,source,device,energy_j,power_w,power_avg_w,power_instant_w,sm_clock_mhz,mem_clock_mhz,temp_c,util_gpu_pct,util_mem_pct,mem_used_mib,clock_events,cpu_s"
    (tmp_path / "power.csv").write_text(hdr + "\n" + "\n".join(rows) + "\n")
    energy = {
        "format": "mrw-energy", "version": 1, "status": "complete", "timeline_file": "power.csv", "t0_perf_counter": 100.0,
        "baseline": {"start_s": -2.0, "duration_s": 2.0, "energy_j": {"gpu": 200.0}, "avg_power_w": {"gpu": 100.0}},
        "run": {"start_s": 0.0, "duration_s": 10.0, "energy_j": {"gpu": 4000.0}, "avg_power_w": {"gpu": 400.0},
                "cpu_s": {"harness_cpu": 1.0, "system_cpu": 10.0, "engine_cpu": 6.0}},
    }
    (tmp_path / "energy.json").write_bytes(orjson.dumps(energy))
    reqs = [
        {"call_id": "a", "workflow_id": "w1", "node": "plan", "ok": True, "t_issue": 0.0, "t_first_token": 1.0,
         "t_end": 6.0, "input_tokens": 100, "output_tokens": 101},
        {"call_id": "b", "workflow_id": "w1", "node": "act", "ok": True, "t_issue": 2.0, "t_first_token": 3.0,
         "t_end": 8.0, "input_tokens": 100, "output_tokens": 101},
    ]
    (tmp_path / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in reqs) + b'{"torn')
    # the replay's clock started 0.5 s after the meters': its request times are 0.5 s behind
    (tmp_path / "run.json").write_bytes(orjson.dumps({"clock": {"t0_perf_counter": 100.5}}))
    for r in reqs:
        for k in ("t_issue", "t_first_token", "t_end"):
            r[k] -= 0.5
    (tmp_path / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in reqs) + b'{"torn')
    doc = finalize(tmp_path)
    run = doc["windows"]["run"]
    assert run["domains"]["gpu"]["gross_j"] == 4000.0
    assert run["domains"]["gpu"]["net_j"] == pytest.approx(3000.0)
    assert run["domains"]["gpu"]["j_per_output_token"] == pytest.approx(4000 / 202)
    st = doc["windows"]["steady"]
    assert (st["start_s"], st["end_s"], st["full_batch"]) == (2.0, 6.0, 2)
    assert st["domains"]["gpu"]["gross_j"] == pytest.approx(1600.0)
    att = doc["attribution"]["domains"]["gpu"]
    assert att["attributed_j"] + att["unattributed_j"] == pytest.approx(att["total_j"])
    assert att["unattributed_j"] == pytest.approx(400 * 2)  # [8, 10]
    assert att["per_stage"]["plan"]["gross_j"] + att["per_stage"]["act"]["gross_j"] == pytest.approx(3200.0)
    assert run["cpu_time"]["harness_share"] == pytest.approx(0.1)
    assert doc["summary"]["gpu_energy_j"] == 4000.0 and doc["summary"]["idle_gpu_power_w"] == 100.0
    assert doc["summary"]["steady_gpu_avg_power_w"] == pytest.approx(400.0)
    lines = (tmp_path / "energy_requests.jsonl").read_bytes().splitlines()
    assert len(lines) == 2 and orjson.loads(lines[0])["gpu_prefill_j"] is not None
    again = orjson.loads((tmp_path / "energy.json").read_bytes())
    assert again["windows"] == orjson.loads(orjson.dumps(doc["windows"]))


def test_plot_power_draws_a_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from mrw.analysis.energy import plot_power

    rows = ["t_s,source,device,energy_j,power_w,power_instant_w,sm_clock_mhz,clock_events"]
    for k in range(-20, 100):
        t = k * 0.05
        rows.append(f"{t:.2f},gpu,0,{max(t, 0) * 300:.3f},{280 if t > 1 else 90},{300 if t > 0 else 90},1980,{4 if t > 2 else 0}")
    (tmp_path / "power.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "energy.json").write_bytes(orjson.dumps({"timeline_file": "power.csv", "knobs": {"cap_w_requested": 300},
                                                          "windows": {"baseline": {"start_s": -1.0}}}))
    (tmp_path / "requests.jsonl").write_bytes(orjson.dumps({"call_id": "a", "workflow_id": "w", "node": "n",
                                                            "t_issue": 0.1, "t_end": 4.0}) + b"\n")
    p = plot_power(tmp_path)
    assert p is not None and p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG"


def test_finalize_writes_per_workflow_file(tmp_path):
    rows = ["t_s,source,device,energy_j"] + [f"{k * 0.1:.1f},gpu,0,{k * 0.1 * 200:.3f}" for k in range(0, 51)]
    (tmp_path / "power.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "energy.json").write_bytes(orjson.dumps({"timeline_file": "power.csv", "run": {"duration_s": 5.0, "energy_j": {"gpu": 1000.0}}}))
    reqs = [{"call_id": f"c{i}", "workflow_id": f"w{i % 2}", "node": "n", "t_issue": float(i), "t_end": i + 1.0,
             "input_tokens": 10, "output_tokens": 10} for i in range(4)]
    (tmp_path / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in reqs))
    doc = finalize(tmp_path)
    wf = {d["workflow_id"]: d for d in map(orjson.loads, (tmp_path / "energy_workflows.jsonl").read_bytes().splitlines())}
    assert wf["w0"]["gpu_j"] == pytest.approx(400.0) and wf["w1"]["requests"] == 2
    assert doc["windows"]["run"]["domains"]["gpu"]["net_j"] is None  # no baseline: no net
    assert "no idle baseline" in doc["analysis_notes"][0]


def test_a_request_after_the_last_timeline_row_gets_its_energy(tmp_path):
    """A real run (tests/data/run-last-request-after-last-sample, the capped fake GPU replay
    that failed in a CI rehearsal): the replay's t0 came 0.28 s after the meters' run start
    (a GC pass held the sampler), so the last request ended 38 ms after the timeline's last
    row. The meters' readings at the run's marks close that gap: every request gets energy,
    and the attribution adds up to the run window's gross energy."""
    import shutil
    from pathlib import Path

    import orjson

    from mrw.analysis.energy import finalize

    src = Path(__file__).parent / "data" / "run-last-request-after-last-sample"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    finalize(run)
    doc = orjson.loads((run / "energy.json").read_bytes())
    last_row = max(float(line.split(",")[0]) for line in (run / "power.csv").read_text().splitlines()[1:]
                   if line.split(",")[1] == "gpu")
    shift = orjson.loads((run / "run.json").read_bytes())["clock"]["t0_perf_counter"] - doc["t0_perf_counter"]
    reqs = [orjson.loads(x) for x in (run / "requests.jsonl").read_bytes().splitlines()]
    assert max(r["t_end"] for r in reqs) + shift > last_row  # the situation this test is about
    lines = [orjson.loads(x) for x in (run / "energy_requests.jsonl").read_bytes().splitlines()]
    assert len(lines) == 7 and all(x["gpu_j"] > 1.0 for x in lines)
    att = doc["attribution"]["domains"]["gpu"]
    assert att["total_j"] == pytest.approx(doc["windows"]["run"]["domains"]["gpu"]["gross_j"], rel=1e-9)
