"""Waking the replay at its deadlines to the tens of microseconds, without spinning.

asyncio's own timers wait in `epoll_wait`, whose timeout is whole milliseconds rounded up
(uvloop's libuv clock is whole milliseconds too): a call due in 0.3 ms goes out ~1 ms late,
so timer granularity alone puts p99 issue lateness near 1 ms at low rates. A Linux timerfd
armed to the absolute CLOCK_MONOTONIC deadline (the clock `time.perf_counter` reads) wakes
the same `epoll_wait` within microseconds, costs one syscall per wake-up, and keeps the loop
free for responses in between (no busy-waiting, no blocking sleep).

`DeadlineTimer.wait_until(t)` is the one way the scheduler waits for a time. Where timerfd
is missing (not Linux), it falls back to the loop's own timers (millisecond granularity) and
says so in `precise`.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import os
import time

_perf = time.perf_counter
CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
# Deadlines this close are served in the same wake-up (the wake-up itself takes longer).
EARLY_S = 20e-6


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _timespec), ("it_value", _timespec)]


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create  # noqa: B018  (AttributeError where it does not exist)
        libc.timerfd_settime  # noqa: B018
    except (OSError, AttributeError):
        return None
    if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        return None
    return libc


class DeadlineTimer:
    """Futures that complete at perf_counter deadlines, for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self._heap: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()
        self._armed: float | None = None
        self._fd = -1
        self._fallback: asyncio.TimerHandle | None = None
        libc = _libc()
        if libc is not None:
            fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._libc = libc
                self._fd = fd
                self._spec = _itimerspec()
                self._spec_ref = ctypes.byref(self._spec)
                self.loop.add_reader(fd, self._fire)
        self.precise = self._fd >= 0

    def wait_until(self, deadline: float) -> asyncio.Future:
        """A future done at `deadline` (perf_counter seconds); already done if it has passed."""
        fut = self.loop.create_future()
        if deadline - _perf() <= EARLY_S:
            fut.set_result(None)
            return fut
        heapq.heappush(self._heap, (deadline, next(self._seq), fut))
        if self._armed is None or deadline < self._armed:
            self._arm(deadline)
        return fut

    def next_deadline(self) -> float | None:
        """The earliest deadline still waited for (perf_counter seconds), or None: background
        work (prompts built during the run) stays clear of it."""
        return self._heap[0][0] if self._heap else None

    def _arm(self, deadline: float) -> None:
        self._armed = deadline
        if self._fd >= 0:
            sec = int(deadline)
            v = self._spec.it_value
            v.tv_sec = sec
            v.tv_nsec = int((deadline - sec) * 1e9)
            self._libc.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, self._spec_ref, None)
        else:
            if self._fallback is not None:
                self._fallback.cancel()
            self._fallback = self.loop.call_later(max(0.0, deadline - _perf()), self._fire)

    def _fire(self) -> None:
        if self._fd >= 0:
            try:
                os.read(self._fd, 8)
            except BlockingIOError:
                pass
        self._armed = None
        self._fallback = None
        heap = self._heap
        limit = _perf() + EARLY_S
        while heap and heap[0][0] <= limit:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)
        while heap and heap[0][2].done():  # cancelled waiters
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.loop.remove_reader(self._fd)
            except Exception:
                pass
            os.close(self._fd)
            self._fd = -1
        if self._fallback is not None:
            self._fallback.cancel()
        for _, _, fut in self._heap:
            if not fut.done():
                fut.cancel()
        self._heap.clear()
