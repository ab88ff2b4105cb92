"""Files shared with a message, downloaded with the bot token (Slack's file URLs need it).

The token goes only where Slack keeps files: over https to a Slack host, or to the origin of
SLACK_API_URL (a gateway the operator configured, or a loopback Slack in tests). A file object naming
any other URL is not fetched at all. aiohttp drops the token on a redirect to another origin.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bot.models import Attachment

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 10 * 1024 * 1024
SLACK_DOMAINS = ("slack.com", "slack-gov.com")


def may_carry_token(url: str, api_url: str) -> bool:
    """Whether the bot token may be sent to `url`."""
    target, api = urlsplit(url), urlsplit(api_url)
    try:
        port, api_port = target.port, api.port
    except ValueError:  # not a port number
        return False
    if target.username is not None or target.password is not None:
        return False
    if (target.scheme, target.hostname, port) == (api.scheme, api.hostname, api_port):
        return True
    host = (target.hostname or "").rstrip(".").lower()
    on_slack = any(host == domain or host.endswith("." + domain) for domain in SLACK_DOMAINS)
    return target.scheme == "https" and port in (None, 443) and on_slack


async def download_files(files: list[dict[str, Any]], token: str, api_url: str) -> tuple[Attachment, ...]:
    attachments = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for file in files:
            attachments.append(await _download(http, file, token, api_url))
    return tuple(attachments)


async def _download(
    http: aiohttp.ClientSession, file: dict[str, Any], token: str, api_url: str
) -> Attachment:
    name = str(file.get("name") or file.get("title") or "file")
    content_type = file.get("mimetype")
    size = int(file.get("size") or 0)

    def unavailable(reason: str) -> Attachment:
        return Attachment(name, content_type, size, unavailable_reason=reason)

    url = file.get("url_private_download") or file.get("url_private")
    if file.get("mode") in ("hidden_by_limit", "tombstone") or not url:
        return unavailable("Slack did not share its contents")
    if size > MAX_FILE_BYTES:
        return unavailable(f"it is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
    if not may_carry_token(str(url), api_url):
        log.warning("not downloading %s: its URL is not on a Slack file host", name)
        return unavailable("its link does not point to Slack")
    try:
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            if response.status != 200:
                return unavailable(f"Slack answered {response.status}")
            data = await response.content.read(MAX_FILE_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("could not download %s: %s", name, type(error).__name__)
        return unavailable("it could not be downloaded")
    if len(data) > MAX_FILE_BYTES:
        return unavailable(f"it is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
    return Attachment(name, content_type, len(data), data=data)
