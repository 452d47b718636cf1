"""Meters: RAPL on a powercap tree laid out in a temporary folder, NVML through the fake
binding, process CPU time on real processes, and MeterSet end to end."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from fake_nvml import FakeGpu, FakeNvml, sine_energy
from mrw.errors import NotSupportedError, PermissionDeniedError, UnknownNameError
from mrw.replay.meters import MeterSet, parse_meter_spec
from mrw.replay.meters.nvml import NvmlMeter, visible_gpus
from mrw.replay.meters.process import ProcessMeter
from mrw.replay.meters.rapl import RaplMeter

# ------------------------------------------------------------------------------------- RAPL


def zone(root: Path, name: str, label: str, energy: int, rng: int = 262_143_328_850) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{rng}\n")
    return d


def set_uj(d: Path, v: int) -> None:
    (d / "energy_uj").write_text(f"{v}\n")


def intel_tree(root: Path) -> dict[str, Path]:
    z = {
        "pkg0": zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": zone(root, "intel-rapl:0/intel-rapl:0:0", "core", 500_000),
        "dram0": zone(root, "intel-rapl:0/intel-rapl:0:1", "dram", 2_000_000),
        "pkg1": zone(root, "intel-rapl:1", "package-1", 7_000_000),
        "dram1": zone(root, "intel-rapl:1/intel-rapl:1:0", "dram", 0),
        "mmio": zone(root, "intel-rapl-mmio:0", "package-0", 99),  # duplicate of the MSR package zone
    }
    return z


def test_rapl_reads_packages_and_dram_per_socket(tmp_path):
    z = intel_tree(tmp_path)
    m = RaplMeter(tmp_path, hwmon_root=None)
    m.open()
    names = {c.name: c.domain for c in m.channels()}
    assert names == {"cpu:package-0": "cpu", "cpu_core:package-0/core": "cpu_core", "dram:package-0": "dram",
                     "cpu:package-1": "cpu", "dram:package-1": "dram"}
    set_uj(z["pkg0"], 3_500_000)
    set_uj(z["dram0"], 2_250_000)
    set_uj(z["pkg1"], 7_000_001)
    v = m.read()
    assert v["cpu:package-0"] == pytest.approx(2.5)
    assert v["dram:package-0"] == pytest.approx(0.25)
    assert v["cpu:package-1"] == pytest.approx(1e-6)
    assert any("mmio" in n for n in m.notes())
    assert m.describe()["interface"] == "intel-rapl"


def test_rapl_wraparound_uses_max_energy_range(tmp_path):
    rng = 1_000_000
    d = zone(tmp_path, "intel-rapl:0", "package-0", 900_000, rng=rng)
    m = RaplMeter(tmp_path, hwmon_root=None)
    m.open()
    set_uj(d, 990_000)
    assert m.read()["cpu:package-0"] == pytest.approx(0.09)
    set_uj(d, 40_000)  # passed 1_000_000 and restarted: +10_000 +40_000
    assert m.read()["cpu:package-0"] == pytest.approx(0.14)
    set_uj(d, 30_000)  # wrapped again, almost a whole range
    assert m.read()["cpu:package-0"] == pytest.approx(0.14 + 0.99)
    assert any("wrapped 2 time(s)" in n for n in m.notes())
    # the timeline rows carry power from consecutive readings
    set_uj(d, 130_000)
    r1 = m.sample(1.0)[0]
    set_uj(d, 330_000)
    r2 = m.sample(1.5)[0]
    assert "power_w" not in r1 and r2["power_w"] == pytest.approx(0.2 / 0.5)


def test_rapl_amd_powercap_naming_and_amd_energy_hwmon(tmp_path):
    pc = tmp_path / "powercap"
    zone(pc, "amd-rapl:0", "package-0", 10)
    m = RaplMeter(pc, hwmon_root=None)
    m.open()
    assert [c.name for c in m.channels()] == ["cpu:package-0"]
    # no powercap at all, but the amd_energy hwmon driver
    hw = tmp_path / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    (hw / "name").write_text("amd_energy\n")
    for i, (lab, val) in enumerate([("Ecore000", 5), ("Esocket0", 1_000_000), ("Esocket1", 2_000_000)], 1):
        (hw / f"energy{i}_label").write_text(lab + "\n")
        (hw / f"energy{i}_input").write_text(f"{val}\n")
    m2 = RaplMeter(tmp_path / "none", hwmon_root=tmp_path / "hwmon")
    m2.open()
    assert sorted(c.name for c in m2.channels()) == ["cpu:package-0", "cpu:package-1"]
    (hw / "energy2_input").write_text("4000000\n")
    assert m2.read()["cpu:package-0"] == pytest.approx(3.0)


def test_rapl_absent_says_so(tmp_path):
    with pytest.raises(NotSupportedError, match="no energy zones"):
        RaplMeter(tmp_path, hwmon_root=None).open()


def _open_as_nobody(root: str) -> str:
    """Open the meter in a forked child running as an unprivileged user; report what it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                RaplMeter(root, hwmon_root=None).open()
                msg = "opened"
            except PermissionDeniedError as e:
                msg = "PermissionDeniedError: " + str(e)
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


def test_rapl_unreadable_energy_file_says_what_to_change():
    root = Path(tempfile.mkdtemp(prefix="mrw-rapl-"))
    try:
        os.chmod(root, 0o755)
        d = zone(root, "intel-rapl:0", "package-0", 123)
        zone(root, "intel-rapl:0/intel-rapl:0:0", "dram", 5)
        for p in (root / "intel-rapl:0", root / "intel-rapl:0/intel-rapl:0:0"):
            os.chmod(p, 0o755)
            for f in p.iterdir():
                if f.is_file():
                    os.chmod(f, 0o444)
        os.chmod(d / "energy_uj", 0o400)  # root-only, as on Linux >= 5.10
        msg = _open_as_nobody(str(root))
        assert msg.startswith("PermissionDeniedError"), msg
        assert "sudo chmod o+r" in msg and str(d / "energy_uj") in msg and "root" in msg
        os.chmod(d / "energy_uj", 0o444)
        assert _open_as_nobody(str(root)) == "opened"
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


# ------------------------------------------------------------------------------------- NVML


def four_gpus(**kw) -> FakeNvml:
    return FakeNvml([FakeGpu(f"GPU-{i}{i}{i}{i}-uuid", **kw) for i in range(4)])


@pytest.mark.parametrize(
    "spec,expected",
    [
        (None, [0, 1, 2, 3]),
        ("2,0", [2, 0]),
        ("GPU-3333-uuid", [3]),
        ("GPU-1", [1]),  # a unique prefix is enough for CUDA
        ("1,foo,2", [1]),  # CUDA stops at the first invalid entry
        ("0,7,1", [0]),
        ("-1", []),
        ("", []),
        ("1,1", [1]),
    ],
)
def test_visible_gpus_follows_cuda_visible_devices(spec, expected):
    nv = four_gpus()
    nv.nvmlInit()
    env = {} if spec is None else {"CUDA_VISIBLE_DEVICES": spec}
    gpus, _ = visible_gpus(nv, env)
    assert [g.nvml_index for g in gpus] == expected
    assert [g.cuda_index for g in gpus] == list(range(len(expected)))


def test_visible_gpus_refuses_mig_and_warns_on_mixed_models():
    nv = FakeNvml([FakeGpu("GPU-a", name="NVIDIA H100"), FakeGpu("GPU-b", name="NVIDIA A100")])
    nv.nvmlInit()
    with pytest.raises(NotSupportedError, match="MIG"):
        visible_gpus(nv, {"CUDA_VISIBLE_DEVICES": "MIG-abc"})
    _, notes = visible_gpus(nv, {"CUDA_VISIBLE_DEVICES": "1"})
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in n for n in notes)
    _, notes = visible_gpus(nv, {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert notes == []


def test_nvml_meter_counts_energy_since_open_per_visible_gpu():
    clock = [100.0]
    gpus = [FakeGpu("GPU-a", energy_j=lambda t: 200.0 * t), FakeGpu("GPU-b", energy_j=lambda t: 50.0 * t)]
    nv = FakeNvml(gpus, clock=lambda: clock[0])
    m = NvmlMeter(nvml=nv, env={"CUDA_VISIBLE_DEVICES": "1,0"})
    m.open()
    clock[0] = 102.5
    v = m.read()
    assert v == {"gpu:0": pytest.approx(125.0), "gpu:1": pytest.approx(500.0)}  # CUDA order: b then a
    row = m.sample(2.5)[1]
    assert row["device"] == "1" and row["energy_j"] == pytest.approx(500.0)
    assert row["power_instant_w"] == pytest.approx(200.0) and row["power_w"] == pytest.approx(200.0)
    assert row["sm_clock_mhz"] == 1980 and row["mem_used_mib"] == 61440.0
    d = m.describe()
    assert d["gpus"][0]["uuid"] == "GPU-b" and d["gpus"][0]["power_limit_w"]["max"] == 700.0
    assert d["driver"] == "580.159.04"
    m.close()
    assert nv.init_count == 0


def test_nvml_meter_without_driver_or_fields():
    with pytest.raises(NotSupportedError, match="no NVIDIA driver"):
        NvmlMeter(nvml=FakeNvml(no_driver=True)).open()
    with pytest.raises(NotSupportedError, match="no GPU is visible"):
        NvmlMeter(nvml=FakeNvml(), env={"CUDA_VISIBLE_DEVICES": ""}).open()
    m = NvmlMeter(nvml=FakeNvml([FakeGpu("GPU-a", has_fields=False)]), env={})
    m.open()
    row = m.sample(0.0)[0]
    assert "power_instant_w" not in row and "power_w" in row
    assert any("neither the instant nor the average" in n for n in m.notes())


def test_nvml_meter_on_this_machine_reports_no_number():
    """The real binding: this machine has no NVIDIA driver."""
    pytest.importorskip("pynvml")
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("a real NVIDIA driver is present")
    except pynvml.NVMLError:
        pass
    with pytest.raises(NotSupportedError):
        NvmlMeter().open()


# ------------------------------------------------------------------------------------- process


def test_process_meter_separates_harness_engine_and_system():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        m = ProcessMeter(engine_pid=busy.pid)
        m.open()
        time.sleep(1.0)
        v = m.read()
        assert v["process:engine"] > 0.2 and v["process:engine"] > 3 * v["process:harness"]  # a busy loop (2 shared cores here)
        assert v["process:harness"] < 0.3  # this process slept
        assert v["process:system"] >= v["process:engine"] * 0.9
        rows = m.sample(1.0)
        assert {r["device"] for r in rows} == {"harness", "engine", "system"}
        busy.kill()
        busy.wait()
        after = m.read()["process:engine"]
        assert after >= v["process:engine"]  # a dead process's time is kept
    finally:
        busy.kill()
    m2 = ProcessMeter()
    m2.open()
    assert "process:engine" not in m2.read()
    assert any("no engine process" in n for n in m2.notes())


def test_process_meter_keeps_cpu_time_of_an_engine_worker_that_exits_between_rows():
    """Timeline rows come once a second, but the engine's workers are read every tick: a worker
    that burns CPU and exits between two rows still counts (its parent reaps it, and a reaped
    child's time would otherwise only show in the parent's children totals, which are not read)."""
    code = ("import subprocess, sys, time\n"
            "subprocess.run([sys.executable, '-c', 'import time\\nt=time.time()\\nwhile time.time()-t<0.6: pass'])\n"
            "time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        import psutil

        pp = psutil.Process(parent.pid)
        deadline = time.monotonic() + 10
        while not pp.children() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pp.children(), "the worker never started"
        m = ProcessMeter(engine_pid=parent.pid)
        m.open()
        m.sample(0.0)  # a row: the next second's ticks only read the engine
        t0 = time.monotonic()
        while pp.children() and time.monotonic() - t0 < 10:
            m.sample(0.5)  # a tick between rows (the last row was at 0.0)
            time.sleep(0.05)
        assert not pp.children(), "the worker never exited"
        assert m.read()["process:engine"] > 0.3  # the exited worker's busy loop is counted
    finally:
        parent.kill()
        parent.wait()


# ------------------------------------------------------------------------------------- MeterSet


def test_parse_meter_spec():
    assert parse_meter_spec("nvml, rapl") == ["nvml", "rapl"]
    assert parse_meter_spec("none") == [] and parse_meter_spec("") == []
    with pytest.raises(UnknownNameError, match="unknown meter joulescope"):
        parse_meter_spec("nvml,joulescope")


def _timeline(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "power.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_meterset_with_fake_gpus_and_rapl(tmp_path):
    from mrw.analysis.energy import finalize

    t_start = time.perf_counter()
    e0 = sine_energy(300, 200, 0.8, t0=t_start)
    nv = FakeNvml([FakeGpu("GPU-a", energy_j=e0), FakeGpu("GPU-b", energy_j=lambda t: 100.0 * t)], clock=time.perf_counter)
    rapl_root = tmp_path / "powercap"
    zone(rapl_root, "intel-rapl:0", "package-0", 0)
    run = tmp_path / "run"
    with MeterSet.for_run(run, meters="nvml,rapl,process", baseline_s=0.5, period_s=0.05, nvml=nv,
                          rapl_root=rapl_root, env={}) as m:
        assert m.t0 is not None
        time.sleep(1.6)
    doc = orjson.loads((run / "energy.json").read_bytes())
    assert doc["status"] == "complete"
    assert all(doc["sources"][k]["available"] for k in ("nvml", "rapl", "process"))
    runw = doc["run"]
    t_a, t_b = m.marks["run_start"].t, m.marks["run_end"].t
    exact = (e0(t_b) - e0(t_a)) + 100.0 * (t_b - t_a)
    # counters are read at the marks: mJ truncation and the few microseconds a read takes
    assert runw["energy_j"]["gpu"] == pytest.approx(exact, abs=0.5)
    assert runw["energy_j"]["cpu"] == 0.0  # the RAPL file did not move
    assert doc["baseline"]["duration_s"] == pytest.approx(0.5, abs=0.05)
    assert doc["sampling"]["period_median_s"] == pytest.approx(0.05, abs=0.01)
    rows = _timeline(run)
    g0 = [r for r in rows if r["source"] == "gpu" and r["device"] == "0"]
    assert len(g0) >= 35 and float(g0[0]["t_s"]) < -0.4
    assert doc["devices"]["nvml"]["gpus"][1]["uuid"] == "GPU-b"
    fin = finalize(run)
    xc = fin["cross_check"]["0"]
    assert abs(xc["power_instant"]["rel_diff"]) < 0.02  # instant power integrates to the counter
    assert fin["windows"]["run"]["domains"]["gpu"]["net_j"] is not None
    assert nv.init_count == 0


def test_meterset_on_this_machine_marks_sources_unavailable(tmp_path):
    with MeterSet.for_run(tmp_path, baseline_s=0.2, rapl_root=tmp_path / "no-powercap") as m:
        time.sleep(0.2)
    doc = orjson.loads((tmp_path / "energy.json").read_bytes())
    if not m.availability["nvml"].available:
        assert "no NVIDIA driver" in doc["sources"]["nvml"]["reason"]
        assert "gpu" not in doc["run"]["energy_j"]
    assert doc["sources"]["rapl"]["available"] is False and "no energy zones" in doc["sources"]["rapl"]["reason"]
    assert "cpu" not in doc["run"]["energy_j"]
    assert doc["sources"]["process"]["available"] is True


def test_meterset_records_failure_and_interrupt_and_keeps_files(tmp_path):
    nv = FakeNvml([FakeGpu("GPU-a")])
    with pytest.raises(RuntimeError):
        with MeterSet.for_run(tmp_path / "a", meters="nvml", baseline_s=0, nvml=nv, env={}):
            time.sleep(0.2)
            raise RuntimeError("engine died")
    doc = orjson.loads((tmp_path / "a" / "energy.json").read_bytes())
    assert doc["status"] == "failed: RuntimeError: engine died"
    dur = doc["marks"]["run_end"]["t_s"] - doc["marks"]["run_start"]["t_s"]
    assert dur >= 0.2 and doc["run"]["energy_j"]["gpu"] == pytest.approx(100.0 * dur, abs=0.5)  # 100 W fake GPU
    assert len(_timeline(tmp_path / "a")) >= 3
    with pytest.raises(KeyboardInterrupt):
        with MeterSet.for_run(tmp_path / "b", meters="nvml", baseline_s=0, nvml=nv, env={}):
            raise KeyboardInterrupt
    assert orjson.loads((tmp_path / "b" / "energy.json").read_bytes())["status"] == "interrupted"
    with MeterSet.for_run(tmp_path / "c", meters="none", baseline_s=0) as m:
        pass
    doc = orjson.loads((tmp_path / "c" / "energy.json").read_bytes())
    assert doc["sources"] == {} and doc["run"]["energy_j"] == {}


def test_baseline_only_where_energy_is_measured(tmp_path):
    t = time.perf_counter()
    with MeterSet.for_run(tmp_path / "a", meters="process", baseline_s=2.0) as m:
        pass
    assert time.perf_counter() - t < 1.5 and "baseline_start" not in m.marks
    with MeterSet.for_run(tmp_path / "b", meters="nvml", baseline_s=0.3, nvml=FakeNvml(), env={}) as m:
        pass
    assert m.marks["run_start"].t - m.marks["baseline_start"].t == pytest.approx(0.3, abs=0.05)
