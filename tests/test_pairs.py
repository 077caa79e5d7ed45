"""Tie-disentanglement on hand-made EditReward-Data rows."""

from __future__ import annotations

import math

import pytest

from editreward_jax import pairs
from editreward_jax.pairs import Pair


def make_row(vote, left: tuple[float, float], right: tuple[float, float]) -> dict:
  """A row with (instruction following, quality) scores per side; overall = their sum, as in the data set."""
  row = {"vote_type": vote, "left_output_image": b"L", "right_output_image": b"R"}
  for side, (instr, quality) in (("left", left), ("right", right)):
    row[f"{side}_instruction_following_score"] = instr
    row[f"{side}_quality_aesthetic_score"] = quality
    row[f"{side}_overall_score"] = instr + quality
  return row


LEFT_VOTE = make_row("leftvote", left=(4.0, 2.0), right=(3.0, 3.0))
RIGHT_VOTE = make_row("rightvote", left=(4.0, 2.0), right=(3.0, 3.0))
TIE_AGREE = make_row("tie", left=(4.0, 3.0), right=(2.0, 2.0))
TIE_DISAGREE = make_row("tie", left=(4.0, 1.0), right=(2.0, 3.0))
TIE_EQUAL = make_row("tie", left=(3.0, 3.0), right=(3.0, 3.0))

BOTH_ORDERS = {
    "agree": [Pair("left", "right", (1, 1), tie=True), Pair("right", "left", (-1, -1), tie=True)],
    "disagree": [Pair("left", "right", (1, -1), tie=True), Pair("right", "left", (-1, 1), tie=True)],
    "equal": [Pair("left", "right", (0, 0), tie=True), Pair("right", "left", (0, 0), tie=True)],
}
EXPECTED = {
    "duplicate": {"agree": BOTH_ORDERS["agree"], "disagree": BOTH_ORDERS["disagree"], "equal": BOTH_ORDERS["equal"]},
    "disagree": {"agree": [], "disagree": BOTH_ORDERS["disagree"], "equal": []},
    "drop": {"agree": [], "disagree": [], "equal": []},
}
TIE_ROWS = {"agree": TIE_AGREE, "disagree": TIE_DISAGREE, "equal": TIE_EQUAL}


@pytest.mark.parametrize("policy", pairs.TIE_POLICIES)
def test_votes_give_one_pair_with_the_voted_side_first(policy):
  assert pairs.pairs_from_row(LEFT_VOTE, policy) == [Pair("left", "right", (1, -1))]
  # Same scores, other vote: A is now the right side and the labels read right vs left.
  assert pairs.pairs_from_row(RIGHT_VOTE, policy) == [Pair("right", "left", (-1, 1))]


@pytest.mark.parametrize("policy", pairs.TIE_POLICIES)
@pytest.mark.parametrize("case", sorted(TIE_ROWS))
def test_tie_policies(policy, case):
  assert pairs.pairs_from_row(TIE_ROWS[case], policy) == EXPECTED[policy][case]


def test_default_policy_duplicates_ties():
  assert pairs.pairs_from_row(TIE_AGREE) == BOTH_ORDERS["agree"]


def test_preferred_index():
  left, right = pairs.pairs_from_row(TIE_EQUAL)
  assert (left.preferred_index, right.preferred_index) == (0, 1)


def test_custom_dimensions_read_other_score_fields():
  got = pairs.pairs_from_row(TIE_DISAGREE, "duplicate", dimensions=("overall",))
  assert [p.labels for p in got] == [(0,), (0,)]  # 4+1 == 2+3
  got = pairs.pairs_from_row(LEFT_VOTE, dimensions=("quality_aesthetic", "overall"))
  assert got[0].labels == (-1, 0)


def test_bytes_vote_type_is_accepted():
  row = dict(LEFT_VOTE, vote_type=b"leftvote")
  assert pairs.pairs_from_row(row) == [Pair("left", "right", (1, -1))]


@pytest.mark.parametrize("vote", ["draw", "LeftVote", "", None])
def test_unknown_vote_type_raises_naming_the_value(vote):
  with pytest.raises(ValueError, match="vote_type") as info:
    pairs.pairs_from_row(make_row(vote, (1.0, 1.0), (1.0, 1.0)))
  assert repr(vote) in str(info.value)


def test_unknown_tie_policy_raises():
  with pytest.raises(ValueError, match="'keep'"):
    pairs.pairs_from_row(LEFT_VOTE, "keep")


def test_missing_or_non_finite_score_names_the_field():
  row = dict(LEFT_VOTE)
  del row["right_quality_aesthetic_score"]
  with pytest.raises(ValueError, match="right_quality_aesthetic_score"):
    pairs.pairs_from_row(row)
  row = dict(TIE_AGREE, left_instruction_following_score=math.nan)
  with pytest.raises(ValueError, match="left_instruction_following_score"):
    pairs.pairs_from_row(row)
  with pytest.raises(ValueError, match="vote_type"):
    pairs.pairs_from_row({k: v for k, v in LEFT_VOTE.items() if k != "vote_type"})


def test_pair_is_frozen():
  pair = pairs.pairs_from_row(LEFT_VOTE)[0]
  with pytest.raises(AttributeError):
    pair.preferred = "right"
