"""Deadlines and shutdown: graceful SIGTERM (1001 to everyone), handshake timeout, ping
interval / pong timeout, idle timeout."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.protocol import State

import wsraw
from wsraw import FrameReader, upgrade_request


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_graceful_shutdown_closes_everyone_with_1001(start):
    drain = 5.0
    srv = start("--drain-timeout", f"{drain}s")

    async def main():
        conns = await asyncio.gather(*[
            connect(srv.url, compression=None, ping_interval=None) for _ in range(50)
        ])
        for i, ws in enumerate(conns):
            await ws.send(f"hello {i}")
        for i, ws in enumerate(conns):
            assert await ws.recv() == f"hello {i}"
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*[ws.wait_closed() for ws in conns]), drain)
        codes = [ws.close_code for ws in conns]
        assert codes == [1001] * 50, codes
        code = await asyncio.to_thread(srv.wait, drain)
        elapsed = time.monotonic() - t0
        assert code == 0, f"exit code {code} after {elapsed:.2f}s\n{srv.log()}"
        assert elapsed < drain, f"took {elapsed:.2f}s to exit, drain timeout is {drain}s"

    run(main())


def test_graceful_shutdown_with_no_clients_is_quick(start):
    srv = start()
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.signal(signal.SIGINT)
    assert srv.wait(3) == 0, srv.log()
    assert time.monotonic() - t0 < 1.0




def test_sigterm_right_after_listening_is_graceful(start):
    codes = []
    for _ in range(20):
        srv = start()
        srv.signal(signal.SIGTERM)  # as soon as the readiness line was read
        codes.append(srv.wait(3))
    assert codes == [0] * 20, f"exit codes (negative: killed by that signal): {codes}"


def test_handshake_timeout_closes_silent_and_half_sent_sockets(start):
    srv = start("--handshake-timeout", "500ms")
    silent = wsraw.connect(srv.port)
    half = wsraw.connect(srv.port)
    t0 = time.monotonic()
    half.sendall(upgrade_request()[:40])
    try:
        for name, sock in [("silent", silent), ("half request", half)]:
            at = wsraw.wait_closed_by_server(sock, 5)
            elapsed = at - t0
            assert 0.4 <= elapsed <= 2.0, f"{name} socket closed after {elapsed:.2f}s"
    finally:
        silent.close()
        half.close()

    # A real client still gets in.
    async def main():
        async with connect(srv.url, compression=None) as ws:
            await ws.send("in time")
            assert await ws.recv() == "in time"

    run(main())


def test_handshake_timeout_trickled_request_still_times_out(start):
    """A slowloris sending a byte every 100 ms must not extend the handshake deadline."""
    srv = start("--handshake-timeout", "500ms")
    sock = wsraw.connect(srv.port)
    t0 = time.monotonic()
    req = upgrade_request(extra=["X-Pad: " + "p" * 200])
    closed_at = None
    try:
        for b in req[:-4]:
            try:
                sock.sendall(bytes([b]))
            except OSError:
                closed_at = time.monotonic()
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 3.0:
                break
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed_at = time.monotonic()
                    break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed_at = time.monotonic()
                break
            finally:
                sock.setblocking(True)
        assert closed_at is not None, "a trickled request kept the connection past 3 s"
        assert closed_at - t0 <= 2.0, f"closed after {closed_at - t0:.2f}s"
    finally:
        sock.close()


def test_unanswered_pings_drop_raw_client_but_not_websockets_client(start):
    srv = start("--ping-interval", "300ms", "--pong-timeout", "300ms")

    def raw_silent_client():
        sock, _, rest = wsraw.handshake(srv.port)
        t0 = time.monotonic()
        reader = FrameReader(sock, rest)
        pings = 0
        try:
            while True:
                f = reader.next(5)
                if f is None:
                    break
                if f[1] == 0x9:
                    pings += 1
            return time.monotonic() - t0, pings
        finally:
            sock.close()

    async def main():
        async with connect(srv.url, compression=None, ping_interval=None) as ws:
            raw = asyncio.create_task(asyncio.to_thread(raw_silent_client))
            await asyncio.sleep(2.5)
            assert ws.state is State.OPEN
            await ws.send("still here")
            assert await ws.recv() == "still here"
            elapsed, pings = await raw
            assert pings >= 1, "the server never pinged"
            assert 0.5 <= elapsed <= 2.0, f"silent raw client dropped after {elapsed:.2f}s"

    run(main())


def test_idle_timeout_closes_silent_client_with_1001(start):
    srv = start("--idle-timeout", "500ms", "--ping-interval", "0")

    async def main():
        async with connect(srv.url, compression=None, ping_interval=None) as busy:
            async with connect(srv.url, compression=None, ping_interval=None) as silent:
                t0 = time.monotonic()

                async def keep_busy():
                    for i in range(8):  # 1.6 s of traffic every 200 ms
                        await busy.send(f"{i}")
                        assert await busy.recv() == f"{i}"
                        await asyncio.sleep(0.2)

                task = asyncio.create_task(keep_busy())
                await asyncio.wait_for(silent.wait_closed(), 5)
                elapsed = time.monotonic() - t0
                assert silent.close_code == 1001
                assert 0.4 <= elapsed <= 2.0, f"closed after {elapsed:.2f}s"
                await task
                assert busy.state is State.OPEN

    run(main())




def test_fin_arriving_with_the_last_message_is_noticed(start):
    """The client sends a message and shuts down its write side at once; the server must echo
    it and then close the connection. The server is frozen (SIGSTOP) while both arrive, so they
    come as one readiness event, as they often do on a busy server."""
    srv = start("--shards", "1", "--ping-interval", "0")
    sock, _, rest = wsraw.handshake(srv.port)
    reader = FrameReader(sock, rest)
    try:
        time.sleep(0.05)
        srv.signal(signal.SIGSTOP)
        try:
            time.sleep(0.05)
            sock.sendall(wsraw.frame(0x1, b"last words"))
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
        finally:
            srv.signal(signal.SIGCONT)
        assert reader.next(3) == (True, 0x1, b"last words")
        # The peer left without a close frame: the server should drop the connection.
        reader.wait_eof(3)
    finally:
        sock.close()
