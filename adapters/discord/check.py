"""What `parley check` asks Discord: is DISCORD_TOKEN accepted, and may the bot read what people write."""

from __future__ import annotations

import httpx

from bot.config import Settings

# Application flags (GET applications/@me): the Message Content intent, granted to a verified app or
# switched on in the developer portal for an unverified one.
GATEWAY_MESSAGE_CONTENT = 1 << 18
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19
ANSWER_SECONDS = 15.0
REFUSED = "Discord refused DISCORD_TOKEN; reset the token in the developer portal"
INTENT_OFF = (
    "Discord: the Message Content intent is off, so mentions arrive without their text; turn it on "
    "under Bot → Privileged Gateway Intents in the developer portal"
)


async def check(settings: Settings) -> list[tuple[bool, str]]:
    """(ok, sentence) findings, one per question asked."""
    assert settings.discord_token is not None
    base = settings.discord_api_base.rstrip("/")
    headers = {
        "Authorization": f"Bot {settings.discord_token.get_secret_value()}",
        "User-Agent": "DiscordBot (parley, check)",
    }
    async with httpx.AsyncClient(
        base_url=base,
        headers=headers,
        timeout=httpx.Timeout(ANSWER_SECONDS, connect=settings.connect_timeout),
    ) as client:
        try:
            me = await client.get("/users/@me")
            if me.status_code == 401:
                return [(False, REFUSED)]
            me.raise_for_status()
            application = await client.get("/applications/@me")
            application.raise_for_status()
            gateway = await client.get("/gateway/bot") if settings.discord_shard_count > 1 else None
            if gateway is not None:
                gateway.raise_for_status()
        except httpx.HTTPStatusError as error:
            answer = error.response
            return [(False, f"Discord answered HTTP {answer.status_code} to GET {answer.url.path}")]
        except httpx.HTTPError as error:
            return [(False, f"could not reach Discord at {base} ({type(error).__name__})")]
    user = me.json()
    flags = int(application.json().get("flags") or 0)
    intent = flags & (GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED)
    findings = [
        (True, f"Discord: DISCORD_TOKEN accepted for {user.get('username')} (id {user.get('id')})"),
        (True, "Discord: the Message Content intent is on") if intent else (False, INTENT_OFF),
    ]
    if gateway is not None:
        findings.append(_shards(settings.discord_shard_count, int(gateway.json().get("shards") or 1)))
    return findings


def _shards(count: int, recommended: int) -> tuple[bool, str]:
    if count >= recommended:
        return True, f"Discord: DISCORD_SHARD_COUNT={count} (Discord recommends {recommended})"
    return False, (
        f"Discord: DISCORD_SHARD_COUNT={count} is fewer than the {recommended} shards Discord recommends "
        "for this bot; set it to that, the same on every instance"
    )
