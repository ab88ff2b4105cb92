"""Discord's text rules: 2,000-character messages, split without breaking code fences."""

from __future__ import annotations

LIMIT = 2000
FENCE = "```"
CLOSE = "\n" + FENCE
TAG_LIMIT = 40  # the longest language tag a reopened code block keeps


def split_reply(text: str, limit: int = LIMIT) -> list[str]:
    """Pieces of at most `limit` characters that read, one after another, as the text.

    Cuts fall on a blank line in the second half of a piece, else on a line end, and only a line too long
    for one piece is cut inside (at a space when it has one); a cut at a line end drops that newline and
    nothing else is lost. A code block cut in two is closed at the end of one piece and reopened, with its
    language tag, at the start of the next, so every piece renders on its own.
    """
    pieces: list[str] = []
    opening: str | None = None  # the opening line of the code block the rest of the text starts inside
    at_line_start = True
    rest = text
    while True:
        head = _reopened(opening) + "\n" if opening is not None else ""
        ending = _open_block(rest, opening, at_line_start)
        if len(head) + len(rest) + (len(CLOSE) if ending else 0) <= limit:
            pieces.append(head + rest + (CLOSE if ending else ""))
            break
        cut = _cut(rest, limit - len(head) - len(CLOSE), opening, at_line_start)
        chunk = rest[:cut]
        after = _open_block(chunk, opening, at_line_start)
        pieces.append(head + chunk + (CLOSE if after else ""))
        rest = rest[cut:]
        at_line_start = chunk.endswith("\n") or rest.startswith("\n")
        rest = rest.removeprefix("\n")
        opening = after
    return [piece for piece in pieces if piece.strip()] or [""]


def _cut(text: str, room: int, opening: str | None, at_line_start: bool) -> int:
    """Where to end a piece of `text` that has `room` characters: how many characters it takes."""
    window = text[: room + 1]  # a newline just past the room can still end the piece
    blank = window.rfind("\n\n", room // 2, room + 1)
    while blank > 0:
        if _open_block(text[: blank + 1], opening, at_line_start) is None:
            return blank + 1  # the piece ends with the paragraph's newline; the blank line is the cut
        blank = window.rfind("\n\n", room // 2, blank)
    line_end = window.rfind("\n", 1)
    if line_end > 0 and text[:line_end].strip():  # a piece of blank lines alone would be dropped
        return line_end
    space = text.rfind(" ", 0, room)
    return space + 1 if space >= room // 2 else room


def _open_block(text: str, opening: str | None, at_line_start: bool) -> str | None:
    """The opening line of the code block still open after `text`, read from inside `opening`."""
    for index, line in enumerate(text.split("\n")):
        if (index or at_line_start) and line.lstrip().startswith(FENCE):
            opening = None if opening is not None else line
    return opening


def _reopened(opening: str) -> str:
    info = opening.strip()[len(FENCE) :].split()
    return FENCE + (info[0][:TAG_LIMIT] if info else "")


def reopening(text: str) -> str:
    """What a message that continues `text` starts with: the fence (and language tag) of the code block
    `text` ends inside, and a newline; or nothing."""
    opening = _open_block(text, None, True)
    return _reopened(opening) + "\n" if opening is not None else ""
