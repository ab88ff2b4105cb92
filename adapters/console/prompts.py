"""`/prompt NAME` in the terminal: the values a template still needs are asked for, one line each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot import templates
from bot.engine import Engine
from bot.models import CommandResult, Message

Ask = Callable[[str], Awaitable[str | None]]  # asks for one variable; None when the input ended


def runs_template(text: str) -> bool:
    name, _, args = text.strip().partition(" ")
    return name.lower() == "/" + templates.PROMPT and templates.is_run(args)


async def expand(engine: Engine, message: Message, ask: Ask) -> Message | str | None:
    """The question to accept for a template's run, or the one sentence saying why there is none, or
    None when the input ended while a value was asked for."""
    args = message.text.strip().partition(" ")[2]
    channel = message.key.channel_id
    prepared = await templates.prepare(engine, message, args, channel)
    if isinstance(prepared, templates.Form):
        values = dict(prepared.fields)
        for name, value in prepared.fields:
            while not value.strip():
                answer = await ask(name)
                if answer is None:
                    return None
                value = answer
            values[name] = value
        prepared = await templates.fill(engine, message, prepared.template, values, channel)
    if isinstance(prepared, CommandResult):
        return prepared.text
    return templates.question(message, prepared)
