"""Stop and regenerate through the engine: the policy every platform shares (bot/controls.py), with the real
provider code against the loopback LLM server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from bot.controls import ENDED, GONE, NOTHING_RUNNING, REFUSED, ReplyControls, regenerate_line
from bot.engine import Engine
from bot.models import Author, ConversationKey
from bot.reply import STOPPED
from bot.schema import inbox
from tests.conftest import RecordingPlatform, RecordingSurface
from tests.support.asking import ADA, CHANNEL, answer, ask, first_render, msg
from tests.support.llm_server import LLMServer, Script

BEA = Author("u-bea", "Bea")
MANAGER = Author("u-max", "Max", is_channel_manager=True)
OTHER_MODEL = "openrouter/openai/gpt-4o-mini"


class ControlledSurface(RecordingSurface):
    """A surface that shows controls, as Discord's and Slack's do."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[ReplyControls] = []

    def show_controls(self, controls: ReplyControls) -> None:
        self.controls.append(controls)


class ControlledPlatform(RecordingPlatform):
    async def surface_for(self, conversation: Any, reply_to: Any = None) -> RecordingSurface:
        surface = ControlledSurface()
        self.surfaces.append((conversation, reply_to, surface))
        return surface


async def held_reply(
    engine: Engine, llm: LLMServer, text: str = "go", tokens: tuple[str, ...] = ("Partly", " more")
) -> tuple[asyncio.Task[str], RecordingSurface]:
    """A reply under way: its first token shown, the loopback provider holding back the rest."""
    llm.enqueue(Script(tokens=list(tokens), gate=asyncio.Semaphore(1)))
    question = msg(text)
    task = await engine.accept(question, {"message": question.id})
    assert task is not None
    return task, await first_render(engine, question)


async def question_of(engine: Engine) -> int:
    asked = await engine.store.last_question(str(CHANNEL))
    assert asked is not None
    return asked.id


async def memory(engine: Engine) -> list[tuple[str, str]]:
    turns, _ = await engine.store.recall(str(CHANNEL), 100_000)
    return [(turn.role, turn.content) for turn in turns]


async def test_stop_closes_the_provider_request_keeps_what_was_said_and_says_so(
    engine: Engine, llm: LLMServer
) -> None:
    task, surface = await held_reply(engine, llm, "tell me a story", ("Once upon", " a time", " there was"))
    turn = await question_of(engine)
    assert await engine.controls.stop(turn, BEA, CHANNEL) is not None  # someone else may not
    assert not task.done()
    assert await engine.controls.stop(turn, ADA, CHANNEL) is None
    await asyncio.wait({task})
    assert surface.final == "Once upon\n\n_Stopped._"
    async with asyncio.timeout(5):
        while not llm.closed_by_client:  # the provider saw the connection closed, not a finished stream
            await asyncio.sleep(0.01)
    assert llm.closed_by_client == ["/v1/chat/completions"]
    assert await memory(engine) == [("user", "tell me a story"), ("assistant", "Once upon")]
    stopped = await engine.controls.stop(turn, ADA, CHANNEL)
    assert stopped is not None and stopped.text == ENDED


async def test_the_stop_command_stops_your_reply_and_refuses_anothers(engine: Engine, llm: LLMServer) -> None:
    task, surface = await held_reply(engine, llm)
    assert (await engine.run_command(msg("/stop", author=BEA), "stop")).text == REFUSED
    assert (await engine.run_command(msg("/stop"), "stop")).text == "Stopped."
    await asyncio.wait({task})
    assert surface.final.endswith("_Stopped._")
    assert (await engine.run_command(msg("/stop"), "stop")).text == NOTHING_RUNNING


async def test_a_manager_may_stop_anyones_reply(engine: Engine, llm: LLMServer) -> None:
    task, _ = await held_reply(engine, llm)
    assert await engine.controls.stop(await question_of(engine), MANAGER, CHANNEL) is None
    await asyncio.wait({task})
    assert task.cancelled()


async def test_regenerate_with_another_model_keeps_the_first_answer_as_an_alternative(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Paris."]))
    await ask(engine, "Capital of France?")
    turn = await question_of(engine)
    llm.enqueue(Script(tokens=["It is Paris."]))
    again = await answer(engine, msg(regenerate_line(turn, OTHER_MODEL)))
    assert again.final == "It is Paris."
    sent = llm.chat_requests()[-1].json
    assert sent["model"] == "openai/gpt-4o-mini"
    # The question is asked again as it stood: the first answer is not part of it.
    assert [m["content"] for m in sent["messages"] if m["role"] != "system"] == ["Ada: Capital of France?"]
    assert await memory(engine) == [("user", "Capital of France?"), ("assistant", "It is Paris.")]
    assert await engine.store.answer_count(turn) == 2  # the first is kept, as an alternative
    # The next question sees only the newest answer.
    await ask(engine, "And of Italy?")
    history = [m["content"] for m in llm.chat_requests()[-1].json["messages"] if m["role"] != "system"]
    assert history == ["Ada: Capital of France?", "It is Paris.", "Ada: And of Italy?"]


async def test_regenerate_without_a_question_id_answers_the_last_question_again(
    engine: Engine, llm: LLMServer
) -> None:
    assert (
        await answer(engine, msg("/regenerate"))
    ).final == "There is no question here to answer again yet."
    llm.enqueue(Script(tokens=["One"]), Script(tokens=["Two"]))
    await ask(engine, "Pick a number")
    assert (await answer(engine, msg("/regenerate"))).final == "Two"
    assert await memory(engine) == [("user", "Pick a number"), ("assistant", "Two")]


async def test_only_the_asker_or_a_manager_may_regenerate(engine: Engine, llm: LLMServer) -> None:
    await ask(engine, "Mine")
    turn = await question_of(engine)
    assert (await answer(engine, msg(regenerate_line(turn), author=BEA))).final == REFUSED
    assert (await answer(engine, msg(regenerate_line(turn), author=MANAGER))).final == "echo: Ada: Mine"
    assert (await answer(engine, msg(regenerate_line(turn + 1000)))).final == GONE
    unknown = await answer(engine, msg(regenerate_line(turn, "openrouter/no-such-model")))
    assert "no-such-model" in unknown.final
    assert await engine.store.answer_count(turn) == 2  # refusals and unknown models answer nothing


async def test_a_failed_regeneration_leaves_memory_with_the_answer_it_had(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Good answer"]), Script(status=500))
    await ask(engine, "Question")
    turn = await question_of(engine)
    failed = await answer(engine, msg(regenerate_line(turn)))
    assert failed.final.startswith("_") and "Good answer" not in failed.final
    assert await memory(engine) == [("user", "Question"), ("assistant", "Good answer")]


async def test_replies_offer_their_controls_with_the_current_model_first(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine()
    platform = ControlledPlatform()
    engine.register(platform)
    await engine.catalog.all_names()  # the lists a menu is made from, as at start
    await ask(engine, "hello")
    (_, _, surface) = platform.surfaces[-1]
    assert isinstance(surface, ControlledSurface)
    (controls,) = surface.controls
    assert controls.question == await question_of(engine)
    assert controls.models[0] == "openrouter/xiaomi/mimo-v2-flash" and OTHER_MODEL in controls.models
    # A command's answer has nothing to stop or regenerate.
    await answer(engine, msg("/model"))
    assert isinstance(platform.surfaces[-1][2], ControlledSurface)
    assert platform.surfaces[-1][2].controls == []


# Edits, deletions and what memory keeps


async def test_an_edit_soon_after_regenerates_the_answer_where_it_shows(
    engine: Engine, platform: RecordingPlatform, llm: LLMServer
) -> None:
    question = msg("What is 2+2?")
    first = await answer(engine, question)
    edit = msg("What is 3+3?", id=question.id)
    task = await engine.controls.edited(edit, "edited-1")
    assert task is not None
    await task
    (_, reply_to, again) = platform.surfaces[-1]
    assert reply_to == {"message": question.id, "reopen": first.refs}  # the answer is rewritten in place
    assert again.final == "echo: Ada: What is 3+3?"
    assert await memory(engine) == [("user", "What is 3+3?"), ("assistant", "echo: Ada: What is 3+3?")]
    assert await engine.controls.edited(edit, "edited-1") is None  # the same edit seen again
    assert await engine.controls.edited(msg("What is 3+3?", id=question.id), "edited-2") is None  # no change


async def test_an_edit_after_the_window_or_of_a_message_never_answered_changes_nothing(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(edit_regenerate_seconds=0)
    question = msg("Old question")
    await answer(engine, question)
    assert await engine.controls.edited(msg("New question", id=question.id), "later") is None
    assert await engine.controls.edited(msg("Never seen", id="unknown"), "v") is None
    assert await memory(engine) == [("user", "Old question"), ("assistant", "echo: Ada: Old question")]
    assert len(llm.chat_requests()) == 1


async def test_a_deleted_question_and_forget_last_leave_memory_and_history_says_so(
    engine: Engine, llm: LLMServer
) -> None:
    first, second = msg("My name is Ada."), msg("I like tea.")
    await answer(engine, first)
    await answer(engine, second)
    llm.enqueue(Script(tokens=["Tea it is."]))
    await answer(engine, msg(regenerate_line(await question_of(engine))))
    await engine.controls.deleted(CHANNEL, first.id)
    assert [content for _, content in await memory(engine)] == ["I like tea.", "Tea it is."]
    report = (await engine.run_command(msg("/history"), "history")).text
    assert report == (
        "5 turns are stored here; openrouter/xiaomi/mimo-v2-flash reads the newest 2 of them.\n"
        "3 are left out of memory (earlier answers, deleted or forgotten messages).\n"
        "1 question has earlier answers kept as alternatives."
    )
    forgotten = await engine.run_command(msg("/forget last"), "forget last")
    assert forgotten.text == "Forgot the last question and its answer." and not forgotten.ephemeral
    assert await memory(engine) == []
    assert (await engine.run_command(msg("/forget"), "forget")).text.startswith("Usage: /forget last")
    assert (
        await engine.run_command(msg("/forget last"), "forget last")
    ).text == "There is nothing here to forget."


async def test_a_question_is_regenerated_or_stopped_only_from_its_own_channel(
    engine: Engine, llm: LLMServer
) -> None:
    await ask(engine, "A secret of this channel")
    turn = await question_of(engine)
    elsewhere = ConversationKey("test", "other-channel")
    leaked = await answer(engine, msg(regenerate_line(turn), key=elsewhere, author=MANAGER))
    assert leaked.final == GONE and len(llm.chat_requests()) == 1
    task, _ = await held_reply(engine, llm)
    refused = await engine.controls.stop(await question_of(engine), MANAGER, elsewhere)
    assert refused is not None and refused.text == ENDED and not task.done()
    assert await engine.controls.stop(await question_of(engine), MANAGER, CHANNEL) is None
    await asyncio.wait({task})


class StopsAtTheFinal(RecordingPlatform):
    """A platform whose reader leaves as the final text is shown (the terminal's `| head -1`): the
    reply's task is stopped then, its text complete."""

    task: asyncio.Task[Any] | None = None

    async def surface_for(self, conversation: Any, reply_to: Any = None) -> RecordingSurface:
        platform = self

        class Surface(RecordingSurface):
            async def render(self, text: str, *, final: bool) -> int:
                spent = await super().render(text, final=final)
                if final and platform.task is not None:
                    platform.task.cancel(STOPPED)
                return spent

        surface = Surface()
        self.surfaces.append((conversation, reply_to, surface))
        return surface


async def test_a_reply_stopped_as_its_complete_text_is_shown_is_stored_and_its_message_closed(
    engine: Engine, llm: LLMServer
) -> None:
    platform = StopsAtTheFinal()
    engine.register(platform)
    llm.enqueue(Script(tokens=["All", " of it"]))
    question = msg("go")
    platform.task = await engine.accept(question, {"message": question.id})
    assert platform.task is not None
    await asyncio.wait({platform.task})
    assert platform.task.cancelled()
    assert platform.surfaces[0][2].final == "All of it"
    assert await memory(engine) == [("user", "go"), ("assistant", "All of it")]
    states = await engine.store.read(lambda conn: conn.execute(select(inbox.c.state)).scalars().all())
    assert states == ["done"]  # its message is closed, not answered again at the next start
