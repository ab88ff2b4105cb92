"""/prompt in `parley chat`, a real subprocess: a missing value is asked for and read as the next line."""

from __future__ import annotations

from pathlib import Path

from tests.support.console import CTRL_D, ENTER, USER, chat, sent, start_chat
from tests.support.llm_server import LLMServer
from tests.support.terminal import Terminal


async def test_a_missing_value_is_asked_for_and_the_run_is_answered(llm: LLMServer, workdir: Path) -> None:
    lines = [
        "/prompt save brief Brief {{ user }} on {{ topic }} in {{ channel }}.",
        "/prompt brief",
        "tides",
        "/prompt brief topic=moons",
        "/prompt nothing",
        "/prompt list",
    ]
    code, out, err = await chat(llm, workdir, ("\n".join(lines) + "\n").encode())
    assert code == 0, err
    assert out.splitlines() == [
        "Saved the template brief. It asks for topic. Run it with /prompt brief.",
        f"echo: {USER}: Brief {USER} on tides in default.",
        f"echo: {USER}: Brief {USER} on moons in default.",
        "There is no template named nothing here; /prompt list shows them.",
        "Templates here: brief. Run one with /prompt NAME.",
    ]
    assert "topic?" in err.splitlines()  # the question, on stderr so the output stays the replies
    assert len(llm.chat_requests()) == 2


async def test_input_that_ends_while_a_value_is_asked_for_ends_the_chat(
    llm: LLMServer, workdir: Path
) -> None:
    code, out, err = await chat(llm, workdir, b"/prompt save brief On {{ topic }}.\n/prompt brief\n")
    assert code == 0, err
    assert out.splitlines() == ["Saved the template brief. It asks for topic. Run it with /prompt brief."]
    assert not llm.chat_requests()


async def test_at_a_terminal_the_missing_value_is_asked_at_its_own_prompt(
    llm: LLMServer, workdir: Path
) -> None:
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type(f"/prompt save brief On {{{{ topic }}}}.{ENTER}")
        await term.wait_for("Saved the template brief.")
        await term.wait_for_prompt(count=2)
        await term.type(f"/prompt brief{ENTER}")
        await term.wait_for("topic>")
        await term.type(f"tides{ENTER}")
        await term.wait_for(f"echo: {USER}: On tides.")
        await term.wait_for_prompt(count=3)
        await term.type(CTRL_D)
        assert await term.exit_status() == 0
    assert sent(llm) == [f"{USER}: On tides."]
