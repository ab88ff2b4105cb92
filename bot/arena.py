"""The arena: votes on blind comparisons, and the leaderboard they make (`/arena`).

Ratings are Bradley–Terry strengths fitted to every rated vote of the server at once (maximum
likelihood, by Zermelo's iteration): P(i beats j) = πi / (πi + πj). Unlike Elo they do not depend on
the order the votes came in, and the fit gives a standard error. A tie counts as half a win for each
side; "both bad" says nothing about which is better, so it is counted and shown but not rated. Shown
on Elo's scale: 1000 + 400·log10(πi), with the geometric mean of the strengths at 1 (so the average
rated model is at 1000), and a 95 % interval of ±1.96 standard errors (from the inverse of the fit's
Fisher information) once a model has MIN_VOTES_FOR_INTERVAL rated votes. A finite fit needs every
rated model to have won and lost (or tied) within the group: the models rated are the largest group
in which each one's (half-)wins lead, through others, to every other; the rest show their record only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from bot import arena_store
from bot.arena_store import Comparison, Vote
from bot.models import Author, CommandResult, Message

if TYPE_CHECKING:
    from bot.engine import Engine

CHOICES = {"a": "A is better", "b": "B is better", "tie": "a tie", "bad": "both are bad"}
MIN_VOTES_FOR_INTERVAL = 10  # rated votes a model needs before its 95 % interval is shown
SCALE = 400 / math.log(10)  # natural-log strength to Elo points
BASE = 1000.0
Z95 = 1.96
SHOWN = 25  # models listed by /arena


@dataclass
class Standing:
    model: str
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0
    rating: float | None = None
    interval: float | None = None  # half-width of the 95 % interval, in rating points

    @property
    def rated_votes(self) -> int:
        return self.wins + self.losses + self.ties


@dataclass
class Board:
    standings: list[Standing] = field(default_factory=list)
    votes: int = 0
    both_bad: int = 0


def scope(message: Message) -> str:
    """Whose leaderboard a vote counts on: the server or workspace, or (no server) the platform's."""
    platform = message.key.platform
    return f"{platform}:{message.server_id}" if message.server_id else platform


def leaderboard(votes: Sequence[Vote]) -> Board:
    """Every model's record and, where the votes allow a fit, its rating; best first (the models not
    rated yet last, by wins less losses)."""
    standings: dict[str, Standing] = {}
    wins: dict[tuple[str, str], float] = defaultdict(float)  # (i, j): i's wins over j, ties as halves
    board = Board(votes=len(votes))
    for vote in votes:
        a = standings.setdefault(vote.model_a, Standing(vote.model_a))
        b = standings.setdefault(vote.model_b, Standing(vote.model_b))
        if vote.choice == "bad":
            a.both_bad += 1
            b.both_bad += 1
            board.both_bad += 1
        elif vote.choice == "tie":
            a.ties += 1
            b.ties += 1
            wins[a.model, b.model] += 0.5
            wins[b.model, a.model] += 0.5
        else:
            winner, loser = (a, b) if vote.choice == "a" else (b, a)
            winner.wins += 1
            loser.losses += 1
            wins[winner.model, loser.model] += 1
    group = _fittable(sorted(standings), wins)
    if len(group) >= 2:
        theta = bradley_terry(group, wins)
        errors = standard_errors(group, wins, theta)
        for model, strength, error in zip(group, theta, errors, strict=True):
            standing = standings[model]
            standing.rating = BASE + SCALE * strength
            if standing.rated_votes >= MIN_VOTES_FOR_INTERVAL:
                standing.interval = Z95 * SCALE * error
    board.standings = sorted(
        standings.values(),
        key=lambda s: (s.rating is None, -(s.rating or 0.0), s.losses - s.wins, -s.rated_votes, s.model),
    )
    return board


def bradley_terry(
    models: Sequence[str], wins: dict[tuple[str, str], float], *, tolerance: float = 1e-12
) -> list[float]:
    """Log-strengths θ (summing to 0) that maximise the likelihood of `wins`, by Zermelo's iteration
    πi ← Wi / Σj nij / (πi + πj); it converges when every model's wins lead to every other."""
    strength = [1.0] * len(models)
    for _ in range(100_000):
        updated = []
        for i, model in enumerate(models):
            won = sum(wins.get((model, other), 0.0) for other in models)
            games = sum(
                _games(wins, model, other) / (strength[i] + strength[j])
                for j, other in enumerate(models)
                if j != i
            )
            updated.append(won / games)
        mean = sum(math.log(value) for value in updated) / len(updated)
        updated = [value / math.exp(mean) for value in updated]
        change = max(abs(math.log(new / old)) for new, old in zip(updated, strength, strict=True))
        strength = updated
        if change < tolerance:
            break
    return [math.log(value) for value in strength]


def standard_errors(
    models: Sequence[str], wins: dict[tuple[str, str], float], theta: Sequence[float]
) -> list[float]:
    """Each θi's standard error under Σθ = 0: the diagonal of the pseudo-inverse of the Fisher
    information I (Iii = Σj nij pij pji, Iij = −nij pij pji), which for a connected group is
    (I + J/k)⁻¹ − J/k with J all ones and k models."""
    k = len(models)
    info = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            p = 1 / (1 + math.exp(theta[j] - theta[i]))
            weight = _games(wins, models[i], models[j]) * p * (1 - p)
            info[i][j] -= weight
            info[i][i] += weight
    inverse = _inverse([[value + 1 / k for value in row] for row in info])
    return [math.sqrt(max(inverse[i][i] - 1 / k, 0.0)) for i in range(k)]


def _games(wins: dict[tuple[str, str], float], i: str, j: str) -> float:
    return wins.get((i, j), 0.0) + wins.get((j, i), 0.0)


def _fittable(models: Sequence[str], wins: dict[tuple[str, str], float]) -> list[str]:
    """The largest group of models in which each reaches every other through (half-)wins: the
    strongly connected component where the likelihood has a finite maximum."""
    beats = {m: {o for o in models if wins.get((m, o), 0.0) > 0} for m in models}
    reach = {m: _reachable(m, beats) for m in models}
    best: list[str] = []
    for model in models:
        group = [other for other in models if other in reach[model] and model in reach[other]]
        if len(group) > len(best):
            best = group
    return best


def _reachable(start: str, beats: dict[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for other in beats[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


def _inverse(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss–Jordan with partial pivoting; the matrices here are small (one row per model)."""
    k = len(matrix)
    rows = [row[:] + [1.0 if i == j else 0.0 for j in range(k)] for i, row in enumerate(matrix)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        lead = rows[col][col]
        rows[col] = [value / lead for value in rows[col]]
        for r in range(k):
            if r != col and rows[r][col]:
                factor = rows[r][col]
                rows[r] = [v - factor * p for v, p in zip(rows[r], rows[col], strict=True)]
    return [row[k:] for row in rows]


def board_text(board: Board, where: str) -> str:
    if not board.votes:
        return f"No votes in {where} yet: /compare MODEL_A MODEL_B PROMPT, then vote."
    plural = "vote" if board.votes == 1 else "votes"
    lines = [
        f"Arena of {where}: {board.votes} {plural} ({board.both_bad} both bad, not rated). "
        "Bradley–Terry ratings (a tie is half a win each), 95 % interval from "
        f"{MIN_VOTES_FOR_INTERVAL} rated votes:"
    ]
    for place, standing in enumerate(board.standings[:SHOWN], start=1):
        if standing.rating is None:
            rating = "not rated yet"
        elif standing.interval is None:
            rating = f"{standing.rating:.0f}"
        else:
            rating = f"{standing.rating:.0f} ± {standing.interval:.0f}"
        rated = "rated vote" if standing.rated_votes == 1 else "rated votes"
        record = (
            f"{standing.rated_votes} {rated}: {standing.wins} won, {standing.losses} lost, "
            f"{standing.ties} tied; {standing.both_bad} both bad"
        )
        lines.append(f"{place}. {standing.model} — {rating} ({record})")
    if len(board.standings) > SHOWN:
        lines.append(f"…and {len(board.standings) - SHOWN} more models.")
    return "\n".join(lines)


async def arena_command(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/arena`: the leaderboard of this server or workspace."""
    votes = await engine.store.read(arena_store.votes(scope(message)))
    if message.server_id:
        where = "this workspace" if message.key.platform == "slack" else "this server"
    else:
        where = "the terminal" if message.key.platform == "console" else "direct messages"
    return CommandResult(board_text(leaderboard(votes), where))


def reveal(comparison: Comparison) -> str:
    return f"A was {comparison.model_a}, B was {comparison.model_b}."


async def vote(engine: Engine, comparison_id: int, voter: Author, choice: str) -> str:
    """One person's vote on a comparison, and what they are told (privately): the names, once voted."""
    comparison = await engine.store.read(arena_store.get(comparison_id))
    if comparison is None or comparison.state != "ready":
        return "That comparison is not open to votes."
    if choice not in CHOICES:
        return "Vote a, b, tie or bad."
    try:
        earlier = await engine.store.write(arena_store.vote(comparison, voter.id, voter.display_name, choice))
    except IntegrityError:  # the same person's other click, at the same moment, was stored first
        earlier = await engine.store.read(arena_store.choice_of(comparison.id, voter.id))
    if earlier is not None:
        return f"You already voted on this comparison ({CHOICES[earlier]}); each person votes once."
    return f"Thanks: you voted {CHOICES[choice]}. {reveal(comparison)}"


async def vote_command(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/vote a|b|tie|bad` (the terminal): a vote on the newest comparison here."""
    choice = args.strip().lower()
    if choice not in CHOICES:
        return CommandResult("Usage: /vote a|b|tie|bad — your vote on the last comparison here.")
    comparison = await engine.store.read(arena_store.newest_ready(str(message.key)))
    if comparison is None:
        return CommandResult("There is no comparison here to vote on; start one with /compare.")
    return CommandResult(await vote(engine, comparison.id, message.author, choice))
