"""Files shared with a message, downloaded with the bot token (Slack's file URLs need it)."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from bot.models import Attachment

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 10 * 1024 * 1024


async def download_files(files: list[dict[str, Any]], token: str) -> tuple[Attachment, ...]:
    attachments = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for file in files:
            attachments.append(await _download(http, file, token))
    return tuple(attachments)


async def _download(http: aiohttp.ClientSession, file: dict[str, Any], token: str) -> Attachment:
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
