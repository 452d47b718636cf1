"""The replay's lean HTTP/1.1 client against real sockets: keep-alive reuse, chunked and
unframed bodies, HTTP errors, a server that dies mid-stream, and a silent server."""

from __future__ import annotations

import asyncio

import pytest

from mrw.replay.engines import http1

SSE = b"data: {\"a\":1}\n\ndata: [DONE]\n\n"


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


async def serve(handler):
    """A one-purpose HTTP server on a free loopback port; handler(reader, writer, n)."""
    count = {"conns": 0}

    async def on_conn(reader, writer):
        count["conns"] += 1
        try:
            n = 0
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
                await reader.readexactly(length)
                if not await handler(reader, writer, n):
                    break
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], count


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_chunked_stream_keep_alive_reused():
    async def main():
        async def ok(reader, writer, n):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(SSE))
            await writer.drain()
            return True

        server, port, count = await serve(ok)
        pool = http1.Http1Pool("127.0.0.1", port, limit=4)
        got = []
        for _ in range(3):
            status, err = await pool.stream("/v1/completions", b"{}", lambda d, t: got.append(d))
            assert (status, err) == (200, b"")
        await pool.aclose()
        server.close()
        assert b"".join(got) == SSE * 3
        assert count["conns"] == 1

    run(main())


def test_http_error_body_and_unframed_body():
    async def main():
        async def err(reader, writer, n):
            if n == 0:
                body = b'{"error": {"message": "bad"}}'
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                return True
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + SSE)  # body ends with the connection
            await writer.drain()
            return False

        server, port, _ = await serve(err)
        pool = http1.Http1Pool("127.0.0.1", port)
        status, body = await pool.stream("/x", b"{}", lambda d, t: None)
        assert status == 400 and b"bad" in body
        got = []
        status, _ = await pool.stream("/x", b"{}", lambda d, t: got.append(d))
        assert status == 200 and b"".join(got) == SSE
        await pool.aclose()
        server.close()

    run(main())


def test_server_dies_mid_stream_is_a_transport_error():
    async def main():
        async def die(reader, writer, n):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(SSE[:10]), SSE[:10]))
            await writer.drain()
            return False  # closes without the last chunk

        server, port, _ = await serve(die)
        pool = http1.Http1Pool("127.0.0.1", port)
        with pytest.raises(http1.TransportError, match="closed mid-response"):
            await pool.stream("/x", b"{}", lambda d, t: None)
        server.close()
        with pytest.raises(http1.TransportError):  # refused
            await http1.Http1Pool("127.0.0.1", port).stream("/x", b"{}", lambda d, t: None)

    run(main())


def test_silent_server_times_out():
    async def main():
        async def silent(reader, writer, n):
            await asyncio.sleep(30)
            return False

        server, port, _ = await serve(silent)
        pool = http1.Http1Pool("127.0.0.1", port, read_timeout=0.5)
        with pytest.raises(http1.ReadTimeout):
            await pool.stream("/x", b"{}", lambda d, t: None)
        await pool.aclose()
        server.close()

    run(main())


def test_large_bodies_arrive_whole_heads_first_and_the_connection_is_reused():
    """Bodies far beyond what one write hands the kernel: every byte arrives in order, a
    burst's heads reach the server before the bodies are through, and the keep-alive
    connection is reused afterwards. A server that answers before reading a large body
    leaves a connection that is not reused."""
    import hashlib

    async def main():
        seen: list[tuple[int, str]] = []
        order: list[str] = []

        async def on_conn(reader, writer):
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
                    order.append("head")
                    if b"/early" in head:  # answers at once, body unread
                        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
                        await writer.drain()
                        break
                    body = await reader.readexactly(length)
                    order.append("body")
                    seen.append((len(body), hashlib.sha256(body).hexdigest()))
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(SSE))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = http1.Http1Pool("127.0.0.1", port, limit=8)
        assert await pool.warm(4) == 4
        handed: list[list[int]] = []  # bytes handed to each transport, per call

        def count(c):
            sizes: list[int] = []
            handed.append(sizes)
            w, wl = c.transport.write, c.transport.writelines
            inner = [False]  # asyncio's writelines calls write: count the outer call only

            def write(b):
                if not inner[0]:
                    sizes.append(len(b))
                w(b)

            def writelines(bs):
                sizes.append(sum(len(b) for b in bs))
                inner[0] = True
                try:
                    wl(bs)
                finally:
                    inner[0] = False

            c.transport.write, c.transport.writelines = write, writelines

        for c in pool._idle:
            count(c)
        bodies = [bytes([65 + k]) * (3 * 2**20 + 17 * k) for k in range(4)]
        res = await asyncio.gather(*[pool.stream("/v1/completions", b, lambda d, t: None) for b in bodies])
        # at issue, each request handed over its head and the first FIRST_BYTES only; the rest followed
        assert all(0 < sizes[0] <= http1.FIRST_BYTES + 512 for sizes in handed)
        assert sorted(sum(x) - x[0] + http1.FIRST_BYTES for x in handed) == sorted(len(b) for b in bodies)
        assert res == [(200, b"")] * 4
        assert sorted(seen) == sorted((len(b), hashlib.sha256(b).hexdigest()) for b in bodies)
        assert order[:4] == ["head"] * 4  # every head before any body was through
        assert len(pool._idle) == 4 and not pool._pumping
        status, _ = await pool.stream("/early", bodies[0], lambda d, t: None)
        assert status == 413 and len(pool._idle) == 3  # not reused: its body was not all sent
        await pool.aclose()
        server.close()

    run(main())
