"""`mrw meter -- CMD` as a user runs it: a real subprocess, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson
import psutil

MRW = [sys.executable, "-m", "mrw"]


def test_meter_runs_command_writes_files_and_passes_exit_code(tmp_path):
    out = tmp_path / "m"
    p = subprocess.run(MRW + ["meter", "--baseline-s", "0.3", "-o", str(out), "--",
                              sys.executable, "-c", "import sys; sum(i*i for i in range(3*10**6)); sys.exit(3)"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    doc = orjson.loads((out / "energy.json").read_bytes())
    assert doc["status"] == "complete"
    if doc["sources"]["nvml"]["available"] or doc["sources"]["rapl"]["available"]:
        assert doc["baseline"]["duration_s"] >= 0.3
    else:  # nothing measures energy here: no point idling
        assert "baseline" not in doc and any("baseline of 0.3 s skipped" in n for n in doc["notes"])
    assert doc["windows"]["run"]["cpu_time"]["engine_cpu_s"] > 0.05  # the command's own CPU time
    assert (out / "power.csv").read_text().startswith("t_s,source,device")
    if not doc["sources"]["nvml"]["available"]:  # this machine: says so, reports no number
        assert "gpu" not in doc["windows"]["run"]["domains"]
        assert "source nvml" in p.stdout and "unavailable" in p.stdout


def test_meter_refuses_bad_input_before_running(tmp_path):
    p = subprocess.run(MRW + ["meter", "--meter", "nvml,watts", "--", "true"], capture_output=True, text=True)
    assert p.returncode == 1 and "unknown meter watts" in p.stderr
    p = subprocess.run(MRW + ["meter", "-o", str(tmp_path / "x"), "--baseline-s", "0", "--", "/no/such/cmd"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "cannot run '/no/such/cmd'" in p.stderr
    assert orjson.loads((tmp_path / "x" / "energy.json").read_bytes())["status"].startswith("failed")


def test_sigterm_stops_command_and_keeps_valid_files(tmp_path):
    out = tmp_path / "t"
    p = subprocess.Popen(MRW + ["meter", "--baseline-s", "0", "-o", str(out), "--", sys.executable, "-c",
                                "import time; time.sleep(60)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline and not psutil.Process(p.pid).children():
        time.sleep(0.1)
    child = psutil.Process(p.pid).children()[0]
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=30)
    assert rc == 128 + signal.SIGTERM
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    doc = orjson.loads((out / "energy.json").read_bytes())
    assert doc["status"] == "interrupted (terminated by SIGTERM)"
    assert doc["run"]["duration_s"] > 0.4
