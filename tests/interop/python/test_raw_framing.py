"""Framing at the edges of reads, over raw sockets: frames glued to the request, dribbled a byte
at a time, or batched many to a segment."""

from __future__ import annotations

import base64
import os
import time

import wsraw
from wsraw import FrameReader, close_frame, frame, upgrade_request


def test_frame_in_the_same_segment_as_the_request(server):
    sock = wsraw.connect(server.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(upgrade_request(key=key) + frame(0x1, b"glued") + frame(0x2, b"\x00\x01"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, buf
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        reader = FrameReader(sock, rest)
        assert reader.next(5) == (True, 0x1, b"glued")
        assert reader.next(5) == (True, 0x2, b"\x00\x01")
        sock.sendall(close_frame(1000))
        assert reader.until_close(5) == (1000, b"")
    finally:
        sock.close()


def test_frames_dribbled_one_byte_at_a_time(server):
    sock, _, rest = wsraw.handshake(server.port)
    try:
        reader = FrameReader(sock, rest)
        payload = bytes(range(200))  # 16-bit length form, so the header itself is split too
        data = frame(0x2, payload) + frame(0x9, b"ping!") + frame(0x1, b"tail", fin=False) + frame(0x0, b"!")
        for b in data:
            sock.sendall(bytes([b]))
            time.sleep(0.001)
        assert reader.next(5) == (True, 0x2, payload)
        assert reader.next(5) == (True, 0xA, b"ping!")
        assert reader.next(5) == (True, 0x1, b"tail!")
    finally:
        sock.close()


def test_many_frames_in_one_segment(server):
    sock, _, rest = wsraw.handshake(server.port)
    try:
        reader = FrameReader(sock, rest)
        sock.sendall(b"".join(frame(0x1, f"n{i}".encode()) for i in range(300)))
        for i in range(300):
            assert reader.next(5) == (True, 0x1, f"n{i}".encode())
    finally:
        sock.close()


def test_large_frame_across_many_reads(large_server):
    """A 3 MiB frame (bigger than the shard's 64 KiB read buffer) sent in uneven pieces."""
    server = large_server
    sock, _, rest = wsraw.handshake(server.port)
    try:
        reader = FrameReader(sock, rest)
        payload = os.urandom(3 << 20)
        data = frame(0x2, payload)
        pos, step = 0, 1
        while pos < len(data):
            sock.sendall(data[pos:pos + step])
            pos += step
            step = min(step * 3 + 7, 200_000)
        assert reader.next(10) == (True, 0x2, payload)
    finally:
        sock.close()


def test_head_healthz(server):
    r = wsraw.http_exchange(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 200, r
    assert r.body == b""
