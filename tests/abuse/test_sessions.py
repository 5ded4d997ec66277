"""Connections end when they should: expired tokens, foreign origins, slow clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.api.chains import INTERACTIONS_PATH
from app.core.auth import TokenVerifier
from tests.conftest import TEST_DATA_KEY, TEST_SECRET, make_settings
from tests.support.replicas import replica

VERIFIER = TokenVerifier(make_settings(Path("/nonexistent")))


def token(ttl_s: int = 600, tenant: str = "acme", user: str = "u") -> str:
    return VERIFIER.mint(tenant_id=tenant, user_id=user, roles=("rep",), ttl_s=ttl_s)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("sessions")
    env = {"AUTH_JWT_SECRET": TEST_SECRET, "DATA_ENCRYPTION_KEY": TEST_DATA_KEY, "APP_ENV": "test", "DATA_DIR": str(base), "PUBLIC_URL": "https://crm.example.com",
           "AUTH_LEEWAY_S": "0", "PUSH_HEARTBEAT_S": "1", "WS_SEND_TIMEOUT_S": "1",
           "HTTP_HEADER_TIMEOUT_S": "1", "REQUEST_BODY_TIMEOUT_S": "1", "HTTP_MAX_HEADER_BYTES": "4096",
           "RATE_LIMIT_TENANT": "100000/minute", "RATE_LIMIT_USER": "100000/minute"}
    with replica(env, base / "server.log") as url:
        yield url


def ws(url: str, customer: str = "cust-s") -> str:
    return url.replace("http://", "ws://") + f"/ws/ai/insights/{customer}"


async def test_a_websocket_closes_4401_when_its_token_expires(server: str) -> None:
    started = time.monotonic()
    async with connect(ws(server), additional_headers={"Authorization": f"Bearer {token(ttl_s=2)}"}) as socket_:
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                messages.append(json.loads(await asyncio.wait_for(socket_.recv(), 10)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert any(m.get("code") == "token_expired" for m in messages), messages
    assert time.monotonic() - started < 6


async def test_a_fresh_token_extends_the_session(server: str) -> None:
    async with connect(ws(server), additional_headers={"Authorization": f"Bearer {token(ttl_s=2)}"}) as socket_:
        assert json.loads(await socket_.recv())["type"] == "ready"
        await socket_.send(json.dumps({"type": "auth", "token": token(tenant="globex")}))
        refused = json.loads(await asyncio.wait_for(socket_.recv(), 5))
        assert refused["type"] == "error" and refused["code"] == "invalid_token", "another tenant's token"
        await socket_.send(json.dumps({"type": "auth", "token": token(ttl_s=30)}))
        while (reply := json.loads(await asyncio.wait_for(socket_.recv(), 5)))["type"] == "heartbeat":
            pass
        assert reply["type"] == "auth_ok"
        await asyncio.sleep(3)  # past the first token's expiry
        await socket_.send(json.dumps({"type": "ping"}))
        while (reply := json.loads(await asyncio.wait_for(socket_.recv(), 5)))["type"] == "heartbeat":
            pass
        assert reply["type"] == "pong", "still open on the fresh token"


def test_an_sse_feed_ends_with_an_error_when_its_token_expires(server: str) -> None:
    started = time.monotonic()
    with httpx.Client(base_url=server, timeout=10) as http, http.stream(
        "GET", "/api/v1/ai/stream/insights/cust-s", headers={"Authorization": f"Bearer {token(ttl_s=2)}"}
    ) as response:
        body = "".join(response.iter_text())
    assert "event: error" in body and "token_expired" in body
    assert time.monotonic() - started < 6


async def test_cookie_websockets_from_another_site_are_refused(server: str) -> None:
    cookie = {"Cookie": f"crm_session={token()}"}
    async with connect(ws(server), additional_headers={**cookie, "Origin": "https://evil.example"}) as socket_:
        with pytest.raises(ConnectionClosed) as closed:
            await socket_.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    async with connect(ws(server), additional_headers={**cookie, "Origin": "https://crm.example.com"}) as socket_:
        assert json.loads(await socket_.recv())["type"] == "ready", "the service's own pages may"
    async with connect(ws(server), additional_headers={"Authorization": f"Bearer {token()}",
                                                       "Origin": "https://evil.example"}) as socket_:
        assert json.loads(await socket_.recv())["type"] == "ready", "an explicit token is not ambient authority"


def test_slow_headers_are_cut(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        raw.settimeout(5)
        started = time.monotonic()
        reply = raw.recv(1024)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert raw.recv(1024) == b"", "and the connection is closed"
        assert time.monotonic() - started < 4


def test_huge_headers_are_refused_before_they_are_read(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        raw.settimeout(5)
        reply = b""
        try:
            for _ in range(8 * 64):  # up to 8 MB, 16 KB at a time
                raw.sendall(b"a" * 16_384)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = raw.recv(1024)
    assert reply.startswith(b"HTTP/1.1 431"), reply


def answer_to_an_unfinished_body(server: str, declared: int, sent: bytes = b"", *, method: str = "POST",
                                 path: str = f"{INTERACTIONS_PATH}/invoke") -> bytes:
    """The answer to a request whose body never ends, and then the connection closed: one
    more byte from the client stops uvicorn's keep-alive clock, and a connection left open
    would wait on the body for ever."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token()}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + sent)
        raw.settimeout(5)
        reply = raw.recv(4096)
        try:
            raw.sendall(b"{")
            while chunk := raw.recv(4096):
                reply += chunk
        except ConnectionResetError:
            pass  # closed with the byte unread
    return reply


def test_slow_bodies_get_408(server: str) -> None:
    started = time.monotonic()
    reply = answer_to_an_unfinished_body(server, 100, b'{"input"')
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - started < 4


def test_a_body_that_never_comes_gets_408(server: str) -> None:
    assert answer_to_an_unfinished_body(server, 100).startswith(b"HTTP/1.1 408")


def test_a_body_declared_too_large_gets_413(server: str) -> None:
    assert answer_to_an_unfinished_body(server, 10_000_000).startswith(b"HTTP/1.1 413")


def test_a_body_nobody_reads_does_not_hold_the_connection(server: str) -> None:
    """A GET's body is not read by the app: answered, the connection still ends."""
    assert answer_to_an_unfinished_body(server, 100, method="GET", path="/health").startswith(b"HTTP/1.1 200")


def invoke_request(text: str, *, keep_alive: bool = False) -> tuple[bytes, bytes]:
    """An interaction's head and body, the body about 6 bytes a character of `text`."""
    body = json.dumps({"input": {"customer_id": "c-big", "channel": "chat", "text": text}}).encode()
    head = (f"POST {INTERACTIONS_PATH}/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
    return head, body


def status_of(raw: socket.socket) -> bytes:
    """The status line of the next response, and the response read to its end."""
    raw.settimeout(30)
    reply = raw.recv(4096)
    status = reply.split(b"\r\n", 1)[0]
    if status.startswith(b"HTTP/1.1 200"):
        length = int(reply.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        while len(reply.split(b"\r\n\r\n", 1)[1]) < length:
            reply += raw.recv(65536)
    return status


def test_a_body_written_with_its_headers_is_not_taken_for_headers(server: str) -> None:
    """Headers of about 400 bytes and a 12 KB body in one write, as many clients send them,
    under a 4 KB header limit: only the head counts against it."""
    head, body = invoke_request("系统宕机今天必须修复" * 200)
    assert len(body) > 2 * 4096
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(head + body)
        assert status_of(raw) == b"HTTP/1.1 200 OK"


def test_the_next_request_on_a_kept_alive_connection_is_held_to_the_same_limits(server: str) -> None:
    """The head of a second request is counted from its first byte, wherever the reads
    split it: blank lines before it, its end split across two writes."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        first, body = invoke_request("A short note.", keep_alive=True)
        raw.sendall(first + body)
        assert status_of(raw) == b"HTTP/1.1 200 OK"
        head, body = invoke_request("系统宕机今天必须修复" * 200, keep_alive=True)
        raw.sendall(b"\r\n" + head[:-1])  # the blank line that ends it comes with the body
        time.sleep(0.2)
        raw.sendall(head[-1:] + body)
        assert status_of(raw) == b"HTTP/1.1 200 OK"
        raw.sendall(b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 8_000 + b"\r\n\r\n")
        assert status_of(raw) == b"HTTP/1.1 431 Request Header Fields Too Large"


def chunked_invoke() -> tuple[bytes, bytes]:
    """An interaction's head for a chunked body, and the body (12 KB) in 1 KB chunks
    without the last one."""
    body = json.dumps({"input": {"customer_id": "c-big", "channel": "chat", "text": "系统宕机今天必须修复" * 200}}).encode()
    head = (f"POST {INTERACTIONS_PATH}/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token()}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[n:n + 1024]), body[n:n + 1024]) for n in range(0, len(body), 1024))
    return head, chunks


def test_trailers_are_held_to_the_header_limit(server: str) -> None:
    """A chunked body's trailers are headers: httptools buffered a trailer whole and
    uvicorn kept every one, for as long as the body's deadline left a client to send
    them. Trailers within the limit, and chunks larger than it, pass."""
    host, port = server.removeprefix("http://").split(":")
    head, chunks = chunked_invoke()
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(head + chunks + b"0\r\nX-Note: fine\r\n\r\n")
        assert status_of(raw) == b"HTTP/1.1 200 OK"
    for trailers in (b"X-Padding: " + b"a" * 16_384 for _ in range(64)), (b"X-%d: a\r\n" % n for n in range(100_000)):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(head + chunks + b"0\r\n")
            raw.settimeout(5)
            try:
                for piece in trailers:
                    raw.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert raw.recv(1024).startswith(b"HTTP/1.1 431")


def close_code_after(raw: socket.socket, timeout_s: float) -> int | None:
    """Reads server frames off a raw socket until a close frame; returns its code."""
    raw.settimeout(timeout_s)
    buffer = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                break
            payload, buffer = buffer[offset:offset + length], buffer[offset + length:]
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")


def test_a_websocket_that_never_reads_is_closed_1013(server: str) -> None:
    """A client stops reading; the server's sends back up; after WS_SEND_TIMEOUT_S the
    session ends with 1013 (try again later), which the client sees once it reads again."""
    host, port = server.removeprefix("http://").split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((host, int(port)))
    raw.sendall(f"GET /ws/ai/scoring HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token(tenant='slow-reader')}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 101"), "upgraded; from here on the client never reads"
    leads = [{"lead_id": f"lead-{n}", "job_title": "VP Marketing", "email_clicks_30d": n % 7} for n in range(100)]
    with httpx.Client(base_url=server, timeout=60, headers={
            "Authorization": f"Bearer {token(tenant='slow-reader')}"}) as http:
        for _ in range(25):  # 2,500 score events of ~2.5 KB: far more than the socket buffers hold
            assert http.post("/api/v1/ai/scoring/leads/batch", json={"inputs": leads}).status_code == 200
    time.sleep(2.5)  # past the send timeout
    with raw:
        assert close_code_after(raw, timeout_s=10) == 1013
