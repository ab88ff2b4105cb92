"""Request bodies joined from each message's JSON, made once: the bytes httpx sends for `json=`."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from httpx._content import encode_json

from bot.providers import anthropic, body, openai_compat
from bot.providers.base import ChatMessage, ChatRequest, Image, Replay, ToolCall, ToolSpec
from bot.providers.body import KEPT_REQUESTS, MessageJSON

SOURCE = "router/model-a"


def messages(replayed: dict[str, Any]) -> tuple[ChatMessage, ...]:
    """A conversation with everything a message can hold; `replayed` as the provider's replay is shaped."""
    return (
        ChatMessage("user", 'Ada: "quotes", ünïcödé, emoji 🦜, a tab\t and a newline\n'),
        ChatMessage("assistant", "Looking it up."),
        ChatMessage(
            "assistant",
            "",
            tool_calls=(ToolCall("call_1", "web_search", '{"query": "parley"}'),),
            replay=Replay(SOURCE, replayed),
        ),
        ChatMessage("tool", "results", tool_call_id="call_1"),
        ChatMessage("user", "Ada: and this picture?", images=(Image("image/png", b"\x89PNG"),)),
    )


def request(replayed: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        "model-a",
        messages(replayed),
        system="You are Parley.",
        max_tokens=512,
        tools=(ToolSpec("web_search", "Search the web", {"type": "object", "properties": {}}),),
    )


OPENAI = request({"reasoning_details": [{"type": "reasoning.text", "text": "hm"}]})
ANTHROPIC = request({"content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]})


def as_httpx_sends(body: bytes) -> bytes:
    """The same JSON value encoded the way httpx encodes `json=` (key order kept)."""
    _headers, stream = encode_json(json.loads(body))
    return b"".join(stream)


@pytest.mark.parametrize(
    ("build", "asked"),
    [
        (lambda r: openai_compat._body(r, SOURCE, "max_tokens", openai_compat._MESSAGE_JSON), OPENAI),
        (lambda r: anthropic._body(r, SOURCE, anthropic._MESSAGE_JSON), ANTHROPIC),
    ],
    ids=["openai", "anthropic"],
)
def test_a_joined_body_is_byte_for_byte_what_httpx_would_send(build: Any, asked: ChatRequest) -> None:
    first = build(asked)
    assert first == as_httpx_sends(first)
    again = build(asked)  # now from the JSON kept for each message
    assert again == first


def test_the_openai_body_says_what_it_said_before() -> None:
    body = json.loads(openai_compat._body(OPENAI, SOURCE, "max_tokens", openai_compat._MESSAGE_JSON))
    assert list(body) == ["model", "messages", "stream", "stream_options", "max_tokens", "tools"]
    assert body["messages"][0] == {"role": "system", "content": "You are Parley."}
    assert body["messages"][1]["content"] == OPENAI.messages[0].content
    assert body["messages"][3]["reasoning_details"] == [{"type": "reasoning.text", "text": "hm"}]
    assert body["messages"][5]["content"][1]["image_url"]["url"] == "data:image/png;base64,iVBORw=="


def test_a_message_is_encoded_once_while_it_is_held_and_a_replay_never_kept() -> None:
    encoded: list[str] = []

    def encode(message: ChatMessage, source: str) -> dict[str, Any]:
        encoded.append(message.content)
        return {"role": message.role, "content": message.content, "source": source}

    made = MessageJSON(encode)
    message = ChatMessage("user", "Ada: hello")
    assert made(message, SOURCE) == b'{"role":"user","content":"Ada: hello","source":"router/model-a"}'
    assert made(message, SOURCE) == made(ChatMessage("user", "Ada: hello"), SOURCE)  # (another one)
    assert made(message, SOURCE) == b'{"role":"user","content":"Ada: hello","source":"router/model-a"}'
    assert encoded == ["Ada: hello", "Ada: hello"]
    assert len(made) == 1  # the other one is gone, and so is its JSON
    replayed = OPENAI.messages[2]
    made(replayed, SOURCE)
    made(replayed, "other/model-b")  # another model is sent it without the replay
    assert encoded[2:] == ["", ""]
    assert len(made) == 1
    del message
    gc.collect()
    assert len(made) == 0


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_kept_and_new_messages_in_any_order_make_the_body_httpx_would_send(count: int) -> None:
    kept = [ChatMessage("user", f"Ada: kept {i} ✓") for i in range(4)]
    openai_compat._body(
        ChatRequest("model-a", tuple(kept)), SOURCE, "max_tokens", openai_compat._MESSAGE_JSON
    )
    new = [ChatMessage("assistant", f"new {i}") for i in range(4)]
    mixed = tuple((kept[1], new[0], kept[3], new[1], kept[0], new[2], new[3])[:count])
    for system in ("", "You are Parley."):
        asked = ChatRequest("model-a", mixed, system=system, max_tokens=64)
        body = openai_compat._body(asked, SOURCE, "max_tokens", openai_compat._MESSAGE_JSON)
        assert body == as_httpx_sends(body)
        sent = [m for m in json.loads(body)["messages"] if m["role"] != "system"]
        assert [m["content"] for m in sent] == [m.content for m in mixed]
        anthropic_body = anthropic._body(asked, SOURCE, anthropic._MESSAGE_JSON)
        assert anthropic_body == as_httpx_sends(anthropic_body)
        assert len(json.loads(anthropic_body)["messages"]) == count


def fresh_body(asked: ChatRequest) -> bytes:
    """The body built with nothing kept from earlier requests."""
    return openai_compat._body(asked, SOURCE, "max_tokens", MessageJSON(openai_compat._message))


def test_a_conversations_next_request_is_cut_from_its_last_and_says_the_same() -> None:
    """As a window moves: its oldest turns dropped, its newest added, the question a fresh copy each time
    (with its images), the same model or another, two conversations in between each other."""
    made = MessageJSON(openai_compat._message)
    joined_anew: list[int] = []
    each = made.each

    def counted(messages: Any, source: str) -> list[bytes]:
        joined_anew.append(len(messages))
        return each(messages, source)

    made.each = counted  # type: ignore[method-assign]
    turns = {
        name: [ChatMessage("user" if i % 2 == 0 else "assistant", f"{name} ✓ {i}") for i in range(60)]
        for name in ("a", "b")
    }
    for step in range(12):
        for held in turns.values():
            window = held[step : 20 + 2 * step]
            asked_for = ChatMessage(window[-1].role, window[-1].content, images=(Image("image/png", b"x"),))
            source = SOURCE if step != 7 else "other/model-b"
            asked = ChatRequest("model-a", (*window[:-1], asked_for), system="You are Parley.", max_tokens=9)
            body = openai_compat._body(asked, source, "max_tokens", made)
            assert body == fresh_body(asked) == as_httpx_sends(body)
            assert anthropic._body(asked, source, anthropic._MESSAGE_JSON) == anthropic._body(
                asked, source, MessageJSON(anthropic._message)
            )
    # Joined anew: each conversation's first request, the one to the other model, and the next one back.
    assert joined_anew == [20, 20, 27, 27, 28, 28]


def test_a_tool_rounds_request_is_cut_from_the_round_before() -> None:
    made = MessageJSON(openai_compat._message)
    first = ChatRequest("model-a", OPENAI.messages[:2], max_tokens=9)
    openai_compat._body(first, SOURCE, "max_tokens", made)
    made.each = None  # type: ignore[assignment,method-assign]  # nothing may be joined anew from here
    rounds = ChatRequest("model-a", OPENAI.messages, system="s", max_tokens=9, tools=OPENAI.tools)
    body = openai_compat._body(rounds, SOURCE, "max_tokens", made)
    assert body == fresh_body(rounds)
    assert json.loads(body)["messages"][3]["reasoning_details"] == [{"type": "reasoning.text", "text": "hm"}]


def test_only_the_last_few_requests_are_kept_and_a_dropped_one_lets_its_messages_go() -> None:
    made = MessageJSON(openai_compat._message)
    for conversation in range(KEPT_REQUESTS + 3):
        held = (ChatMessage("user", f"conversation {conversation}"),)
        openai_compat._body(ChatRequest("model-a", held), SOURCE, "max_tokens", made)
    gc.collect()
    assert len(made) == KEPT_REQUESTS  # the JSON of the messages that the kept requests still hold


def test_the_bodies_kept_stay_within_their_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    made = MessageJSON(openai_compat._message)
    monkeypatch.setattr(body, "KEPT_BYTES", 3_000)
    for conversation in range(5):  # about 1,000 bytes each: three fit
        held = (ChatMessage("user", f"{conversation} " + "w" * 1_000),)
        openai_compat._body(ChatRequest("model-a", held), SOURCE, "max_tokens", made)
    del held
    gc.collect()
    assert len(made) == 2
    huge = (ChatMessage("user", "h" * 5_000),)  # past the cap alone: kept (the newest), the rest let go
    openai_compat._body(ChatRequest("model-a", huge), SOURCE, "max_tokens", made)
    gc.collect()
    assert len(made) == 1
