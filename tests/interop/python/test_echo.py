"""Echo through the `websockets` client: text, binary, empty, fragmented and 10 MiB messages,
ping/pong, subprotocols."""

from __future__ import annotations

import asyncio
import os

from websockets.asyncio.client import connect

TEN_MIB = 10 << 20


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_echo_text_and_binary(server):
    async def main():
        async with connect(server.url, compression=None) as ws:
            await ws.send("hello, fanout ✓")
            assert await ws.recv() == "hello, fanout ✓"
            blob = bytes(range(256)) * 4
            await ws.send(blob)
            got = await ws.recv()
            assert isinstance(got, bytes) and got == blob

    run(main())


def test_echo_empty_messages(server):
    async def main():
        async with connect(server.url, compression=None) as ws:
            await ws.send("")
            assert await ws.recv() == ""
            await ws.send(b"")
            got = await ws.recv()
            assert isinstance(got, bytes) and got == b""

    run(main())


def test_echo_fragmented_messages(server):
    """websockets sends one frame per item of an (async) iterable: a fragmented message."""

    async def text_parts():
        for part in ["frag", "mented ", "text ", "é✓"]:
            yield part
            await asyncio.sleep(0.01)  # separate TCP segments, so the server sees them apart

    async def main():
        async with connect(server.url, compression=None) as ws:
            await ws.send(text_parts())
            assert await ws.recv() == "fragmented text é✓"
            # A sync iterable of bytes, including an empty fragment.
            await ws.send([b"\x00\x01", b"", b"\x02" * 70000, b"end"])
            assert await ws.recv() == b"\x00\x01" + b"\x02" * 70000 + b"end"
            # Many small fragments.
            await ws.send(iter(["a"] * 100))
            assert await ws.recv() == "a" * 100

    run(main())


def test_echo_10mib_text_and_binary(large_server):
    server = large_server

    async def main():
        async with connect(server.url, compression=None, max_size=TEN_MIB + 1024) as ws:
            text = ("0123456789abcdef" * (TEN_MIB // 16))
            await ws.send(text)
            got = await ws.recv()
            assert isinstance(got, str) and len(got) == TEN_MIB and got == text
            blob = os.urandom(TEN_MIB)
            await ws.send(blob)
            got = await ws.recv()
            assert isinstance(got, bytes) and got == blob

    run(main())


def test_ping_with_payload_gets_pong(server):
    async def main():
        async with connect(server.url, compression=None, ping_interval=None) as ws:
            for payload in [b"fanout-ping", b"", b"x" * 125]:
                pong = await ws.ping(payload)
                latency = await asyncio.wait_for(pong, 5)
                assert latency >= 0
            # Messages still flow after pings.
            await ws.send("after ping")
            assert await ws.recv() == "after ping"

    run(main())


def test_subprotocol_first_offered_is_chosen(server):
    async def main():
        async with connect(server.url, subprotocols=["chat", "superchat"]) as ws:
            assert ws.subprotocol == "chat"
            assert ws.response.headers.get("Sec-WebSocket-Protocol") == "chat"
            await ws.send("hi")
            assert await ws.recv() == "hi"
        async with connect(server.url) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Protocol" not in ws.response.headers

    run(main())


def test_many_messages_in_order(server):
    async def main():
        async with connect(server.url, compression=None) as ws:
            for i in range(500):
                await ws.send(f"m{i}")
            for i in range(500):
                assert await ws.recv() == f"m{i}"

    run(main())
