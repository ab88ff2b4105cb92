"""What a skill is: something the model can call as a tool, or a command can run directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.providers.base import ToolSpec


@dataclass(frozen=True, slots=True)
class Source:
    title: str
    url: str
    snippet: str = ""


@dataclass(frozen=True, slots=True)
class SkillResult:
    text: str  # what the model reads
    sources: tuple[Source, ...] = ()  # what the bot may cite, from its own records
    note: str | None = None  # shown to the user, e.g. when the skill could not do its job


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments
    # run(arguments, first_source): sources are numbered from `first_source`, so citations stay unique
    # across several skill calls in one reply.
    run: Callable[[dict[str, Any], int], Awaitable[SkillResult]] = field(compare=False)

    def tool_spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)
