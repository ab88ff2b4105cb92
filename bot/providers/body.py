"""A request body as JSON bytes, each message encoded once while it is in use.

A long conversation's request is mostly the same messages as the one before, held by the conversation's
window (bot/windows.py); encoding them again for every reply cost more than everything else the reply does
before it is sent. Each provider keeps the JSON of every message it was sent, for as long as something
holds that message, and joins the pieces. It keeps the bodies of its last few requests too: the next
request of a conversation is, but for its oldest messages dropped and its newest added, a run of the one
before, and is cut from that body instead of joined again piece by piece. The bytes are those httpx sends
for `json=body`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, repeat
from operator import add
from typing import Any
from weakref import ReferenceType, ref

from bot.providers.base import ChatMessage

# What json.dumps makes for every call with these options (httpx's for a `json=` body), made once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
KEPT_REQUESTS = 8  # requests whose body is kept: a few conversations' latest
KEPT_BYTES = 16 * 2**20  # and at most this many bytes of them (the newest one is kept whatever its size)
PROBED = 8  # a request's newest messages looked for in a kept request (its new question, tool rounds)


def dumps(value: Any) -> str:
    """JSON exactly as httpx encodes a `json=` body."""
    return _ENCODER.encode(value)


@dataclass(slots=True)
class _Kept:
    """One request's body, and where each of its messages' JSON is in it."""

    source: str
    messages: Sequence[ChatMessage]  # held, so that no other message takes the id of one meanwhile
    data: bytes
    # Where each message's JSON starts (`begin`, for the first) and ends plus one (`stops`: where the
    # next one starts), counted so that `data` starts at `base`: a run cut from one request for the
    # next is a slice of these, with no Python loop over its messages.
    begin: int
    stops: list[int]
    base: int


class MessageJSON:
    """One provider's JSON of the messages it was sent, kept while each message is held elsewhere."""

    def __init__(self, encode: Callable[[ChatMessage, str], dict[str, Any]]) -> None:
        self._encode = encode
        # By the message's id, each entry dropped as its message is freed (before the id can be reused);
        # cheaper to look up than a WeakKeyDictionary, which hashes every field of the message.
        self._made: dict[int, bytes] = {}
        self._refs: dict[int, ReferenceType[ChatMessage]] = {}
        self._kept: OrderedDict[int, _Kept] = OrderedDict()  # by id(), the most recently used last
        self._newest: dict[int, tuple[_Kept, int]] = {}  # a kept request's newest messages, by id
        self._kept_bytes = 0

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
        """The JSON of each message, in order (looked up without a Python loop; b"", which no message's
        JSON is, marks those not made yet)."""
        made = list(map(self._made.get, map(id, messages), repeat(b"")))
        index = -1
        try:
            while True:
                index = made.index(b"", index + 1)
                made[index] = self(messages[index], source)
        except ValueError:  # none left
            return made

    def enclosed(self, head: bytes, messages: Sequence[ChatMessage], source: str, tail: bytes) -> bytes:
        """`head`, the JSON of the messages comma-joined, then `tail`, in one copy: the messages cut from
        a kept request where the oldest of them are a run of it, else joined from each message's."""
        if not messages:
            return head + tail
        found = self._run_in_kept(messages, source)
        if found is None:
            pieces = self.each(messages, source)
            stops = list(accumulate(map(add, map(len, pieces), repeat(1))))
            pieces[0] = head + pieces[0]
            pieces[-1] += tail
            data = b",".join(pieces)
            self._keep(_Kept(source, messages, data, 0, stops, -len(head)))
            return data
        kept, start, count = found
        begin = kept.stops[start - 1] if start else kept.begin
        end = kept.stops[start + count - 1] - 1
        parts = [head, memoryview(kept.data)[begin - kept.base : end - kept.base]]
        new = [self(message, source) for message in messages[count:]]
        for piece in new:
            parts += (b",", piece)
        parts.append(tail)
        data = b"".join(parts)
        stops = kept.stops[start : start + count]
        stops += accumulate(map(add, map(len, new), repeat(1)), initial=stops[-1])
        del stops[count]  # (the initial value, repeated)
        self._drop(kept)  # this request supersedes it
        self._keep(_Kept(source, messages, data, begin, stops, begin - len(head)))
        return data

    def _run_in_kept(self, messages: Sequence[ChatMessage], source: str) -> tuple[_Kept, int, int] | None:
        """A kept request of which the oldest of `messages` are a run (the request, where it starts, how
        many), found by one of the newest of `messages` being one of its newest."""
        for at in range(len(messages) - 1, max(len(messages) - 1 - PROBED, -1), -1):
            hit = self._newest.get(id(messages[at]))
            if hit is None:
                continue
            kept, position = hit
            start = position - at
            if (
                start >= 0
                and kept.source == source
                and kept.messages[start : position + 1] == messages[: at + 1]  # (the same objects)
            ):
                return kept, start, at + 1
        return None

    def _keep(self, kept: _Kept) -> None:
        self._kept[id(kept)] = kept
        self._kept_bytes += len(kept.data)
        for position in range(max(len(kept.messages) - PROBED, 0), len(kept.messages)):
            self._newest[id(kept.messages[position])] = (kept, position)
        while len(self._kept) > KEPT_REQUESTS or (self._kept_bytes > KEPT_BYTES and len(self._kept) > 1):
            self._drop(next(iter(self._kept.values())))

    def _drop(self, kept: _Kept) -> None:
        del self._kept[id(kept)]
        self._kept_bytes -= len(kept.data)
        for message in kept.messages[-PROBED:]:
            if (hit := self._newest.get(id(message))) is not None and hit[0] is kept:
                del self._newest[id(message)]

    def __len__(self) -> int:
        return len(self._made)


def body_bytes(
    body: dict[str, Any],
    messages: Sequence[ChatMessage],
    source: str,
    message_json: MessageJSON,
    first: bytes = b"",
) -> bytes:
    """`body` as JSON, its "messages" key (in its place) being `first` (a message's JSON, if any) and then
    `messages`, each as `message_json` encodes it for the model `source`.

    The messages are most of a long conversation's body: they are copied once, by one join, with the
    body's other keys put in front and behind."""
    keys = [None if key == "messages" else f"{dumps(key)}:{dumps(value)}" for key, value in body.items()]
    at = keys.index(None)
    head = ("{" + "".join(f"{key}," for key in keys[:at]) + '"messages":[').encode("utf-8")
    tail = ("]" + "".join(f",{key}" for key in keys[at + 1 :]) + "}").encode("utf-8")
    if first:
        head += first + b"," if messages else first
    return message_json.enclosed(head, messages, source, tail)
