"""The provider's network backend (bot/providers/network.py) through the real provider and httpx code, on
asyncio's loop and on uvloop: streams, timeouts, refused and broken connections, back-pressure, TLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import trustme
import uvloop

from bot.config import ProviderSettings
from bot.providers.anthropic import AnthropicProvider
from bot.providers.base import (
    ChatMessage,
    ChatRequest,
    ErrorKind,
    Finish,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Timeouts,
    ToolCall,
    Usage,
)
from bot.providers.clients import make_client
from bot.providers.network import HIGH_WATER, AsyncioBackend, AsyncioStream
from bot.providers.openai_compat import OpenAICompatibleProvider
from tests.support.llm_server import LLMServer, Script

REQUEST = ChatRequest(model="m", messages=(ChatMessage("user", "hi"),))
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Runs a test's coroutine on asyncio's own loop, then on uvloop's (what `parley run` uses)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


def provider(base_url: str, timeouts: Timeouts | None = None) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        "openrouter", ProviderSettings(base_url=base_url, api_key="sk-test"), timeouts or Timeouts()
    )


async def text(openrouter: OpenAICompatibleProvider) -> str:
    return "".join([e.text async for e in openrouter.stream(REQUEST) if isinstance(e, TextDelta)])


async def failure(openrouter: OpenAICompatibleProvider) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await text(openrouter)
    return caught.value


async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    """A loopback TCP server answering each connection with `handle`, and its port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_replies_stream_through_the_backend(run: Run) -> None:
    async def scenario() -> None:
        async with LLMServer() as llm:
            llm.enqueue(*[Script(tokens=[f"{i}a", f"{i}b"], delay=0.01) for i in range(3)])
            openrouter = provider(llm.openai_base_url)
            texts = await asyncio.gather(*(text(openrouter) for _ in range(3)))
            await openrouter.aclose()
            assert sorted(texts) == ["0a0b", "1a1b", "2a2b"]
            client = make_client(Timeouts(), ssl.create_default_context())
            async with client.stream("GET", f"{llm.openai_base_url}/models") as response:
                assert isinstance(response.extensions["network_stream"], AsyncioStream)
            await client.aclose()

    run(scenario())


def test_a_stalled_read_times_out_and_the_provider_streams_on(run: Run) -> None:
    async def scenario() -> None:
        async with LLMServer() as llm:
            llm.enqueue(Script(tokens=["a", "b"], stall_after=1), Script(tokens=["c", "d"]))
            openrouter = provider(llm.openai_base_url, Timeouts(first_token=5.0, chunk_gap=0.3))
            stalled = await failure(openrouter)  # the read waiting on the socket is cancelled
            assert stalled.kind is ErrorKind.TIMEOUT and "between two parts" in stalled.detail
            assert await text(openrouter) == "cd"
            await openrouter.aclose()
            # httpx's own read timeout, which the backend raises itself
            client = make_client(Timeouts(), ssl.create_default_context())
            llm.enqueue(Script(tokens=["a", "b"], stall_after=1))
            url, limit = f"{llm.openai_base_url}/chat/completions", httpx.Timeout(5.0, read=0.2)
            with pytest.raises(httpx.ReadTimeout):
                async with client.stream("POST", url, json={}, timeout=limit) as response:
                    async for _ in response.aiter_raw():
                        pass
            await client.aclose()

    run(scenario())


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_refused_connection_reads_as_nothing_there(run: Run, closed_port: int) -> None:
    base = f"http://127.0.0.1:{closed_port}/v1"

    async def scenario() -> ProviderError:
        openrouter = provider(base, Timeouts(connect=5))
        try:
            return await failure(openrouter)
        finally:
            await openrouter.aclose()

    error = run(scenario())
    assert error.kind is ErrorKind.UNREACHABLE
    assert error.user_message() == (
        f"Nothing answers at {base}; check that the openrouter server is running and its address is right."
    )


def test_a_peer_that_closes_mid_stream_breaks_the_stream(run: Run) -> None:
    async def closes_after_one_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head + b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        writer.close()  # a clean close (FIN) before the body's last chunk

    async def scenario() -> None:
        server, port = await raw_server(closes_after_one_event)
        seen: list[str] = []
        openrouter = provider(f"http://127.0.0.1:{port}/v1")
        with pytest.raises(ProviderError) as caught:
            async for event in openrouter.stream(REQUEST):
                seen.append(event.text if isinstance(event, TextDelta) else "")
        assert (caught.value.kind, seen) == (ErrorKind.BROKEN_STREAM, ["Hel"])
        async with LLMServer() as llm:  # and a connection reset (RST) mid-stream
            llm.enqueue(Script(tokens=["a", "b", "c"], drop_after=1))
            reset = provider(llm.openai_base_url)
            assert (await failure(reset)).kind is ErrorKind.BROKEN_STREAM
            await reset.aclose()
        await openrouter.aclose()
        server.close()

    run(scenario())


def test_a_large_body_read_slowly_pauses_the_socket_and_arrives_whole(run: Run) -> None:
    body = hashlib.shake_256(b"parley").digest(8 * 1024 * 1024)

    async def sends_a_large_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, len(body), 65536):
            writer.write(body[start : start + 65536])
            await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, port = await raw_server(sends_a_large_body)
        client = make_client(Timeouts(), ssl.create_default_context())
        async with asyncio.timeout(30), client.stream("GET", f"http://127.0.0.1:{port}/") as response:
            pieces = response.aiter_raw()
            received = [await anext(pieces)]
            stream = response.extensions["network_stream"]
            while not stream._reading_paused:  # the server keeps sending while nobody reads
                await asyncio.sleep(0.01)
            assert stream._buffered <= HIGH_WATER + 256 * 1024  # at most one receive past the mark
            received += [piece async for piece in pieces]  # reading resumes as the buffer drains
        await client.aclose()
        server.close()
        assert b"".join(received) == body

    run(scenario())


def test_a_write_the_peer_never_reads_times_out(run: Run) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def scenario() -> None:
        server, port = await raw_server(never_reads)
        client = make_client(Timeouts(), ssl.create_default_context())
        with pytest.raises(httpx.WriteTimeout):
            await client.post(
                f"http://127.0.0.1:{port}/",
                content=b"x" * (64 * 1024 * 1024),
                timeout=httpx.Timeout(5, write=0.3),
            )
        await client.aclose()
        for writer in held:
            writer.close()
        server.close()

    run(scenario())


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def https_server(authority: trustme.CA) -> ssl.SSLContext:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(tls)
    tls.set_alpn_protocols(["h2", "http/1.1"])
    return tls


def test_tls_to_a_trusted_server_streams_and_an_untrusted_one_is_refused(
    run: Run, authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))

    async def scenario() -> None:
        async with LLMServer(tls=https_server(authority)) as llm:
            assert llm.openai_base_url.startswith("https://")
            llm.enqueue(Script(tokens=["Hel", "lo"], delay=0.01))
            monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # what httpx reads for its CA certificates
            openrouter = provider(llm.openai_base_url)
            assert await text(openrouter) == "Hello"
            await openrouter.aclose()
            client = make_client(Timeouts(), httpx.create_ssl_context())
            async with client.stream("GET", f"{llm.openai_base_url}/models") as response:
                tls = response.extensions["network_stream"].get_extra_info("ssl_object")
                assert tls.selected_alpn_protocol() == "http/1.1"  # httpcore asks for HTTP/1.1 alone
                assert tls.getpeercert()["subjectAltName"] == (("IP Address", "127.0.0.1"),)
            await client.aclose()
            monkeypatch.delenv("SSL_CERT_FILE")
            openrouter = provider(llm.openai_base_url)
            untrusted = await failure(openrouter)
            await openrouter.aclose()
            assert (untrusted.kind, untrusted.detail) == (
                ErrorKind.UNAVAILABLE,
                "could not connect (ConnectError)",
            )

    run(scenario())


def test_a_tls_handshake_that_never_answers_times_out(run: Run) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the connection, never answers the client's hello

    async def scenario() -> None:
        server, port = await raw_server(silent)
        openrouter = provider(f"https://127.0.0.1:{port}/v1", Timeouts(connect=0.3))
        error = await failure(openrouter)
        assert (error.kind, error.detail) == (ErrorKind.UNAVAILABLE, "could not connect (ConnectTimeout)")
        await openrouter.aclose()
        for writer in held:
            writer.close()
        server.close()

    run(scenario())


def test_a_proxy_in_the_environment_keeps_httpx_own_transports(
    run: Run, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    async def scenario() -> None:
        async with LLMServer() as proxy:  # answers the absolute-form requests a client sends a proxy
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            proxy.enqueue(Script(tokens=["via ", "proxy"]))
            openrouter = provider(f"http://127.0.0.1:{closed_port}/v1")
            assert await text(openrouter) == "via proxy"
            await openrouter.aclose()

    run(scenario())


def test_unix_sockets_go_through_httpcore_own_backend(run: Run, tmp_path: Path) -> None:
    path = str(tmp_path / "provider.sock")

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_unix_server(answers, path)
        async with httpcore.AsyncConnectionPool(uds=path, network_backend=AsyncioBackend()) as pool:
            response = await pool.request("GET", "http://localhost/")
        assert (response.status, response.content) == (200, b"ok")
        assert not isinstance(response.extensions["network_stream"], AsyncioStream)
        server.close()

    run(scenario())


CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunks(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


def test_the_chunks_of_one_read_are_handed_over_together(run: Run) -> None:
    """h11 parses each chunk apart; what one read brought goes up httpx's iterators as one piece, in
    order, the body's end included, and the connection is used again for the next request."""
    first_piece = asyncio.Event()
    connections: list[int] = []

    async def answers_in_two_writes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(CHUNKED + chunks(b"a", b"bc", b"d"))
            await first_piece.wait()
            first_piece.clear()
            writer.write(chunks(b"e", b"f") + b"0\r\n\r\n")

    async def scenario() -> None:
        server, port = await raw_server(answers_in_two_writes)
        client = make_client(Timeouts(), ssl.create_default_context())
        for _ in range(2):
            async with asyncio.timeout(10), client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                pieces = []
                async for piece in response.aiter_raw():
                    pieces.append(piece)
                    if len(pieces) == 1:
                        first_piece.set()
            assert pieces == [b"abcd", b"ef"]
        assert len(connections) == 1
        await client.aclose()
        server.close()

    run(scenario())


def test_a_response_read_to_its_end_is_closed_without_a_pass_of_the_loop(run: Run) -> None:
    """With a thousand replies streaming a pass of the event loop takes a few hundred milliseconds, and a
    reply's final text waits for its response to close: closing one whose end is read takes none. (The
    connection's lock was anyio's, which hands the loop a pass at every acquire.)"""

    async def answers_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(CHUNKED + chunks(b"a", b"b") + b"0\r\n\r\n")

    async def scenario() -> list[int]:
        server, port = await raw_server(answers_at_once)
        client = make_client(Timeouts(), ssl.create_default_context())
        loop = asyncio.get_running_loop()
        passes: list[int] = []
        counting = False

        def count() -> None:  # once per pass of the loop, while counting
            if counting:
                passes[-1] += 1
                loop.call_soon(count)

        for _ in range(2):  # a new connection, then the same one again
            async with asyncio.timeout(10), client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                async for piece in response.aiter_raw():  # its end read with it: the iterator closes it
                    assert piece == b"ab"
                    passes.append(0)
                    counting = True
                    loop.call_soon(count)
                counting = False
            await asyncio.sleep(0)
        await client.aclose()
        server.close()
        return passes

    assert run(scenario()) == [0, 0]


def test_a_broken_chunk_behind_good_ones_fails_the_stream(run: Run) -> None:
    async def sends_a_bad_chunk_size(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CHUNKED + chunks(b"a", b"b") + b"zz\r\nnot a chunk\r\n")
        await writer.drain()

    async def scenario() -> None:
        server, port = await raw_server(sends_a_bad_chunk_size)
        client = make_client(Timeouts(), ssl.create_default_context())
        pieces = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with asyncio.timeout(10), client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                async for piece in response.aiter_raw():
                    pieces.append(piece)
        assert pieces == [b"ab"]  # what came before the broken chunk, then the error
        await client.aclose()
        server.close()

    run(scenario())


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


def test_the_text_of_one_read_comes_as_one_delta_in_order_with_reasoning(run: Run) -> None:
    def delta(**fields: str) -> str:
        return json.dumps({"choices": [{"index": 0, "delta": fields}]})

    events = [delta(reasoning="Hmm"), delta(content="a"), delta(content="b")]
    events += [delta(reasoning=" so"), delta(content="c", role="assistant")]
    later = [delta(content="d"), '{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}']

    first_read = asyncio.Event()

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CHUNKED + chunks(*map(sse, events)))
        await first_read.wait()  # the rest in a read of its own
        writer.write(chunks(*map(sse, later), sse("[DONE]")) + b"0\r\n\r\n")

    async def scenario() -> list[Any]:
        server, port = await raw_server(answers)
        openrouter = provider(f"http://127.0.0.1:{port}/v1")
        seen = []
        async with asyncio.timeout(10):
            async for event in openrouter.stream(REQUEST):
                seen.append(event)
                if event == TextDelta("c"):
                    first_read.set()
        await openrouter.aclose()
        server.close()
        return seen

    seen = run(scenario())
    assert seen == [
        ReasoningDelta("Hmm"),
        TextDelta("ab"),
        ReasoningDelta(" so"),
        TextDelta("c"),
        TextDelta("d"),
        Finish("stop"),
    ]


def test_anthropic_text_of_one_read_comes_as_one_delta_before_its_tool_call(run: Run) -> None:
    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    body = [
        event("message_start", message={"usage": {"input_tokens": 5, "output_tokens": 1}}),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let "}),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "me look."}),
        event("content_block_stop", index=0),
        event("content_block_start", index=1, content_block={"type": "tool_use", "id": "t1", "name": "web"}),
        event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": "{}"}),
        event("content_block_stop", index=1),
        event("content_block_start", index=2, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=2, delta={"type": "text_delta", "text": "!"}),
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
        event("message_stop"),
    ]

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CHUNKED + chunks(*body) + b"0\r\n\r\n")

    async def scenario() -> list[Any]:
        server, port = await raw_server(answers)
        settings = ProviderSettings(base_url=f"http://127.0.0.1:{port}", api="anthropic", api_key="k")
        claude = AnthropicProvider("anthropic", settings, Timeouts())
        async with asyncio.timeout(10):
            seen = [event async for event in claude.stream(REQUEST)]
        await claude.aclose()
        server.close()
        return seen

    seen = run(scenario())
    assert seen[:3] == [TextDelta("Let me look."), ToolCall("t1", "web", "{}"), TextDelta("!")]
    assert seen[-2:] == [Usage(5, 9), Finish("tool_calls")]


def test_a_response_that_is_not_an_event_stream_breaks_the_stream(run: Run) -> None:
    async def answers_a_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        page = b"<html>a login page</html>"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(page))
        writer.write(page)

    async def scenario() -> None:
        server, port = await raw_server(answers_a_page)
        openrouter = provider(f"http://127.0.0.1:{port}/v1")
        error = await failure(openrouter)
        assert (error.kind, error.detail) == (
            ErrorKind.BROKEN_STREAM,
            "the response is not an event stream (text/html)",
        )
        assert set(openrouter._clients._streams.values()) == {0}  # its client given back
        await openrouter.aclose()
        server.close()

    run(scenario())
