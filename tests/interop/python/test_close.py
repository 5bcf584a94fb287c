"""Close handshakes: the server echoes a client's close code, and answers protocol violations
(sent over raw sockets, since a real client will not produce them) with 1002 / 1007 / 1009."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

import wsraw
from wsraw import FrameReader, close_frame, frame


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("code,reason", [(1000, ""), (4000, "client says bye"), (3001, "")])
def test_client_close_code_is_echoed(server, code, reason):
    async def main():
        async with connect(server.url, compression=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            await ws.close(code, reason)
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == code

    run(main())


def _violation(port: int, payload: bytes, *, expect: int, prefix: bytes = b"") -> None:
    """Sends `prefix` then `payload` after a raw handshake; expects a close with `expect`, then
    the server closing the TCP connection."""
    sock, _, rest = wsraw.handshake(port)
    try:
        reader = FrameReader(sock, rest)
        if prefix:
            sock.sendall(prefix)
        sock.sendall(payload)
        got = reader.until_close(5)
        assert got is not None, "connection ended without a close frame"
        code, _reason = got
        assert code == expect, f"expected close {expect}, got {code} ({_reason!r})"
        # Answer the close, as a well-behaved client would; the server then ends the TCP
        # connection.
        try:
            sock.sendall(close_frame(expect))
        except OSError:
            pass
        reader.wait_eof(5)
    finally:
        sock.close()


VIOLATIONS_1002 = {
    "unmasked_frame": frame(0x1, b"hello", mask=False),
    "reserved_opcode_3": frame(0x3, b"x"),
    "reserved_control_opcode_b": frame(0xB, b""),
    "rsv1_without_extension": frame(0x1, b"x", rsv=4),
    "rsv2": frame(0x2, b"x", rsv=2),
    "rsv3": frame(0x2, b"x", rsv=1),
    "continuation_without_start": frame(0x0, b"x"),
    "fragmented_ping": frame(0x9, b"p", fin=False),
    "ping_payload_over_125": frame(0x9, b"p" * 126),
    "close_one_byte_payload": close_frame(raw_payload=b"\x03"),
    "close_code_999": close_frame(999),
    "close_code_1005": close_frame(1005),
    "close_code_1006": close_frame(1006),
    "close_code_1015": close_frame(1015),
    "close_code_5000": close_frame(5000),
    "new_message_inside_fragmented": frame(0x1, b"a", fin=False) + frame(0x1, b"b"),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS_1002))
def test_protocol_violation_closes_1002(server, name):
    _violation(server.port, VIOLATIONS_1002[name], expect=1002)


VIOLATIONS_1007 = {
    "invalid_utf8_text": frame(0x1, b"abc\xff\xfe"),
    "overlong_utf8": frame(0x1, b"\xc0\xaf"),
    "surrogate_utf8": frame(0x1, b"\xed\xa0\x80"),
    "invalid_utf8_across_fragments": frame(0x1, b"ok\xce", fin=False) + frame(0x0, b"\x41"),
    "truncated_utf8_at_end": frame(0x1, b"ok\xe2\x98"),
    "invalid_utf8_close_reason": close_frame(1000, b"\xff"),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS_1007))
def test_invalid_utf8_closes_1007(server, name):
    _violation(server.port, VIOLATIONS_1007[name], expect=1007)


def test_utf8_split_across_fragments_is_fine(server):
    sock, _, rest = wsraw.handshake(server.port)
    try:
        reader = FrameReader(sock, rest)
        snow = "☃".encode()
        sock.sendall(frame(0x1, b"a" + snow[:1], fin=False))
        sock.sendall(frame(0x9, b"interleaved ping"))  # a control frame between fragments
        sock.sendall(frame(0x0, snow[1:2], fin=False))
        sock.sendall(frame(0x0, snow[2:] + b"z"))
        got = [reader.next(5) for _ in range(2)]
        assert (True, 0xA, b"interleaved ping") in got
        assert (True, 0x1, ("a☃z").encode()) in got
        sock.sendall(close_frame(1000))
        assert reader.until_close(5) == (1000, b"")
    finally:
        sock.close()


def test_close_without_code_gets_empty_close(server):
    sock, _, rest = wsraw.handshake(server.port)
    try:
        reader = FrameReader(sock, rest)
        sock.sendall(close_frame(None))
        got = reader.until_close(5)
        assert got == (None, b""), got
        reader.wait_eof(5)
    finally:
        sock.close()


def test_message_over_max_size_closes_1009(start):
    srv = start("--max-message-size", "1KiB")

    async def main():
        async with connect(srv.url, compression=None) as ws:
            await ws.send("a" * 1024)  # exactly the limit: fine
            assert await ws.recv() == "a" * 1024
            await ws.send("b" * 1025)
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1009
        # The same for a message whose fragments are each under the limit.
        async with connect(srv.url, compression=None) as ws:
            await ws.send([b"c" * 600, b"d" * 600])
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 1009

    run(main())


def test_frame_length_over_max_size_closes_1009_before_payload(start):
    """A frame header announcing more than the limit is refused without waiting for the payload."""
    srv = start("--max-message-size", "1KiB")
    sock, _, rest = wsraw.handshake(srv.port)
    try:
        reader = FrameReader(sock, rest)
        # Header only: 1 MiB announced, nothing sent.
        sock.sendall(frame(0x2, b"", length=1 << 20)[:2 + 8 + 4])
        got = reader.until_close(5)
        assert got is not None and got[0] == 1009, got
    finally:
        sock.close()
