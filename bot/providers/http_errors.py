"""Classifies what providers send back when something fails, so each failure reads as one clear sentence."""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bot.providers.base import ErrorKind, ProviderError

STATUS_KINDS = {
    401: ErrorKind.AUTH,
    402: ErrorKind.CREDITS,
    403: ErrorKind.FORBIDDEN,
    404: ErrorKind.UNKNOWN_MODEL,
    408: ErrorKind.TIMEOUT,
    413: ErrorKind.CONTEXT_TOO_LONG,
    429: ErrorKind.RATE_LIMITED,
    504: ErrorKind.TIMEOUT,
}
# Anthropic's error types, and the string codes OpenAI-compatible servers put in error chunks.
TYPE_KINDS = {
    "authentication_error": ErrorKind.AUTH,
    "invalid_api_key": ErrorKind.AUTH,
    "billing_error": ErrorKind.CREDITS,
    "insufficient_quota": ErrorKind.CREDITS,
    "permission_error": ErrorKind.FORBIDDEN,
    "not_found_error": ErrorKind.UNKNOWN_MODEL,
    "model_not_found": ErrorKind.UNKNOWN_MODEL,
    "request_too_large": ErrorKind.CONTEXT_TOO_LONG,
    "context_length_exceeded": ErrorKind.CONTEXT_TOO_LONG,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.UNAVAILABLE,
    "api_error": ErrorKind.UNAVAILABLE,
    "server_error": ErrorKind.UNAVAILABLE,
    "internal_server_error": ErrorKind.UNAVAILABLE,
    "provider_unavailable": ErrorKind.UNAVAILABLE,
    "provider_overloaded": ErrorKind.UNAVAILABLE,
    "timeout_error": ErrorKind.TIMEOUT,
}
CONTEXT_HINTS = (
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
    "prompt is too long",
)
# getaddrinfo's "no such host" answers; a failing resolver (EAI_AGAIN) is an outage, not a wrong name.
UNKNOWN_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
MODEL_HINTS = ("not a valid model", "invalid model", "model not found", "no such model", "does not exist")


def error_from_response(
    provider: str,
    model: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    secret: str | None,
    url: str = "",
) -> ProviderError:
    """An HTTP error response (status ≥ 400) as a ProviderError.

    A body that carries no error message of its own came from something other than the API (a CDN's
    block page, a proxy, a web server at the wrong path): its status is reported, never its HTML.
    """
    payload = _json(body)
    error = _error_object(payload) if payload is not None else {}
    message = _message(error)
    if not message or (status == 404 and message.lower() == "not found"):
        if status == 404:
            return _build(provider, model, ErrorKind.NO_API, status, "HTTP 404", {}, None, secret, url)
        message = _not_an_api_answer(status, body, headers)
    kind = STATUS_KINDS.get(status)
    if kind is None:
        kind = _kind_from_error(error, message) or (
            ErrorKind.UNAVAILABLE if status >= 500 else ErrorKind.BAD_REQUEST
        )
    elif status in (400, 404):
        kind = _kind_from_error(error, message) or kind
    return _build(provider, model, kind, status, message, error, _retry_after(headers), secret, url)


def error_from_transport(provider: str, model: str, url: str, error: httpx.TransportError) -> ProviderError:
    """A request that got no answer. A refused connection or an unknown host means nothing is there
    (a local server that is not running, a mistyped address); anything else may be a passing outage."""
    nothing_there = any(
        isinstance(cause, ConnectionRefusedError)
        or (isinstance(cause, socket.gaierror) and cause.errno in UNKNOWN_HOST)
        for cause in _causes(error)
    )
    kind = ErrorKind.UNREACHABLE if nothing_there else ErrorKind.UNAVAILABLE
    return ProviderError(
        kind,
        provider=provider,
        model=model,
        detail=f"could not connect ({type(error).__name__})",
        url=public_url(url),
    )


def public_url(url: str) -> str:
    """A URL fit to show: no user name, password, query or fragment, which may hold credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def error_from_payload(provider: str, model: str, error: Any, secret: str | None) -> ProviderError:
    """An error that arrived inside a stream (status 200), whatever shape the server gave it."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    message = _message(error)
    code = error.get("code")
    status = code if isinstance(code, int) else None
    kind = (STATUS_KINDS.get(status) if status else None) or _kind_from_error(error, message)
    if kind is None:
        kind = ErrorKind.BAD_REQUEST if status and status < 500 else ErrorKind.UNAVAILABLE
    return _build(provider, model, kind, status, message, error, None, secret)


def _build(
    provider: str,
    model: str,
    kind: ErrorKind,
    status: int | None,
    message: str,
    error: dict[str, Any],
    retry_after: float | None,
    secret: str | None,
    url: str = "",
) -> ProviderError:
    retryable = None
    availability = error.get("availability")
    if isinstance(availability, dict):  # OpenRouter's own verdict beats the status code
        if isinstance(availability.get("retryable"), bool):
            retryable = availability["retryable"]
        if isinstance(availability.get("retry_after"), int | float):
            retry_after = float(availability["retry_after"])
    detail = " ".join(message.split())[:200]
    if secret:
        detail = detail.replace(secret, "***")
    return ProviderError(
        kind,
        provider=provider,
        model=model,
        status=status,
        detail=detail,
        retry_after=retry_after,
        retryable=retryable,
        url=public_url(url),
    )


def _not_an_api_answer(status: int, body: bytes, headers: Mapping[str, str]) -> str:
    """What to say of an error body that is not the API's: its status, and plain text only when short."""
    text = body.decode("utf-8", "replace").strip()
    if "html" in headers.get("content-type", "").lower() or text.startswith("<"):
        return f"HTTP {status} from a web page, not the API: a proxy or firewall may be in the way"
    first_line = text.splitlines()[0] if text else ""
    return f"HTTP {status}: {first_line}" if 0 < len(first_line) <= 120 else f"HTTP {status}"


def _causes(error: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from, as httpx and anyio wrap a socket error."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_object(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return error
        return {"message": str(error)}
    return {}


def _message(error: dict[str, Any]) -> str:
    message = error.get("message", error.get("detail"))  # `detail`: FastAPI servers such as vLLM
    return message.strip() if isinstance(message, str) else ""


def _kind_from_error(error: dict[str, Any], message: str) -> ErrorKind | None:
    availability = error.get("availability")
    names = [error.get("type"), error.get("code"), error.get("error_type")]
    if isinstance(availability, dict):
        names.insert(0, availability.get("code"))
    metadata = error.get("metadata")
    if isinstance(metadata, dict):
        names.append(metadata.get("error_type"))
    for name in names:
        if isinstance(name, str) and name in TYPE_KINDS:
            kind = TYPE_KINDS[name]
            if kind is ErrorKind.BAD_REQUEST:
                break
            return kind
    lowered = message.lower()
    if any(hint in lowered for hint in CONTEXT_HINTS):
        return ErrorKind.CONTEXT_TOO_LONG
    if any(hint in lowered for hint in MODEL_HINTS):
        return ErrorKind.UNKNOWN_MODEL
    return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
