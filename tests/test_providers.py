"""The real provider code against a loopback server: parsing rules, faults, timeouts, retries, fallbacks."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.catalog import ModelCatalog
from bot.config import ProviderSettings, Settings
from bot.providers.anthropic import AnthropicProvider
from bot.providers.base import (
    ChatMessage,
    ChatRequest,
    ErrorKind,
    Finish,
    Image,
    ProviderError,
    ReasoningDelta,
    Replay,
    StreamEvent,
    TextDelta,
    Timeouts,
    ToolCall,
    ToolSpec,
    Usage,
)
from bot.providers.openai_compat import OpenAICompatibleProvider
from bot.providers.resilience import Attempt, ResilientStream
from tests.support.llm_server import LLMServer, Script

KEY = "sk-or-v1-SECRET-test-key-1234567890"
REQUEST = ChatRequest(model="xiaomi/mimo-v2-flash", messages=(ChatMessage("user", "hi"),), system="Be brief.")
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "provider-wire-formats.md"


def fixture_block(heading: str) -> str:
    """A ```text block from the vendored wire-format reference, as the provider sent it."""
    text = REFERENCE.read_text()
    start = text.index("```text", text.index(heading)) + len("```text\n")
    return text[start : text.index("```", start)]


def openai(llm: LLMServer, timeouts: Timeouts | None = None, **extra: object) -> OpenAICompatibleProvider:
    settings = ProviderSettings(base_url=llm.openai_base_url, api_key=KEY, **extra)
    return OpenAICompatibleProvider("openrouter", settings, timeouts or Timeouts())


def anthropic(llm: LLMServer, timeouts: Timeouts | None = None) -> AnthropicProvider:
    settings = ProviderSettings(base_url=llm.anthropic_base_url, api="anthropic", api_key=KEY)
    return AnthropicProvider("anthropic", settings, timeouts or Timeouts())


async def collect(
    provider: OpenAICompatibleProvider | AnthropicProvider, request: ChatRequest = REQUEST
) -> list[StreamEvent]:
    try:
        return [event async for event in provider.stream(request)]
    finally:
        await provider.aclose()


async def failure(
    provider: OpenAICompatibleProvider | AnthropicProvider, request: ChatRequest = REQUEST
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request)
    return caught.value


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# OpenAI-compatible parsing


async def test_openrouter_stream_with_keepalives_and_usage_in_a_choiceless_chunk(llm: LLMServer) -> None:
    raw = fixture_block("### A1.").encode()
    offsets = sorted(
        set(range(0, len(raw), 37)) | set(range(raw.index("👋".encode()) - 2, raw.index("👋".encode()) + 6))
    )
    for offset in offsets:  # every split must parse the same, including inside the 4-byte emoji
        llm.enqueue(Script(raw=[raw[:offset], raw[offset:]]))
    for _ in offsets:
        events = await collect(openai(llm))
        assert text_of(events) == "Hello there! 👋"
        assert events[-2:] == [Usage(57, 4, 0.00000629), Finish("stop")]


async def test_reasoning_is_read_once_not_doubled_from_details(llm: LLMServer) -> None:
    llm.enqueue(Script(raw=[fixture_block("### A2.").encode()]))
    events = await collect(openai(llm))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning == "The user greets me; reply briefly."
    assert text_of(events) == "Hi!"


async def test_reasoning_content_alias_and_llamacpp_usage_in_the_finish_chunk(llm: LLMServer) -> None:
    body = (
        'data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"},"finish_reason":null}]}\n\n'
        'data: {"choices":[{"index":0,"delta":{"content":"391"},"finish_reason":null}]}\n\n'
        + fixture_block("### A9.")
    )
    llm.enqueue(Script(raw=[body.encode()]))
    events = await collect(openai(llm))
    assert [e for e in events if isinstance(e, ReasoningDelta)] == [ReasoningDelta("think")]
    assert events[-3:] == [TextDelta("391"), Usage(1085, 247), Finish("stop")]


@pytest.mark.parametrize(
    ("marker", "index", "kind"),
    [
        ("From `api_reference/streaming.mdx`", 0, ErrorKind.UNAVAILABLE),
        ("From `api_reference/errors-and-debugging.mdx`", 0, ErrorKind.RATE_LIMITED),
        ("From `api_reference/limits.mdx`", 0, ErrorKind.RATE_LIMITED),
    ],
)
async def test_mid_stream_error_chunks_become_errors_not_answers(
    llm: LLMServer, marker: str, index: int, kind: ErrorKind
) -> None:
    a1 = fixture_block("### A1.").split("\n\n")
    error_line = fixture_block(marker).strip()
    llm.enqueue(Script(raw=["\n\n".join(a1[:4]).encode() + b"\n\n" + error_line.encode() + b"\n\n"]))
    error = await failure(openai(llm))
    assert error.kind is kind


async def test_vllm_bare_error_object_mid_stream(llm: LLMServer) -> None:
    llm.enqueue(Script(raw=[fixture_block("### A8.").encode()]))
    error = await failure(openai(llm))
    assert (error.kind, error.status) == (ErrorKind.UNAVAILABLE, 500)
    assert "engine crashed" in error.detail


async def test_a_stream_without_terminal_marker_is_an_error(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["Half", " an"], no_terminal=True))
    assert (await failure(openai(llm))).kind is ErrorKind.BROKEN_STREAM


async def test_a_dropped_connection_is_an_error(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["a", "b", "c"], drop_after=2))
    assert (await failure(openai(llm))).kind is ErrorKind.BROKEN_STREAM


async def test_first_token_and_chunk_gap_timeouts(llm: LLMServer) -> None:
    llm.enqueue(Script(keepalives=2, first_delay=5.0))
    slow_start = await failure(openai(llm, Timeouts(first_token=0.3, chunk_gap=5)))
    assert slow_start.kind is ErrorKind.TIMEOUT and "to start answering" in slow_start.detail
    llm.enqueue(Script(tokens=["a", "b"], stall_after=1))
    stalled = await failure(openai(llm, Timeouts(first_token=5, chunk_gap=0.3)))
    assert stalled.kind is ErrorKind.TIMEOUT and "between two parts" in stalled.detail


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port where nothing listens: bound, so no one else takes it, but refusing connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_refused_connection_names_the_address_in_replies_and_listings(closed_port: int) -> None:
    base = f"http://127.0.0.1:{closed_port}/v1"
    sentence = (
        f"Nothing answers at {base}; check that the lmstudio server is running and its address is right."
    )
    settings = ProviderSettings(base_url=f"http://user:hunter2@127.0.0.1:{closed_port}/v1")
    error = await failure(OpenAICompatibleProvider("lmstudio", settings, Timeouts(connect=5)))
    assert (error.kind, error.retryable, error.user_message()) == (ErrorKind.UNREACHABLE, True, sentence)
    provider = OpenAICompatibleProvider("lmstudio", settings, Timeouts(connect=5))
    with pytest.raises(ProviderError) as listing:
        await provider.list_models()  # what `parley check` and /models show
    await provider.aclose()
    assert listing.value.user_message() == sentence and "hunter2" not in str(listing.value.url)
    claude = ProviderSettings(base_url=f"http://127.0.0.1:{closed_port}", api="anthropic", api_key=KEY)
    error = await failure(AnthropicProvider("claude", claude, Timeouts(connect=5)))
    assert error.user_message().startswith(f"Nothing answers at http://127.0.0.1:{closed_port};")


def fail_dns(monkeypatch: pytest.MonkeyPatch, code: int, message: str) -> None:
    async def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(code, message)

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)


async def test_an_unknown_host_is_named_but_a_failing_resolver_is_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ProviderSettings(base_url="http://olama:11434/v1")
    fail_dns(monkeypatch, socket.EAI_NONAME, "Name or service not known")
    error = await failure(OpenAICompatibleProvider("ollama", settings, Timeouts(connect=5)))
    assert error.user_message() == (
        "Nothing answers at http://olama:11434/v1; "
        "check that the ollama server is running and its address is right."
    )
    fail_dns(monkeypatch, socket.EAI_AGAIN, "Temporary failure in name resolution")
    error = await failure(OpenAICompatibleProvider("ollama", settings, Timeouts(connect=5)))
    assert (error.kind, error.retryable) == (ErrorKind.UNAVAILABLE, True)


A4_CASES = [
    (400, {"error": {"code": 400, "message": "Invalid model specified"}}, ErrorKind.UNKNOWN_MODEL, False),
    (401, {"error": {"code": 401, "message": "No auth credentials found"}}, ErrorKind.AUTH, False),
    (402, {"error": {"code": 402, "message": "Insufficient credits"}}, ErrorKind.CREDITS, False),
    (403, {"error": {"code": 403, "message": "Request blocked"}}, ErrorKind.FORBIDDEN, False),
    (
        404,
        {"error": {"message": 'model "nope" not found, try pulling it first'}},
        ErrorKind.UNKNOWN_MODEL,
        False,
    ),
    (
        400,
        {"error": {"message": "This model's maximum context length is 8192 tokens"}},
        ErrorKind.CONTEXT_TOO_LONG,
        False,
    ),
    (429, {"error": {"code": 429, "message": "Rate limit exceeded"}}, ErrorKind.RATE_LIMITED, True),
    (502, {"error": {"code": 502, "message": "Provider returned error"}}, ErrorKind.UNAVAILABLE, True),
    (503, {"error": {"code": 503, "message": "No endpoints found"}}, ErrorKind.UNAVAILABLE, True),
    (408, {"error": {"message": "timeout"}}, ErrorKind.TIMEOUT, True),
    (
        400,
        {
            "error": {
                "message": "acme/fake-1.0 is not a valid model ID",
                "availability": {"code": "model_not_found", "retryable": False},
            }
        },
        ErrorKind.UNKNOWN_MODEL,
        False,
    ),
]


@pytest.mark.parametrize(("status", "body", "kind", "retryable"), A4_CASES)
async def test_error_responses_map_to_one_clear_sentence(
    llm: LLMServer, status: int, body: dict[str, object], kind: ErrorKind, retryable: bool
) -> None:
    llm.enqueue(Script(status=status, body=body))
    error = await failure(openai(llm))
    assert (error.kind, error.retryable) == (kind, retryable)
    assert error.user_message() == SENTENCES[kind]


SENTENCES = {
    ErrorKind.UNKNOWN_MODEL: (
        "openrouter does not know the model xiaomi/mimo-v2-flash; pick another with /model."
    ),
    ErrorKind.AUTH: "The openrouter API key was rejected; an admin needs to check it.",
    ErrorKind.CREDITS: "The openrouter account is out of credits; an admin needs to top it up.",
    ErrorKind.FORBIDDEN: "openrouter refused this request (Request blocked).",
    ErrorKind.CONTEXT_TOO_LONG: (
        "This conversation is too long for xiaomi/mimo-v2-flash; use /reset or a model with a larger context."
    ),
    ErrorKind.RATE_LIMITED: "openrouter is rate-limiting us right now; try again in a minute.",
    ErrorKind.UNAVAILABLE: "openrouter is unavailable right now; try again shortly.",
    ErrorKind.TIMEOUT: "openrouter took too long to answer; try again.",
}


CLOUDFLARE_BLOCK = (
    '<!DOCTYPE html>\n<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->\n'
    '<head><title>Attention Required! | Cloudflare</title></head>\n<body><div id="cf-wrapper">'
    "<h1>Sorry, you have been blocked</h1></div></body></html>"
)


WEB_PAGE = "from a web page, not the API: a proxy or firewall may be in the way"
NO_API = "There is no openrouter API at {base} (HTTP 404); check its base URL."


@pytest.mark.parametrize(
    ("script", "sentence"),
    [
        pytest.param(
            Script(status=403, error_text=CLOUDFLARE_BLOCK),
            f"openrouter refused this request (HTTP 403 {WEB_PAGE}).",
            id="cdn-block-page",
        ),
        pytest.param(
            Script(
                status=405, error_text="<html><body>Method Not Allowed</body></html>", error_type="text/plain"
            ),
            f"openrouter rejected the request (HTTP 405 {WEB_PAGE}).",
            id="html-without-its-type",
        ),
        pytest.param(
            Script(status=502, error_text="<html><h1>502 Bad Gateway</h1></html>"),
            "openrouter is unavailable right now; try again shortly.",
            id="proxy-502",
        ),
        pytest.param(
            Script(status=418, error_text="I'm a teapot\n", error_type="text/plain"),
            "openrouter rejected the request (HTTP 418: I'm a teapot).",
            id="short-plain-text",
        ),
        pytest.param(  # Ollama's answer when its base URL lacks /v1
            Script(status=404, error_text="404 page not found", error_type="text/plain"), NO_API, id="go-404"
        ),
        pytest.param(Script(status=404, body={"detail": "Not Found"}), NO_API, id="fastapi-404"),
    ],
)
async def test_an_error_page_that_is_not_the_apis_is_one_sentence_with_its_status(
    llm: LLMServer, script: Script, sentence: str
) -> None:
    llm.enqueue(script)
    error = await failure(openai(llm))
    assert error.user_message() == sentence.format(base=llm.openai_base_url)
    assert "<" not in error.user_message()


async def test_a_model_listing_that_is_a_web_page_is_one_sentence(llm: LLMServer) -> None:
    llm.models_error = Script(status=403, error_text=CLOUDFLARE_BLOCK)
    with pytest.raises(ProviderError) as blocked:
        await openai(llm).list_models()
    assert blocked.value.user_message().startswith(
        "openrouter refused this request (HTTP 403 from a web page"
    )
    llm.models_error = Script(status=200, error_text="<html><body>Welcome to nginx!</body></html>")
    with pytest.raises(ProviderError) as page:
        await openai(llm).list_models()
    assert page.value.user_message() == (
        f"There is no openrouter API at {llm.openai_base_url} (HTTP 200, and not JSON); check its base URL."
    )


async def test_openrouter_availability_overrides_status_and_gives_retry_after(llm: LLMServer) -> None:
    body = {
        "error": {
            "message": "at capacity",
            "availability": {"code": "capacity_exhausted", "retryable": True, "retry_after": 40},
        }
    }
    llm.enqueue(Script(status=429, body=body, retry_after=60))
    error = await failure(openai(llm))
    assert (error.kind, error.retryable, error.retry_after) == (ErrorKind.RATE_LIMITED, True, 40.0)


async def test_the_key_never_shows_in_errors_or_logs(
    llm: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    llm.enqueue(Script(status=401, body={"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    caplog.set_level(logging.DEBUG)
    error = await failure(openai(llm))
    for text in (str(error), repr(error), error.user_message(), error.detail, caplog.text):
        assert KEY not in text
    assert llm.requests[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent, just never shown


async def test_request_carries_system_images_tools_and_tool_results(llm: LLMServer) -> None:
    request = ChatRequest(
        model="openai/gpt-4o-mini",
        system="Be brief.",
        max_tokens=100,
        tools=(ToolSpec("web_search", "Search the web", {"type": "object", "properties": {}}),),
        messages=(
            ChatMessage("user", "What is this?", images=(Image("image/png", b"\x89PNG"),)),
            ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "web_search", '{"query":"x"}'),)),
            ChatMessage("tool", "results", tool_call_id="call_1"),
        ),
    )
    await collect(openai(llm), request)
    body = llm.requests[0].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw=="},
    }
    assert body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "web_search",
        "arguments": '{"query":"x"}',
    }
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "results"}
    assert body["tools"][0]["function"]["name"] == "web_search" and body["max_tokens"] == 100


async def test_streamed_tool_call_fragments_are_assembled(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=[], tool_calls=[("web_search", '{"query": "parley release"}')]))
    events = await collect(openai(llm))
    assert ToolCall("call_0", "web_search", '{"query": "parley release"}') in events
    assert events[-1] == Finish("tool_calls")


async def test_openai_gets_max_completion_tokens_and_a_provider_table_can_choose(
    llm: LLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        f'[providers.azure]\nbase_url = "{llm.openai_base_url}"\nmax_tokens_param = "max_completion_tokens"\n'
        f'[providers.vllm]\nbase_url = "{llm.openai_base_url}"\n'
    )
    monkeypatch.setenv("PARLEY_CONFIG", str(config))
    settings = Settings(
        _env_file=None,
        openai_api_key="sk-openai",
        openai_base_url=llm.openai_base_url,
        openrouter_api_key=KEY,
        openrouter_base_url=llm.openai_base_url,
    )
    catalog = ModelCatalog.from_settings(settings)
    llm.completion_tokens_only = {"o3-mini"}  # refuses max_tokens, as OpenAI's reasoning models do
    request = ChatRequest("o3-mini", REQUEST.messages, max_tokens=500)
    try:
        for name in ("openai", "azure"):
            assert text_of([e async for e in catalog.providers[name].stream(request)]) == "echo: hi"
        for name in ("openrouter", "vllm"):
            with pytest.raises(ProviderError) as refused:
                [e async for e in catalog.providers[name].stream(request)]
            assert "Unsupported parameter: 'max_tokens'" in refused.value.user_message()
    finally:
        await catalog.aclose()
    sent = [{k: v for k, v in r.json.items() if k.startswith("max_")} for r in llm.chat_requests()]
    assert sent == [{"max_completion_tokens": 500}] * 2 + [{"max_tokens": 500}] * 2


TOOL_CALL = ToolCall("call_0", "web_search", '{"query": "q"}')


def tool_round(replay: Replay | None, model: str = REQUEST.model, call: ToolCall = TOOL_CALL) -> ChatRequest:
    """The request after one tool round: the assistant message with its call, then the tool's result."""
    assistant = ChatMessage("assistant", "", tool_calls=(call,), replay=replay)
    result = ChatMessage("tool", "results", tool_call_id=call.id)
    return replace(REQUEST, model=model, messages=(*REQUEST.messages, assistant, result))


async def test_openrouter_reasoning_details_go_back_whole_with_the_tool_calls(llm: LLMServer) -> None:
    llm.enqueue(
        Script(
            tokens=[],
            reasoning=["Let me ", "search ", "for it."],
            signature="EqQBCkgIARABGAIiQL",
            redacted="c2lnbmVkIGdlbWluaQ==",
            tool_calls=[("web_search", '{"query": "q"}')],
        )
    )
    events = await collect(openai(llm))
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Let me search for it."
    replays = [e for e in events if isinstance(e, Replay)]
    assert replays == [
        Replay(
            "openrouter/xiaomi/mimo-v2-flash",
            {
                "reasoning_details": [
                    {
                        "type": "reasoning.text",
                        "text": "Let me search for it.",
                        "signature": "EqQBCkgIARABGAIiQL",
                        "index": 0,
                        "format": "anthropic-claude-v1",
                    },
                    {
                        "type": "reasoning.encrypted",
                        "data": "c2lnbmVkIGdlbWluaQ==",
                        "index": 1,
                        "format": "google-gemini-v1",
                    },
                ]
            },
        )
    ]
    llm.enqueue(Script(tokens=["Found it."]))
    assert text_of(await collect(openai(llm), tool_round(replays[0]))) == "Found it."
    sent = llm.chat_requests()[-1].json["messages"][2]
    assert sent["reasoning_details"] == replays[0].data["reasoning_details"]
    refused = await failure(openai(llm), tool_round(None))  # what OpenRouter answers when they are dropped
    assert refused.kind is ErrorKind.BAD_REQUEST and "reasoning_details" in refused.detail
    await collect(openai(llm), tool_round(replays[0], model="openai/gpt-4o-mini"))  # a fallback model
    assert "reasoning_details" not in llm.chat_requests()[-1].json["messages"][2]


async def test_deepseek_reasoning_content_goes_back_with_the_tool_calls(llm: LLMServer) -> None:
    script = Script(
        tokens=[], reasoning=["Need ", "data."], reasoning_field="reasoning_content", tool_calls=[("f", "{}")]
    )
    llm.enqueue(script)
    replay = next(e for e in await collect(openai(llm)) if isinstance(e, Replay))
    assert replay.data == {"reasoning_content": "Need data."}
    await collect(openai(llm), tool_round(replay, call=ToolCall("call_0", "f", "{}")))
    assert llm.chat_requests()[-1].json["messages"][2]["reasoning_content"] == "Need data."
    llm.enqueue(Script(tokens=["plain"], reasoning=["no tools, nothing to replay"]))
    assert not any(isinstance(e, Replay) for e in await collect(openai(llm)))


async def test_content_filter_stops_are_refusals(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["Some"], finish="content_filter"))
    assert (await collect(openai(llm)))[-1] == Finish("refusal")


async def test_model_listing_reads_context_prices_vision_and_allow_list(llm: LLMServer) -> None:
    llm.models = [
        {
            "id": "a/one",
            "context_length": 1000,
            "pricing": {"prompt": "0.000001", "completion": "0.000002"},
            "supported_parameters": ["tools"],
        },
        {"id": "b/two", "architecture": {"input_modalities": ["text", "image"]}},
    ]
    models = await openai(llm).list_models()
    assert [(m.id, m.context_length, m.prompt_price, m.tools, m.vision) for m in models] == [
        ("a/one", 1000, 0.000001, True, False),
        ("b/two", None, None, False, True),
    ]
    allowed = await openai(llm, models=["b/two", "local-only"], context_length={"b/two": 4096}).list_models()
    assert [(m.id, m.context_length) for m in allowed] == [("b/two", 4096), ("local-only", None)]


# Anthropic


async def test_anthropic_reference_stream(llm: LLMServer) -> None:
    llm.enqueue(Script(raw=[fixture_block("### A10.").encode()]))
    events = await collect(anthropic(llm))
    assert text_of(events) == "Hello!"
    assert events[-2:] == [Usage(25, 15), Finish("stop")]
    request = llm.requests[0]
    assert request.headers["x-api-key"] == KEY and request.headers["anthropic-version"] == "2023-06-01"
    assert request.json["system"] == "Be brief." and request.json["max_tokens"] == 4096


async def test_anthropic_thinking_tool_use_and_length_stop(llm: LLMServer) -> None:
    llm.enqueue(
        Script(
            tokens=["Looking"], reasoning=["Let me", " think"], tool_calls=[("web_search", '{"query":"q"}')]
        )
    )
    events = await collect(anthropic(llm))
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Let me think"
    assert ToolCall("toolu_2", "web_search", '{"query":"q"}') in events
    assert events[-1] == Finish("tool_calls")
    llm.enqueue(Script(tokens=["cut"], finish="length"))
    assert (await collect(anthropic(llm)))[-1] == Finish("length")


async def test_anthropic_thinking_goes_back_signed_and_in_order_with_the_tool_use(llm: LLMServer) -> None:
    llm.enqueue(
        Script(
            tokens=["Searching."],
            reasoning=["The user ", "wants news."],
            signature="ErUBCkYIBhgCIkB",
            redacted="EmwKAhgBEgy3va3pzix",
            tool_calls=[("web_search", '{"query": "q"}')],
        )
    )
    events = await collect(anthropic(llm))
    call = next(e for e in events if isinstance(e, ToolCall))
    replay = next(e for e in events if isinstance(e, Replay))
    assert replay == Replay(
        "anthropic/xiaomi/mimo-v2-flash",
        {
            "content": [
                {"type": "thinking", "thinking": "The user wants news.", "signature": "ErUBCkYIBhgCIkB"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Searching."},
                {"type": "tool_use", "id": call.id, "name": "web_search", "input": {"query": "q"}},
            ]
        },
    )
    assert events[-2:] == [Usage(12, 3), Finish("tool_calls")]
    llm.enqueue(Script(tokens=["Found it."]))
    assert text_of(await collect(anthropic(llm), tool_round(replay, call=call))) == "Found it."
    assert llm.chat_requests()[-1].json["messages"][1]["content"] == replay.data["content"]
    refused = await failure(anthropic(llm), tool_round(None, call=call))  # the API's 400 without them
    assert refused.kind is ErrorKind.BAD_REQUEST and "thinking" in refused.detail
    llm.enqueue(Script(tokens=["No tools"], reasoning=["thought"]))
    assert not any(isinstance(e, Replay) for e in await collect(anthropic(llm)))


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("model_context_window_exceeded", "context_window"),
        ("refusal", "refusal"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_anthropic_stop_reasons(llm: LLMServer, stop_reason: str, finish: str) -> None:
    llm.enqueue(Script(tokens=["Partial"], finish=stop_reason))
    assert (await collect(anthropic(llm)))[-1] == Finish(finish)


async def test_anthropic_error_event_and_missing_message_stop(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["a", "b"], error_after=1))
    assert (await failure(anthropic(llm))).kind is ErrorKind.UNAVAILABLE
    llm.enqueue(Script(tokens=["a"], no_terminal=True))
    assert (await failure(anthropic(llm))).kind is ErrorKind.BROKEN_STREAM
    llm.enqueue(
        Script(
            status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    )
    assert (await failure(anthropic(llm))).kind is ErrorKind.UNAVAILABLE


async def test_anthropic_serializes_images_and_tool_results(llm: LLMServer) -> None:
    request = ChatRequest(
        model="claude-sonnet-4-5",
        messages=(
            ChatMessage("user", "see", images=(Image("image/jpeg", b"jpg"),)),
            ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_1", "web_search", '{"query":"x"}'),)),
            ChatMessage("tool", "found", tool_call_id="toolu_1"),
        ),
    )
    await collect(anthropic(llm), request)
    messages = llm.requests[0].json["messages"]
    assert messages[0]["content"][0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "anBn"},
    }
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "web_search", "input": {"query": "x"}}
    ]
    assert messages[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"}],
    }


async def test_anthropic_model_listing(llm: LLMServer) -> None:
    models = await anthropic(llm).list_models()
    assert [(m.id, m.context_length, m.vision) for m in models] == [("claude-sonnet-4-5", 200_000, True)]


# Retries and fallbacks


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def resilient(
    attempts: list[Attempt], sleeps: Sleeps, **kwargs: object
) -> tuple[list[StreamEvent], ResilientStream]:
    stream = ResilientStream(
        attempts,
        max_retries=kwargs.get("max_retries", 3),
        retry_after_cap=30.0,
        sleep=sleeps,
        rng=lambda: 0.5,
    )  # type: ignore[arg-type]
    return [event async for event in stream.events()], stream


async def test_retry_after_is_honoured_then_the_reply_streams(llm: LLMServer) -> None:
    llm.enqueue(Script(status=429, retry_after=2), Script(status=503), Script(tokens=["ok"]))
    sleeps = Sleeps()
    events, stream = await resilient([Attempt("openrouter/m", openai(llm), REQUEST)], sleeps)
    assert text_of(events) == "ok"
    assert sleeps == [2.0, 1.0]  # Retry-After, then backoff 0.5 * 2**1 * (0.5 + 0.5)
    assert stream.answered_by == "openrouter/m"


async def test_retry_after_beyond_the_cap_is_not_waited_out(llm: LLMServer) -> None:
    llm.enqueue(Script(status=429, retry_after=120))
    sleeps = Sleeps()
    with pytest.raises(ProviderError) as caught:
        await resilient([Attempt("m", openai(llm), REQUEST)], sleeps)
    assert caught.value.kind is ErrorKind.RATE_LIMITED and sleeps == []


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
async def test_client_errors_are_never_retried(llm: LLMServer, status: int) -> None:
    llm.enqueue(Script(status=status), Script(tokens=["should not be reached"]))
    sleeps = Sleeps()
    with pytest.raises(ProviderError):
        await resilient([Attempt("m", openai(llm), REQUEST)], sleeps)
    assert len(llm.chat_requests()) == 1 and sleeps == []


async def test_no_retry_once_text_reached_the_user(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["shown", " then"], drop_after=1), Script(tokens=["again"]))
    with pytest.raises(ProviderError) as caught:
        await resilient([Attempt("m", openai(llm), REQUEST)], Sleeps())
    assert caught.value.kind is ErrorKind.BROKEN_STREAM and len(llm.chat_requests()) == 1


async def test_fallback_model_answers_when_the_first_is_down(llm: LLMServer) -> None:
    llm.enqueue(Script(status=502), Script(status=502), Script(tokens=["from the fallback"]))
    fallback = ChatRequest(model="openai/gpt-4o-mini", messages=REQUEST.messages)
    attempts = [Attempt("openrouter/a", openai(llm), REQUEST), Attempt("openrouter/b", openai(llm), fallback)]
    events, stream = await resilient(attempts, Sleeps(), max_retries=1)
    assert text_of(events) == "from the fallback" and stream.answered_by == "openrouter/b"
    assert [r.json["model"] for r in llm.chat_requests()] == ["xiaomi/mimo-v2-flash"] * 2 + [
        "openai/gpt-4o-mini"
    ]


async def test_when_every_attempt_fails_the_first_models_error_is_raised(llm: LLMServer) -> None:
    llm.enqueue(Script(status=402), Script(status=401))
    attempts = [Attempt("a", openai(llm), REQUEST), Attempt("b", openai(llm), REQUEST)]
    with pytest.raises(ProviderError) as caught:
        await resilient(attempts, Sleeps())
    assert caught.value.kind is ErrorKind.CREDITS


def test_fixture_file_is_present() -> None:
    assert json.loads(fixture_block("### A1.").split("data: ", 2)[1].split("\n")[0])["provider"] == "Xiaomi"
