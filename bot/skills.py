"""What a skill is and how the engine finds one: tools the model may call, or a command runs at once.

Skills live in `skills/` and are registered by name in the composition root, like platforms. Each
conversation gives every skill a mode:
- `off`: never used;
- `on`: run before every answer (its `prefetch` says with what);
- `auto`: offered to the model as a tool; for a model that takes no tools, the skill's own `prefetch`
  rule decides whether to run it first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bot.models import Author, ConversationKey, ConversationSettings
from bot.providers.base import ToolSpec

if TYPE_CHECKING:
    from bot.platform import Platform

MODES = ("off", "on", "auto")


@dataclass(frozen=True, slots=True)
class Source:
    title: str
    url: str
    snippet: str = ""


@dataclass(frozen=True, slots=True)
class SkillResult:
    text: str  # what the model reads
    sources: tuple[Source, ...] = ()  # what the reply may cite, from the skill's own records
    note: str | None = None  # shown to the person, e.g. when the skill could not do its job
    searched: str | None = None  # the search backend it asked (not a cached answer), for the usage


@dataclass(slots=True)
class Citations:
    """The sources of one reply, numbered across every skill call, so [3] means one thing only."""

    sources: list[Source] = field(default_factory=list)

    def add(self, sources: Iterable[Source]) -> int:
        """Record sources; returns the number the first of them is cited by."""
        first = len(self.sources) + 1
        self.sources.extend(sources)
        return first


@dataclass(frozen=True, slots=True)
class SkillContext:
    """What a running skill may know and use; the platform only through its port."""

    conversation: ConversationKey
    author: Author
    settings: ConversationSettings
    platform: Platform | None
    citations: Citations


@dataclass(frozen=True, slots=True)
class Question:
    """What a skill's prefetch rule sees of the message being answered."""

    text: str  # the newest message
    recent: tuple[str, ...]  # the person's recent messages in this conversation, newest last
    mode: str
    takes_tools: bool


class Skill(Protocol):
    name: str
    summary: str  # what it does, for people (/skills, /help)
    description: str  # when to use it, for the model
    parameters: dict[str, Any]  # JSON schema of `run`'s arguments
    default_mode: str
    # Usage of the command that runs the skill now, whatever its mode (`web QUERY`: `/web QUERY` runs it
    # with `arguments_for(QUERY)`); None when it has none.
    command: str | None

    def prefetch(self, question: Question) -> list[dict[str, Any]]:
        """Arguments to run the skill with before the model answers (none: do not run it)."""
        ...

    def arguments_for(self, text: str) -> dict[str, Any]:
        """`run`'s arguments for the text typed after the skill's command."""
        ...

    async def run(self, arguments: dict[str, Any], context: SkillContext) -> SkillResult: ...

    async def aclose(self) -> None:
        """Release what the skill holds (HTTP clients); the engine calls it when it closes."""
        ...


class SkillRegistry:
    def __init__(self, skills: Iterable[Skill] = ()) -> None:
        self._skills: dict[str, Skill] = {}
        for skill in skills:
            self.register(skill)

    def register(self, skill: Skill) -> None:
        if skill.name in self._skills:
            raise ValueError(f"a skill named {skill.name} is already registered")
        if skill.default_mode not in MODES:
            raise ValueError(f"{skill.name}: default mode {skill.default_mode!r} is not one of {MODES}")
        self._skills[skill.name] = skill

    def __iter__(self) -> Iterator[Skill]:
        return iter(self._skills.values())

    def get(self, name: str) -> Skill | None:
        return self._skills.get(name)

    def by_command(self, command: str) -> Skill | None:
        return next((skill for skill in self if skill.command and skill.command.split()[0] == command), None)

    async def aclose(self) -> None:
        await asyncio.gather(*(skill.aclose() for skill in self))

    def mode(self, skill: Skill, chosen: Mapping[str, str]) -> str:
        """A skill's mode in a conversation: what a manager chose there, else the skill's default."""
        return chosen.get(skill.name) or skill.default_mode

    def tools(self, chosen: Mapping[str, str]) -> tuple[ToolSpec, ...]:
        """The skills the model decides on itself in this conversation."""
        return tuple(
            ToolSpec(skill.name, skill.description, skill.parameters)
            for skill in self
            if self.mode(skill, chosen) == "auto"
        )

    async def call(self, name: str, raw_arguments: str, context: SkillContext) -> SkillResult:
        """Run a skill the model asked for; one it was not offered is answered, not raised."""
        skill = self.get(name)
        if skill is None or self.mode(skill, context.settings.skills) != "auto":
            return SkillResult(f"There is no tool named {name}.")
        return await skill.run(tool_arguments(raw_arguments), context)


def tool_arguments(raw: str) -> dict[str, Any]:
    """The arguments a model wrote: a JSON object, or nothing usable."""
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def prefetch(
    registry: SkillRegistry,
    text: str,
    recent: tuple[str, ...],
    takes_tools: bool,
    context: SkillContext,
    forced: tuple[Skill, dict[str, Any]] | None = None,
) -> list[SkillResult]:
    """Run, before the model answers, the skills whose mode or rule says so, and a skill a command forced."""
    runs = [forced] if forced else []
    for skill in registry:
        if forced and skill is forced[0]:
            continue
        mode = registry.mode(skill, context.settings.skills)
        if mode == "on" or (mode == "auto" and not takes_tools):
            question = Question(text, recent, mode, takes_tools)
            runs += [(skill, arguments) for arguments in skill.prefetch(question)]
    return list(await asyncio.gather(*(skill.run(arguments, context) for skill, arguments in runs)))
