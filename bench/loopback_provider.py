"""A loopback OpenAI-compatible provider for benchmarks, run in its own process.

It writes its send time into every token, `[ARRIVED/SENT]` for the first and `[SENT]` after, using
CLOCK_MONOTONIC (shared by processes on one Linux machine), so a benchmark can read latencies off the
text it sees without instrumenting the code under test.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time

from aiohttp import web

from bot.config import ProviderSettings, Settings

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


def serve_provider(port_queue: multiprocessing.Queue, tokens: int, rate: float) -> None:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": MODEL_ID, "context_length": 131072}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(tokens):
            if index:
                await asyncio.sleep(1.0 / rate)
            stamp = f"[{arrived:.6f}/{time.monotonic():.6f}]" if index == 0 else f"[{time.monotonic():.6f}]"
            await response.write(_chunk({"content": stamp}, None))
        await response.write(_chunk({}, "stop"))
        usage = {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port_queue.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    body = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()
