"""Power cap and clock lock: validated before anything runs, restored on every way out.

The NVML calls go through the fake binding (tests/fake_nvml.py); the exit paths are real:
exceptions, SIGINT, SIGTERM and SIGKILL delivered to real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from fake_nvml import FakeGpu, FakeNvml
from mrw.errors import EngineError, KnobError, NotSupportedError, PermissionDeniedError
from mrw.replay.knobs import Terminated, apply_knobs, parse_clocks, restore_pending

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def gpus2(**kw):
    return FakeNvml([FakeGpu("GPU-aaaa", **kw), FakeGpu("GPU-bbbb", **kw)])


def limits(nv):
    return [g.limit_mw for g in nv.gpus]


def test_success_caps_reads_back_and_restores(tmp_path):
    nv = gpus2(limit_mw=650_000)
    with apply_knobs(cap_w=300, nvml=nv, env={}, run_dir=tmp_path) as k:
        assert limits(nv) == [300_000, 300_000]
        assert [g.cap_effective_w for g in k.gpus] == [300.0, 300.0]
        assert [g.limit_original_w for g in k.gpus] == [650.0, 650.0]
        rec = orjson.loads((tmp_path / "knobs.json").read_bytes())
        assert rec["gpus"][0]["cap_enforced_w"] == 300.0 and rec["restored"] is None
    assert limits(nv) == [650_000, 650_000]
    rec = orjson.loads((tmp_path / "knobs.json").read_bytes())
    assert rec["restored"] is True and rec["gpus"][1]["limit_after_restore_w"] == 650.0
    assert nv.init_count == 0
    assert not list((Path(os.environ["XDG_STATE_HOME"]) / "mrw" / "knobs").glob("*.json"))


def test_error_in_body_restores_and_propagates():
    nv = gpus2()
    with pytest.raises(ZeroDivisionError):
        with apply_knobs(cap_w=200, lock_clocks="1000-1400", nvml=nv, env={}):
            assert nv.gpus[0].locked == [1000, 1400]
            1 / 0
    assert limits(nv) == [700_000, 700_000] and nv.gpus[0].locked is None


def test_ctrl_c_restores():
    nv = gpus2()
    with pytest.raises(KeyboardInterrupt):
        with apply_knobs(cap_w=200, nvml=nv, env={}):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C
            signal.pause()
    assert limits(nv) == [700_000, 700_000]


def test_sigterm_in_process_restores_and_handlers_are_put_back():
    nv = gpus2()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as ei:
        with apply_knobs(cap_w=200, nvml=nv, env={}):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
    assert ei.value.code == 128 + signal.SIGTERM
    assert limits(nv) == [700_000, 700_000]
    assert signal.getsignal(signal.SIGTERM) is before


def test_engine_crash_restores():
    nv = gpus2()
    with pytest.raises(EngineError):
        with apply_knobs(cap_w=200, nvml=nv, env={}):
            eng = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
            eng.kill()
            if eng.wait() != 0:
                raise EngineError("engine died")
    assert limits(nv) == [700_000, 700_000]


def _child(tmp_path, mode):
    state = tmp_path / "gpu-state.json"
    p = subprocess.Popen([sys.executable, str(HERE / "knobs_child.py"), str(state), str(tmp_path / "st"), mode],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "capped", p.stderr.read()
    st = json.loads(state.read_text())
    assert st["GPU-aaaa"]["limit_mw"] == 250_000 and st["GPU-aaaa"]["locked"] == [1200, 1200]
    return p, state


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT), (signal.SIGHUP, 129)])
def test_signal_to_real_process_restores(tmp_path, sig, code):
    p, state = _child(tmp_path, "wait")
    p.send_signal(sig)
    rc = p.wait(timeout=20)
    assert rc == code, p.stderr.read()
    st = json.loads(state.read_text())
    assert st == {"GPU-aaaa": {"limit_mw": 700_000, "locked": None}, "GPU-bbbb": {"limit_mw": 700_000, "locked": None}}


@pytest.mark.parametrize("mode", ["atexit", "crash", "ok"])
def test_other_exits_of_a_real_process_restore(tmp_path, mode):
    p, state = _child(tmp_path, mode)
    p.stdin.write("go\n")
    p.stdin.flush()
    rc = p.wait(timeout=20)
    err = p.stderr.read()
    assert rc == (1 if mode == "crash" else 0), err
    if mode == "crash":
        assert "EngineError" in err
    st = json.loads(state.read_text())
    assert all(v == {"limit_mw": 700_000, "locked": None} for v in st.values())


def test_sigkill_leaves_a_pending_file_that_the_next_run_restores(tmp_path):
    p, state = _child(tmp_path, "wait")
    p.kill()
    p.wait()
    assert json.loads(state.read_text())["GPU-aaaa"]["limit_mw"] == 250_000  # nobody could restore
    pending = tmp_path / "st" / "mrw" / "knobs"
    assert len(list(pending.glob("*.json"))) == 1
    nv = FakeNvml([FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb")], state_path=state)
    done = restore_pending(nv, pending)
    assert any("restored to 700 W" in d for d in done) and any("clock lock reset" in d for d in done)
    assert json.loads(state.read_text())["GPU-bbbb"] == {"limit_mw": 700_000, "locked": None}
    assert not list(pending.glob("*.json"))


def test_out_of_range_is_refused_before_anything_changes():
    nv = gpus2()
    with pytest.raises(KnobError, match=r"--cap 150 W is outside GPU 0 \(NVIDIA H100 80GB HBM3\)'s power-limit range \[200, 700\] W"):
        with apply_knobs(cap_w=150, nvml=nv, env={}):
            pytest.fail("the body must not run")
    with pytest.raises(KnobError, match=r"outside GPU 0 .* SM clocks \[345, 1980\] MHz"):
        with apply_knobs(lock_clocks=2500, nvml=nv, env={}):
            pytest.fail("the body must not run")
    assert nv.log == []  # not even the permission probe ran
    assert nv.init_count == 0


def test_no_permission_is_refused_before_anything_changes():
    nv = FakeNvml([FakeGpu("GPU-aaaa")], privileged=False)
    with pytest.raises(PermissionDeniedError, match="needs root"):
        with apply_knobs(cap_w=300, nvml=nv, env={}):
            pytest.fail("the body must not run")
    assert nv.gpus[0].limit_mw == 700_000
    with pytest.raises(PermissionDeniedError, match="locking GPU clocks needs root"):
        with apply_knobs(lock_clocks=1200, nvml=nv, env={}):
            pytest.fail("the body must not run")


def test_partial_failure_puts_back_what_was_set():
    nv = FakeNvml([FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb")], fail_set_on=set())
    orig = nv.nvmlDeviceSetPowerManagementLimit
    calls = {"n": 0}

    def flaky(h, mw):  # GPU 1 refuses the cap itself (not the permission probe)
        calls["n"] += 1
        if h.contents.value == 1 and mw == 300_000:
            raise nv.NVMLError(nv.NVML_ERROR_UNKNOWN)
        return orig(h, mw)

    nv.nvmlDeviceSetPowerManagementLimit = flaky
    with pytest.raises(NotSupportedError, match="GPU 1"):
        with apply_knobs(cap_w=300, nvml=nv, env={}):
            pytest.fail("the body must not run")
    assert limits(nv) == [700_000, 700_000]


def test_no_knobs_touches_no_gpu():
    with apply_knobs(nvml=FakeNvml(no_driver=True)) as k:
        assert not k.active and k.to_dict()["gpus"] == []


def test_no_gpu_with_cap_is_a_clear_error():
    with pytest.raises(NotSupportedError, match="no NVIDIA driver"):
        with apply_knobs(cap_w=300, nvml=FakeNvml(no_driver=True)):
            pass


def test_a_gpu_held_by_another_live_mrw_is_refused(tmp_path, state_home):
    d = state_home / "mrw" / "knobs"
    d.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (d / f"{holder.pid}.json").write_bytes(orjson.dumps({"pid": holder.pid, "gpus": [{"uuid": "GPU-bbbb", "cap": True, "limit_original_w": 700.0}]}))
        with pytest.raises(KnobError, match="another running mrw"):
            with apply_knobs(cap_w=300, nvml=gpus2(), env={}):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_restore_that_fails_is_reported_loudly():
    nv = gpus2()
    with pytest.raises(KnobError, match="could not be put back.*mrw restore-knobs"):
        with apply_knobs(cap_w=300, nvml=nv, env={}):
            nv.privileged = False  # e.g. the driver was reloaded under us
    pend = list((Path(os.environ["XDG_STATE_HOME"]) / "mrw" / "knobs").glob("*.json"))
    assert len(pend) == 1  # kept, so `mrw restore-knobs` can finish the job
    nv.privileged = True
    restore_pending(nv, pend[0].parent, only_dead=False)
    assert limits(nv) == [700_000, 700_000]


def test_parse_clocks():
    assert parse_clocks("1410") == (1410, 1410) and parse_clocks("1200-1410") == (1200, 1410)
    assert parse_clocks(None) is None
    for bad in ("fast", "1410-1200", "1-2-3", "0"):
        with pytest.raises(KnobError):
            parse_clocks(bad)
