"""`/prompt`: templates a server saves and runs like a question, their missing values asked for in a form.

A template belongs to the server (Discord) or workspace (Slack) it was saved in; in a Discord DM, to
the person (their own templates, in DMs only); in the terminal, to the terminal, every channel alike.
Anyone may save a new template and run any; replacing or deleting one is for whoever saved it and for
managers. A run is filled in before it is accepted, so the inbox stores the question as asked: after a
crash it is answered like any other message, and the template can change meanwhile without harm.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.models import CommandResult, Message
from bot.schema import prompt_templates
from bot.template_store import Saved, SavedTemplate, names, remove, save_template, template
from bot.template_text import VALUE_LIMIT, TemplateRefused, render, variables

if TYPE_CHECKING:
    from bot.engine import Engine

PROMPT = "prompt"
VERBS = ("save", "list", "show", "delete")
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
LISTED = 50
USAGE = (
    "Usage: /prompt NAME [key=value …], or /prompt save NAME TEXT, /prompt list, /prompt show|delete NAME."
)


@dataclass(frozen=True, slots=True)
class Form:
    """A template's run that needs values first: every variable of it, with what was given so far."""

    template: str
    fields: tuple[tuple[str, str], ...]


def scope(message: Message) -> str:
    """Whose templates (and personas) a message sees: its server's, else the person's, else the terminal's."""
    platform = message.key.platform
    if message.server_id:
        return f"{platform}:{message.server_id}"
    if platform == "console":
        return platform
    return f"{platform}:user:{message.author.id}"


def name_problem(kind: str, name: str) -> str | None:
    """One sentence when `name` cannot name a template or persona."""
    if not NAME.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        return (
            f"{shown!r} is not a {kind} name: use up to 32 lower-case letters, digits, - and _, "
            "starting with a letter or digit."
        )
    if name in VERBS or name == "use":
        return f"{name!r} is a word /{kind} itself uses; choose another name."
    return None


def is_run(args: str) -> bool:
    """Whether `/prompt ARGS` runs a template (rather than saving, listing, showing or deleting one)."""
    first = args.split(maxsplit=1)[0].lower() if args.strip() else ""
    return bool(first) and first not in VERBS


def may_replace(engine: Engine, message: Message, saved: Saved | None) -> bool:
    """A new name is anyone's to save; a saved template or persona is its saver's and managers'."""
    return (
        saved is None or saved.created_by == message.author.id or engine.may_change_settings(message.author)
    )


async def prompt_command(engine: Engine, message: Message, args: str) -> CommandResult:
    """/prompt's settings side: save, list, show, delete. A run typed in a message (a mention) has no
    form to ask in and is a reply of its own, so it is pointed to the command."""
    verb, _, rest = args.strip().partition(" ")
    verb, rest = verb.lower(), rest.strip()
    if not verb:
        return CommandResult(USAGE)
    if verb == "list":
        return await _list(engine, message)
    if verb == "save":
        return await _save(engine, message, rest)
    if verb in ("show", "delete"):
        name = rest.lower()
        if not name:
            return CommandResult(f"Usage: /prompt {verb} NAME.")
        if problem := name_problem(PROMPT, name):
            return CommandResult(problem)
        saved = await engine.store.read(template(scope(message), name))
        if saved is None:
            return CommandResult(_unknown(name))
        if verb == "show":
            return CommandResult(f"Template {name} (saved by {saved.created_by_name}):\n{saved.body}")
        if not may_replace(engine, message, saved):
            return CommandResult(
                f"Only {saved.created_by_name}, who saved {name}, or a manager can delete it."
            )
        await engine.store.write(remove(prompt_templates, scope(message), name))
        return CommandResult(f"Deleted the template {name}.", ephemeral=False)
    typed = "/parley prompt" if message.key.platform == "slack" else "/prompt"
    return CommandResult(
        f"Run a template with the command itself, which can ask for what is missing: {typed} {args.strip()}"
    )


async def prepare(
    engine: Engine, message: Message, args: str, channel: str | None = None
) -> str | Form | CommandResult:
    """`NAME key=value …`: the question it makes, or the form to ask for what is missing, or why not."""
    try:
        words = shlex.split(args)
    except ValueError:
        return CommandResult('Quote a value with spaces in it, and close the quote: topic="a b".')
    if not words:
        return CommandResult(USAGE)
    name = words[0].lower()
    if problem := name_problem(PROMPT, name):
        return CommandResult(problem)
    given: dict[str, str] = {}
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals:
            return CommandResult(f"Give values as key=value (quote values with spaces), not {word[:40]!r}.")
        given[key.strip().lower()] = value
    runnable = await _runnable(engine, message, name)
    if isinstance(runnable, CommandResult):
        return runnable
    saved, wanted = runnable
    if problem := _values_problem(name, wanted, given):
        return CommandResult(problem)
    if any(not given.get(variable) for variable in wanted):
        return Form(name, tuple((variable, given.get(variable, "")) for variable in wanted))
    return _fill(saved, message, given, channel)


async def fill(
    engine: Engine, message: Message, name: str, given: dict[str, str], channel: str | None = None
) -> str | CommandResult:
    """The question a form's answers make (the template may have changed since the form was shown)."""
    runnable = await _runnable(engine, message, name)
    if isinstance(runnable, CommandResult):
        return runnable
    saved, wanted = runnable
    given = {key: value for key, value in given.items() if key in wanted}
    if problem := _values_problem(name, wanted, given):
        return CommandResult(problem)
    if missing := [variable for variable in wanted if not given.get(variable, "").strip()]:
        return CommandResult(f"{name} still needs a value for {', '.join(missing)}.")
    return _fill(saved, message, given, channel)


def question(message: Message, text: str) -> Message:
    """The message a run is accepted as: a question, answered like /ask (never read as a command)."""
    return replace(message, text=f"/ask {text}")


async def choices(engine: Engine, message: Message, typed: str, limit: int = 25) -> list[str]:
    """What a picker offers as someone types /prompt's first word: the templates here, then the verbs."""
    typed = typed.strip().lower()
    saved = await engine.store.read(names(prompt_templates, scope(message), typed))
    return [*saved, *(verb for verb in VERBS if verb.startswith(typed))][:limit]


async def _runnable(
    engine: Engine, message: Message, name: str
) -> tuple[SavedTemplate, tuple[str, ...]] | CommandResult:
    """The saved template a run fills, read again on every step (it may change meanwhile), and its
    variables; or why it cannot run."""
    saved = await engine.store.read(template(scope(message), name))
    if saved is None:
        return CommandResult(_unknown(name))
    try:
        return saved, variables(saved.body)
    except TemplateRefused as refused:
        return CommandResult(str(refused))


def _fill(
    saved: SavedTemplate, message: Message, given: dict[str, str], channel: str | None
) -> str | CommandResult:
    now = datetime.now(_zone(message.author.timezone))
    built_in = {
        "user": message.author.display_name,
        "channel": channel or message.key.channel_id,
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H:%M"),
    }
    try:
        text = render(saved.body, {**given, **built_in})
    except TemplateRefused as refused:
        return CommandResult(str(refused))
    return text or CommandResult(f"The template {saved.name} came out empty with those values.")


def _values_problem(name: str, wanted: tuple[str, ...], given: dict[str, str]) -> str | None:
    for key, value in given.items():
        if key not in wanted:
            known = ", ".join(wanted) or "none"
            return f"{name} has no variable {key[:40]!r}; its variables are: {known}."
        if len(value) > VALUE_LIMIT:
            return f"The value of {key} is {len(value):,} characters; the limit is {VALUE_LIMIT:,}."
    return None


async def _list(engine: Engine, message: Message) -> CommandResult:
    saved = await engine.store.read(names(prompt_templates, scope(message)))
    if not saved:
        return CommandResult("No templates are saved here yet. Save one with /prompt save NAME TEXT.")
    more = f" …and {len(saved) - LISTED} more" if len(saved) > LISTED else ""
    return CommandResult(f"Templates here: {', '.join(saved[:LISTED])}{more}. Run one with /prompt NAME.")


async def _save(engine: Engine, message: Message, rest: str) -> CommandResult:
    name, _, body = rest.partition(" ")
    name, body = name.lower(), body.strip()
    if not name or not body:
        return CommandResult("Usage: /prompt save NAME TEXT, where TEXT may use {{variables}}.")
    if problem := name_problem(PROMPT, name):
        return CommandResult(problem)
    try:
        wanted = variables(body)
    except TemplateRefused as refused:
        return CommandResult(str(refused))
    here = scope(message)
    saved = await engine.store.read(template(here, name))
    if not may_replace(engine, message, saved):
        assert saved is not None
        return CommandResult(
            f"{name} was saved by {saved.created_by_name}; only they or a manager can replace it."
        )
    author = (message.author.id, message.author.display_name)
    replaced = await engine.store.write(save_template(here, name, body, author, time.time()))
    asks = f" It asks for {', '.join(wanted)}." if wanted else ""
    return CommandResult(
        f"{'Replaced' if replaced else 'Saved'} the template {name}.{asks} Run it with /prompt {name}."
    )


def _unknown(name: str) -> str:
    return f"There is no template named {name} here; /prompt list shows them."


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
