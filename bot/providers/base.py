"""What every provider speaks: requests, stream events, model facts and one error hierarchy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Image:
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text as the model produced it


@dataclass(frozen=True, slots=True)
class Replay:
    """What a provider must be sent back, unchanged, on the assistant message of a tool round: signed
    thinking blocks, encrypted reasoning. Opaque to everyone else; only the provider and model that
    produced it (`source`) read it, so a fallback to another model never receives it."""

    source: str  # "provider/model_id"
    data: dict[str, Any]


@dataclass(frozen=True, slots=True, weakref_slot=True)  # providers keep its JSON while it is held
class ChatMessage:
    role: Literal["user", "assistant", "tool"]
    content: str
    images: tuple[Image, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # on assistant messages that called tools
    tool_call_id: str | None = None  # on tool results
    replay: Replay | None = None  # on assistant messages of a tool round


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str  # the provider's own model id, e.g. "xiaomi/mimo-v2-flash"
    messages: tuple[ChatMessage, ...]
    system: str | None = None
    max_tokens: int | None = None
    tools: tuple[ToolSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = None  # USD, when the provider reports it
    reasoning_tokens: int = 0  # of the completion tokens, those spent thinking
    cached_tokens: int = 0  # of the prompt tokens, those read from the provider's prompt cache


@dataclass(frozen=True, slots=True)
class Finish:
    # "stop", "tool_calls", or why the reply was cut short: "length" (its token limit),
    # "context_window" (the model's window filled up), "refusal" (a safety system stopped it).
    reason: str


# ToolCall events arrive whole, once the stream has finished assembling their arguments; a Replay
# comes once, before Usage and Finish, when the round ended in tool calls.
StreamEvent = TextDelta | ReasoningDelta | ToolCall | Replay | Usage | Finish


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    context_length: int | None = None
    max_output_tokens: int | None = None
    prompt_price: float | None = None  # USD per token
    completion_price: float | None = None
    vision: bool = False
    tools: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class ErrorKind(StrEnum):
    AUTH = "auth"
    CREDITS = "credits"
    FORBIDDEN = "forbidden"
    UNKNOWN_MODEL = "unknown_model"
    CONTEXT_TOO_LONG = "context_too_long"
    BAD_REQUEST = "bad_request"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    BROKEN_STREAM = "broken_stream"
    UNREACHABLE = "unreachable"  # nothing accepts connections at the address: a server that is not running
    NO_API = "no_api"  # something answered, but not the provider's API: a wrong base URL


USER_MESSAGES: dict[ErrorKind, str] = {
    ErrorKind.AUTH: "The {provider} API key was rejected; an admin needs to check it.",
    ErrorKind.CREDITS: "The {provider} account is out of credits; an admin needs to top it up.",
    ErrorKind.FORBIDDEN: "{provider} refused this request ({detail}).",
    ErrorKind.UNKNOWN_MODEL: "{provider} does not know the model {model}; pick another with /model.",
    ErrorKind.CONTEXT_TOO_LONG: (
        "This conversation is too long for {model}; use /reset or a model with a larger context."
    ),
    ErrorKind.BAD_REQUEST: "{provider} rejected the request ({detail}).",
    ErrorKind.RATE_LIMITED: "{provider} is rate-limiting us right now; try again in a minute.",
    ErrorKind.UNAVAILABLE: "{provider} is unavailable right now; try again shortly.",
    ErrorKind.TIMEOUT: "{provider} took too long to answer; try again.",
    ErrorKind.BROKEN_STREAM: "The connection to {provider} broke before the reply finished.",
    ErrorKind.UNREACHABLE: (
        "Nothing answers at {url}; check that the {provider} server is running and its address is right."
    ),
    ErrorKind.NO_API: "There is no {provider} API at {url} ({detail}); check its base URL.",
}


class ProviderError(Exception):
    """One failure of a provider call, classified so the user gets one clear sentence."""

    def __init__(
        self,
        kind: ErrorKind,
        *,
        provider: str,
        model: str = "",
        status: int | None = None,
        detail: str = "",
        retry_after: float | None = None,
        retryable: bool | None = None,
        url: str = "",
    ) -> None:
        super().__init__(f"{provider} {kind.value} (status {status}): {detail}")
        self.kind = kind
        self.provider = provider
        self.model = model
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self._retryable = retryable
        self.url = url  # the provider's base URL, without credentials

    @property
    def retryable(self) -> bool:
        if self._retryable is not None:
            return self._retryable
        return self.kind in (
            ErrorKind.RATE_LIMITED,
            ErrorKind.UNAVAILABLE,
            ErrorKind.TIMEOUT,
            ErrorKind.UNREACHABLE,
        )

    def user_message(self) -> str:
        detail = self.detail.strip().rstrip(".")[:200] or "no reason given"
        return USER_MESSAGES[self.kind].format(
            provider=self.provider, model=self.model, detail=detail, url=self.url or "its address"
        )


class Provider(Protocol):
    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Stream one reply. Raises ProviderError; never ends silently without a Finish."""
        ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    first_token: float = 90.0  # request sent → first text, reasoning or tool data
    chunk_gap: float = 60.0  # longest silence between events once the answer has begun
