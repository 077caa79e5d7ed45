"""Training pairs from EditReward-Data rows, with the paper's tie-disentanglement.

A row compares a left and a right edit of the same source: an overall `vote_type` (leftvote | rightvote | tie) and
per-side dimension scores `{left,right}_{dimension}_score`. Each pair names which side is A (preferred) and which
is B, plus per-dimension labels of A vs B for the multi-dimensional loss (`editreward_jax.losses`).

Overall ties have no preferred side. How they become pairs is a policy, because which ties the paper keeps is not
known exactly:
- "duplicate": every tie gives both A>B and B>A (the reading that matches the paper's ~206K pairs from 170,772 rows);
- "disagree": only ties whose dimensions disagree in direction (one favours left, another right), in both orders;
- "drop": ties give no pair.

Host-side and image-free: the functions read scores and the vote by field name from any mapping, so the data
pipeline can apply them to whatever row type it decodes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from editreward_jax.schema import SIDES, VOTE_TYPES

# Score field stems in head order: head_0 judges instruction following, head_1 visual quality.
DIMENSIONS = ("instruction_following", "quality_aesthetic")
TIE_POLICIES = ("duplicate", "disagree", "drop")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One training pair: side `preferred` ("left" or "right") is candidate A, side `other` is B.

  `labels[d]` is +1 if A scored higher than B on dimension d, -1 if lower, 0 if equal. `tie` marks pairs made
  from an overall tie, whose reverse pair the same row also gives.
  """

  preferred: str
  other: str
  labels: tuple[int, ...]
  tie: bool = False

  @property
  def preferred_index(self) -> int:
    """0 if A is the left candidate, 1 if the right, for rows that hold candidates in a list."""
    return SIDES.index(self.preferred)


def validate_tie_policy(policy: str) -> str:
  if policy not in TIE_POLICIES:
    raise ValueError(f"unknown tie policy {policy!r}; known: {list(TIE_POLICIES)}")
  return policy


def score_field(side: str, dimension: str) -> str:
  return f"{side}_{dimension}_score"


def _score(row: Mapping[str, Any], field: str) -> float:
  if field not in row:
    raise ValueError(f"missing field {field!r}")
  value = float(row[field])
  if not math.isfinite(value):
    raise ValueError(f"field {field!r} is not a finite number: {row[field]!r}")
  return value


def dimension_labels(row: Mapping[str, Any], a: str, b: str,
                     dimensions: Sequence[str] = DIMENSIONS) -> tuple[int, ...]:
  """Per dimension, the sign of score(side a) - score(side b): +1, -1 or 0."""
  labels = []
  for dim in dimensions:
    score_a, score_b = _score(row, score_field(a, dim)), _score(row, score_field(b, dim))
    labels.append((score_a > score_b) - (score_a < score_b))
  return tuple(labels)


def _vote_type(row: Mapping[str, Any]) -> str:
  if "vote_type" not in row:
    raise ValueError("missing field 'vote_type'")
  vote = row["vote_type"]
  if isinstance(vote, bytes):  # TFDS and Arrow readers may hand strings over as bytes
    vote = vote.decode("utf-8", errors="replace")
  if vote not in VOTE_TYPES:
    raise ValueError(f"unknown vote_type {vote!r} in field 'vote_type'; known: {list(VOTE_TYPES)}")
  return vote


def pairs_from_row(row: Mapping[str, Any], tie_policy: str = "duplicate",
                   dimensions: Sequence[str] = DIMENSIONS) -> list[Pair]:
  """The training pairs one row gives: one for a vote, zero or two (left-as-A first) for a tie.

  Raises ValueError naming the field for an unknown tie policy, an unknown vote_type, or a missing or non-finite
  score; the caller adds the file and row.
  """
  validate_tie_policy(tie_policy)
  vote = _vote_type(row)
  if vote != "tie":
    a, b = ("left", "right") if vote == "leftvote" else ("right", "left")
    return [Pair(a, b, dimension_labels(row, a, b, dimensions))]
  if tie_policy == "drop":
    return []
  left_labels = dimension_labels(row, "left", "right", dimensions)
  if tie_policy == "disagree" and not (1 in left_labels and -1 in left_labels):
    return []
  right_labels = tuple(-label for label in left_labels)
  return [Pair("left", "right", left_labels, tie=True), Pair("right", "left", right_labels, tie=True)]
