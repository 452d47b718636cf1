"""The sweep's grid, names, order, config and power-cap handling (no engine needed).

NVML cannot run here: the cap tests go through the fake binding (tests/fake_nvml.py), which
follows the real protocol; the knob layer under it is the real one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sweep_fixtures import write_trace

from mrw.errors import KnobError, MrwError
from mrw.replay import sweep as sw


def _cfg(tmp_path: Path, **kw) -> sw.SweepConfig:
    tr = write_trace(tmp_path / "mix.json", None)
    c = sw.SweepConfig(traces=[str(tr)], out=str(tmp_path / "sw"))
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_parse_list():
    assert sw.parse_list("1,8,32", "int", "batch") == [1, 8, 32]
    assert sw.parse_list("none,300,200.5", "cap", "cap") == [None, 300.0, 200.5]
    assert sw.parse_list(["none", 300], "cap", "cap") == [None, 300.0]
    assert sw.parse_list("on,off,none", "bool", "prefix-caching") == [True, False, None]
    assert sw.parse_list("0.5,1,2", "float", "out-scale") == [0.5, 1.0, 2.0]
    for bad, kind, msg in (("1,x", "int", "not a positive integer"), ("0", "int", "not a positive integer"),
                           ("1.5", "int", "not a positive integer"), ("-3", "cap", "watts"), ("1,,2", "int", "empty"),
                           ("8,8", "int", "twice"), ("maybe", "bool", "true/false")):
        with pytest.raises(sw.SweepError, match=msg):
            sw.parse_list(bad, kind, "x")


def test_point_names_are_stable_and_unique(tmp_path):
    cfg = _cfg(tmp_path, batch=[1, 8], cap=[None, 300.0], out_scale=[0.5, 1.0], repeat=2)
    refs = sw.trace_refs(cfg.traces)
    pts = sw.expand(cfg, refs)
    names = [p.name for p in pts]
    assert len(pts) == 2 * 2 * 2 * 2 and len(set(names)) == len(names)
    assert "mix-b8-cap300-out0.5-in1-r2" in names and "mix-b1-capnone-out1-in1-r1" in names
    # the same point has the same name in another grid
    other = sw.expand(_cfg(tmp_path, batch=[8], cap=[300.0], out_scale=[0.5], repeat=2, prefix_caching=[None]), refs)
    assert {p.name for p in other} <= set(names)
    # knobs at their default are left out; set ones are spelled
    p = sw.Point("t", "vllm", None, True, 4096, None, 2.0, 0.25, 1)
    assert p.name == "t-bdef-pc-len4096-capnone-out2-in0.25-r1"


def test_order_minimises_relaunches_and_spreads_repeats(tmp_path):
    cfg = _cfg(tmp_path, batch=[1, 8, 32], cap=[None, 300.0, 200.0], out_scale=[0.5, 1.0], repeat=2)
    pts = sw.expand(cfg, sw.trace_refs(cfg.traces))
    launches, cap_changes = sw.count_switches(pts)
    assert launches == 3  # one per batch size: the minimum
    keys = [p.launch_key for p in pts]
    assert keys == sorted(keys, key=lambda k: [1, 8, 32].index(k[1]))  # grouped
    first_group = [p for p in pts if p.batch == 1]
    assert [p.repeat for p in first_group[:6]] == [1] * 6 and first_group[6].repeat == 2  # repeats outermost in a group
    # caps change only between cap values inside a (batch, repeat) block: snake order makes
    # consecutive blocks meet at the same cap, so 6 blocks x 2 changes
    assert cap_changes == 6 * 2
    assert [p.cap for p in pts[:12]] == [None] * 2 + [300.0] * 2 + [200.0] * 2 + [200.0] * 2 + [300.0] * 2 + [None] * 2


def test_toml_config(tmp_path):
    tr = write_trace(tmp_path / "a.json", None)
    (tmp_path / "s.toml").write_text(f"""
traces = ["{tr.name}"]
out = "study"
repeat = 3
[engine]
name = "vllm"
model = "tiny"
port = 8650
[grid]
batch = [1, 8]
cap = ["none", 300]
out_scale = [0.5, 1, 2]
prefix_caching = [true, false]
[replay]
time_scale = 0.5
seed = 7
[metering]
meters = ["nvml", "process"]
baseline_s = 1.5
[sweep]
warmup = false
""")
    c = sw.SweepConfig.from_toml(tmp_path / "s.toml")
    c.validate()
    assert c.traces == [str(tmp_path / tr.name)] and c.out == str(tmp_path / "study")
    assert (c.batch, c.cap, c.out_scale, c.prefix_caching, c.repeat) == ([1, 8], [None, 300.0], [0.5, 1.0, 2.0], [True, False], 3)
    assert (c.model, c.port, c.warmup, c.replay) == ("tiny", 8650, False, {"time_scale": 0.5, "seed": 7})
    assert (c.meters, c.baseline_s, c.meter_period_ms) == ("nvml,process", 1.5, 50.0)
    (tmp_path / "bad.toml").write_text("[grid]\nbatchsize = [1]\n")
    with pytest.raises(sw.SweepError, match="unknown \\[grid\\] axis batchsize"):
        sw.SweepConfig.from_toml(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text("traces = [\n")
    with pytest.raises(sw.SweepError, match="not valid TOML"):
        sw.SweepConfig.from_toml(tmp_path / "bad2.toml")


def test_validate_refuses_what_cannot_run(tmp_path):
    with pytest.raises(sw.SweepError, match="launch-time knob"):
        _cfg(tmp_path, url="http://127.0.0.1:9/v1", batch=[1, 8]).validate()
    with pytest.raises(sw.SweepError, match="launch-time knob"):
        _cfg(tmp_path, engine="openai", prefix_caching=[True]).validate()
    with pytest.raises(sw.SweepError, match="no trace"):
        sw.SweepConfig(out="x").validate()
    with pytest.raises(sw.SweepError, match="unknown replay option"):
        _cfg(tmp_path, replay={"timescale": 2}).validate()
    with pytest.raises(sw.SweepError, match="'none' is not a scale"):
        _cfg(tmp_path, out_scale=[None]).validate()
    with pytest.raises(MrwError, match="unknown meter"):
        _cfg(tmp_path, meters="nvml,watts").validate()


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="this machine has NVML: the no-NVML refusal cannot happen here")
def test_cap_without_nvml_fails_before_anything_runs(tmp_path):
    cfg = _cfg(tmp_path, cap=[None, 300.0])
    with pytest.raises(KnobError, match="use --cap none on this machine"):
        sw.run_sweep(cfg, progress=False)
    assert not (tmp_path / "sw").exists()  # nothing written, nothing launched
    # 'none' alone needs no NVML: the dry run goes through
    res = sw.run_sweep(_cfg(tmp_path, cap=[None]), progress=False, dry_run=True)
    assert res.total == 1 and (tmp_path / "sw" / "sweep.json").exists()


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    import fake_nvml
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the knob layer's pending files
    return fake_nvml.FakeNvml([fake_nvml.FakeGpu("GPU-aaaa", min_mw=200_000, max_mw=700_000, limit_mw=700_000)])


def test_cap_controller_changes_only_on_change_and_restores(fake_gpu):
    cc = sw.CapController([None, 300.0, 200.0], nvml=fake_gpu)
    sets = lambda: [c for c in fake_gpu.log if c[0] == "SetPowerManagementLimit" and c[2] != 700_000]  # noqa: E731
    assert cc.set(None) is None and fake_gpu.gpus[0].limit_mw == 700_000
    rec = cc.set(300.0)
    assert fake_gpu.gpus[0].limit_mw == 300_000 and cc.effective_w == 300.0
    assert rec["gpus"][0]["cap_effective_w"] == 300.0 and rec["gpus"][0]["limit_original_w"] == 700.0
    cc.set(300.0)
    cc.set(300.0)
    assert len(sets()) == 1  # held, not re-applied per point
    cc.set(200.0)
    assert fake_gpu.gpus[0].limit_mw == 200_000
    cc.set(None)
    assert fake_gpu.gpus[0].limit_mw == 700_000  # uncapped point: the original limit is back
    cc.set(200.0)
    cc.release()
    assert fake_gpu.gpus[0].limit_mw == 700_000 and cc.effective_w is None
    assert [c[2] for c in sets()] == [300_000, 200_000, 200_000]


def test_cap_check_refuses_out_of_range_and_no_permission(fake_gpu):
    with pytest.raises(KnobError, match="outside GPU 0"):
        sw.CapController([None, 800.0], nvml=fake_gpu)
    assert fake_gpu.gpus[0].limit_mw == 700_000
    fake_gpu.privileged = False
    with pytest.raises(MrwError, match="needs root"):
        sw.CapController([300.0], nvml=fake_gpu)


def test_dry_run_lists_points_and_resume_state(tmp_path):
    cfg = _cfg(tmp_path, batch=[1, 4], out_scale=[0.5, 1.0])
    res = sw.run_sweep(cfg, progress=False, dry_run=True)
    man = sw.read_manifest(res.root)
    assert [p["status"] for p in man["points"]] == ["pending"] * 4
    assert man["counts"] == {"total": 4, "pending": 4}
    # a changed fixed setting is refused on the same directory
    with pytest.raises(sw.SweepError, match="other settings"):
        sw.run_sweep(_cfg(tmp_path, batch=[1, 4], replay={"time_scale": 0.5}), progress=False, dry_run=True)
    # a changed trace file too
    write_trace(tmp_path / "mix.json", None, out_tokens=9)
    with pytest.raises(sw.SweepError, match="changed since"):
        sw.run_sweep(cfg, progress=False, dry_run=True)


def test_directory_lock(tmp_path):
    cfg = _cfg(tmp_path)
    root = Path(cfg.out)
    root.mkdir()
    held = sw._lock(root)
    try:
        with pytest.raises(sw.SweepError, match="another sweep is running"):
            sw.run_sweep(cfg, progress=False, dry_run=True)
    finally:
        held.close()
    assert sw.run_sweep(cfg, progress=False, dry_run=True).total == 1
    assert os.path.exists(root / "sweep.json")


def test_resume_trusts_run_directories(tmp_path):
    """A point is finished when its run.json says completed; a run.json still 'running'
    whose process is gone (SIGKILL) is abandoned and gets redone."""
    import socket
    import subprocess
    import sys

    import orjson

    cfg = _cfg(tmp_path, batch=[1, 4])
    root = Path(cfg.out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = {"format": "mrw-run", "version": 1, "error": None, "host": {"hostname": socket.gethostname()}}
    runs = root / "runs"
    (runs / "mix-b1-capnone-out1-in1-r1").mkdir(parents=True)
    (runs / "mix-b1-capnone-out1-in1-r1" / "run.json").write_bytes(orjson.dumps({**base, "status": "completed", "pid": dead.pid}))
    (runs / "mix-b4-capnone-out1-in1-r1").mkdir(parents=True)
    (runs / "mix-b4-capnone-out1-in1-r1" / "run.json").write_bytes(orjson.dumps({**base, "status": "running", "pid": dead.pid}))
    assert sw._point_status(runs / "mix-b1-capnone-out1-in1-r1") == "completed"
    assert sw._point_status(runs / "mix-b4-capnone-out1-in1-r1") == "abandoned"
    res = sw.run_sweep(cfg, progress=False, dry_run=True)
    man = sw.read_manifest(root)
    assert [(p["name"], p["status"]) for p in man["points"]] == [
        ("mix-b1-capnone-out1-in1-r1", "completed"), ("mix-b4-capnone-out1-in1-r1", "pending")]
    assert (res.completed, res.total) == (1, 2)
