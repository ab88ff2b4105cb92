"""split_reply across many line widths and fence positions: what Discord needs, and the text unchanged.

Every piece is at most the limit, its code fences are balanced, no piece is blank, and putting the pieces
back together (dropping the fence each cut closed and reopened, and the newline each cut replaced) gives
the original text exactly.
"""

from __future__ import annotations

import random

import pytest

from adapters.discord.text import LIMIT, split_reply

FENCE = "```"
CLOSE = "\n" + FENCE
TAGS = ["", "python", "js", "c++", "objective-c", "py title='x'", "x" * 60]


def is_fence(line: str) -> bool:
    return line.lstrip().startswith(FENCE)


def reopened(opening: str) -> str:
    """The line a cut code block starts its next piece with: the fence and its language tag."""
    info = opening.strip()[len(FENCE) :].split()
    return FENCE + (info[0][:40] if info else "")


def scan(chunk: str, opening: str | None, at_line_start: bool) -> str | None:
    """The open code block (its opening line) after reading `chunk` of the original text."""
    lines = chunk.split("\n")
    for index, line in enumerate(lines):
        if (index > 0 or at_line_start) and is_fence(line):
            # A fence line cut in two counts when it is read whole; the generator keeps fences short.
            opening = None if opening is not None else line
    return opening


def reassemble(text: str, pieces: list[str]) -> bool:
    """Whether the pieces are the text, cut at line ends (or inside lines too long for one piece)."""

    def walk(index: int, pos: int, opening: str | None, at_line_start: bool) -> bool:
        if index == len(pieces):
            return pos == len(text)
        body = pieces[index]
        if opening is not None:
            head = reopened(opening) + "\n"
            if not body.startswith(head):
                return False
            body = body[len(head) :]
        candidates = [(body, False)]
        if body.endswith(CLOSE):
            candidates.append((body[: -len(CLOSE)], True))
        for content, closed_by_cut in candidates:
            if not text.startswith(content, pos):
                continue
            after = scan(content, opening, at_line_start)
            if (after is not None) != closed_by_cut:
                continue
            end = pos + len(content)
            line_end = end < len(text) and text[end] == "\n"
            if line_end and walk(index + 1, end + 1, after, True):
                return True
            if walk(index + 1, end, after, content.endswith("\n") or (not content and at_line_start)):
                return True
        return False

    return walk(0, 0, None, True)


def check(text: str, limit: int) -> list[str]:
    pieces = split_reply(text, limit)
    assert all(len(piece) <= limit for piece in pieces), [len(p) for p in pieces]
    assert all(sum(is_fence(line) for line in piece.split("\n")) % 2 == 0 for piece in pieces)
    assert all(piece.strip() for piece in pieces) or pieces == [""]
    assert reassemble(text, pieces), (text, pieces)
    return pieces


def generated(rng: random.Random) -> str:
    def line(wide: bool) -> str:
        width = rng.choice([0, 1, 2, 5, 40, 79, 80, 81, 120]) if not wide else rng.randint(150, 2600)
        if rng.random() < 0.3:
            return "x" * width
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < width:
            words.append("w" * rng.randint(1, 12))
        return " ".join(words)[:width]

    blocks: list[str] = []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.4:
            body = [line(rng.random() < 0.05) for _ in range(rng.randint(0, 60))]
            closing = [] if rng.random() < 0.1 else [FENCE]
            blocks.append("\n".join([FENCE + rng.choice(TAGS), *body, *closing]))
        else:
            blocks.append("\n".join(line(rng.random() < 0.1) for _ in range(rng.randint(1, 30))))
    return "\n".join(block + "\n" * rng.randint(0, 2) for block in blocks)


@pytest.mark.parametrize("limit", [LIMIT, 997, 300, 157, 100])
def test_generated_replies_split_within_the_limit_with_balanced_fences_and_nothing_changed(
    limit: int,
) -> None:
    rng = random.Random(limit)
    for _ in range(150):
        check(generated(rng), limit)


@pytest.mark.parametrize("width", range(1, 121))
def test_code_lines_of_every_width_fill_pieces_to_the_limit_and_no_further(width: int) -> None:
    for tag in ("", "python"):
        text = (
            "Intro.\n\n"
            + FENCE
            + tag
            + "\n"
            + "\n".join("y" * width for _ in range(4000 // width))
            + "\n```\nEnd."
        )
        pieces = check(text, LIMIT)
        assert len(pieces) >= 2
        assert all(p.startswith(FENCE + tag + "\n") for p in pieces[1:-1])


@pytest.mark.parametrize("offset", range(-6, 7))
def test_a_fence_next_to_the_cut_is_closed_and_reopened_or_left_whole(offset: int) -> None:
    lead = "p" * (LIMIT - 10 + offset)
    for text in (
        f"{lead}\n```\ncode\n```\nafter",
        f"{lead}\n```js\n" + "c\n" * 30 + "```",
        f"x\n```\n{lead}\n```\ny",
        f"```\n{'a' * (LIMIT - 8 + offset)}\n```\n```\nb\n```",
    ):
        check(text, LIMIT)


def test_a_long_line_is_cut_between_messages_not_broken_inside_one() -> None:
    sentence = " ".join(f"word{i}" for i in range(800))
    pieces = check(f"Short first line.\n{sentence}\nLast line.", LIMIT)
    assert all("\n" not in piece.removeprefix("Short first line.\n") for piece in pieces[:-1])


def test_blank_lines_never_make_a_blank_message() -> None:
    text = "start" + "\n" * 3000 + "end" + "\n" * 2500
    pieces = split_reply(text)
    assert all(piece.strip() and len(piece) <= LIMIT for piece in pieces)
    assert "".join(pieces).split() == ["start", "end"]


def test_short_and_empty_texts_are_one_piece() -> None:
    assert split_reply("") == [""]
    assert split_reply("hello") == ["hello"]
    assert split_reply("```py\nunfinished") == ["```py\nunfinished\n```"]
