"""permessage-deflate (RFC 7692) with the `websockets` client: negotiation of each parameter,
compressed messages both ways (with and without context takeover, every window size the
client may ask for), fragmented compressed messages, a compression bomb, Chromium's offer, and a
server without `--deflate`. That the server's frames are compressed on the wire is checked by
tests/deflate.rs, which reads raw frames."""

from __future__ import annotations

import asyncio
import json
import os
import socket

from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from wsraw import LARGE

TEN_MIB = 10 << 20


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def ext_header(ws) -> str | None:
    return ws.response.headers.get("Sec-WebSocket-Extensions")


def payloads():
    doc = {"users": [{"id": i, "name": f"user-{i}", "tags": ["a", "b", "c"], "active": i % 2 == 0}
                     for i in range(300)]}
    return [
        "hello",
        "",
        json.dumps(doc),
        "héllo wörld ✓ " * 2000,
        os.urandom(70_000),  # incompressible: bigger compressed than raw
        bytes(200_000),
    ]


async def echo_all(ws, items):
    for m in items:
        await ws.send(m)
        got = await ws.recv()
        assert type(got) is type(m) and got == m, (len(got), len(m))


def test_default_offer_is_accepted_without_context_takeover(start):
    srv = start("--deflate")

    async def main():
        # The default offer: `permessage-deflate; client_max_window_bits`.
        async with connect(srv.url, max_size=TEN_MIB) as ws:
            assert ext_header(ws) == (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            await echo_all(ws, payloads())

    run(main())


def test_each_parameter_is_honoured(start):
    srv = start("--deflate", "--deflate-context-takeover")
    cases = [
        (dict(), "permessage-deflate"),
        (dict(server_no_context_takeover=True),
         "permessage-deflate; server_no_context_takeover"),
        (dict(client_no_context_takeover=True),
         "permessage-deflate; client_no_context_takeover"),
        (dict(server_max_window_bits=10),
         "permessage-deflate; server_max_window_bits=10"),
        (dict(client_max_window_bits=11),
         "permessage-deflate; client_max_window_bits=11"),
        (dict(server_no_context_takeover=True, client_no_context_takeover=True,
              server_max_window_bits=9, client_max_window_bits=9),
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=9; client_max_window_bits=9"),
    ]

    async def main():
        for kwargs, want in cases:
            fac = ClientPerMessageDeflateFactory(**kwargs)
            async with connect(srv.url, extensions=[fac], max_size=TEN_MIB) as ws:
                assert ext_header(ws) == want, kwargs
                # Several messages: with context takeover each depends on the ones before.
                await echo_all(ws, payloads() + payloads())

    run(main())


def test_server_window_bits_setting_limits_the_client_too(start):
    srv = start("--deflate", "--deflate-window-bits", "10")

    async def main():
        async with connect(srv.url, max_size=TEN_MIB) as ws:
            assert ext_header(ws) == (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=10; client_max_window_bits=10")
            await echo_all(ws, payloads())

    run(main())


def test_fragmented_compressed_message(start):
    srv = start("--deflate", "--deflate-min-size", "0")

    async def main():
        async with connect(srv.url, max_size=TEN_MIB) as ws:
            text = json.dumps([{"k": i, "v": "x" * (i % 50)} for i in range(5000)])
            # An async iterator sends one fragment per item; RSV1 only on the first.
            async def frags():
                for i in range(0, len(text), 1000):
                    yield text[i:i + 1000]
            await ws.send(frags())
            assert await ws.recv() == text

    run(main())


def test_large_compressed_messages_both_ways(start):
    srv = start("--deflate", *LARGE)

    async def main():
        async with connect(srv.url, max_size=TEN_MIB + 1024) as ws:
            text = ("fanout permessage-deflate " * (TEN_MIB // 26 + 1))[:TEN_MIB]
            await ws.send(text)
            assert await ws.recv() == text

    run(main())


def test_compression_bomb_is_refused_with_1009(start):
    srv = start("--deflate", "--max-message-size", "1MiB")

    async def main():
        async with connect(srv.url, max_size=TEN_MIB) as ws:
            # 8 MiB of zeros compresses to a few KiB: small on the wire, too big inflated.
            await ws.send(bytes(8 << 20))
            try:
                await ws.recv()
                raise AssertionError("expected the server to close")
            except Exception:
                pass
            assert ws.close_code == 1009, ws.close_code

    run(main())


def test_chromium_offer(start):
    """The exact offer header Chromium sends on every connection."""
    srv = start("--deflate")
    req = (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nPragma: no-cache\r\n"
        "Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120\r\n"
        "Upgrade: websocket\r\nOrigin: http://127.0.0.1\r\nSec-WebSocket-Version: 13\r\n"
        "Accept-Encoding: gzip, deflate, br\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    text = head.decode()
    assert text.startswith("HTTP/1.1 101"), text
    assert ("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover\r\n") in text, text


def test_without_deflate_flag_the_offer_is_declined(server):
    async def main():
        async with connect(server.url) as ws:
            assert ext_header(ws) is None
            await echo_all(ws, payloads()[:3])

    run(main())
