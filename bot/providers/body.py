"""A request body as JSON bytes, each message encoded once while it is in use.

A long conversation's request is mostly the same messages as the one before, held by the conversation's
window (bot/windows.py); encoding them again for every reply cost more than everything else the reply does
before it is sent. Each provider keeps the JSON of every message it was sent, for as long as something
holds that message, and joins the pieces. The bytes are those httpx sends for `json=body`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from itertools import repeat
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
        self._made: dict[int, bytes] = {}
        self._refs: dict[int, ReferenceType[ChatMessage]] = {}

    def __call__(self, message: ChatMessage, source: str) -> bytes:
        """The message's JSON, UTF-8, as the model `source` is sent it."""
        key = id(message)
        made = self._made.get(key)
        if made is not None:
            return made
        data = dumps(self._encode(message, source)).encode("utf-8")
        if message.replay is None:  # a replay's JSON depends on which model answers; it is not kept
            self._made[key] = data
            self._refs[key] = ref(message, partial(self._forget, key))
        return data

    def _forget(self, key: int, _gone: object) -> None:
        self._made.pop(key, None)
        self._refs.pop(key, None)

    def each(self, messages: Sequence[ChatMessage], source: str) -> list[bytes]:
        """The JSON of each message, in order (the loop a long conversation spends its time in: looked
        up without a Python loop; b"", which no message's JSON is, marks those not made yet)."""
        made = list(map(self._made.get, map(id, messages), repeat(b"")))
        index = -1
        try:
            while True:
                index = made.index(b"", index + 1)
                made[index] = self(messages[index], source)
        except ValueError:  # none left
            return made

    def __len__(self) -> int:
        return len(self._made)


def body_bytes(body: dict[str, Any], messages: list[bytes]) -> bytes:
    """`body` as JSON, its "messages" key (in its place) being `messages`, already encoded (the list's
    first and last items are replaced).

    The messages are most of a long conversation's body: they are copied once, by one join, with the
    body's other keys put in front of the first and behind the last."""
    keys = [None if key == "messages" else f"{dumps(key)}:{dumps(value)}" for key, value in body.items()]
    at = keys.index(None)
    head = ("{" + "".join(f"{key}," for key in keys[:at]) + '"messages":[').encode("utf-8")
    tail = ("]" + "".join(f",{key}" for key in keys[at + 1 :]) + "}").encode("utf-8")
    if not messages:
        return head + tail
    messages[0] = head + messages[0]
    messages[-1] += tail
    return b",".join(messages)
