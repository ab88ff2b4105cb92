"""A request body as JSON bytes, each message encoded once while it is in use.

A long conversation's request is mostly the same messages as the one before, held by the conversation's
window (bot/windows.py); encoding them again for every reply cost more than everything else the reply does
before it is sent. Each provider keeps the JSON of every message it was sent, for as long as something
holds that message, and joins the pieces. The bytes are those httpx sends for `json=body`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from bot.providers.base import ChatMessage


def dumps(value: Any) -> str:
    """JSON exactly as httpx encodes a `json=` body."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class MessageJSON:
    """One provider's JSON of the messages it was sent, kept while each message is held elsewhere."""

    def __init__(self, encode: Callable[[ChatMessage, str], dict[str, Any]]) -> None:
        self._encode = encode
        self._made: WeakKeyDictionary[ChatMessage, str] = WeakKeyDictionary()

    def __call__(self, message: ChatMessage, source: str) -> str:
        """The message's JSON as the model `source` is sent it."""
        if message.replay is not None:  # its JSON depends on which model answers; it is not kept
            return dumps(self._encode(message, source))
        made = self._made.get(message)
        if made is None:
            made = self._made[message] = dumps(self._encode(message, source))
        return made


def body_bytes(body: dict[str, Any], messages: list[str]) -> bytes:
    """`body` as JSON, its "messages" key (in its place) being `messages`, already encoded."""
    parts = [
        f"{dumps(key)}:[{','.join(messages)}]" if key == "messages" else f"{dumps(key)}:{dumps(value)}"
        for key, value in body.items()
    ]
    return ("{" + ",".join(parts) + "}").encode("utf-8")
