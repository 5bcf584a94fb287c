"""Resource limits: a low RLIMIT_NOFILE (accept hits EMFILE: no spinning, open connections keep
working, recovery afterwards) and --max-connections (503 past it)."""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import wsraw
from conftest import wait_for

NOFILE = 128


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _echo_all(conns, tag: str) -> None:
    for i, ws in enumerate(conns):
        await ws.send(f"{tag} {i}")
    for i, ws in enumerate(conns):
        assert await asyncio.wait_for(ws.recv(), 5) == f"{tag} {i}"


def _flood(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex(("127.0.0.1", port))
        assert rc in (0, errno.EINPROGRESS), errno.errorcode.get(rc, rc)
        socks.append(s)
    return socks




def _emfile_scenario(start, *, measure_cpu: bool) -> float | None:
    """40 open clients, then 300 raw connects to push accept into EMFILE; the 40 must keep
    echoing during the flood, and new clients must get in once the flood is gone. Returns the
    server's CPU seconds over 2 s of flood when `measure_cpu`."""
    srv = start("--shards", "1", "--max-connections", "1000", preexec_fn=_low_nofile)
    with open(f"/proc/{srv.pid}/limits") as f:
        assert any(line.startswith("Max open files") and f" {NOFILE} " in line for line in f)
    result = {}

    async def main():
        conns = [await connect(srv.url, compression=None, ping_interval=None) for _ in range(40)]
        await _echo_all(conns, "before")
        flood = _flood(srv.port, 300)
        try:
            assert wait_for(lambda: "Too many open files" in srv.log(), 5), \
                f"accept never hit EMFILE (fds open: {srv.open_fds()})\n{srv.log()}"
            cpu0 = srv.cpu_seconds()
            t0 = time.monotonic()
            rounds = 0
            while time.monotonic() - t0 < 2.0:
                await _echo_all(conns, f"during {rounds}")
                rounds += 1
                await asyncio.sleep(0.1)
            result["cpu"] = srv.cpu_seconds() - cpu0
            assert srv.alive(), srv.log()
            print(f"EMFILE flood: {rounds} echo rounds on 40 connections, "
                  f"server CPU {result['cpu']:.3f}s in 2 s")
        finally:
            for s in flood:
                s.close()
        # Accepting recovers once descriptors are free again.
        deadline = time.monotonic() + 5
        fresh = []
        last_err = None
        while len(fresh) < 20 and time.monotonic() < deadline:
            try:
                fresh.append(await connect(srv.url, compression=None, ping_interval=None,
                                           open_timeout=2))
            except Exception as e:  # noqa: BLE001 - reported below
                last_err = e
                await asyncio.sleep(0.1)
        assert len(fresh) == 20, \
            f"only {len(fresh)} new clients got in: {last_err!r}\n{srv.log()[-3000:]}"
        await _echo_all(fresh, "after")
        await _echo_all(conns, "after")
        for ws in conns + fresh:
            await ws.close()

    run(main())
    return result.get("cpu") if measure_cpu else None


def test_emfile_on_accept_keeps_open_connections_working_and_recovers(start):
    _emfile_scenario(start, measure_cpu=False)


def test_emfile_on_accept_does_not_spin(start):
    cpu = _emfile_scenario(start, measure_cpu=True)
    assert cpu is not None and cpu < 0.5, \
        f"server used {cpu:.2f}s of CPU in 2 s of EMFILE: spinning"


def test_burst_past_accept_batch_is_all_accepted(start):
    """More connections waiting than --accept-batch when the shard wakes up: all must be served
    (the shard is frozen with SIGSTOP while they queue, so they arrive as one burst)."""
    srv = start("--shards", "1", "--accept-batch", "4")
    srv.signal(signal.SIGSTOP)
    socks = []
    try:
        for _ in range(20):
            s = wsraw.connect(srv.port)
            s.sendall(wsraw.upgrade_request())
            socks.append(s)
    finally:
        srv.signal(signal.SIGCONT)
    try:
        answered = 0
        deadline = time.monotonic() + 3
        for s in socks:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                answered += s.recv(4096).startswith(b"HTTP/1.1 101")
            except (socket.timeout, OSError):
                pass
        cpu0 = srv.cpu_seconds()
        time.sleep(0.5)
        cpu = srv.cpu_seconds() - cpu0
        assert answered == 20, f"only {answered} of 20 queued connections got their 101"
        assert cpu < 0.2, f"idle server used {cpu:.2f}s of CPU in 0.5 s: spinning"
    finally:
        for s in socks:
            s.close()


def test_max_connections_answers_503_and_keeps_the_others(start):
    srv = start("--max-connections", "5")

    async def main():
        conns = [await connect(srv.url, compression=None, ping_interval=None) for _ in range(5)]
        await _echo_all(conns, "five")
        with pytest.raises(InvalidStatus) as exc:
            await connect(srv.url, compression=None, open_timeout=5)
        assert exc.value.response.status_code == 503
        await _echo_all(conns, "still five")
        # A slot freed is a slot usable again.
        await conns[0].close()
        deadline = time.monotonic() + 3
        while True:
            try:
                conns[0] = await connect(srv.url, compression=None, open_timeout=2)
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "the freed slot was never reused"
                await asyncio.sleep(0.05)
        await _echo_all(conns, "again")
        for ws in conns:
            await ws.close()

    run(main())
