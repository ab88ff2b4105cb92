"""The comparisons and votes of the arena, as plain functions of a connection: run them with
`store.write(fn)` (one transaction) or `store.read(fn)`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, RowMapping, and_, func, insert, or_, select, update

from bot.schema import arena_votes, comparisons, turns

# Why memory leaves a comparison's turns out: a comparison is a side trip, not part of the conversation.
HIDDEN = "compared"


@dataclass(frozen=True, slots=True)
class Comparison:
    id: int
    server: str
    conversation: str
    question: int
    own_question: bool
    after_turn: int
    asker_id: str
    model_a: str
    model_b: str
    state: str


@dataclass(frozen=True, slots=True)
class Vote:
    model_a: str
    model_b: str
    choice: str  # a, b, tie, bad


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a comparison answers: a question of the conversation, or the prompt typed with /compare."""

    question: int | None  # an existing user turn; None: store `content` as a new one
    content: str
    author_id: str
    author_name: str
    tokens: int


def start(
    inbox_id: int, server: str, conversation: str, prompt: Prompt, models: tuple[str, str]
) -> Callable[[Connection], Comparison | None]:
    """A comparison's row (and, for a typed prompt, its question turn), in one transaction; None when this
    /compare message started one before (a process stopped while it ran)."""

    def work(conn: Connection) -> Comparison | None:
        if conn.execute(select(comparisons.c.id).where(comparisons.c.inbox_id == inbox_id)).first():
            return None
        now = time.time()
        after = conn.execute(select(func.coalesce(func.max(turns.c.id), 0))).scalar_one()
        question = prompt.question
        if question is None:
            question = conn.execute(
                insert(turns).values(
                    conversation=conversation,
                    role="user",
                    author_id=prompt.author_id,
                    author_name=prompt.author_name,
                    content=prompt.content,
                    tokens=prompt.tokens,
                    created_at=now,
                )
            ).inserted_primary_key[0]
        values = {
            "inbox_id": inbox_id,
            "server": server,
            "conversation": conversation,
            "question": int(question),
            "own_question": prompt.question is None,
            "after_turn": int(after),
            "asker_id": prompt.author_id,
            "model_a": models[0],
            "model_b": models[1],
            "state": "running",
            "created_at": now,
        }
        comparison_id = conn.execute(insert(comparisons).values(**values)).inserted_primary_key[0]
        return Comparison(
            int(comparison_id),
            server,
            conversation,
            int(question),
            prompt.question is None,
            int(after),
            prompt.author_id,
            models[0],
            models[1],
            "running",
        )

    return work


def by_inbox(inbox_id: int) -> Callable[[Connection], Comparison | None]:
    def work(conn: Connection) -> Comparison | None:
        row = conn.execute(select(comparisons).where(comparisons.c.inbox_id == inbox_id)).mappings().first()
        return _comparison(row) if row else None

    return work


def get(comparison_id: int) -> Callable[[Connection], Comparison | None]:
    def work(conn: Connection) -> Comparison | None:
        row = conn.execute(select(comparisons).where(comparisons.c.id == comparison_id)).mappings().first()
        return _comparison(row) if row else None

    return work


def newest_ready(conversation: str) -> Callable[[Connection], Comparison | None]:
    """The newest comparison open to votes in a conversation (the terminal's /vote)."""

    def work(conn: Connection) -> Comparison | None:
        query = (
            select(comparisons)
            .where(comparisons.c.conversation == conversation, comparisons.c.state == "ready")
            .order_by(comparisons.c.id.desc())
            .limit(1)
        )
        row = conn.execute(query).mappings().first()
        return _comparison(row) if row else None

    return work


def last_question(conversation: str, author_id: str) -> Callable[[Connection], tuple[int, str] | None]:
    """A person's newest question in a conversation that memory still uses: (turn id, content)."""

    def work(conn: Connection) -> tuple[int, str] | None:
        query = (
            select(turns.c.id, turns.c.content)
            .where(
                turns.c.conversation == conversation,
                turns.c.role == "user",
                turns.c.author_id == author_id,
                turns.c.hidden.is_(None),
            )
            .order_by(turns.c.id.desc())
            .limit(1)
        )
        row = conn.execute(query).first()
        return (int(row.id), str(row.content)) if row else None

    return work


def settle(comparison: Comparison, state: str) -> Callable[[Connection], None]:
    """End a comparison: open to votes ("ready") or not ("failed"); its turns leave memory either way
    (its own question, and the answers written since it started)."""

    def work(conn: Connection) -> None:
        answers = and_(turns.c.answers == comparison.question, turns.c.id > comparison.after_turn)
        mine = or_(answers, turns.c.id == comparison.question) if comparison.own_question else answers
        conn.execute(update(turns).where(mine, turns.c.hidden.is_(None)).values(hidden=HIDDEN))
        conn.execute(update(comparisons).where(comparisons.c.id == comparison.id).values(state=state))

    return work


def vote(
    comparison: Comparison, voter_id: str, voter_name: str, choice: str
) -> Callable[[Connection], str | None]:
    """Record a vote; returns the choice already recorded when this person voted on it before. Two
    votes by one person at once: the second fails on the table's key (see `choice_of`)."""

    def work(conn: Connection) -> str | None:
        if (earlier := choice_of(comparison.id, voter_id)(conn)) is not None:
            return earlier
        conn.execute(
            insert(arena_votes).values(
                comparison=comparison.id,
                voter_id=voter_id,
                voter_name=voter_name,
                choice=choice,
                model_a=comparison.model_a,
                model_b=comparison.model_b,
                server=comparison.server,
                conversation=comparison.conversation,
                created_at=time.time(),
            )
        )
        return None

    return work


def choice_of(comparison_id: int, voter_id: str) -> Callable[[Connection], str | None]:
    def work(conn: Connection) -> str | None:
        query = select(arena_votes.c.choice).where(
            arena_votes.c.comparison == comparison_id, arena_votes.c.voter_id == voter_id
        )
        choice = conn.execute(query).scalar()
        return str(choice) if choice is not None else None

    return work


def votes(server: str) -> Callable[[Connection], list[Vote]]:
    def work(conn: Connection) -> list[Vote]:
        query = select(arena_votes.c.model_a, arena_votes.c.model_b, arena_votes.c.choice).where(
            arena_votes.c.server == server
        )
        return [Vote(row.model_a, row.model_b, row.choice) for row in conn.execute(query)]

    return work


def _comparison(values: RowMapping) -> Comparison:
    return Comparison(
        id=int(values["id"]),
        server=str(values["server"]),
        conversation=str(values["conversation"]),
        question=int(values["question"]),
        own_question=bool(values["own_question"]),
        after_turn=int(values["after_turn"]),
        asker_id=str(values["asker_id"]),
        model_a=str(values["model_a"]),
        model_b=str(values["model_b"]),
        state=str(values["state"]),
    )
