"""The arena's ratings against values worked out by hand, and the leaderboard /arena shows."""

from __future__ import annotations

import math

import pytest

from bot.arena import MIN_VOTES_FOR_INTERVAL, board_text, leaderboard
from bot.arena_store import Vote


def votes(model_a: str, model_b: str, **choices: int) -> list[Vote]:
    return [Vote(model_a, model_b, choice) for choice, count in choices.items() for _ in range(count)]


def test_two_models_with_ties_and_both_bad_match_the_hand_computed_ratings() -> None:
    """X and Y, 13 votes: X better 8 times, Y better 2, 2 ties, 1 "both bad".

    Ties are half a win each and "both bad" is not rated, so X has 8 + 1 = 9 wins of 12 rated votes
    and Y has 2 + 1 = 3. With two models the fit is exact: πX/(πX + πY) = 9/12 = 3/4, so πX/πY = 3,
    and with the geometric mean at 1, πX = √3 and πY = 1/√3. On Elo's scale, 1000 + 400·log10(π):
        X = 1000 + 200·log10(3) = 1095.42,    Y = 1000 − 200·log10(3) = 904.58.
    Interval: the information of the pair is n·p·(1 − p) = 12 · 3/4 · 1/4 = 9/4; θX = (θX − θY)/2
    under Σθ = 0, so Var θX = (1/4) · (4/9) = 1/9 and the standard error is 1/3. In rating points
    1.96 · (1/3) · 400/ln 10 = 113.50, for both (each has 12 ≥ MIN_VOTES_FOR_INTERVAL rated votes).
    """
    board = leaderboard(votes("X", "Y", a=5, tie=2, bad=1) + votes("Y", "X", a=2, b=3))
    x, y = board.standings
    assert (x.model, x.wins, x.losses, x.ties, x.both_bad) == ("X", 8, 2, 2, 1)
    assert (y.model, y.wins, y.losses, y.ties, y.both_bad) == ("Y", 2, 8, 2, 1)
    assert x.rating == pytest.approx(1095.42, abs=0.01)
    assert y.rating == pytest.approx(904.58, abs=0.01)
    assert x.interval == pytest.approx(113.50, abs=0.01) and y.interval == pytest.approx(113.50, abs=0.01)
    assert (board.votes, board.both_bad) == (13, 1)


def test_three_models_whose_votes_fit_strengths_four_two_one_exactly() -> None:
    """A, B and C with strengths 4 : 2 : 1 predict P(A beats B) = 2/3, P(B beats C) = 2/3 and
    P(A beats C) = 4/5. Votes in exactly those proportions (A–B 2:1, B–C 2:1, A–C 4:1) satisfy the
    likelihood equations Wi = Σj nij·πi/(πi + πj):
        A: 2 + 4 = 3·4/6 + 5·4/5,   B: 1 + 2 = 3·2/6 + 3·2/3,   C: 1 + 1 = 3·1/3 + 5·1/5,
    so π = (4, 2, 1), scaled to a geometric mean of 1: (2, 1, 1/2). Ratings 1000 + 400·log10(π):
        A = 1000 + 400·log10(2) = 1120.41,   B = 1000.00,   C = 1000 − 400·log10(2) = 879.59.
    No model has MIN_VOTES_FOR_INTERVAL rated votes yet (A has 8), so none shows an interval.
    """
    board = leaderboard(votes("A", "B", a=2, b=1) + votes("B", "C", a=2, b=1) + votes("C", "A", a=1, b=4))
    assert [s.model for s in board.standings] == ["A", "B", "C"]
    ratings = [s.rating for s in board.standings]
    assert ratings == pytest.approx([1120.41, 1000.0, 879.59], abs=0.01)
    assert all(s.interval is None for s in board.standings) and MIN_VOTES_FOR_INTERVAL > 8
    assert 400 * math.log10(2) == pytest.approx(120.41, abs=0.01)


def test_a_model_that_never_lost_is_shown_with_its_record_but_not_rated() -> None:
    """Z won both its votes: its likelihood grows without bound, so it has no finite rating yet. X and
    Y (one win each against the other) are rated 1000 each, as a tie would make them."""
    board = leaderboard(votes("X", "Y", a=1, b=1) + votes("Z", "X", a=2))
    by_model = {s.model: s for s in board.standings}
    assert by_model["Z"].rating is None and (by_model["Z"].wins, by_model["Z"].losses) == (2, 0)
    assert by_model["X"].rating == pytest.approx(1000.0) and by_model["Y"].rating == pytest.approx(1000.0)
    assert board.standings[-1].model == "Z"
    text = board_text(board, "this server")
    assert "Z — not rated yet (2 rated votes: 2 won, 0 lost, 0 tied; 0 both bad)" in text


def test_only_both_bad_votes_rate_no_one_and_no_votes_say_how_to_start() -> None:
    board = leaderboard(votes("X", "Y", bad=3))
    assert all(s.rating is None and s.both_bad == 3 for s in board.standings)
    assert "3 votes (3 both bad, not rated)" in board_text(board, "this server")
    assert board_text(leaderboard([]), "this server").startswith("No votes in this server yet")


def test_the_leaderboard_text_shows_rating_interval_and_record() -> None:
    board = leaderboard(votes("X", "Y", a=5, tie=2, bad=1) + votes("Y", "X", a=2, b=3))
    lines = board_text(board, "this server").splitlines()
    assert lines[1] == "1. X — 1095 ± 113 (12 rated votes: 8 won, 2 lost, 2 tied; 1 both bad)"
    assert lines[2] == "2. Y — 905 ± 113 (12 rated votes: 2 won, 8 lost, 2 tied; 1 both bad)"
