#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into seeds/<target>/ (run from fuzz/).

The seeds are small valid (and a few invalid) inputs in each target's input format, so the
fuzzer starts from the interesting paths instead of finding the WebSocket framing by itself.
"""
import base64
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(fin, op, payload, key=None, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    mbit = 0x80 if key else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if key:
        payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        head += bytes(key)
    return head + payload


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames(target, key):
    k = lambda i: None if key is None else bytes([(key[j] + i) & 0xFF for j in range(4)])
    text = "κόσμε 𝄞 hello".encode()
    write(target, "text", b"\x00" + frame(True, 1, b"Hello", k(0)))
    frag = (
        frame(False, 1, text[:3], k(1))
        + frame(True, 9, b"ping", k(2))
        + frame(False, 0, text[3:9], k(3))
        + frame(True, 10, b"", k(4))
        + frame(True, 0, text[9:], k(5))
    )
    write(target, "fragmented_whole", b"\x00" + frag)
    write(target, "fragmented_cut", b"\x03" + bytes([0, 2, 6]) + frag)
    write(target, "binary16", b"\x01\x07" + frame(True, 2, bytes(range(200)), k(6)))
    write(target, "close", b"\x00" + frame(True, 8, struct.pack(">H", 1000) + b"bye", k(7)))
    write(target, "close_empty", b"\x00" + frame(True, 8, b"", k(8)))
    big = frame(True, 2, b"", k(9))
    big = big[:1] + bytes([big[1] | 127]) + struct.pack(">Q", (1 << 20) + 1) + big[2:]
    write(target, "too_big", b"\x00" + big)
    write(target, "tiny_limit", b"\x08" + frame(True, 2, bytes(100), k(10)))
    write(target, "rsv1_allowed", b"\x10" + frame(True, 1, b"x", k(11), rsv=4))
    write(target, "bad_utf8_cut", b"\x01\x00" + frame(True, 1, b"ab\xffcd", k(12)))
    write(
        target,
        "mixed",
        b"\x02\x10\x03"
        + frame(True, 2, b"\x00\x01", k(13))
        + frame(False, 2, b"ab", k(14))
        + frame(True, 0, b"cd", k(15))
        + frame(True, 1, "日本語".encode(), k(16)),
    )


frames("frames_server", [0x37, 0xFA, 0x21, 0x3D])
frames("frames_client", None)

for name, s in [
    ("ascii", b"hello"),
    ("multibyte", "κόσμε 𝄞 日本語 \U0010FFFF".encode()),
    ("surrogate", b"ab\xed\xa0\x80cd"),
    ("truncated", b"ab\xe2\x82"),
    ("overlong", b"\xc0\x80"),
    ("too_high", b"\xf4\x90\x80\x80"),
]:
    write("utf8_incremental", name + "_whole", b"\x00" + s)
    write("utf8_incremental", name + "_cut", b"\x03\x01\x02\x00" + s)

REQ = (
    b"GET /chat?topics=a,b&token=xyz HTTP/1.1\r\nHost: server.example.com\r\n"
    b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n"
    b"Cookie: sid=42\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\nX-Custom: yes\r\n\r\n"
)
write("handshake_request", "upgrade", b"\x00" + REQ)
write("handshake_request", "upgrade_small_limit", b"\x01" + REQ)
write("handshake_request", "upgrade_v8", b"\x00" + REQ.replace(b"Version: 13", b"Version: 8"))
write("handshake_request", "plain", b"\x00GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
write(
    "handshake_request",
    "post",
    b"\x00POST /publish/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
)

KEY = base64.b64encode(bytes(16))
ACCEPT = base64.b64encode(hashlib.sha1(KEY + GUID).digest())
RESP = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n"
)
write("handshake_response", "plain", b"\x00" + RESP + b"\r\n\x81\x00")
write("handshake_response", "chat", b"\x02" + RESP + b"Sec-WebSocket-Protocol: chat\r\n\r\n")
write("handshake_response", "unoffered", b"\x00" + RESP + b"Sec-WebSocket-Protocol: chat\r\n\r\n")
write("handshake_response", "small_limit", b"\x04" + RESP + b"\r\n")
write(
    "handshake_response",
    "refused",
    b"\x00HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n",
)

# RESP replies as Redis sends them to a subscriber and a publisher, whole and pipelined.
write("resp", "subscribe", b"*3\r\n$9\r\nsubscribe\r\n$10\r\nfanout:new\r\n:1\r\n")
write("resp", "message", b"*3\r\n$7\r\nmessage\r\n$10\r\nfanout:new\r\n$5\r\nhello\r\n")
write("resp", "pipelined", b":2\r\n:0\r\n+OK\r\n$-1\r\n*-1\r\n")
write("resp", "error", b"-NOAUTH Authentication required.\r\n")
write("resp", "nested", b"*2\r\n*2\r\n:1\r\n$1\r\na\r\n*0\r\n")
write("resp", "cut", b"*3\r\n$7\r\nmessage\r\n$10\r\nfanout:n")

with open(os.path.join(HERE, "..", "dict", "http.dict"), "w") as f:
    for tok in [
        "GET", "HTTP/1.1", "HTTP/1.0", "HTTP/1.1 101 Switching Protocols", "\\x0D\\x0A",
        "\\x0D\\x0A\\x0D\\x0A", "Host: ", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Key: ", "Sec-WebSocket-Accept: " + ACCEPT.decode(),
        "Sec-WebSocket-Protocol: ", "Sec-WebSocket-Extensions: ", "chat", "superchat",
        "permessage-deflate", "Content-Length: ", "Origin: ", "Cookie: ", "?", "&", "=", ",",
    ]:
        f.write('"%s"\n' % tok)
