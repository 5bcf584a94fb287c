"""wss:// and https:// through Python's own TLS stack (ssl + `websockets`): echo, ping, close,
ALPN, /healthz, a stalled TLS handshake, and start-up errors for bad certificate files. The
self-signed certificate is made per test session with the openssl command."""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from conftest import BIN
from wsraw import LARGE


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory) -> Path:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make the test certificate (apt-get install openssl)"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True)
    return d


@pytest.fixture
def tls_server(start, cert_dir):
    # The echo test sends 2 MiB: past the 1 MiB default.
    return start("--tls-cert", str(cert_dir / "cert.pem"), "--tls-key", str(cert_dir / "key.pem"),
                 *LARGE)


def client_ctx(cert_dir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert_dir / "cert.pem"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def test_wss_echo_ping_and_close(tls_server, cert_dir):
    url = f"wss://localhost:{tls_server.port}/"

    async def main():
        async with connect(url, ssl=client_ctx(cert_dir), compression=None,
                           max_size=None) as ws:
            await ws.send("hello over TLS ✓")
            assert await ws.recv() == "hello over TLS ✓"
            blob = bytes(range(256)) * 8192  # 2 MiB: many TLS records each way
            await ws.send(blob)
            assert await ws.recv() == blob
            for i in range(200):
                await ws.send(f"m{i}")
            for i in range(200):
                assert await ws.recv() == f"m{i}"
            pong = await ws.ping(b"tls")
            await asyncio.wait_for(pong, 5)
            assert ws.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert ws.close_code == 1000

    run(main())


def test_https_healthz(tls_server, cert_dir):
    conn = http.client.HTTPSConnection("localhost", tls_server.port, context=client_ctx(cert_dir),
                                       timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == b"ok\n"
    conn.close()


def test_untrusted_certificate_is_refused_by_the_client(tls_server):
    async def main():
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(f"wss://localhost:{tls_server.port}/",
                               ssl=ssl.create_default_context()):
                pass

    run(main())


def test_stalled_tls_handshake_is_dropped(start, cert_dir):
    srv = start("--tls-cert", str(cert_dir / "cert.pem"), "--tls-key", str(cert_dir / "key.pem"),
                "--handshake-timeout", "300ms")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then silence
        assert s.recv(100) == b""


def test_bad_certificate_files_fail_at_start(cert_dir, tmp_path):
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(cert_dir / "key.pem")],
         "cannot read"),
        (["--tls-cert", str(empty), "--tls-key", str(cert_dir / "key.pem")], "no certificate in"),
        (["--tls-cert", str(cert_dir / "cert.pem"), "--tls-key", str(empty)], "no private key in"),
        (["--tls-cert", str(cert_dir / "cert.pem")], "--tls-cert needs --tls-key"),
    ]
    for flags, message in cases:
        p = subprocess.run([str(BIN), "serve", "--listen", "127.0.0.1:0", *flags],
                           capture_output=True, timeout=10)
        assert p.returncode != 0, flags
        assert message in p.stderr.decode(), (flags, p.stderr.decode())


def test_wss_with_permessage_deflate(start, cert_dir):
    """Compression and TLS together: compressed frames are sealed like any others."""
    srv = start("--tls-cert", str(cert_dir / "cert.pem"), "--tls-key", str(cert_dir / "key.pem"),
                "--deflate")
    url = f"wss://localhost:{srv.port}/"

    async def main():
        async with connect(url, ssl=client_ctx(cert_dir), max_size=None) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") == (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            doc = '{"items": [' + ",".join(f'{{"id": {i}, "name": "item-{i}"}}' for i in range(20000)) + "]}"
            for _ in range(3):
                await ws.send(doc)
                assert await ws.recv() == doc
            blob = os.urandom(300_000)
            await ws.send(blob)
            assert await ws.recv() == blob

    run(main())
