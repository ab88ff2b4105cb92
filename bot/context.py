"""What the model reads for one reply: the system prompt, what skills fetched, and the turns that fit."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bot.attachments import read_attachments
from bot.catalog import ResolvedModel
from bot.config import Settings
from bot.models import ConversationSettings
from bot.providers.base import ChatRequest, Image, ToolSpec
from bot.store import InboxEntry, Turn
from bot.tokens import TokenCalibration, estimate_tokens
from bot.windows import Ahead, Recalled, Windows


class ReplyFailed(Exception):
    """A reply that cannot start; the message is the one sentence the person sees."""


@dataclass(slots=True)
class Context:
    resolved: ResolvedModel
    system: str
    turns: list[Turn]  # the newest of those recalled: only the oldest are ever dropped
    turn_tokens: int  # what they count, in estimate units (kept, not summed over the window again)
    trimmed: bool  # older turns were left out to fit
    budget: int  # history tokens that fit the window, in estimate units
    reply_room: int  # tokens kept for the answer
    recalled: Recalled  # where the turns came from, with the model's message for each
    images: list[Image] = field(default_factory=list)  # for the newest message, when the model sees them
    notes: list[str] = field(default_factory=list)  # shown to the person under the reply

    @property
    def takes_tools(self) -> bool:
        return bool(self.resolved.info and self.resolved.info.tools)

    def add_material(self, text: str) -> None:
        """Put what a skill fetched ahead of the conversation, dropping the oldest turns to make room."""
        self.system = f"{self.system}\n\n{text}"
        kept, self.turn_tokens = fit(self.turns, self.turn_tokens, self.budget - estimate_tokens(text))
        self.trimmed = self.trimmed or len(kept) < len(self.turns)
        self.turns = kept

    def request(self, tools: tuple[ToolSpec, ...]) -> ChatRequest:
        messages = self.recalled.chat_messages(len(self.turns))  # (turns are dropped oldest first)
        if self.images:  # else the window's own message, whose JSON the provider keeps
            messages[-1] = replace(messages[-1], images=tuple(self.images))
        return ChatRequest(
            self.resolved.model_id,
            tuple(messages),
            system=self.system,
            max_tokens=self.reply_room,
            tools=tools,
        )

    def prompt_estimate(self) -> int:
        return estimate_tokens(self.system) + self.turn_tokens


async def assemble(
    settings: Settings,
    windows: Windows,
    calibration: TokenCalibration,
    resolved: ResolvedModel,
    conf: ConversationSettings,
    entry: InboxEntry,
    ahead: Ahead | None = None,
) -> Context:
    """The conversation as it stood at the message being answered, fitted to the model's window (`ahead`:
    what its window read in the reply's look-up)."""
    vision = bool(resolved.info and resolved.info.vision)
    attached = read_attachments(entry.message.attachments, vision=vision)
    system = conf.system_prompt or settings.system_prompt
    budget, reply_room = window(settings, calibration, resolved, system)
    recalled = await windows.recall(str(entry.message.key), budget, upto=entry.turn_id, ahead=ahead)
    context = Context(
        resolved,
        system,
        recalled.turns,
        recalled.tokens,
        recalled.trimmed,
        budget,
        reply_room,
        recalled,
        attached.images,
        attached.notes,
    )
    if not context.turns or context.turns[-1].id != entry.turn_id:
        raise ReplyFailed(too_long(resolved, budget))
    return context


def too_long(resolved: ResolvedModel, budget: int) -> str:
    return (
        f"Your message is too long for {resolved.name}: it fits about {max(budget, 0):,} tokens. "
        "Shorten it or pick a model with a larger context."
    )


def window(
    settings: Settings, calibration: TokenCalibration, resolved: ResolvedModel, system: str
) -> tuple[int, int]:
    """History tokens that fit the model's window (in estimate units), and the room kept for the reply."""
    info = resolved.info
    context_length = (info.context_length if info else None) or settings.default_context_length
    reply_room = min(settings.reply_max_tokens, max(256, context_length // 4))
    if info and info.max_output_tokens:
        reply_room = min(reply_room, info.max_output_tokens)
    factor = calibration.factor(resolved.name)
    return int((context_length - reply_room) / factor) - estimate_tokens(system), reply_room


def fit(turns: list[Turn], tokens: int, budget: int) -> tuple[list[Turn], int]:
    """Drop the oldest turns (counting `tokens` in all) until the rest fit `budget`; with what they count."""
    start = 0
    while tokens > budget and start < len(turns) - 1:
        tokens -= turns[start].tokens
        start += 1
    return turns[start:], tokens
