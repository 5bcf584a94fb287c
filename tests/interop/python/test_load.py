"""1,000 concurrent `websockets` clients, all open at once, each echoing 10 messages."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import connect

CLIENTS = 1000
MESSAGES = 10


def test_1000_concurrent_clients_echo(server):
    async def main():
        t0 = time.monotonic()
        conns = await asyncio.gather(*[
            connect(server.url, compression=None, open_timeout=30, ping_interval=None)
            for _ in range(CLIENTS)
        ])
        t_open = time.monotonic() - t0

        async def talk(i, ws):
            for j in range(MESSAGES):
                msg = f"client {i} message {j} " + "x" * (j * 10)
                await ws.send(msg if j % 2 == 0 else msg.encode())
                got = await ws.recv()
                assert got == (msg if j % 2 == 0 else msg.encode()), (i, j, got)
            return i

        done = await asyncio.gather(*[talk(i, ws) for i, ws in enumerate(conns)])
        assert sorted(done) == list(range(CLIENTS))
        await asyncio.gather(*[ws.close() for ws in conns])
        assert all(ws.close_code == 1000 for ws in conns)
        print(f"{CLIENTS} clients opened in {t_open:.2f}s, all done in {time.monotonic() - t0:.2f}s")

    asyncio.run(asyncio.wait_for(main(), 90))
