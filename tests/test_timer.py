"""The replay's deadline timer: never early, in deadline order, precise where timerfd exists."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from mrw.replay.timer import DeadlineTimer


def test_deadlines_fire_in_order_and_never_early() -> None:
    async def main():
        timer = DeadlineTimer()
        t0 = time.perf_counter()
        offsets = [0.030, 0.005, 0.020, 0.0101, 0.010, -0.001]
        fired: list[tuple[float, float]] = []

        async def wait(off: float) -> None:
            await timer.wait_until(t0 + off)
            fired.append((off, time.perf_counter() - t0))

        await asyncio.gather(*(wait(o) for o in offsets))
        timer.close()
        return timer.precise, fired

    precise, fired = asyncio.run(main())
    assert [o for o, _ in fired] == sorted(o for o, _ in fired)
    assert all(t >= o - 20e-6 for o, t in fired), fired  # EARLY_S: served with a deadline due within 20 µs
    if sys.platform.startswith("linux"):
        assert precise


def test_cancelled_waiter_does_not_stop_the_others() -> None:
    async def main():
        timer = DeadlineTimer()
        t0 = time.perf_counter()
        a = asyncio.ensure_future(timer.wait_until(t0 + 0.01))
        b = timer.wait_until(t0 + 0.02)
        a.cancel()
        await b
        timer.close()
        return time.perf_counter() - t0

    assert asyncio.run(main()) >= 0.02 - 20e-6


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_works_on_both_loops(loop: str) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        run = uvloop.run
    else:
        run = asyncio.run

    async def main():
        timer = DeadlineTimer()
        t = time.perf_counter() + 0.005
        await timer.wait_until(t)
        timer.close()
        return time.perf_counter() - t

    assert run(main()) >= -20e-6
