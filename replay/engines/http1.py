"""A lean streaming HTTP/1.1 client for the replay hot path: keep-alive pool, llhttp parsing.

Why not httpx here: a replayer issuing thousands of streamed requests per second spends its
CPU in the client, and that CPU both delays issues (lateness) and shows up in the CPU energy
mrw measures. httpx/httpcore costs ~2 ms of CPU per streamed request and its pool scans every
connection per request (quadratic under load); this client costs a small fraction of that
(see docs/performance.md). It does one thing: POST a body to one origin and hand the
decoded response body to a callback as it arrives. httpx stays for everything else (probes,
health checks, metrics), where convenience matters more than microseconds.

- one origin (http or https, host, port);
- one request per connection at a time, connections kept alive and reused LIFO; at most
  `limit` connections, further requests wait their turn (that wait is issue lateness);
- the response is parsed by llhttp (httptools, C): chunked decoding, keep-alive, status;
- a stream that stays silent for `read_timeout` seconds fails with `ReadTimeout`;
- a large body (a prompt of tens of thousands of tokens) is not written whole at issue time:
  the head and the first `FIRST_BYTES` go out at once, the rest a chunk per loop turn under
  the transport's flow control (`pause_writing`/`resume_writing`), so the tenth request of a
  burst is not held up while the kernel copies the nine bodies before it (~100 us each for
  500 kB), and no loop turn is spent copying megabytes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

import httptools

_perf = time.perf_counter
FIRST_BYTES = 64 * 1024  # of a body, written at issue time; the rest follows in chunks of this size


class TransportError(Exception):
    """Connection refused, reset or closed mid-response."""


class ReadTimeout(Exception):
    """No byte of the response for `read_timeout` seconds."""


class _Conn(asyncio.Protocol):
    __slots__ = ("pool", "transport", "parser", "sink", "done", "status", "error_body", "last_rx", "closed", "keep", "framed", "pending",
                 "rest", "paused")

    def __init__(self, pool: "Http1Pool"):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Callable[[bytes, float], None] | None = None
        self.done: asyncio.Future | None = None
        self.status = 0
        self.error_body: bytearray | None = None
        self.last_rx = 0.0
        self.closed = False
        self.keep = True
        self.framed = False
        self.pending: list[bytes] = []  # body pieces of the current read, handed over together
        self.rest: memoryview | None = None  # what is left to write of a large request body
        self.paused = False  # the transport's buffer is not empty: the kernel takes no more for now

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]  # pause as soon as anything waits

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.rest is not None:
            self.pool._pump_soon()

    def data_received(self, data: bytes) -> None:
        self.last_rx = _perf()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(TransportError(f"malformed HTTP response ({e})"))
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.pending:
            self._hand_over()

    def _hand_over(self) -> None:
        """One call of the sink per read, however many HTTP chunks the read held (a streamed
        response is one chunk per token): they all arrived at `last_rx`."""
        p = self.pending
        data = p[0] if len(p) == 1 else b"".join(p)
        p.clear()
        if self.sink is not None:
            self.sink(data, self.last_rx)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None and not self.done.done():
            if self.status and not self.framed:
                self.on_message_complete()  # no length, no chunking: the body ends with the connection
            else:
                self._fail(TransportError(f"connection closed mid-response ({exc or 'by the server'})"))
        self.pool._forget(self)

    # -- llhttp callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-length" or n == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep = self.parser.should_keep_alive()
        if self.status != 200:
            self.error_body = bytearray()

    def on_body(self, body: bytes) -> None:
        if self.error_body is not None:
            self.error_body += body
        else:
            self.pending.append(body)

    def on_message_complete(self) -> None:
        if self.pending:
            self._hand_over()
        fut, self.done = self.done, None
        self.sink = None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- use

    def _fail(self, exc: Exception) -> None:
        self.pending.clear()
        fut, self.done = self.done, None
        self.sink = None
        if fut is not None and not fut.done():
            fut.set_exception(exc)


class Http1Pool:
    """Keep-alive connections to one `host:port`; `stream()` one request at a time each."""

    def __init__(self, host: str, port: int, *, tls: bool = False, limit: int = 4096, connect_timeout: float = 10.0,
                 read_timeout: float = 600.0, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self.tls = tls
        self.limit = max(1, limit)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items() if k.lower() not in ("host", "content-length"))
        default_port = 443 if tls else 80
        hostport = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            hostport = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        self._head_tail = f"Host: {hostport}\r\n{extra}".encode("latin-1")
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._opening = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._pumping: list[_Conn] = []  # connections with a body still being written
        self._pump_handle: asyncio.Handle | None = None

    # -- connections

    async def _acquire(self) -> _Conn:
        while True:
            while self._idle:
                c = self._idle.pop()
                if not c.closed:
                    self._busy.add(c)
                    return c
            if len(self._busy) + self._opening < self.limit:
                self._opening += 1
                try:
                    loop = asyncio.get_running_loop()
                    _, c = await asyncio.wait_for(
                        loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self._ssl()), self.connect_timeout
                    )
                except asyncio.TimeoutError:
                    raise TransportError(f"connect to {self.host}:{self.port} timed out") from None
                except OSError as e:
                    raise TransportError(str(e) or type(e).__name__) from e
                finally:
                    self._opening -= 1
                self._busy.add(c)
                if self._sweeper is None:
                    self._arm_sweeper()
                return c
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    async def warm(self, n: int) -> int:
        """Open connections until `n` are idle (a burst due at t0 then finds them ready, as
        later bursts do); returns how many are idle."""
        async def one() -> _Conn | None:
            loop = asyncio.get_running_loop()
            try:
                _, c = await asyncio.wait_for(loop.create_connection(lambda: _Conn(self), self.host, self.port,
                                                                     ssl=self._ssl()), self.connect_timeout)
            except (OSError, asyncio.TimeoutError):
                return None
            return c

        need = max(0, min(n, self.limit) - len(self._idle) - len(self._busy))
        for c in await asyncio.gather(*[one() for _ in range(need)]):
            if c is not None:
                self._idle.append(c)
        if self._idle and self._sweeper is None:
            self._arm_sweeper()
        return len(self._idle)

    def _ssl(self):
        if not self.tls:
            return None
        import ssl as _ssl

        return _ssl.create_default_context()

    def _pump_soon(self) -> None:
        if self._pump_handle is None and not self._closed:
            self._pump_handle = asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """One chunk more of every large body whose connection takes it, once per loop turn."""
        self._pump_handle = None
        keep: list[_Conn] = []
        more = False
        for c in self._pumping:
            rest = c.rest
            if c.closed or rest is None:
                c.rest = None
                continue
            if not c.paused:
                c.transport.write(rest[:FIRST_BYTES])  # type: ignore[union-attr]
                rest = c.rest = rest[FIRST_BYTES:] if len(rest) > FIRST_BYTES else None
                if rest is None:
                    continue
                more |= not c.paused
            keep.append(c)
        self._pumping = keep
        if more:
            self._pump_soon()

    def _release(self, c: _Conn) -> None:
        self._busy.discard(c)
        if c.rest is not None:  # answered before its body was all sent (an early error): not reusable
            c.keep = False
            c.rest = None
        if c.closed or not c.keep or self._closed:
            if not c.closed:
                c.transport.close()  # type: ignore[union-attr]
        else:
            self._idle.append(c)
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def _forget(self, c: _Conn) -> None:
        self._busy.discard(c)
        if self._waiters and len(self._busy) + self._opening < self.limit:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)

    def _arm_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(1.0, self.read_timeout / 4), self._sweep)

    def _sweep(self) -> None:
        """Fail the streams that have been silent for read_timeout (checked every second)."""
        self._sweeper = None
        if self._closed:
            return
        limit = _perf() - self.read_timeout
        for c in list(self._busy):
            if c.done is not None and c.last_rx < limit:
                c._fail(ReadTimeout(f"no data for {self.read_timeout:g} s"))
                c.keep = False
                if c.transport is not None:
                    c.transport.close()
        self._arm_sweeper()

    # -- requests

    async def stream(self, path: str, body: bytes, on_body: Callable[[bytes, float], None],
                     on_sent: Callable[[], None] | None = None) -> tuple[int, bytes]:
        """POST `body` (JSON) to `path`; `on_body(data, t_rx)` gets each piece of the decoded
        response body with its arrival time (perf_counter). Returns (status, error body);
        the error body is empty for 200 (its content went to `on_body`). `on_sent` runs
        right before the request is written (the issue time)."""
        c = await self._acquire()
        try:
            loop = asyncio.get_running_loop()
            c.done = fut = loop.create_future()
            c.sink = on_body
            c.status = 0
            c.framed = False
            c.error_body = None
            c.last_rx = _perf()
            head = b"POST %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
                path.encode(), self._head_tail, len(body))
            if on_sent is not None:
                on_sent()
            if len(body) <= FIRST_BYTES:
                c.transport.write(head + body)  # type: ignore[union-attr]
            else:  # the head and a first part now, the rest by the pump (module docstring)
                mv = memoryview(body)
                c.transport.writelines((head, mv[:FIRST_BYTES]))  # type: ignore[union-attr]
                c.rest = mv[FIRST_BYTES:]
                self._pumping.append(c)
                self._pump_soon()
            try:
                await fut
            except asyncio.CancelledError:
                c.keep = False  # a half-read response cannot be reused
                raise
            return c.status, bytes(c.error_body or b"")
        finally:
            self._release(c)

    async def aclose(self) -> None:
        self._closed = True
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for c in self._idle + list(self._busy):
            if c.transport is not None and not c.closed:
                c.transport.close()
        self._idle.clear()
        for w in self._waiters:
            if not w.done():
                w.set_exception(TransportError("client closed"))
        self._waiters.clear()
