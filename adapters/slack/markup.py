"""Slack's message markup as a person reads it: `<@U1>` as a name, `<#C1|general>` as #general, links
as their text and address, `&lt;` as <."""

from __future__ import annotations

import re

from adapters.slack.people import People

_ENTITY = re.compile(r"<([@#!])?([^<>|]*)(?:\|([^<>]*))?>")


async def readable(text: str, people: People, *, strip: str | None = None) -> str:
    """`text` with people named; a mention of `strip` (Parley, in a message addressed to it) left out."""
    names: dict[str, str] = {}
    for match in _ENTITY.finditer(text):
        if match.group(1) == "@" and match.group(2) != strip and not match.group(3):
            names[match.group(2)] = await people.display_name(match.group(2))

    def plain(match: re.Match[str]) -> str:
        sigil, target, label = match.group(1), match.group(2), match.group(3)
        if sigil == "@":
            return "" if target == strip else f"@{label or names.get(target, target)}"
        if sigil == "#":
            return f"#{label or target}"
        if sigil == "!":
            return f"@{label or target.split('^')[0]}"
        return f"{label} ({target})" if label and label != target else target

    text = _ENTITY.sub(plain, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]{2,}", " ", text).strip()
