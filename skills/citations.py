"""The sources list the bot appends itself, so a citation can only point where the search really went."""

from __future__ import annotations

import re

from skills.base import Source

CITATION = re.compile(r"\[(\d{1,3})\]")


def sources_footer(answer: str, sources: tuple[Source, ...]) -> str:
    """Markdown list of the sources, numbered as the model saw them; `<url>` keeps chat link previews off.

    Citation numbers in the answer that match no source are named, since streamed text cannot be unsaid.
    """
    if not sources:
        return ""
    lines = ["**Sources**"]
    for number, source in enumerate(sources, start=1):
        title = source.title.replace("[", "(").replace("]", ")") or source.url
        lines.append(f"[{number}] [{title}](<{source.url}>)")
    unknown = sorted({int(n) for n in CITATION.findall(answer) if not 1 <= int(n) <= len(sources)})
    if unknown:
        numbers = ", ".join(f"[{n}]" for n in unknown)
        lines.append(f"_{numbers} in the answer match no source and should be ignored._")
    return "\n".join(lines)
