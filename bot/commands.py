"""The commands every platform shares, in one list that each platform's registration is generated from:
Discord's slash commands and their options, Slack's `/parley` subcommands, every platform's /help."""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.access import access_command
from bot.arena import CHOICES, arena_command, vote_command
from bot.budgets import budget_command
from bot.catalog import UnknownModelError
from bot.models import CommandResult, Message
from bot.personas import ACTIONS as PERSONA_ACTIONS
from bot.personas import persona_command
from bot.providers.base import ModelInfo
from bot.schedules import ACTIONS, schedule
from bot.skills import MODES, SkillRegistry
from bot.summarize import summarize
from bot.templates import prompt_command
from bot.usage import usage_command

if TYPE_CHECKING:
    from bot.engine import Engine
    from bot.reply import Reply

Handler = Callable[["Engine", Message, str], Awaitable[CommandResult]]

MODELS_SHOWN = 40
WEB_SEARCH = "web_search"
SYSTEM_PROMPT_LIMIT = 4000

# What /help says first, by `ConversationKey.platform`; the default fits the chat apps.
HELP_INTROS = {"console": "Type a message to talk to Parley. Commands:"}
HELP_INTRO = "Mention Parley to talk to it. Commands:"


@dataclass(frozen=True, slots=True)
class Option:
    """One argument of a command, as a platform with typed commands (Discord) registers it."""

    name: str
    description: str
    choices: tuple[str, ...] = ()
    required: bool = False
    models: bool = False  # suggest model names as the person types
    templates: bool = False  # suggest the prompt templates saved here as the person types
    personas: bool = False  # suggest the personas saved here as the person types


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str  # how it is typed after the slash: "model [NAME|default]"
    summary: str
    # None: the command starts a reply, which the engine answers like a message (/ask, a skill's command).
    handler: Handler | None
    options: tuple[Option, ...] = ()
    # Platforms (by `ConversationKey.platform`) where it means nothing: the terminal answers every
    # message, so it has no /autoreply.
    not_on: frozenset[str] = frozenset()
    # A command that starts a reply answered by steps of its own (/summarize): they get the reply and
    # the text after the command.
    steps: Callable[[Reply, str], Awaitable[list[str]]] | None = None

    @property
    def starts_reply(self) -> bool:
        return self.handler is None

    def line(self, values: list[str | None]) -> str:
        """The command as typed, from its options' values in order (a platform's form of it)."""
        return " ".join([self.name, *(value for value in values if value)])


def available(platform: str) -> dict[str, Command]:
    """The settings commands that mean something on `platform`."""
    return {name: command for name, command in COMMANDS.items() if platform not in command.not_on}


def registered(skills: SkillRegistry, platform: str) -> list[Command]:
    """Every command a platform offers: the settings commands, /ask, and each skill's command."""
    offered = list(available(platform).values())
    if platform not in ASK.not_on:
        offered.insert(0, ASK)
    offered += [command for command in REPLIES.values() if platform not in command.not_on]
    if platform not in REGENERATE.not_on:
        offered.append(REGENERATE)
    offered.append(COMPARE)
    for skill in skills:
        if skill.command:
            name, _, argument = skill.command.partition(" ")
            described = next(iter(skill.parameters.get("properties", {}).values()), {}).get("description")
            option = Option(
                argument.lower() or "text", described or f"what {skill.name} works on", required=True
            )
            offered.append(Command(name, skill.command, skill.summary, None, (option,)))
    return offered


async def run(engine: Engine, message: Message, line: str) -> CommandResult:
    name, _, args = line.strip().partition(" ")
    name = name.lower()
    here = available(message.key.platform)
    command = here.get(name)
    if command is None and name in COMMANDS:
        return CommandResult(f"/{name} does not apply here. Try /help.")
    if command is None:
        close = difflib.get_close_matches(name, here, n=1)
        hint = f" Did you mean /{close[0]}?" if close else ""
        return CommandResult(f"Unknown command /{name}.{hint} Try /help.")
    return await command.handler(engine, message, args.strip())


def _where(message: Message) -> str:
    return "this thread" if message.key.thread_id else "this channel"


def _refusal(what: str) -> CommandResult:
    return CommandResult(f"Only channel managers and Parley admins can change {what}.")


async def model(engine: Engine, message: Message, args: str) -> CommandResult:
    current = (await engine.settings_for(message.key)).model
    if not args:
        details = ""
        try:
            info = await engine.catalog.info(current)
        except UnknownModelError as error:
            return CommandResult(f"{_where(message).capitalize()} uses {current}. {error}")
        if info is not None:
            details = f" ({_describe(info)})" if _describe(info) else ""
        return CommandResult(f"{_where(message).capitalize()} uses {current}{details}.")
    if not engine.may_change_settings(message.author):
        return _refusal("the model")
    if args.lower() == "default":
        await engine.store.set_setting(str(message.key), "model", None, message.author.id)
        now = (await engine.settings_for(message.key)).model
        return CommandResult(f"{_where(message).capitalize()} is back to the default model, {now}.", False)
    try:
        name, note = await engine.catalog.canonical(args)
    except UnknownModelError as error:
        return CommandResult(str(error))
    await engine.store.set_setting(str(message.key), "model", name, message.author.id)
    text = f"{_where(message).capitalize()} now uses {name}."
    return CommandResult(f"{text} {note}" if note else text, ephemeral=False)


async def models(engine: Engine, message: Message, args: str) -> CommandResult:
    names, failures = await engine.catalog.all_names()
    current = (await engine.settings_for(message.key)).model
    needle = args.lower()
    matches = sorted(name for name in names if needle in name.lower())
    lines = [f"{name}  ← current" if name == current else name for name in matches[:MODELS_SHOWN]]
    if len(matches) > MODELS_SHOWN:
        lines.append(f"…and {len(matches) - MODELS_SHOWN} more; narrow the list with /models FILTER.")
    for provider, error in failures.items():
        lines.append(f"({provider} could not be listed: {error.user_message()})")
    if not matches:
        what = f" matching {args!r}" if args else ""
        lines.insert(0, f"No models{what}." if engine.catalog.providers else _NO_PROVIDERS)
    return CommandResult("\n".join(lines))


async def system(engine: Engine, message: Message, args: str) -> CommandResult:
    if not args:
        prompt = (await engine.settings_for(message.key)).system_prompt
        if prompt is None:
            return CommandResult(f"{_where(message).capitalize()} uses the default system prompt.")
        return CommandResult(f"System prompt for {_where(message)}:\n{prompt}")
    if not engine.may_change_settings(message.author):
        return _refusal("the system prompt")
    if args.lower() == "clear":
        await engine.store.set_setting(str(message.key), "system_prompt", None, message.author.id)
        return CommandResult(f"{_where(message).capitalize()} is back to the default system prompt.", False)
    if len(args) > SYSTEM_PROMPT_LIMIT:
        return CommandResult(
            f"That system prompt is {len(args):,} characters; the limit is {SYSTEM_PROMPT_LIMIT:,}."
        )
    await engine.store.set_setting(str(message.key), "system_prompt", args, message.author.id)
    return CommandResult(f"System prompt set for {_where(message)}.", ephemeral=False)


async def reset(engine: Engine, message: Message, args: str) -> CommandResult:
    forgotten = await engine.store.forget(str(message.key))
    await engine.summaries.forget(str(message.key))
    plural = "" if forgotten == 1 else "s"
    return CommandResult(f"Forgot {forgotten} message{plural} in {_where(message)}.", ephemeral=False)


async def search(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/search MODE`: web search's mode, the skill people ask for most, by its own name."""
    return await skills(engine, message, f"{WEB_SEARCH} {args}".strip())


async def skills(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/skills` lists the skills and their modes here; `/skills NAME MODE` sets one (managers)."""
    conf = await engine.settings_for(message.key)
    name, _, mode = args.lower().partition(" ")
    if not name:
        lines = [f"Skills in {_where(message)} (off, on: before every answer, auto: when useful):"]
        for skill in engine.skills:
            lines.append(f"{skill.name}: {engine.skills.mode(skill, conf.skills)} — {skill.summary}")
        if len(lines) == 1:
            lines = ["No skills are installed."]
        else:
            lines.append("Change one with /skills NAME off|on|auto.")
        return CommandResult("\n".join(lines))
    skill = engine.skills.get(name)
    if skill is None:
        known = ", ".join(s.name for s in engine.skills) or "none"
        return CommandResult(f"There is no skill named {name!r}; the skills are: {known}.")
    mode = mode.strip()
    if not mode:
        shown = engine.skills.mode(skill, conf.skills)
        return CommandResult(
            f"{skill.name} in {_where(message)} is {shown}. Change it with /skills {name} off|on|auto."
        )
    if mode not in MODES:
        return CommandResult(f"{skill.name} can be off, on or auto, not {mode!r}.")
    if not engine.may_change_settings(message.author):
        return _refusal(skill.name)
    await engine.store.set_skill_mode(str(message.key), skill.name, mode, message.author.id)
    return CommandResult(f"{skill.name} in {_where(message)} is now {mode}.", ephemeral=False)


async def autoreply(engine: Engine, message: Message, args: str) -> CommandResult:
    if not args:
        state = "on" if (await engine.settings_for(message.key)).autoreply else "off"
        return CommandResult(f"Answering every message in {_where(message)} is {state}.")
    value = {"on": True, "off": False}.get(args.lower())
    if value is None:
        return CommandResult(f"Autoreply can be on or off, not {args!r}.")
    if not engine.may_change_settings(message.author):
        return _refusal("autoreply")
    await engine.store.set_setting(str(message.key), "autoreply", value, message.author.id)
    state = "answer every message" if value else "answer only when mentioned"
    return CommandResult(f"Parley will now {state} in {_where(message)}.", ephemeral=False)


async def help_(engine: Engine, message: Message, args: str) -> CommandResult:
    platform = message.key.platform
    lines = [HELP_INTROS.get(platform, HELP_INTRO)]
    lines += [f"/{command.usage} — {command.summary}" for command in registered(engine.skills, platform)]
    return CommandResult("\n".join(lines))


async def stop(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/stop`: the reply being written to you here (see bot/controls.py)."""
    return await engine.controls.stop_command(message, args)


async def history(engine: Engine, message: Message, args: str) -> CommandResult:
    return await engine.controls.history(message)


async def forget(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/forget last`: the last exchange leaves memory (see bot/controls.py)."""
    if args.lower() != "last":
        return CommandResult("Usage: /forget last — remove the last question and its answer from memory.")
    return await engine.controls.forget_last(message)


def _describe(info: ModelInfo) -> str:
    parts = []
    if info.context_length:
        parts.append(f"context {info.context_length:,} tokens")
    if info.prompt_price is not None and info.completion_price is not None:
        parts.append(
            f"${info.prompt_price * 1e6:.2f} in / ${info.completion_price * 1e6:.2f} out per M tokens"
        )
    if info.vision:
        parts.append("reads images")
    return ", ".join(parts)


_NO_PROVIDERS = "No model provider is configured: set OPENROUTER_API_KEY (or another provider) and restart."

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "model",
            "model [NAME|default]",
            "show or switch this conversation's model",
            model,
            (
                Option(
                    "name",
                    "PROVIDER/MODEL to switch to, or 'default'; empty shows the current one",
                    models=True,
                ),
            ),
        ),
        Command(
            "models",
            "models [FILTER]",
            "list the models you can switch to",
            models,
            (Option("filter", "Only models whose name contains this"),),
        ),
        Command(
            "system",
            "system [TEXT|clear]",
            "show, set or clear the system prompt",
            system,
            (Option("text", "The new system prompt, or 'clear'; empty shows the current one"),),
        ),
        Command("reset", "reset", "forget this conversation's messages", reset),
        Command(
            "search",
            "search [off|on|auto]",
            "show or set web search for this conversation",
            search,
            (Option("mode", "off, on or auto; empty shows the current mode", MODES),),
        ),
        Command(
            "skills",
            "skills [NAME off|on|auto]",
            "list the skills, or set how one is used here",
            skills,
            (
                Option("name", "The skill to show or set; empty lists them all"),
                Option("mode", "off, on (before every answer) or auto (when useful)", MODES),
            ),
        ),
        Command(
            "autoreply",
            "autoreply [on|off]",
            "answer every message here, not only mentions",
            autoreply,
            (Option("state", "on or off; empty shows the current state", ("on", "off")),),
            not_on=frozenset({"console"}),
        ),
        Command(
            "usage",
            "usage [me|channel|server] [today|week|month|since DATE]",
            "tokens and cost: yours, this channel's or this server's",
            usage_command,
            (
                Option("scope", "Whose usage; empty is yours", ("me", "channel", "server")),
                Option("period", "today, week, month (the default) or since YYYY-MM-DD"),
            ),
        ),
        Command(
            "budget",
            "budget [channel|server daily|monthly usd|tokens AMOUNT|off|default]",
            "show the budgets here, or set this channel's or server's",
            budget_command,
            (
                Option("scope", "channel or server; empty shows the budgets here", ("channel", "server")),
                Option("period", "daily or monthly", ("daily", "monthly")),
                Option("unit", "usd or tokens", ("usd", "tokens")),
                Option("amount", "a number, off or default"),
            ),
        ),
        Command("access", "access", "who may use Parley (admins)", access_command),
        Command(
            "schedule",
            "schedule add WHEN PROMPT|list|pause ID|resume ID|delete ID|run ID|tz [ZONE]",
            "prompts that run on their own, here or in another channel; this conversation's time zone",
            schedule,
            (
                Option("action", "add, list, pause, resume, delete, run or tz", ACTIONS, required=True),
                Option("details", "For add: WHEN [--to #channel] PROMPT; else an id or a time zone"),
            ),
            not_on=frozenset({"console"}),
        ),
        Command("help", "help", "this list", help_),
        Command("stop", "stop", "stop the reply being written to you here", stop),
        Command("history", "history", "how much of this conversation Parley remembers", history),
        Command(
            "forget",
            "forget last",
            "remove the last question and its answer from memory",
            forget,
            (Option("what", "What to forget: the last exchange", ("last",), required=True),),
        ),
        Command(
            "arena",
            "arena",
            "the leaderboard of the models compared here: ratings from your votes",
            arena_command,
        ),
        # The terminal's way to vote; the chat apps show buttons.
        Command(
            "vote",
            "vote a|b|tie|bad",
            "vote on the last comparison here",
            vote_command,
            (Option("choice", "a, b, tie or bad", tuple(CHOICES), required=True),),
            not_on=frozenset({"discord", "slack"}),
        ),
        # A run starts a reply (through the adapters, which ask for missing values in a form first);
        # save, list, show and delete are answered here (bot/templates.py).
        Command(
            "prompt",
            "prompt NAME [key=value …]|save NAME TEXT|list|show NAME|delete NAME",
            "run a saved prompt template, or save, list, show or delete one",
            prompt_command,
            (
                Option(
                    "name", "A template to run, or save, list, show or delete", required=True, templates=True
                ),
                Option("details", "key=value … to fill it in; for save: NAME TEXT; for show, delete: NAME"),
            ),
        ),
        Command(
            "persona",
            "persona save NAME|use NAME|list|delete NAME",
            "save this conversation's model, system prompt and skills as a persona, or apply one",
            persona_command,
            (
                Option("action", "save, use, list or delete", PERSONA_ACTIONS, required=True),
                Option("name", "The persona's name", personas=True),
            ),
        ),
    )
}

# A message by command, for platforms where typing to Parley needs one (a slash command on Discord).
ASK = Command(
    "ask",
    "ask PROMPT",
    "ask Parley here, with this conversation's memory",
    None,
    (Option("prompt", "What to ask", required=True),),
    not_on=frozenset({"console", "slack"}),
)

# Commands that start a reply with steps of their own, by name.
REPLIES: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "summarize",
            "summarize [N|since WHEN] [in #channel]",
            "summarize this channel or thread: the last 100 messages, the last N, or since 2h, 1d, "
            "yesterday or monday",
            None,
            (Option("range", "N messages, or since 2h, 1d, yesterday, monday; empty: the last 100"),),
            steps=summarize,
        ),
    )
}

# Answers the newest question here again (the asker's, or a manager's), optionally with another model;
# Slack's /parley has no thread to act in, so there it is a button, or `/regenerate` in a mention.
REGENERATE = Command(
    "regenerate",
    "regenerate [MODEL]",
    "answer the last question here again, with another model if you like",
    None,
    (Option("model", "PROVIDER/MODEL to answer with; empty keeps this conversation's", models=True),),
    not_on=frozenset({"slack"}),
)

# Two models answer one question blind, side by side, then people vote (bot/compare.py); the engine
# answers it like a message, with two replies.
COMPARE = Command(
    "compare",
    "compare MODEL_A MODEL_B [PROMPT]",
    "two models answer blind, side by side, then you vote; no prompt: your last question here",
    None,
    (
        Option("model_a", "One model to compare (PROVIDER/MODEL)", required=True, models=True),
        Option("model_b", "The other model to compare", required=True, models=True),
        Option("prompt", "What both answer; empty: your last question here"),
    ),
)
