"""`/persona`: a conversation's model, system prompt and skills, saved under a name and applied elsewhere.

Personas belong where templates do (bot/templates.py's `scope`). Saving a new one is for anyone;
replacing or deleting one is for whoever saved it and for managers. `/persona use` changes a
conversation's settings, so it needs what /model needs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bot.models import CommandResult, Message
from bot.schema import personas
from bot.template_store import SavedPersona, names, persona, remove, save_persona
from bot.templates import LISTED, may_replace, name_problem, scope

if TYPE_CHECKING:
    from bot.engine import Engine

PERSONA = "persona"
ACTIONS = ("save", "use", "list", "delete")
USAGE = "Usage: /persona save NAME, /persona use NAME, /persona list or /persona delete NAME."


async def persona_command(engine: Engine, message: Message, args: str) -> CommandResult:
    action, _, name = args.strip().partition(" ")
    action, name = action.lower(), name.strip().lower()
    if action == "list":
        return await _list(engine, message)
    if action not in ACTIONS:
        return CommandResult(USAGE)
    if not name:
        return CommandResult(f"Usage: /persona {action} NAME.")
    if problem := name_problem(PERSONA, name):
        return CommandResult(problem)
    here = scope(message)
    saved = await engine.store.read(persona(here, name))
    if action == "save":
        return await _save(engine, message, name, saved)
    if saved is None:
        return CommandResult(f"There is no persona named {name} here; /persona list shows them.")
    if action == "delete":
        if not may_replace(engine, message, saved):
            return CommandResult(
                f"Only {saved.created_by_name}, who saved {name}, or a manager can delete it."
            )
        await engine.store.write(remove(personas, here, name))
        return CommandResult(f"Deleted the persona {name}.", ephemeral=False)
    return await _use(engine, message, saved)


async def choices(engine: Engine, message: Message, typed: str, limit: int = 25) -> list[str]:
    """What a picker offers as someone types a persona's name: the personas saved here."""
    return (await engine.store.read(names(personas, scope(message), typed.strip().lower())))[:limit]


async def _save(engine: Engine, message: Message, name: str, saved: SavedPersona | None) -> CommandResult:
    if not may_replace(engine, message, saved):
        assert saved is not None
        return CommandResult(
            f"{name} was saved by {saved.created_by_name}; only they or a manager can replace it."
        )
    conf = await engine.settings_for(message.key)
    skills = {skill.name: engine.skills.mode(skill, conf.skills) for skill in engine.skills}
    author = (message.author.id, message.author.display_name)
    work = save_persona(scope(message), name, (conf.model, conf.system_prompt, skills), author, time.time())
    replaced = await engine.store.write(work)
    described = _describe(conf.model, conf.system_prompt, skills)
    return CommandResult(
        f"{'Replaced' if replaced else 'Saved'} the persona {name}: {described}. "
        f"Apply it anywhere here with /persona use {name}.",
        ephemeral=False,
    )


async def _use(engine: Engine, message: Message, saved: SavedPersona) -> CommandResult:
    if not engine.may_change_settings(message.author):
        return CommandResult("Only channel managers and Parley admins can apply a persona.")
    conversation, by = str(message.key), message.author.id
    await engine.store.set_setting(conversation, "model", saved.model, by)
    await engine.store.set_setting(conversation, "system_prompt", saved.system_prompt, by)
    installed = {skill.name for skill in engine.skills}
    for skill, mode in saved.skills.items():
        if skill in installed:  # a skill removed since the persona was saved is left out
            await engine.store.set_skill_mode(conversation, skill, mode, by)
    where = "this thread" if message.key.thread_id else "this channel"
    described = _describe(saved.model, saved.system_prompt, saved.skills)
    return CommandResult(
        f"{where.capitalize()} now uses the persona {saved.name}: {described}.", ephemeral=False
    )


async def _list(engine: Engine, message: Message) -> CommandResult:
    saved = await engine.store.read(names(personas, scope(message)))
    if not saved:
        return CommandResult(
            "No personas are saved here yet. Save this conversation's with /persona save NAME."
        )
    more = f" …and {len(saved) - LISTED} more" if len(saved) > LISTED else ""
    return CommandResult(
        f"Personas here: {', '.join(saved[:LISTED])}{more}. Apply one with /persona use NAME."
    )


def _describe(model: str, system_prompt: str | None, skills: Mapping[str, str]) -> str:
    prompt = "its own system prompt" if system_prompt else "the default system prompt"
    modes = ", ".join(f"{skill} {mode}" for skill, mode in sorted(skills.items()))
    return f"{model}, {prompt}" + (f", skills: {modes}" if modes else "")
