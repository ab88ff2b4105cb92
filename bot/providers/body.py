"""A request body as JSON bytes, each message encoded once while it is in use.

A long conversation's request is mostly the same messages as the one before, held by the conversation's
window (bot/windows.py); encoding them again for every reply cost more than everything else the reply does
before it is sent. Each provider keeps the JSON of every message it was sent, for as long as something
holds that message, and joins the pieces. The bytes are those httpx sends for `json=body`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from weakref import ReferenceType, ref

from bot.providers.base import ChatMessage

# What json.dumps makes for every call with these options (httpx's for a `json=` body), made once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """JSON exactly as httpx encodes a `json=` body."""
    return _ENCODER.encode(value)


class MessageJSON:
    """One provider's JSON of the messages it was sent, kept while each message is held elsewhere."""

    def __init__(self, encode: Callable[[ChatMessage, str], dict[str, Any]]) -> None:
        self._encode = encode
        # By the message's id, each entry dropped as its message is freed (before the id can be reused);
        # cheaper to look up than a WeakKeyDictionary, which hashes every field of the message.
        self._made: dict[int, tuple[str, ReferenceType[ChatMessage]]] = {}

    def __call__(self, message: ChatMessage, source: str) -> str:
        """The message's JSON as the model `source` is sent it."""
        key = id(message)
        made = self._made.get(key)
        if made is not None:
            return made[0]
        text = dumps(self._encode(message, source))
        if message.replay is None:  # a replay's JSON depends on which model answers; it is not kept
            self._made[key] = (text, ref(message, lambda _gone: self._made.pop(key, None)))
        return text

    def each(self, messages: Iterable[ChatMessage], source: str) -> list[str]:
        """The JSON of each message, in order (the loop a long conversation spends its time in)."""
        get = self._made.get
        return [made[0] if (made := get(id(m))) is not None else self(m, source) for m in messages]

    def __len__(self) -> int:
        return len(self._made)


def body_bytes(body: dict[str, Any], messages: list[str]) -> bytes:
    """`body` as JSON, its "messages" key (in its place) being `messages`, already encoded.

    One join of every piece, then one encoding: the messages are most of a long conversation's body, so
    each intermediate string would copy all of them once more."""
    pieces = ["{"]
    for key, value in body.items():
        if len(pieces) > 1:
            pieces.append(",")
        pieces += (dumps(key), ":")
        if key != "messages":
            pieces.append(dumps(value))
            continue
        pieces.append("[")
        for index, message in enumerate(messages):
            if index:
                pieces.append(",")
            pieces.append(message)
        pieces.append("]")
    pieces.append("}")
    return "".join(pieces).encode("utf-8")
