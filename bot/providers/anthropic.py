"""Anthropic's native Messages API, streamed."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from bot.providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ModelInfo,
    ReasoningDelta,
    Replay,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from bot.providers.body import MessageJSON, body_bytes
from bot.providers.http_errors import error_from_payload
from bot.providers.http_provider import HTTPProvider
from bot.providers.sse import SSEStream

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_CONTEXT = 200_000


class AnthropicProvider(HTTPProvider):
    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION, **self._settings.headers}
        key = self._settings.key()
        if key:
            headers["x-api-key"] = key
        return headers

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        stream = SSEStream(self.name, request.model, self._timeouts, self._base)
        secret = self._settings.key()
        source = f"{self.name}/{request.model}"
        await stream.open(
            self._clients,
            f"{self._base}/v1/messages",
            _body(request, source, _MESSAGE_JSON),
            self._headers(),
            secret,
        )
        prompt_tokens = completion_tokens = cached_tokens = 0
        stop_reason: str | None = None
        blocks: dict[int, dict[str, Any]] = {}  # every content block as it arrived, for the replay
        tools: dict[int, list[str]] = {}  # the JSON pieces of each tool_use block
        finished = False
        try:
            while not finished and (events := await stream.next_events()) is not None:
                text: list[str] = []  # the text of this read's deltas, yielded as one
                for event in events:
                    try:
                        data = json.loads(event.data) if event.data else {}
                    except ValueError:
                        raise stream.broken("the provider sent an event that is not JSON") from None
                    kind = data.get("type") or event.event
                    index = data.get("index", 0)
                    if kind == "error":
                        if text:
                            yield TextDelta("".join(text))
                        if prompt_tokens:  # a failed call that consumed tokens is still paid for
                            yield Usage(prompt_tokens, completion_tokens, cached_tokens=cached_tokens)
                        raise error_from_payload(self.name, request.model, data.get("error") or data, secret)
                    if kind == "message_start":
                        usage = (data.get("message") or {}).get("usage") or {}
                        # input_tokens leaves out what the prompt cache wrote and read; the prompt is all
                        # three.
                        cached_tokens = int(usage.get("cache_read_input_tokens") or 0)
                        prompt_tokens = (
                            int(usage.get("input_tokens") or 0)
                            + cached_tokens
                            + int(usage.get("cache_creation_input_tokens") or 0)
                        )
                        completion_tokens = int(usage.get("output_tokens") or 0)
                    elif kind == "content_block_start":
                        block = dict(data.get("content_block") or {})
                        blocks[index] = block
                        if block.get("type") in ("tool_use", "redacted_thinking"):
                            stream.content_begun()
                        if block.get("type") == "tool_use":
                            tools[index] = []
                    elif kind == "content_block_delta":
                        delta = data.get("delta") or {}
                        block = blocks.setdefault(index, {})
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            stream.content_begun()
                            block["text"] = block.get("text", "") + delta["text"]
                            text.append(delta["text"])
                        elif delta.get("type") == "thinking_delta" and delta.get("thinking"):
                            stream.content_begun()
                            block["thinking"] = block.get("thinking", "") + delta["thinking"]
                            if text:
                                yield TextDelta("".join(text))
                                text = []
                            yield ReasoningDelta(delta["thinking"])
                        elif delta.get("type") == "signature_delta":
                            block["signature"] = delta.get("signature", "")
                        elif delta.get("type") == "input_json_delta" and index in tools:
                            tools[index].append(delta.get("partial_json", ""))
                    elif kind == "content_block_stop" and index in tools:
                        block = blocks[index]
                        arguments = "".join(tools.pop(index)) or "{}"
                        block["input"] = _json_object(arguments)
                        if text:
                            yield TextDelta("".join(text))
                            text = []
                        yield ToolCall(block.get("id", ""), block.get("name", ""), arguments)
                    elif kind == "message_delta":
                        stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                        completion_tokens = int(
                            (data.get("usage") or {}).get("output_tokens") or completion_tokens
                        )
                    elif kind == "message_stop":
                        finished = True
                        break
                if text:
                    yield TextDelta("".join(text))
        finally:
            await stream.aclose(drain=finished)
        if not finished:
            raise stream.broken("the stream ended before the reply was complete")
        if content := _replayed([blocks[i] for i in sorted(blocks)]):
            yield Replay(source, {"content": content})
        yield Usage(prompt_tokens, completion_tokens, cached_tokens=cached_tokens)
        yield Finish(_FINISH.get(stop_reason or "end_turn", stop_reason or "stop"))

    async def list_models(self) -> list[ModelInfo]:
        ids: list[str] = []
        after: str | None = None
        while True:
            params = {"limit": "1000", **({"after_id": after} if after else {})}
            page = await self._get_json("/v1/models", params)
            ids += [str(entry["id"]) for entry in page.get("data") or [] if entry.get("id")]
            if not page.get("has_more") or not page.get("last_id"):
                break
            after = page["last_id"]
        if self._settings.models is not None:
            ids = [i for i in ids if i in self._settings.models]
            ids += [m for m in self._settings.models if m not in ids]
        return [
            ModelInfo(
                id=model_id,
                context_length=self._settings.context_length.get(model_id, DEFAULT_CONTEXT),
                vision=model_id.startswith("claude") or model_id in self._settings.vision,
                tools=True,
            )
            for model_id in ids
        ]


# Anthropic's stop reasons (anthropic-sdk-python's StopReason), in the provider-neutral words of `Finish`.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "model_context_window_exceeded": "context_window",
    "refusal": "refusal",
}
THINKING_BLOCKS = ("thinking", "redacted_thinking")


def _body(request: ChatRequest, source: str, message_json: MessageJSON) -> bytes:
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "stream": True,
        "messages": None,  # encoded apart, message by message
    }
    if request.system:
        body["system"] = request.system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
    return body_bytes(body, request.messages, source, message_json)


def _replayed(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's content as the API must see it again after a tool round, when it holds thinking:
    the blocks in their order, thinking and its signature unmodified. Without thinking, nothing."""
    if not any(block.get("type") in THINKING_BLOCKS for block in blocks):
        return []
    if not any(block.get("type") == "tool_use" for block in blocks):
        return []
    content = []
    for block in blocks:
        kind = block.get("type")
        if kind == "thinking":
            content.append(
                {"type": kind, "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}
            )
        elif kind == "redacted_thinking":
            content.append({"type": kind, "data": block.get("data", "")})
        elif kind == "text" and block.get("text"):  # the API refuses empty text blocks
            content.append({"type": kind, "text": block["text"]})
        elif kind == "tool_use":
            content.append(
                {
                    "type": kind,
                    "id": block.get("id", ""),
                    "name": block.get("name", ""),
                    "input": block.get("input", {}),
                }
            )
    return content


def _message(message: ChatMessage, source: str) -> dict[str, Any]:
    if message.role == "tool":
        block = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
        return {"role": "user", "content": [block]}
    if message.replay is not None and message.replay.source == source:
        return {"role": message.role, "content": list(message.replay.data["content"])}
    content: list[dict[str, Any]] = []
    for image in message.images:
        encoded = {
            "type": "base64",
            "media_type": image.media_type,
            "data": base64.b64encode(image.data).decode(),
        }
        content.append({"type": "image", "source": encoded})
    if message.content:
        content.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _json_object(call.arguments)}
        )
    return {"role": message.role, "content": content}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_MESSAGE_JSON = MessageJSON(_message)  # every message's JSON, made once while it is held
