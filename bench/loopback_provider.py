"""A loopback OpenAI-compatible provider for benchmarks, run in its own process.

It writes its send time into every token, `[ARRIVED/SENT]` for the first and `[SENT]` after, using
CLOCK_MONOTONIC (shared by processes on one Linux machine), so a benchmark can read latencies off the
text it sees without instrumenting the code under test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import time

from bot.config import ProviderSettings, Settings
from bot.tokens import estimate_tokens

MODEL_ID = "loopback-1"


def engine_settings(port: int, directory: str, **more: object) -> Settings:
    """Settings for an engine answering from the provider on `port`, with its database in `directory`."""
    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{directory}/bench.db",
        default_model=f"bench/{MODEL_ID}",
        providers={"bench": ProviderSettings(base_url=f"http://127.0.0.1:{port}/v1")},
        **more,
    )


def start(tokens: int, rate: float) -> tuple[multiprocessing.Process, int]:
    """Start the provider process; returns it and the port it listens on."""
    port_queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=serve_provider, args=(port_queue, tokens, rate), daemon=True)
    process.start()
    return process, port_queue.get(timeout=30)


def token_times(text: str) -> list[float]:
    """The send times stamped into a reply, in order (the first token's arrival time excluded)."""
    return [float(part[1:].split("/")[-1]) for part in text.split("]") if part.startswith("[")]


def last_token_time(text: str) -> float | None:
    """The send time of the last token a text shows (`token_times(text)[-1]`, without parsing them all:
    a bench's surface reads it at every render, and the bench's own work should not count as the
    engine's); None before the first."""
    end = text.rfind("]")
    begin = text.rfind("[", 0, end)
    return float(text[begin + 1 : end].rsplit("/", 1)[-1]) if begin >= 0 else None


def serve_provider(port_queue: multiprocessing.Queue, tokens: int, rate: float) -> None:
    """HTTP/1.1 on asyncio's bare protocol, each token a timer: a thousand streams at 50 tokens/s must
    not make the provider the slowest part of the benchmark (aiohttp's per-write cost did).

    A forked process starts with the bench's objects (a hundred thousand and more); frozen, the
    provider's own garbage collections skip them instead of stopping its streams to walk them."""
    gc.freeze()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(tokens, rate), "127.0.0.1", 0, backlog=4096)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests in order, each answered in full before the next is read."""

    def __init__(self, tokens: int, rate: float) -> None:
        self._tokens = tokens
        self._rate = rate
        self._buffer = bytearray()
        self._wanted = 0  # bytes the request being read needs in all, once its head is in
        self._busy = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data  # a bytearray grows in place: a 540 KB body is not copied once per chunk
        if not self._wanted or len(self._buffer) >= self._wanted:
            self._next_request()

    def _next_request(self) -> None:
        head_end = self._buffer.find(b"\r\n\r\n")
        if self._busy or head_end < 0:
            return
        head = self._buffer[:head_end].decode("latin-1").split("\r\n")
        length = next(
            (int(line.split(":", 1)[1]) for line in head[1:] if line.lower().startswith("content-length:")), 0
        )
        self._wanted = head_end + 4 + length
        if len(self._buffer) < self._wanted:
            return
        arrived = time.monotonic()  # the request's last byte is in
        body = bytes(self._buffer[head_end + 4 : self._wanted])
        del self._buffer[: self._wanted]
        self._wanted = 0
        method, path, _ = head[0].split(" ", 2)
        if method == "GET" and path.endswith("/models"):
            body = json.dumps({"data": [{"id": MODEL_ID, "context_length": 131072}]}).encode()
            self._write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            self._write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            self._next_request()
            return
        self._busy = True
        self._write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        for index in range(self._tokens):
            loop.call_at(loop.time() + index / self._rate, self._token, index, arrived, body)

    def _token(self, index: int, arrived: float, body: bytes) -> None:
        now = time.monotonic()
        stamp = f"[{arrived:.6f}/{now:.6f}]" if index == 0 else f"[{now:.6f}]"
        self._chunk(_chunk({"content": stamp}, None))
        if index < self._tokens - 1:
            return
        self._chunk(_chunk({}, "stop"))
        prompt = prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": self._tokens,
            "total_tokens": prompt + self._tokens,
        }
        self._chunk(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._write(b"0\r\n\r\n")
        self._busy = False
        self._next_request()

    def _chunk(self, data: bytes) -> None:
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)


def prompt_tokens(body: bytes) -> int:
    """The prompt's tokens as the engine estimates them, so that its calibration stays at 1 and a 128k
    window holds 128k tokens' worth of turns. (A fixed figure here made the engine take its estimates
    for three times too high after the first reply, and fill the window with three times the turns.)
    Counted when the reply ends, so that it delays no token."""
    try:
        messages = json.loads(body).get("messages") or []
    except ValueError:
        return 0
    total = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        text = "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
        total += estimate_tokens(text)
    return total


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    body = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()
