"""Raw-socket helpers: hand-written HTTP requests and WebSocket frames for the cases a real
client library refuses to produce (protocol violations, bad handshakes, silent peers)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time


# Server flags past the 1 MiB default --max-message-size: what a user with large messages runs.
LARGE = ("--max-message-size", "16MiB")

GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def upgrade_request(
    path: str = "/",
    *,
    method: str = "GET",
    key: str | None = GOOD_KEY,
    version: str | None = "13",
    extra: list[str] | None = None,
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines += extra or []
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class HttpResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, raw_head: bytes):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body
        self.raw_head = raw_head

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {self.headers!r}, {self.body[:200]!r})"


def _split_head(buf: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest, head


def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> HttpResponse:
    """Sends a request and reads the answer until the server closes the connection."""
    s = connect(port, timeout)
    try:
        s.sendall(request)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
        assert b"\r\n\r\n" in buf, f"no complete HTTP response head: {buf!r}"
        status, headers, rest, head = _split_head(buf)
        return HttpResponse(status, headers, rest, head)
    finally:
        s.close()


def handshake(port: int, path: str = "/", extra: list[str] | None = None,
              timeout: float = 5.0) -> tuple[socket.socket, HttpResponse, bytes]:
    """Opens a WebSocket over a raw socket. Returns (socket, 101 response, bytes read past it)."""
    s = connect(port, timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(upgrade_request(path, key=key, extra=extra))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"server closed during the handshake: {buf!r}"
        buf += chunk
    status, headers, rest, head = _split_head(buf)
    assert status == 101, f"expected 101, got {status}: {buf!r}"
    return s, HttpResponse(status, headers, b"", head), rest


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bool = True, length: int | None = None) -> bytes:
    """Encodes one frame; `rsv` is the 3-bit RSV field, `length` overrides the length field."""
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_frame(code: int | None = 1000, reason: bytes = b"", *, raw_payload: bytes | None = None) -> bytes:
    if raw_payload is None:
        raw_payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(0x8, raw_payload)


class FrameReader:
    """Reads server frames (unmasked) from a raw socket."""

    def __init__(self, sock: socket.socket, initial: bytes = b""):
        self.sock = sock
        self.buf = initial
        self.eof = False

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame within the deadline (have {self.buf!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return False
            self.buf += chunk
        return True

    def next(self, timeout: float = 5.0) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, payload), or None at EOF."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if not self._fill(4, deadline):
                return None
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            if not self._fill(10, deadline):
                return None
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        if not self._fill(pos + n, deadline):
            return None
        payload = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def until_close(self, timeout: float = 5.0) -> tuple[int | None, bytes] | None:
        """Skips frames until a close frame: (code or None, reason). None at EOF without one."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.next(max(0.0, deadline - time.monotonic()))
            if f is None:
                return None
            _, op, payload = f
            if op == 0x8:
                if len(payload) >= 2:
                    return struct.unpack("!H", payload[:2])[0], payload[2:]
                return None, payload  # no status code (or a malformed 1-byte payload)

    def wait_eof(self, timeout: float = 5.0) -> float:
        """Reads and discards until EOF; returns when it came (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the server did not close the connection")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            except socket.timeout:
                continue
            if not chunk:
                self.eof = True
                return time.monotonic()


def wait_closed_by_server(sock: socket.socket, timeout: float) -> float:
    """Waits until the server closes a socket (EOF or reset); returns when (monotonic)."""
    return FrameReader(sock).wait_eof(timeout)
