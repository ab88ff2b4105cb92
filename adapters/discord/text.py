"""Discord's text rules: 2,000-character messages, split without breaking code fences."""

from __future__ import annotations

LIMIT = 2000
FENCE = "```"


def split_reply(text: str, limit: int = LIMIT) -> list[str]:
    """Pieces of at most `limit` characters, cut at line ends (blank lines first).

    A code block cut in two is closed at the end of one piece and reopened, with its language tag,
    at the start of the next, so every piece renders on its own.
    """
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    fence: str | None = None  # the opening line of the code block we are inside, if any
    opened_with = None  # the fence the current piece started inside of

    def flush() -> None:
        nonlocal current, size, opened_with
        body = "\n".join(current)
        if fence is not None:
            body += f"\n{FENCE}"
        pieces.append(body)
        current = [fence] if fence is not None else []
        size = len(fence) + 1 if fence is not None else 0
        opened_with = fence

    room = limit - len(FENCE) - 1  # always leave space to close a fence
    for line in _lines(text, room - 40):
        needed = len(line) + (1 if current else 0)
        if current and size + needed > room and not (len(current) == 1 and current[0] == opened_with):
            cut = _paragraph_cut(current)
            if cut and fence is None:
                rest = current[cut:]
                current = current[:cut]
                flush()
                current, size = rest, sum(len(part) + 1 for part in rest) - 1
            else:
                flush()
            needed = len(line) + (1 if current else 0)
        current.append(line)
        size += needed
        if line.lstrip().startswith(FENCE):
            fence = None if fence is not None else line.strip()
    if current and (len(current) > 1 or current[0] != opened_with):
        pieces.append("\n".join(current) + (f"\n{FENCE}" if fence is not None else ""))
    return [piece for piece in pieces if piece.strip()] or [""]


def _lines(text: str, width: int) -> list[str]:
    """The text's lines, with any line longer than `width` broken at spaces (or hard, if it has none)."""
    out: list[str] = []
    for line in text.split("\n"):
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            cut = cut if cut > width // 2 else width
            out.append(line[:cut])
            line = line[cut:].lstrip(" ")
        out.append(line)
    return out


def _paragraph_cut(lines: list[str]) -> int:
    """Index just after the last blank line in the second half of `lines`, or 0 when there is none."""
    for index in range(len(lines) - 1, len(lines) // 2, -1):
        if not lines[index].strip():
            return index + 1
    return 0
