"""WebSocket through the relay, end to end on loopback: a real ``websockets`` server as the
origin, aiohttp's client with ``proxy=http://127.0.0.1:PORT`` (it sends ``GET ws://...`` in
absolute form; the ``websockets`` client would use CONNECT) and raw sockets, through a live
fwproxy (``fwproxy.testing``) with ``[relay] upgrade = ["websocket"]``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.certs import CA

from fwproxy import cacert
from fwproxy.logformat import squid
from fwproxy.testing import LOOPBACK_CONFIG

aiohttp = pytest.importorskip("aiohttp")
websockets = pytest.importorskip("websockets")
from websockets.asyncio.server import serve  # noqa: E402

CONFIG = LOOPBACK_CONFIG + '\n[relay]\nupgrade = ["websocket"]\n'


async def _echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A WebSocket echo origin on 127.0.0.1 (messages up to 16 MiB); yields its port."""
    async with serve(_echo, "127.0.0.1", 0, max_size=16 * 2**20) as server:
        yield server.sockets[0].getsockname()[1]


def run(coro: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro(), 60))


@pytest.fixture
def proxy(fwproxy: Any) -> Any:
    return fwproxy(CONFIG)


def test_aiohttp_ws_through_the_relay_echoes_both_ways(fwproxy: Any, tmp_path: Any) -> None:
    log = tmp_path / "access.log"
    proxy = fwproxy(CONFIG + f"\n[log]\naccess = {str(log)!r}\n")
    big = bytes(range(256)) * 16384  # 4 MiB: more than every buffer on the way (flow control)

    async def main() -> list[Any]:
        async with echo_server() as port, aiohttp.ClientSession() as session:
            url = f"ws://127.0.0.1:{port}/chat"
            async with session.ws_connect(url, proxy=proxy.url, max_msg_size=0) as ws:
                got = []
                for text in ("hello", "wörld", "x" * 70000):
                    await ws.send_str(text)
                    got.append((await ws.receive()).data)
                await ws.send_bytes(big)
                got.append((await ws.receive()).data)
                await ws.close()
                return [got, ws.close_code]

    got, close_code = run(main)
    assert got == ["hello", "wörld", "x" * 70000, big]
    assert close_code == 1000  # the close handshake went through both ways
    [rec] = proxy.wait_for_records(1)
    assert (rec.method, rec.status, rec.result) == ("GET", 101, "TCP_MISS")
    assert rec.target.startswith("http://127.0.0.1:") and rec.target.endswith("/chat")
    assert rec.bytes_in > len(big) and rec.bytes_out > len(big)
    line = squid(rec)
    assert " TCP_MISS/101 " in line and f" GET {rec.target} " in line
    for _ in range(50):  # the access log, as the accesslog filter wrote it
        if log.exists() and log.read_text():
            break
        time.sleep(0.1)
    [written] = log.read_text().splitlines()
    assert written == line


def test_many_messages_both_ways_concurrently(proxy: Any) -> None:
    async def main() -> int:
        async with echo_server() as port, aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{port}/", proxy=proxy.url) as ws:

                async def send() -> None:
                    for i in range(500):
                        await ws.send_str(f"m{i}")

                sender = asyncio.create_task(send())
                seen = [(await ws.receive()).data for _ in range(500)]
                await sender
                assert seen == [f"m{i}" for i in range(500)]
                return len(seen)

    assert run(main) == 500
    proxy.wait_for_records(1)


def _raw(proxy: Any, data: bytes, until: bytes, sock_timeout: float = 10) -> tuple[Any, bytes]:
    url = urlsplit(proxy.url)
    s = socket.create_connection((url.hostname, url.port), timeout=sock_timeout)
    s.sendall(data)
    got = b""
    while until not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return s, got


def upgrade_request(target: str, host: str) -> bytes:
    """An absolute-form WebSocket handshake for ``target`` and a masked text frame "hi"."""
    head = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return head + b"\x81\x82" + b"\x01\x02\x03\x04" + bytes([ord("h") ^ 1, ord("i") ^ 2])


def test_raw_absolute_form_upgrade_and_a_frame(proxy: Any) -> None:
    async def main() -> bytes:
        async with echo_server() as port:
            # the frame right behind the head is held until the 101, then passed on raw
            data = upgrade_request(f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}")
            loop = asyncio.get_running_loop()
            s, got = await loop.run_in_executor(None, _raw, proxy, data, b"\x81\x02hi")
            s.close()
            return got

    got = run(main)
    assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in got
    assert got.endswith(b"\r\n\r\n\x81\x02hi")
    [rec] = proxy.wait_for_records(1)
    assert (rec.status, rec.result) == (101, "TCP_MISS")


def test_refused_upgrade_then_a_smuggled_request_is_checked(fwproxy: Any) -> None:
    # the origin is plain HTTP (it answers 200 and ignores Upgrade); what the client sends
    # after the refused upgrade is a request for a destination the rules deny: 403
    proxy = fwproxy(
        CONFIG.replace(
            '"allow loopback to_localhost"', '"deny denied", "allow loopback to_localhost"'
        )
        + '\n[acl.denied]\nurl_regex = ["/admin"]\n'
    )

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def main() -> bytes:
        server = await asyncio.start_server(origin, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            data = (
                f"GET ws://127.0.0.1:{port}/ HTTP/1.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\n\r\n"
                f"GET http://127.0.0.1:{port}/admin HTTP/1.1\r\n\r\n"
            ).encode()
            loop = asyncio.get_running_loop()
            s, got = await loop.run_in_executor(None, _raw, proxy, data, b"denied")
            s.close()
            return got

    got = run(main)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\n\r\nokHTTP/1.1 403 Forbidden\r\n" in got
    recs = proxy.wait_for_records(2)
    assert [(r.status, r.result) for r in recs] == [(200, "TCP_MISS"), (403, "TCP_DENIED")]


def test_wss_target_is_relayed_over_verified_tls(fwproxy: Any, tmp_path: Any) -> None:
    # aiohttp tunnels wss:// with CONNECT; GET wss://... in absolute form is relayed over TLS
    # that fwproxy originates and verifies, as GET https://... is
    ca = CA("fwproxy upgrade CA")
    cert, key = ca.issue("localhost").write(tmp_path, "origin")
    ca_file = ca.write(tmp_path)
    proxy = fwproxy(CONFIG + f"\n[tls]\nca_file = {str(ca_file)!r}\n")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def main() -> bytes:
        async with serve(_echo, "127.0.0.1", 0, ssl=context) as server:
            port = server.sockets[0].getsockname()[1]
            data = upgrade_request(f"wss://localhost:{port}/tls", f"localhost:{port}")
            loop = asyncio.get_running_loop()
            s, got = await loop.run_in_executor(None, _raw, proxy, data, b"\x81\x02hi")
            s.close()
            return got

    got = run(main)
    assert got.startswith(b"HTTP/1.1 101 ") and got.endswith(b"\r\n\r\n\x81\x02hi")
    [rec] = proxy.wait_for_records(1)
    assert (rec.status, rec.result) == (101, "TCP_MISS")
    assert rec.target.startswith("https://localhost:") and rec.target.endswith("/tls")


def test_wss_through_an_intercepted_connect(fwproxy: Any, tmp_path: Any) -> None:
    # aiohttp tunnels wss:// with CONNECT; bumped, the WebSocket handshake inside the tunnel
    # goes through the relay like any request there, and is spliced after the origin's 101
    origin_ca = CA("fwproxy upgrade origin CA")
    cert, key = origin_ca.issue("localhost").write(tmp_path, "origin")
    cacert.init(str(tmp_path / "bump"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "bump" / "ca.pem"))

    async def main() -> tuple[list[str], Any]:
        async with serve(_echo, "127.0.0.1", 0, ssl=context) as server:
            port = server.sockets[0].getsockname()[1]
            proxy = fwproxy(
                CONFIG
                + f"\n[tls]\nca_file = {str(origin_ca.write(tmp_path))!r}\n"
                + f"\n[tunnel]\npeek_ports = [{port}]\n"
                + f'\n[intercept]\nca = {str(tmp_path / "bump")!r}\nrules = ["bump all"]\n'
            )
            async with aiohttp.ClientSession() as session:
                url = f"wss://localhost:{port}/inside"
                async with session.ws_connect(url, proxy=proxy.url, ssl=client_ctx) as ws:
                    got = []
                    for text in ("one", "two" * 50000):
                        await ws.send_str(text)
                        got.append(str((await ws.receive()).data))
                    await ws.close()
            return got, proxy

    got, proxy = run(main)
    assert got == ["one", "two" * 50000]
    records = proxy.wait_for_records(2)
    inside = [r for r in records if r.method == "GET"]
    assert [(r.status, r.result) for r in inside] == [(101, "TCP_MISS")]
    assert inside[0].target.startswith("https://localhost:") and inside[0].target.endswith(
        "/inside"
    )
    assert [r.result for r in records if r.method == "CONNECT"] == ["TCP_TUNNEL"]


def test_the_websockets_client_through_an_intercepted_connect(fwproxy: Any, tmp_path: Any) -> None:
    # the `websockets` client (its own proxy support: CONNECT, then TLS to the CA fwproxy made)
    from websockets.asyncio.client import connect

    origin_ca = CA("fwproxy websockets-client origin CA")
    cert, key = origin_ca.issue("localhost").write(tmp_path, "origin")
    cacert.init(str(tmp_path / "bump"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "bump" / "ca.pem"))

    async def main() -> tuple[list[str], Any]:
        async with serve(_echo, "127.0.0.1", 0, ssl=context) as server:
            port = server.sockets[0].getsockname()[1]
            proxy = fwproxy(
                CONFIG
                + f"\n[tls]\nca_file = {str(origin_ca.write(tmp_path))!r}\n"
                + f"\n[tunnel]\npeek_ports = [{port}]\n"
                + f'\n[intercept]\nca = {str(tmp_path / "bump")!r}\nrules = ["bump all"]\n'
            )
            url = f"wss://localhost:{port}/ws-client"
            async with connect(url, proxy=proxy.url, ssl=client_ctx, max_size=2**22) as ws:
                got = []
                for text in ("hello", "x" * 1_000_000):
                    await ws.send(text)
                    got.append(str(await ws.recv()))
            return got, proxy

    got, proxy = run(main)
    assert got == ["hello", "x" * 1_000_000]
    records = proxy.wait_for_records(2)
    inside = [r for r in records if r.method == "GET"]
    assert [(r.status, r.result) for r in inside] == [(101, "TCP_MISS")]
    assert inside[0].target.endswith("/ws-client")
    tunnel = [r for r in records if r.method == "CONNECT"]
    assert [r.notes.get("fwproxy.tls") for r in tunnel] == ["bumped"]
