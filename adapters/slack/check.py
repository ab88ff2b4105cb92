"""What `parley check` asks Slack: is SLACK_BOT_TOKEN accepted, and can Socket Mode connect (or is HTTP
mode set up)."""

from __future__ import annotations

from typing import Any

import httpx

from bot.config import Settings

ANSWER_SECONDS = 15.0
NO_MODE = "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)"
WRONG_TYPE = {
    "SLACK_BOT_TOKEN": "it must be the Bot User OAuth Token (xoxb-…)",
    "SLACK_APP_TOKEN": "it must be an app-level token (xapp-…) with the connections:write scope",
}


class _Refused(Exception):
    """Slack's one-sentence answer to a call that did not succeed."""


async def check(settings: Settings) -> list[tuple[bool, str]]:
    """(ok, sentence) findings: the bot token, then Socket Mode's app-level token or HTTP mode."""
    assert settings.slack_bot_token is not None
    findings: list[tuple[bool, str]] = []
    async with httpx.AsyncClient(
        base_url=settings.slack_api_url,
        timeout=httpx.Timeout(ANSWER_SECONDS, connect=settings.connect_timeout),
    ) as client:
        try:
            who = await _call(
                client, "auth.test", "SLACK_BOT_TOKEN", settings.slack_bot_token.get_secret_value()
            )
            findings.append(
                (True, f"Slack: SLACK_BOT_TOKEN accepted for {who.get('user')} in {who.get('team')}")
            )
            if settings.slack_app_token is not None:
                app_token = settings.slack_app_token.get_secret_value()
                await _call(client, "apps.connections.open", "SLACK_APP_TOKEN", app_token)
                findings.append((True, "Slack: SLACK_APP_TOKEN accepted; Socket Mode can connect"))
        except _Refused as refusal:
            findings.append((False, str(refusal)))
        except httpx.HTTPError as error:
            findings.append(
                (False, f"could not reach Slack at {settings.slack_api_url} ({type(error).__name__})")
            )
    if settings.slack_app_token is None:
        if settings.slack_signing_secret is None:
            findings.append((False, NO_MODE))
        else:
            findings.append(
                (True, f"Slack: HTTP mode, events expected at /slack/events on port {settings.port}")
            )
    return findings


async def _call(client: httpx.AsyncClient, method: str, token_name: str, token: str) -> dict[str, Any]:
    response = await client.post(method, headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 429:
        wait = response.headers.get("Retry-After", "a few")
        raise _Refused(f"Slack rate-limited {method}; run the check again in {wait} seconds")
    try:
        body = response.json()
    except ValueError:
        raise _Refused(f"Slack answered HTTP {response.status_code} to {method}, not JSON") from None
    if not body.get("ok"):
        code = body.get("error", "an error")
        hint = (
            f"; {WRONG_TYPE[token_name]}"
            if code == "not_allowed_token_type"
            else "; check it in the app's settings"
        )
        raise _Refused(f"Slack refused {token_name} ({code}){hint}")
    return body
