"""OpenAI-compatible chat completions: OpenRouter, OpenAI, Ollama's /v1, vLLM, LM Studio, llama.cpp."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from bot.config import ProviderSettings
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
from bot.providers.body import MessageJSON, body_bytes, dumps
from bot.providers.http_errors import error_from_payload
from bot.providers.http_provider import HTTPProvider
from bot.providers.sse import SSEStream


class OpenAICompatibleProvider(HTTPProvider):
    def _headers(self) -> dict[str, str]:
        headers = {"X-Title": "Parley"}  # how OpenRouter names the app in its activity list
        headers.update(self._settings.headers)
        key = self._settings.key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        stream = SSEStream(self.name, request.model, self._timeouts, self._base)
        secret = self._settings.key()
        source = f"{self.name}/{request.model}"
        body = _body(request, source, self._max_tokens_param(), _MESSAGE_JSON)
        await stream.open(self._clients, f"{self._base}/chat/completions", body, self._headers(), secret)
        calls: dict[int, dict[str, Any]] = {}
        details: list[dict[str, Any]] = []
        reasoning_content: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        complete = False
        try:
            while not complete and (events := await stream.next_events()) is not None:
                text: list[str] = []  # the content of this read's events, yielded as one delta
                for event in events:
                    if event.data.strip() == "[DONE]":
                        complete = True
                        break
                    try:
                        chunk = json.loads(event.data)
                    except ValueError:
                        raise stream.broken("the provider sent a chunk that is not JSON") from None
                    if isinstance(chunk.get("usage"), dict):
                        usage = _usage(chunk["usage"])
                    if chunk.get("error"):
                        if text:
                            yield TextDelta("".join(text))
                        if usage is not None:  # a failed call that consumed tokens is still paid for
                            yield usage
                        raise error_from_payload(self.name, request.model, chunk["error"], secret)
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or _EMPTY
                        if len(delta) != 1 or "content" not in delta:  # more than text in it
                            reasoning = self._other(stream, delta, details, reasoning_content, calls)
                            if reasoning and text:
                                yield TextDelta("".join(text))
                                text = []
                            if reasoning:
                                yield ReasoningDelta(reasoning)
                        if content := delta.get("content"):
                            text.append(content)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                if text:
                    stream.content_begun()
                    yield TextDelta("".join(text))
            if not complete and finish is None:
                raise stream.broken("the stream ended before the reply was complete")
        finally:
            await stream.aclose(drain=complete)
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], "".join(call["arguments"]) or "{}")
        if calls and (replayed := _replayed(details, "".join(reasoning_content))):
            yield Replay(source, replayed)
        if usage is not None:
            yield usage
        yield Finish(_FINISH.get(finish or "stop", finish or "stop"))

    @staticmethod
    def _other(
        stream: SSEStream,
        delta: dict[str, Any],
        details: list[dict[str, Any]],
        reasoning_content: list[str],
        calls: dict[int, dict[str, Any]],
    ) -> str | None:
        """Take in what a delta carries besides its text; returns its reasoning, to show, if any."""
        for fragment in delta.get("reasoning_details") or ():
            stream.content_begun()
            _merge_detail(details, fragment)
        if isinstance(delta.get("reasoning_content"), str):
            reasoning_content.append(delta["reasoning_content"])
        for fragment in delta.get("tool_calls") or ():
            stream.content_begun()
            _merge_tool_call(calls, fragment)
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        if reasoning:
            stream.content_begun()
        return reasoning or None

    def _max_tokens_param(self) -> str:
        """OpenAI refuses `max_tokens` for its reasoning models; most other servers know only that name."""
        if self._settings.max_tokens_param:
            return self._settings.max_tokens_param
        return "max_completion_tokens" if self.name == "openai" else "max_tokens"

    async def list_models(self) -> list[ModelInfo]:
        data = await self._get_json("/models")
        models = [_model_info(entry, self._settings) for entry in data.get("data") or []]
        if self._settings.models is not None:
            allowed = set(self._settings.models)
            listed = {model.id for model in models}
            models = [m for m in models if m.id in allowed]
            # An allow-listed model the server does not list (common with local servers) is still offered.
            models += [
                _model_info({"id": m}, self._settings) for m in self._settings.models if m not in listed
            ]
        return models


_EMPTY: dict[str, Any] = {}
# OpenAI's finish reasons, in the provider-neutral words of `Finish`.
_FINISH = {"content_filter": "refusal"}


def _body(request: ChatRequest, source: str, max_tokens_param: str, message_json: MessageJSON) -> bytes:
    system = dumps({"role": "system", "content": request.system}).encode("utf-8") if request.system else b""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": None,  # encoded apart, message by message
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens:
        body[max_tokens_param] = request.max_tokens
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    return body_bytes(body, request.messages, source, message_json, system)


def _message(message: ChatMessage, source: str) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        out["content"] = [{"type": "text", "text": message.content}] + [
            {
                "type": "image_url",
                "image_url": {"url": f"data:{i.media_type};base64,{base64.b64encode(i.data).decode()}"},
            }
            for i in message.images
        ]
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.replay is not None and message.replay.source == source:
        out.update(message.replay.data)
    return out


def _merge_detail(details: list[dict[str, Any]], fragment: Any) -> None:
    """OpenRouter streams each reasoning detail in pieces sharing its type and index; the API wants each
    back whole, in order and unmodified: text pieces joined, the signature that comes last kept."""
    if not isinstance(fragment, dict):
        return
    last = details[-1] if details else None
    same = last is not None and (last.get("type"), last.get("index")) == (
        fragment.get("type"),
        fragment.get("index"),
    )
    if last is None or not same or fragment.get("index") is None:
        details.append(dict(fragment))
        return
    for key, value in fragment.items():
        if key in ("text", "summary", "data") and isinstance(value, str):
            last[key] = (last.get(key) or "") + value
        elif value is not None:
            last[key] = value


def _replayed(details: list[dict[str, Any]], reasoning_content: str) -> dict[str, Any]:
    """The fields a tool round's assistant message must carry back: OpenRouter's reasoning details, or
    the `reasoning_content` DeepSeek requires again after a tool call (llama.cpp reads it too)."""
    if details:
        return {"reasoning_details": details}
    if reasoning_content:
        return {"reasoning_content": reasoning_content}
    return {}


def _merge_tool_call(calls: dict[int, dict[str, Any]], fragment: dict[str, Any]) -> None:
    """Tool calls stream in pieces keyed by index: the id and name once, the arguments a little at a time."""
    call = calls.setdefault(fragment.get("index", 0), {"id": "", "name": "", "arguments": []})
    if fragment.get("id"):
        call["id"] = fragment["id"]
    function = fragment.get("function") or {}
    if function.get("name"):
        call["name"] = function["name"]
    if function.get("arguments"):
        call["arguments"].append(function["arguments"])


def _usage(raw: dict[str, Any]) -> Usage:
    cost = raw.get("cost")
    completion_details = raw.get("completion_tokens_details") or {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cost=float(cost) if isinstance(cost, int | float) else None,
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
    )


def _model_info(entry: dict[str, Any], settings: ProviderSettings) -> ModelInfo:
    model_id = str(entry.get("id", ""))
    top = entry.get("top_provider") or {}
    pricing = entry.get("pricing") or {}
    architecture = entry.get("architecture") or {}
    context = (
        settings.context_length.get(model_id) or entry.get("context_length") or top.get("context_length")
    )
    return ModelInfo(
        id=model_id,
        context_length=int(context) if context else None,
        max_output_tokens=top.get("max_completion_tokens") or None,
        prompt_price=_price(pricing.get("prompt")),
        completion_price=_price(pricing.get("completion")),
        vision=model_id in settings.vision or "image" in (architecture.get("input_modalities") or []),
        tools="tools" in (entry.get("supported_parameters") or []),
    )


def _price(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


_MESSAGE_JSON = MessageJSON(_message)  # every message's JSON, made once while it is held
