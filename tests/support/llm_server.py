"""A loopback LLM server speaking the OpenAI-compatible and Anthropic streaming APIs, with faults on demand.

    async with LLMServer() as llm:
        llm.enqueue(Script(tokens=["Hel", "lo"]), Script(status=429, retry_after=2))
        settings = Settings(openrouter_api_key="k", openrouter_base_url=llm.openai_base_url, ...)
        ...
        assert llm.requests[0].json["model"] == "xiaomi/mimo-v2-flash"

Each chat request takes the next queued Script (or, first, the one `by_system` keeps for requests whose
system prompt starts so, or `by_model` for requests for that model); with none queued it echoes the
last user message as `echo: <text>`. Every request is recorded (path, headers, JSON body). `models`
sets the model listing and `models_error` makes it fail. A gated stream whose client hangs up is
recorded in `closed_by_client`.

Like the real APIs, it refuses a tool round that drops the reasoning the model signed: Anthropic thinking
blocks (always signed here), OpenRouter `reasoning_details` (when a Script has a `signature` or
`redacted` part) and DeepSeek's `reasoning_content` must come back unchanged on the assistant message
with the tool calls. Models in `completion_tokens_only` refuse `max_tokens`, as OpenAI's reasoning
models do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import serve_app


@dataclass
class Script:
    """What one request gets. Faults: `status`, `error_after`, `drop_after`, `stall_after`, `no_terminal`."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " there"])
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning"  # OpenAI-compatible: or "reasoning_content" (DeepSeek, llama.cpp)
    signature: str | None = None  # signs the reasoning (OpenRouter: in reasoning_details; Anthropic: always)
    redacted: str | None = None  # encrypted reasoning: Anthropic redacted_thinking, OpenRouter encrypted
    gate: asyncio.Semaphore | None = None  # when set, each token waits for a release()
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, JSON arguments)
    usage: tuple[int, int] | None = (12, 3)
    cost: float | None = None
    reasoning_tokens: int = 0  # of the completion tokens; sent in the usage's details, as OpenAI does
    cached_tokens: int = 0  # of the prompt tokens
    finish: str = "stop"
    delay: float = 0.0  # between tokens
    first_delay: float = 0.0  # before the first token
    keepalives: int = 0  # SSE comments before the first token
    status: int | None = None  # answer with this HTTP error instead of a stream
    body: dict[str, Any] | None = None  # the error response's JSON body
    error_text: str | None = None  # or this text instead (an HTML page from a proxy, a plain-text 404)
    error_type: str = "text/html"
    retry_after: float | None = None
    error_after: int | None = None  # in-band error after this many tokens
    error: dict[str, Any] = field(
        default_factory=lambda: {"code": "server_error", "message": "Provider disconnected"}
    )
    drop_after: int | None = None  # close the connection after this many tokens
    stall_after: int | None = None  # go silent after this many tokens
    no_terminal: bool = False  # end the body without a finish or terminal marker
    raw: list[bytes] | None = None  # send exactly these byte chunks instead


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    body: bytes = b""  # as it arrived


class LLMServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls  # serve HTTPS with this server context
        self.requests: list[RecordedRequest] = []
        self.models: list[dict[str, Any]] = [
            {"id": "xiaomi/mimo-v2-flash", "context_length": 262144, "supported_parameters": ["tools"]},
            {
                "id": "openai/gpt-4o-mini",
                "context_length": 128000,
                "architecture": {"input_modalities": ["text", "image"]},
                "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},  # USD per token
            },
        ]
        self.completion_tokens_only: set[str] = set()
        # What the assistant message with a tool call must carry back when sent to the model that made
        # the call again, by (model, call id); see the module docstring.
        self._replays: dict[tuple[str, str], dict[str, Any]] = {}
        self.anthropic_models: list[str] = ["claude-sonnet-4-5"]
        self.models_error: Script | None = None  # set to make the model listing fail
        self._scripts: deque[Script] = deque()
        # Streams whose client closed the connection while a gated token waited, by request path.
        self.closed_by_client: list[str] = []
        # The usage echoed replies report (None: none, so token estimates are never corrected).
        self.echo_usage: tuple[int, int] | None = (12, 3)
        # A script for the next request whose system prompt starts with the key, ahead of the queue.
        self.by_system: dict[str, Script] = {}
        # A script for the next request for this model (its id as sent), ahead of the queue.
        self.by_model: dict[str, Script] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def enqueue(self, *scripts: Script) -> None:
        self._scripts.extend(scripts)

    @property
    def openai_base_url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path in ("/v1/chat/completions", "/v1/messages")]

    async def __aenter__(self) -> LLMServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/v1/models", self._list)
        self._runner, self.port = await serve_app(app, self._tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    # Handlers

    async def _list(self, request: web.Request) -> web.Response:
        self.requests.append(RecordedRequest(request.path, dict(request.headers), {}))
        if self.models_error is not None:
            return self._error(self.models_error)
        if "anthropic-version" in request.headers:
            data = [{"id": m, "type": "model"} for m in self.anthropic_models]
            return web.json_response(
                {"data": data, "has_more": False, "last_id": data[-1]["id"] if data else None}
            )
        return web.json_response({"data": self.models})

    def _next(self, body: dict[str, Any]) -> Script:
        system = _system_of(body)
        for start, script in list(self.by_system.items()):
            if system.startswith(start):
                del self.by_system[start]
                return script
        if (script := self.by_model.pop(str(body.get("model", "")), None)) is not None:
            return script
        if self._scripts:
            return self._scripts.popleft()
        last = next((m for m in reversed(body.get("messages", [])) if m.get("role") == "user"), {})
        content = last.get("content", "")
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        words = f"echo: {content}".split(" ")
        return Script(tokens=[w if i == 0 else " " + w for i, w in enumerate(words)], usage=self.echo_usage)

    def _error(self, script: Script) -> web.Response:
        headers = {"Retry-After": f"{script.retry_after:g}"} if script.retry_after is not None else {}
        if script.error_text is not None:
            headers["Content-Type"] = script.error_type
            return web.Response(text=script.error_text, status=script.status or 500, headers=headers)
        body = script.body or {"error": {"code": script.status, "message": f"status {script.status}"}}
        return web.json_response(body, status=script.status or 500, headers=headers)

    async def _start(self, request: web.Request) -> tuple[Script, web.StreamResponse | web.Response, str]:
        """The Script for this request, the response begun for it, and the model it asked for."""
        body = await request.json()
        raw = await request.read()
        self.requests.append(RecordedRequest(request.path, dict(request.headers), body, raw))
        model = str(body.get("model", ""))
        if refusal := self._refusal(request.path, body):
            return Script(), web.json_response(refusal, status=400), model
        script = self._next(body)
        if script.status:
            return script, self._error(script), model
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in script.raw or []:  # exact bytes, e.g. a reference fixture split at a chosen offset
            await response.write(piece)
            await asyncio.sleep(0)
        return script, response, model

    def _refusal(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The 400 body the real API would answer this request with, or None."""
        if path == "/v1/messages":
            return self._anthropic_refusal(body)
        if body.get("model") in self.completion_tokens_only and "max_tokens" in body:
            message = (
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead."
            )
            return {"error": {"message": message, "type": "invalid_request_error", "param": "max_tokens"}}
        for message in body.get("messages", []):
            for call in message.get("tool_calls") or []:
                for key, value in self._replays.get((body.get("model"), call.get("id")), {}).items():
                    if message.get(key) != value:
                        text = (
                            f"Function call is missing its {key}; pass the assistant message back unmodified."
                        )
                        return {"error": {"code": 400, "message": text}}
        return None

    def _anthropic_refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        messages = [m for m in body.get("messages", []) if isinstance(m.get("content"), list)]
        for message in messages:
            if any(b.get("type") == "text" and not b.get("text") for b in message["content"]):
                return _anthropic_error("messages: text content blocks must be non-empty")
        assistants = [m for m in messages if m.get("role") == "assistant"]
        if not assistants:
            return None
        content = assistants[-1]["content"]
        for block in content:
            key = (body.get("model"), block.get("id"))
            thinking = self._replays.get(key) if block.get("type") == "tool_use" else None
            if thinking and content[: len(thinking["blocks"])] != thinking["blocks"]:
                return _anthropic_error(
                    "When `thinking` is enabled, a final `assistant` message must start with a thinking "
                    "block, passed back unmodified with its signature."
                )
        return None

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        script, response, body_model = await self._start(request)
        if isinstance(response, web.Response) or script.raw is not None:
            return response

        async def send(payload: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        for _ in range(script.keepalives):
            await response.write(b": OPENROUTER PROCESSING\n\n")
        await asyncio.sleep(script.first_delay)
        details = script.signature is not None or script.redacted is not None
        for position, text in enumerate(script.reasoning):
            delta: dict[str, Any] = {script.reasoning_field: text}
            if details:  # OpenRouter repeats the text in detail fragments; the signature comes last
                last = position == len(script.reasoning) - 1
                signature = script.signature if last else None
                fragment = {"type": "reasoning.text", "text": text, "signature": signature, "index": 0}
                delta["reasoning_details"] = [{**fragment, "format": "anthropic-claude-v1"}]
            await send(chunk(delta))
        if script.redacted is not None:
            encrypted = {"type": "reasoning.encrypted", "data": script.redacted, "index": 1}
            await send(chunk({"reasoning_details": [{**encrypted, "format": "google-gemini-v1"}]}))
        for index, token in enumerate(script.tokens):
            if await self._fault(script, index, request):
                if script.error_after == index:
                    await send({"error": script.error, **chunk({"content": ""}, "error")})
                return response
            if script.gate is not None:
                if not await self._released(script.gate, request):
                    return response
            elif index:
                await asyncio.sleep(script.delay)
            await send(chunk({"content": token}))
        if await self._fault(script, len(script.tokens), request):
            if script.error_after == len(script.tokens):
                await send({"error": script.error, **chunk({"content": ""}, "error")})
            return response
        for index, (name, arguments) in enumerate(script.tool_calls):
            self._replays[(body_model, f"call_{index}")] = _openai_replay(script)
            call = {
                "index": index,
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            await send(chunk({"tool_calls": [call]}))
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                await send(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
        if script.no_terminal:
            return response
        await send(chunk({}, "tool_calls" if script.tool_calls else script.finish))
        if script.usage:
            usage: dict[str, Any] = {"prompt_tokens": script.usage[0], "completion_tokens": script.usage[1]}
            if script.cost is not None:
                usage["cost"] = script.cost
            if script.reasoning_tokens:
                usage["completion_tokens_details"] = {"reasoning_tokens": script.reasoning_tokens}
            if script.cached_tokens:
                usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens}
            await send({"object": "chat.completion.chunk", "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        script, response, body_model = await self._start(request)
        if isinstance(response, web.Response) or script.raw is not None:
            return response

        async def send(kind: str, payload: dict[str, Any]) -> None:
            await response.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode())

        prompt, completion = script.usage or (0, 0)
        await send(
            "message_start",
            {
                "message": {
                    "id": "msg_1",
                    "role": "assistant",
                    # Anthropic's input_tokens leave out what the prompt cache read.
                    "usage": {
                        "input_tokens": prompt - script.cached_tokens,
                        "output_tokens": 1,
                        **({"cache_read_input_tokens": script.cached_tokens} if script.cached_tokens else {}),
                    },
                }
            },
        )
        await asyncio.sleep(script.first_delay)
        block = 0
        thinking: list[dict[str, Any]] = []  # what a tool round must send back first, unmodified
        if script.reasoning:
            await send(
                "content_block_start", {"index": block, "content_block": {"type": "thinking", "thinking": ""}}
            )
            for text in script.reasoning:
                await send(
                    "content_block_delta",
                    {"index": block, "delta": {"type": "thinking_delta", "thinking": text}},
                )
            full = "".join(script.reasoning)
            signature = script.signature or hashlib.sha256(full.encode()).hexdigest()[:24]
            await send(
                "content_block_delta",
                {"index": block, "delta": {"type": "signature_delta", "signature": signature}},
            )
            await send("content_block_stop", {"index": block})
            thinking.append({"type": "thinking", "thinking": full, "signature": signature})
            block += 1
        if script.redacted is not None:
            redacted = {"type": "redacted_thinking", "data": script.redacted}
            await send("content_block_start", {"index": block, "content_block": redacted})
            await send("content_block_stop", {"index": block})
            thinking.append(redacted)
            block += 1
        await send("content_block_start", {"index": block, "content_block": {"type": "text", "text": ""}})
        await send("ping", {})
        for index, token in enumerate(script.tokens):
            if await self._fault(script, index, request):
                if script.error_after == index:
                    await send("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                return response
            if script.gate is not None:
                await script.gate.acquire()
            elif index:
                await asyncio.sleep(script.delay)
            await send(
                "content_block_delta", {"index": block, "delta": {"type": "text_delta", "text": token}}
            )
        await send("content_block_stop", {"index": block})
        for name, arguments in script.tool_calls:
            block += 1
            self._replays[(body_model, f"toolu_{block}")] = {"blocks": thinking} if thinking else {}
            await send(
                "content_block_start",
                {
                    "index": block,
                    "content_block": {"type": "tool_use", "id": f"toolu_{block}", "name": name, "input": {}},
                },
            )
            await send(
                "content_block_delta",
                {"index": block, "delta": {"type": "input_json_delta", "partial_json": arguments}},
            )
            await send("content_block_stop", {"index": block})
        if script.no_terminal:
            return response
        stop = (
            "tool_use"
            if script.tool_calls
            else {"stop": "end_turn", "length": "max_tokens"}.get(script.finish, script.finish)
        )
        await send("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": completion}})
        await send("message_stop", {})
        return response

    async def _released(self, gate: asyncio.Semaphore, request: web.Request) -> bool:
        """Wait for the gate; False (recorded in `closed_by_client`) when the client hung up first."""
        acquired = asyncio.ensure_future(gate.acquire())
        try:
            while not acquired.done():
                transport = request.transport
                if transport is None or transport.is_closing():
                    self.closed_by_client.append(request.path)
                    return False
                await asyncio.wait({acquired}, timeout=0.01)
        finally:
            if not acquired.done():
                acquired.cancel()
        return True

    async def _fault(self, script: Script, index: int, request: web.Request) -> bool:
        """Apply a fault due after `index` tokens; True when the stream must end here."""
        if script.stall_after == index:
            await asyncio.sleep(3600)
        if script.drop_after == index:
            if request.transport is not None:
                request.transport.abort()
            return True
        return script.error_after == index


def _openai_replay(script: Script) -> dict[str, Any]:
    """What the assistant message with this Script's tool calls must carry back, field by field."""
    if script.signature is not None or script.redacted is not None:
        details: list[dict[str, Any]] = []
        if script.reasoning:
            text = "".join(script.reasoning)
            signed = {"type": "reasoning.text", "text": text, "signature": script.signature, "index": 0}
            details.append({**signed, "format": "anthropic-claude-v1"})
        if script.redacted is not None:
            encrypted = {"type": "reasoning.encrypted", "data": script.redacted, "index": 1}
            details.append({**encrypted, "format": "google-gemini-v1"})
        return {"reasoning_details": details}
    if script.reasoning_field == "reasoning_content" and script.reasoning:
        return {"reasoning_content": "".join(script.reasoning)}
    return {}


def _anthropic_error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def _system_of(body: dict[str, Any]) -> str:
    """The system prompt of an OpenAI-compatible or Anthropic request."""
    system = body.get("system")
    if isinstance(system, list):
        return " ".join(part.get("text", "") for part in system if isinstance(part, dict))
    if isinstance(system, str):
        return system
    first = (body.get("messages") or [{}])[0]
    return str(first.get("content", "")) if first.get("role") == "system" else ""
