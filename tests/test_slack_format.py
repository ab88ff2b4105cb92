"""Markdown to mrkdwn, mention neutralizing and page splitting for Slack."""

from __future__ import annotations

from adapters.slack.mrkdwn import (
    ZWSP,
    cut_point,
    neutralize,
    open_fence,
    page_markdown,
    plain_destinations,
    stable_length,
    to_mrkdwn,
)


def test_markdown_becomes_mrkdwn_with_entities_escaped() -> None:
    source = "\n".join(
        [
            "## Plan **now**",
            "Use **bold**, *italic*, ~~gone~~ and [docs](https://x.test/?a=1&b=2).",
            "- one < two & three > zero",
            "> quoted **text**",
            "`a<b` stays code",
            "```python",
            "if a < b and c & d:",
            "```",
            "---",
        ]
    )
    assert to_mrkdwn(source).split("\n") == [
        "*Plan now*",
        "Use *bold*, _italic_, ~gone~ and <https://x.test/?a=1&amp;b=2|docs>.",
        "• one &lt; two &amp; three &gt; zero",
        "> quoted *text*",
        "`a&lt;b` stays code",
        "```",
        "if a &lt; b and c &amp; d:",
        "```",
        "──────────",
    ]


def test_bracketed_link_destinations_become_slack_links() -> None:
    footer = "**Sources**\n[1] [A & B | site](<https://x.test/a%20b?q=1&r=2>)"
    assert to_mrkdwn(footer) == "*Sources*\n[1] <https://x.test/a%20b?q=1&amp;r=2|A &amp; B | site>"
    assert plain_destinations(footer) == "**Sources**\n[1] [A & B | site](https://x.test/a%20b?q=1&r=2)"
    assert plain_destinations("x < y and [t](<u") == "x < y and [t](<u"  # unfinished: left for later


def test_tables_are_shown_as_monospace() -> None:
    assert to_mrkdwn("| a | b |\n|---|:-:|\n| 1 | 2 |") == "```\n| a | b |\n| 1 | 2 |\n```"


def test_every_kind_of_ping_is_neutralized() -> None:
    text = "<!channel> <!here|here> <!everyone> <@U1> <@U2|bob> <!subteam^S1|@devs> @here @Channel ok@heretic"
    assert neutralize(text) == (
        f"@{ZWSP}channel @{ZWSP}here @{ZWSP}everyone @{ZWSP}U1 @{ZWSP}bob @{ZWSP}devs "
        f"@{ZWSP}here @{ZWSP}Channel ok@heretic"
    )
    escaped = to_mrkdwn(neutralize(text))
    assert "<!" not in escaped and "<@" not in escaped


def test_unfinished_mentions_are_held_back_until_complete() -> None:
    assert stable_length("hi <!chan") == 3
    assert stable_length("hi @ev") == 3
    assert stable_length("a <b> c") == len("a <b> c")
    assert stable_length("mail me@example.com") == len("mail me@example.com")
    link = "see [1] [t](<https://user@host.test/a"
    assert stable_length(link) == link.index("<")  # an @ inside an open <…> does not release it


def test_pages_fit_the_limit_and_split_at_paragraphs() -> None:
    text = ("para " * 100 + "\n\n") * 20
    cut = cut_point(text, 0, 3800)
    assert text[cut - 2 : cut] == "\n\n" and len(to_mrkdwn(page_markdown(text, 0, cut))) <= 3800


def test_escaping_growth_is_counted_against_the_limit() -> None:
    text = "&" * 5000
    cut = cut_point(text, 0, 3800)
    assert len(to_mrkdwn(page_markdown(text, 0, cut))) <= 3800 and cut > 500


def test_code_fence_cut_by_a_page_is_closed_and_reopened() -> None:
    text = "intro\n```python\n" + "x = 1\n" * 1000 + "```\nafter"
    cut = cut_point(text, 0, 3800)
    assert open_fence(text, cut) == "```python"
    first, second = page_markdown(text, 0, cut), page_markdown(text, cut, len(text))
    assert first.endswith("\n```") and second.startswith("```python\n")
    assert first.count("```") == 2 and second.count("```") == 2
