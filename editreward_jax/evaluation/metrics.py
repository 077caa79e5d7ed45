"""Pairwise preference metrics over score differences (NumPy, host-side).

Labels are +1 (A preferred), -1 (B preferred) or 0 (tie); `delta` is the model's score of A minus that of B.
"""

from __future__ import annotations

import numpy as np


def pairwise_accuracy(delta: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of non-tie pairs ordered as the label says (a zero delta counts as wrong); NaN without such pairs."""
  delta, labels = np.asarray(delta, np.float64), np.asarray(labels)
  ordered = labels != 0
  if not ordered.any():
    return float("nan")
  return float(np.mean(delta[ordered] * labels[ordered] > 0))


def accuracy_with_ties(delta: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """Accuracy with ties (Deutsch et al. 2023, tie calibration) and the threshold that gives it.

  The model calls a tie when |delta| <= eps, else the sign of delta; eps is chosen to maximise accuracy over all
  pairs (ties included), trying eps below every |delta| (no tie predicted) and at each |delta|.
  """
  delta, labels = np.asarray(delta, np.float64), np.asarray(labels)
  if not len(delta):
    return float("nan"), 0.0
  magnitude = np.abs(delta)
  candidates = np.concatenate([[-1.0], np.unique(magnitude)])
  predicted_tie = magnitude[None, :] <= candidates[:, None]  # [candidates, pairs]
  right = np.where(predicted_tie, labels[None, :] == 0, np.sign(delta)[None, :] == labels[None, :])
  accuracy = right.mean(axis=1)
  best = int(np.argmax(accuracy))
  return float(accuracy[best]), float(max(candidates[best], 0.0))
