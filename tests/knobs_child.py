"""A child process that caps a (fake, file-backed) GPU and then meets one way out.

usage: knobs_child.py STATE PENDING_DIR MODE   (MODE: wait | atexit | crash | ok)
Prints 'capped' once the cap is in force, then (except in wait mode) waits for a line on stdin."""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from fake_nvml import FakeGpu, FakeNvml  # noqa: E402

from mrw.errors import EngineError  # noqa: E402
from mrw.replay.knobs import apply_knobs  # noqa: E402

state, pdir, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
nv = FakeNvml([FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb")], state_path=state)
os.environ["XDG_STATE_HOME"] = str(pdir)


def main():
    if mode == "atexit":
        cm = apply_knobs(cap_w=250, lock_clocks=1200, nvml=nv, env={})
        cm.__enter__()  # never exited: only the atexit hook can restore
        print("capped", flush=True)
        sys.stdin.readline()
        sys.exit(0)
    with apply_knobs(cap_w=250, lock_clocks=1200, nvml=nv, env={}):
        print("capped", flush=True)
        if mode != "wait":
            sys.stdin.readline()  # the parent has seen the cap; go on
        if mode == "wait":
            time.sleep(60)
        elif mode == "crash":
            engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            engine.kill()  # the engine dies mid-run
            if engine.wait() != 0:
                raise EngineError(f"engine exited with {engine.returncode}")


main()
