"""JWT authentication, Origin policy and per-IP limits with the Python `websockets` client. The
HS256 tokens are built with the standard library (hmac, hashlib, base64), as an issuer in
another language would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

SECRET = "interop secret, at least 32 bytes long"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict, secret: str = SECRET, alg: str = "HS256") -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _status_of(uri: str, **kw) -> int:
    try:
        async with connect(uri, open_timeout=5, **kw):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def test_token_in_query_header_and_cookie(start):
    srv = start("--jwt-secret", SECRET, "--jwt-cookie", "fanout_jwt")
    token = hs256({"exp": int(time.time()) + 600, "sub": "py"})

    async def main():
        async with connect(f"{srv.url}?token={token}") as ws:
            await ws.send("query")
            assert await ws.recv() == "query"
        async with connect(srv.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send("header")
            assert await ws.recv() == "header"
        async with connect(srv.url, additional_headers={"Cookie": f"fanout_jwt={token}"}) as ws:
            await ws.send("cookie")
            assert await ws.recv() == "cookie"

    run(main())


def test_refused_tokens_get_401(start):
    srv = start("--jwt-secret", SECRET)
    now = int(time.time())

    async def main():
        assert await _status_of(srv.url) == 401
        assert await _status_of(f"{srv.url}?token={hs256({'exp': now - 5})}") == 401
        assert await _status_of(f"{srv.url}?token={hs256({'exp': now + 60}, 'wrong secret')}") == 401
        none = hs256({"exp": now + 60}, alg="none").rsplit(".", 1)[0] + "."
        assert await _status_of(f"{srv.url}?token={none}") == 401
        try:
            async with connect(srv.url, open_timeout=5):
                pass
        except InvalidStatus as e:
            assert e.response.headers["WWW-Authenticate"].startswith("Bearer")
            assert b"missing token" in e.response.body

    run(main())


def test_close_on_expiry_is_1008(start):
    srv = start("--jwt-secret", SECRET, "--jwt-close-on-expiry")
    token = hs256({"exp": int(time.time()) + 2})

    async def main():
        async with connect(f"{srv.url}?token={token}") as ws:
            with pytest.raises(ConnectionClosed) as exc:
                await asyncio.wait_for(ws.recv(), 10)
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 1008

    run(main())


def test_origin_and_per_ip_cap(start):
    srv = start("--allowed-origins", "https://*.example.com", "--max-conns-per-ip", "2")

    async def main():
        assert await _status_of(srv.url, origin="https://evil.example.net") == 403
        a = await connect(srv.url, origin="https://app.example.com")
        b = await connect(srv.url)  # no Origin: a non-browser client
        assert await _status_of(srv.url) == 429
        await a.close()
        await b.close()
        # The slots come back once the server has reaped the connections.
        for _ in range(100):
            if await _status_of(srv.url) == 101:
                return
            await asyncio.sleep(0.05)
        pytest.fail("per-IP slots were not released")

    run(main())
