"""Bad handshakes over raw sockets get the right HTTP status; plain HTTP routes."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect

import wsraw
from wsraw import http_exchange, upgrade_request


def test_valid_raw_handshake_accept_header(server):
    sock, resp, _ = wsraw.handshake(server.port)
    sock.close()
    assert resp.status == 101
    assert resp.headers["upgrade"].lower() == "websocket"
    assert "upgrade" in resp.headers["connection"].lower()
    assert "sec-websocket-accept" in resp.headers


def test_rfc_example_accept_value(server):
    sock = wsraw.connect(server.port)
    try:
        sock.sendall(upgrade_request(key=wsraw.GOOD_KEY))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 101")
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in buf
    finally:
        sock.close()


def test_missing_key_is_400(server):
    r = http_exchange(server.port, upgrade_request(key=None))
    assert r.status == 400, r


def test_bad_key_is_400(server):
    r = http_exchange(server.port, upgrade_request(key="c2hvcnQ="))  # "short": not 16 bytes
    assert r.status == 400, r


def test_version_8_is_426_with_version_header(server):
    r = http_exchange(server.port, upgrade_request(version="8"))
    assert r.status == 426, r
    assert r.headers.get("sec-websocket-version") == "13", r


def test_missing_version_is_426(server):
    r = http_exchange(server.port, upgrade_request(version=None))
    assert r.status in (400, 426), r


def test_post_upgrade_is_400(server):
    r = http_exchange(server.port, upgrade_request(method="POST"))
    assert r.status == 400, r


def test_http_1_0_upgrade_is_400(server):
    req = upgrade_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    r = http_exchange(server.port, req)
    assert r.status == 400, r


def test_header_block_over_8kib_is_431(server):
    filler = [f"X-Filler-{i}: {'v' * 200}" for i in range(45)]  # ~9.5 KiB
    r = http_exchange(server.port, upgrade_request(extra=filler))
    assert r.status == 431, r


def test_header_block_over_8kib_sent_slowly_is_431(server):
    """The same, with the head arriving in pieces (the server must count across reads)."""
    sock = wsraw.connect(server.port)
    try:
        req = upgrade_request(extra=[f"X-Filler-{i}: {'v' * 200}" for i in range(45)])
        head = req[:-4]  # never finish the head
        for i in range(0, len(head), 1000):
            try:
                sock.sendall(head[i:i + 1000])
            except OSError:
                break
            time.sleep(0.01)
        buf = b""
        sock.settimeout(5)
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 431"), buf[:200]
    finally:
        sock.close()


def test_non_upgrade_get_unknown_path_is_404(server):
    r = http_exchange(server.port, b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 404, r


def test_healthz_is_200(server):
    r = http_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 200, r
    assert r.body.strip() == b"ok"


def test_garbage_request_is_400(server):
    r = http_exchange(server.port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert r.status == 400, r


def test_websockets_client_connects_to_a_path_with_query(server):
    async def main():
        async with connect(server.url + "chat?room=1&x=%20", compression=None) as ws:
            await ws.send("q")
            assert await ws.recv() == "q"

    asyncio.run(asyncio.wait_for(main(), 10))


def test_plain_get_root_is_the_status_page_on_loopback(server):
    """A plain GET / on a loopback listener is the status page (--status defaults to on there)."""
    r = http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 200, r
    assert b"/status/ws" in r.body, r


def test_plain_get_root_is_404_with_status_off(start):
    """With --status off, a plain GET / (no upgrade) is not a WebSocket: 404 from the echo app."""
    srv = start("--status", "off")
    r = http_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 404, r


@pytest.mark.parametrize("header", ["Upgrade: h2c", "Connection: keep-alive"])
def test_wrong_upgrade_headers_are_400(server, header):
    name = header.split(":")[0]
    req = upgrade_request()
    lines = [ln for ln in req.decode().split("\r\n") if not ln.startswith(name + ":")]
    lines.insert(2, header)
    r = http_exchange(server.port, "\r\n".join(lines).encode())
    assert r.status == 400, r
