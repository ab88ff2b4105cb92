"""What Slack said when a Web API call failed, for logs and one-line messages."""

from __future__ import annotations

from slack_sdk.errors import SlackApiError


def error_code(error: SlackApiError, default: str = "error") -> str:
    """Slack's `error` field (`channel_not_found`, `invalid_auth`, …), or `default` without a response."""
    return str(error.response.get("error", default)) if error.response is not None else default
