"""The sources list the bot appends itself, so a citation can only point where the search really went."""

from __future__ import annotations

import re
from urllib.parse import quote

from bot.skills import Source
from bot.untrusted import clean

# "[3]" as a citation, not "items[3]" in code: no word character or closing bracket right before it.
CITATION = re.compile(r"(?<![\w\]])\[(\d{1,3})\]")
CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
# What a URL may keep as is: not spaces, < > (which end a <url> link) or ( ), which end a Markdown link
# destination for converters that do not know the <url> form; servers read %28 %29 the same.
URL_SAFE = "/:?#[]@!$&'*+,;=%~-._"


def sources_footer(answer: str, sources: tuple[Source, ...]) -> str:
    """Markdown list of the sources, numbered as the model saw them; `<url>` keeps chat link previews off.

    Citation numbers in the answer that match no source are named, since streamed text cannot be unsaid.
    """
    if not sources:
        return ""
    lines = ["**Sources**"]
    for number, source in enumerate(sources, start=1):
        url = quote(source.url.strip(), safe=URL_SAFE)
        title = " ".join(clean(source.title).split()).replace("[", "(").replace("]", ")") or url
        lines.append(f"[{number}] [{title}](<{url}>)")
    if unknown := unknown_citations(answer, len(sources)):
        numbers = ", ".join(f"[{n}]" for n in unknown)
        lines.append(f"_{numbers} in the answer match no source and should be ignored._")
    return "\n".join(lines)


def unknown_citations(answer: str, count: int) -> list[int]:
    """Citation numbers outside 1..count, ignoring code, where [0] or [7] is an index, not a citation."""
    prose = CODE.sub("", answer)
    return sorted({int(n) for n in CITATION.findall(prose) if not 1 <= int(n) <= count})
