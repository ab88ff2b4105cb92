"""Model Markdown made safe and readable on Slack: mentions defused, mrkdwn for plain-text messages, pages.

Native streams take standard Markdown, so they only need `neutralize`. The chat.postMessage/chat.update
path shows mrkdwn, which has no headings, tables or `[text](url)` links and needs & < > escaped.
"""

from __future__ import annotations

import re

ZWSP = "\u200b"
# <!channel>, <!here>, <!everyone>, <!subteam^S1|@team>, <@U1>, <@U1|name>: Slack's pinging syntax.
_SPECIAL = re.compile(r"<([!@])([^<>|]*)(?:\|([^<>]*))?>")
_PLAIN_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
# [text](url), [text](url "title") and [text](<url>), the form the sources list uses to stop link previews.
_LINK = re.compile(r"!?\[([^\]]*)\]\((?:<([^<>\n]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\)")
_BRACKETED_DESTINATION = re.compile(r"\]\(<([^<>\s]+)>")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![*\w])\*(?=\S)([^*]+?)(?<=\S)\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def neutralize(text: str) -> str:
    """Defuse every mention the model writes, so its output can never ping a person, group or channel."""

    def defuse(match: re.Match[str]) -> str:
        label = (match.group(3) or match.group(2)).lstrip("@").split("^")[-1]
        return f"@{ZWSP}{label}"

    text = _SPECIAL.sub(defuse, text)
    return _PLAIN_BROADCAST.sub(lambda m: f"@{ZWSP}{m.group(1)}", text)


def plain_destinations(markdown: str) -> str:
    """`[t](<url>)` as `[t](url)` for Slack's Markdown streams, whose support for the bracketed form is not
    documented; the sources list percent-encodes spaces and parentheses, so the plain form reads the same.

    Stable while text streams in: `stable_length` holds a trailing `<` back until its `>` arrives."""
    return _BRACKETED_DESTINATION.sub(r"](\1", markdown)


def stable_length(text: str) -> int:
    """How much of a growing text can be shown now: a trailing `<…` may still become a mention or a
    bracketed link (an `@` inside it included), a trailing `@word` a broadcast."""
    opening = text.rfind("<")
    if opening != -1 and ">" not in text[opening:] and len(text) - opening < 200:
        return opening
    at = text.rfind("@")
    if at != -1 and re.fullmatch(r"@\w*", text[at:]):
        return at
    return len(text)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Convert Markdown to Slack mrkdwn, line by line; fenced code is only escaped."""
    out: list[str] = []
    in_fence = False
    table: list[str] = []

    def flush_table() -> None:
        if table:
            out.extend(["```", *(escape(row) for row in table), "```"])
            table.clear()

    for line in markdown.split("\n"):
        if _FENCE.match(line):
            flush_table()
            in_fence = not in_fence
            out.append("```")  # Slack shows a language tag as code, so it is dropped
            continue
        if in_fence:
            out.append(escape(line))
            continue
        if line.lstrip().startswith("|"):
            if not re.fullmatch(r"\s*\|[\s:|-]*\|?\s*", line):  # the |---| row carries no content
                table.append(line.strip())
            continue
        flush_table()
        out.append(_block_line(line))
    flush_table()
    return "\n".join(out)


def _block_line(line: str) -> str:
    quote = ""
    while (stripped := line.lstrip()).startswith(">"):
        quote += ">"
        line = stripped[1:].removeprefix(" ")
    if quote:
        return f"{quote} {_block_line(line)}".rstrip()
    if _RULE.match(line):
        return "──────────"
    if heading := _HEADING.match(line):
        inner = _BOLD.sub(r"\2", heading.group(1))
        return f"*{_inline(inner)}*"
    if bullet := _BULLET.match(line):
        return f"{bullet.group(1)}• {_inline(line[bullet.end() :])}"
    return _inline(line)


def _inline(text: str) -> str:
    """Inline Markdown to mrkdwn, leaving code spans as they are (escaped only)."""
    parts: list[str] = []
    position = 0
    for span in _CODE_SPAN.finditer(text):
        parts.append(_inline_plain(text[position : span.start()]))
        parts.append(f"`{escape(span.group(2))}`")
        position = span.end()
    parts.append(_inline_plain(text[position:]))
    return "".join(parts)


def _inline_plain(text: str) -> str:
    links: list[str] = []

    def keep_link(match: re.Match[str]) -> str:
        label, url = escape(match.group(1)), escape(match.group(2) or match.group(3))
        links.append(f"<{url}|{label}>" if label else f"<{url}>")
        return f"\x00{len(links) - 1}\x00"

    text = _LINK.sub(keep_link, text)
    text = escape(text)
    text = _BOLD.sub(lambda m: f"\x01{m.group(2)}\x01", text)
    text = _ITALIC_STAR.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace("\x01", "*")
    return re.sub(r"\x00(\d+)\x00", lambda m: links[int(m.group(1))], text)


# Pages: one long reply becomes several messages, each under chat.update's limit.


def open_fence(text: str, end: int) -> str | None:
    """The fence line still open at `end` (e.g. "```python"), or None when `end` is outside code."""
    opener = None
    for line in text[:end].split("\n")[:-1]:  # complete lines only: a fence still being typed is not one
        if _FENCE.match(line):
            opener = None if opener else line.strip()
    return opener


def page_markdown(text: str, start: int, end: int) -> str:
    """The Markdown one page shows: a code block cut by the page boundary is closed and reopened."""
    body = text[start:end]
    reopened = open_fence(text, start)
    if reopened:
        body = f"{reopened}\n{body}"
    if open_fence(text, end) or (end == len(text) and _fence_unclosed(body)):
        body = body.rstrip("\n") + "\n```"
    return body


def _fence_unclosed(body: str) -> bool:
    return sum(1 for line in body.split("\n") if _FENCE.match(line)) % 2 == 1


def cut_point(text: str, start: int, limit: int) -> int:
    """Where the page starting at `start` should end so its mrkdwn fits `limit`: a paragraph, line or
    word boundary in the second half of the room when there is one."""
    room = limit
    while True:
        hard = min(len(text), start + room)
        window = text[start:hard]
        cut = hard
        for separator in ("\n\n", "\n", " "):
            found = window.rfind(separator)
            if found >= room // 2:
                cut = start + found + len(separator)
                break
        if len(to_mrkdwn(page_markdown(text, start, cut))) <= limit or room < 64:
            return max(cut, start + 1)
        room = int(room * 0.8)
