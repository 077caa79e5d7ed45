"""Preference metrics of the published protocols (NumPy, host-side; see REFERENCE.md, "Evaluation protocol").

Labels are +1 (A preferred), -1 (B preferred) or 0 (tie); `delta` is the model's score of A minus that of B.

- Pairwise sets (GenAI-Bench, AURORA-Bench): `pairwise_set`, accuracy with ties and without.
- EditReward-Bench: `editreward_bench` over K-way groups (K=2 with ties; K=3/4 pairwise, group and strict).
- Pointwise human scores (ImagenHub): `pointwise`, Spearman per editing model then the mean, and pooled.
- Calibration: `calibration`, the model's own P(A preferred) against the human choice on non-tie pairs.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np


def pairwise_accuracy(delta: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of non-tie pairs ordered as the label says (a zero delta counts as wrong); NaN without such pairs."""
  delta, labels = np.asarray(delta, np.float64), np.asarray(labels)
  ordered = labels != 0
  if not ordered.any():
    return float("nan")
  return float(np.mean(delta[ordered] * labels[ordered] > 0))


def accuracy_with_ties(delta: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """Accuracy with ties (Deutsch et al. 2023, tie calibration) and the threshold eps that gives it.

  The model calls a tie when |delta| <= eps, else the sign of delta. eps is chosen over {0} and every distinct
  |delta| to maximise accuracy over all pairs (ties included); on a tie of maxima the smallest eps wins.
  """
  delta, labels = np.asarray(delta, np.float64), np.asarray(labels)
  if not len(delta):
    return float("nan"), 0.0
  magnitude = np.abs(delta)
  candidates = np.unique(np.concatenate([[0.0], magnitude]))  # sorted: argmax picks the smallest of equal maxima
  return _best_threshold(delta, labels, candidates)


def _best_threshold(delta: np.ndarray, labels: np.ndarray, candidates: np.ndarray) -> tuple[float, float]:
  predicted_tie = np.abs(delta)[None, :] <= candidates[:, None]  # [candidates, pairs]
  right = np.where(predicted_tie, labels[None, :] == 0, np.sign(delta)[None, :] == labels[None, :])
  accuracy = right.mean(axis=1)
  best = int(np.argmax(accuracy))
  return float(accuracy[best]), float(candidates[best])


def pairwise_set(delta: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """A two-candidate benchmark (GenAI-Bench, AURORA-Bench style): accuracy with ties (and its eps) and without."""
  accuracy, eps = accuracy_with_ties(delta, labels)
  labels = np.asarray(labels)
  return {"accuracy_with_ties": accuracy, "epsilon": eps, "accuracy_without_ties": pairwise_accuracy(delta, labels),
          "pairs": int(len(labels)), "ties": int(np.sum(labels == 0))}


_RANKING = re.compile(r"^\s*([A-Z])\s*([<>=])\s*([A-Z])\s*$")


def parse_ranking(ranking: str) -> tuple[str, str, int]:
  """"A>B" -> ("A", "B", 1), "A<B" -> ("A", "B", -1), "A=B" -> ("A", "B", 0); ValueError otherwise."""
  match = _RANKING.match(ranking) if isinstance(ranking, str) else None
  if match is None or match.group(1) == match.group(3):
    raise ValueError(f"ranking {ranking!r} is not X>Y, X<Y or X=Y over two different candidate letters")
  first, op, second = match.groups()
  return first, second, {">": 1, "<": -1, "=": 0}[op]


@dataclasses.dataclass(frozen=True)
class BenchGroup:
  """One K-way group of EditReward-Bench: its human pairwise judgements and the model's score per candidate.

  Groups are keyed by (subset, full id): ids made in the same second share long prefixes."""
  subset: str                                # "2pair", "3pair" or "4pair"
  id: str
  pairs: tuple[tuple[str, str, int], ...]    # (x, y, label) as `parse_ranking` gives them
  scores: Mapping[str, float]                # candidate letter -> the model's score

  @property
  def deltas(self) -> np.ndarray:
    return np.array([self.scores[x] - self.scores[y] for x, y, _ in self.pairs], np.float64)

  @property
  def labels(self) -> np.ndarray:
    return np.array([label for _, _, label in self.pairs], np.int64)


def _human_order(group: BenchGroup) -> list[str] | None:
  """The group's total order from its pairs (best first), or None when they do not make one (a tie, a cycle or a
  missing pair)."""
  letters = sorted(group.scores)
  wins = {c: 0 for c in letters}
  for x, y, label in group.pairs:
    if label == 0:
      return None
    wins[x if label > 0 else y] += 1
  order = sorted(letters, key=lambda c: -wins[c])
  if [wins[c] for c in order] != list(range(len(letters) - 1, -1, -1)):
    return None
  return order


def _strictly_right(group: BenchGroup, eps: float) -> bool:
  """The whole order right: the model's scores strictly decrease along the human order; for a human K=2 tie,
  |delta| <= eps (the K=2 tie threshold)."""
  if len(group.pairs) == 1 and group.pairs[0][2] == 0:
    return bool(abs(group.deltas[0]) <= eps)
  order = _human_order(group)
  if order is None:
    return False
  scores = [group.scores[c] for c in order]
  return all(a > b for a, b in zip(scores, scores[1:]))


def editreward_bench(groups: Sequence[BenchGroup]) -> dict[str, dict[str, float]]:
  """EditReward-Bench metrics: k2 {accuracy_with_ties, epsilon, accuracy_without_ties, strict_accuracy, groups,
  pairs}; k3, k4 {pairwise_accuracy, group_accuracy, strict_accuracy, groups, pairs}; overall {accuracy_with_ties,
  epsilon (its own, over all pairs pooled), strict_accuracy (over all groups)}."""
  keys = [(g.subset, g.id) for g in groups]
  if len(set(keys)) != len(keys):
    dup = next(k for k in keys if keys.count(k) > 1)
    raise ValueError(f"group {dup[0]}/{dup[1]} appears more than once")
  by_k = {k: [g for g in groups if g.subset == f"{k}pair"] for k in (2, 3, 4)}
  unknown = sorted({g.subset for g in groups} - {"2pair", "3pair", "4pair"})
  if unknown:
    raise ValueError(f"unknown subsets {unknown}: expected 2pair, 3pair, 4pair")
  cat = lambda gs, attr: np.concatenate([getattr(g, attr) for g in gs]) if gs else np.zeros(0)
  out: dict[str, dict[str, float]] = {}
  k2 = by_k[2]
  acc2, eps2 = accuracy_with_ties(cat(k2, "deltas"), cat(k2, "labels"))
  out["k2"] = {"accuracy_with_ties": acc2, "epsilon": eps2,
               "accuracy_without_ties": pairwise_accuracy(cat(k2, "deltas"), cat(k2, "labels")),
               "strict_accuracy": _mean([_strictly_right(g, eps2) for g in k2]), "groups": len(k2),
               "pairs": int(sum(len(g.pairs) for g in k2))}
  for k in (3, 4):
    gs = by_k[k]
    out[f"k{k}"] = {"pairwise_accuracy": pairwise_accuracy(cat(gs, "deltas"), cat(gs, "labels")),
                    "group_accuracy": _mean([bool(np.all(g.deltas * g.labels > 0)) for g in gs]),
                    "strict_accuracy": _mean([_strictly_right(g, eps2) for g in gs]), "groups": len(gs),
                    "pairs": int(sum(len(g.pairs) for g in gs))}
  acc, eps = accuracy_with_ties(cat(groups, "deltas"), cat(groups, "labels"))
  out["overall"] = {"accuracy_with_ties": acc, "epsilon": eps,
                    "strict_accuracy": _mean([_strictly_right(g, eps2) for g in groups])}
  return out


def _mean(values: Sequence[bool]) -> float:
  return float(np.mean(values)) if len(values) else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman's rank correlation with average ranks for ties (as scipy.stats.spearmanr); NaN if either is constant
  or there are fewer than two points."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2:
    return float("nan")
  rx, ry = _average_ranks(x), _average_ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  norm = np.sqrt(np.sum(rx**2) * np.sum(ry**2))
  return float(np.sum(rx * ry) / norm) if norm > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
  order = np.argsort(values, kind="stable")
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.arange(1, len(values) + 1)
  unique, inverse = np.unique(values, return_inverse=True)
  sums = np.bincount(inverse, weights=ranks, minlength=len(unique))
  return (sums / np.bincount(inverse, minlength=len(unique)))[inverse]


def pointwise(predicted: np.ndarray, human: np.ndarray, editing_models: Sequence[str]) -> dict[str, float]:
  """ImagenHub style: Spearman between predicted and human scores within each editing model, then the mean over
  models (those with a defined correlation), and the pooled Spearman over all items."""
  predicted, human, editing_models = np.asarray(predicted), np.asarray(human), np.asarray(editing_models)
  per_model = {str(m): spearman(predicted[editing_models == m], human[editing_models == m])
               for m in np.unique(editing_models)}
  defined = [v for v in per_model.values() if not np.isnan(v)]
  return {"spearman_mean_over_models": float(np.mean(defined)) if defined else float("nan"),
          "spearman_pooled": spearman(predicted, human), "per_model": per_model, "items": int(len(human))}


_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(64)


def preference_probability(mu_a, log_sigma_a, mu_b, log_sigma_b) -> np.ndarray:
  """The model's own P(A preferred): E[sigmoid(z)] for z ~ N(mu_a - mu_b, sigma_a^2 + sigma_b^2), the probability
  its training objective assigns (losses.py), by 64-node Gauss-Hermite quadrature."""
  delta = np.asarray(mu_a, np.float64) - np.asarray(mu_b, np.float64)
  tau = np.sqrt(np.exp(2 * np.asarray(log_sigma_a, np.float64)) + np.exp(2 * np.asarray(log_sigma_b, np.float64)))
  z = delta[..., None] + np.sqrt(2.0) * tau[..., None] * _NODES
  return np.sum(_WEIGHTS / (1 + np.exp(-z)), axis=-1) / np.sqrt(np.pi)


def calibration(probability: np.ndarray, preferred_a: np.ndarray, bins: int = 10) -> dict[str, object]:
  """Expected calibration error over equal-mass bins (sorted by probability, split into `bins` bins of (nearly)
  equal count; ECE = sum over bins of count/N x |mean probability - fraction preferred|), the Brier score, and the
  bins themselves (for a reliability diagram). `preferred_a`: the human chose A (non-tie pairs only)."""
  p, y = np.asarray(probability, np.float64), np.asarray(preferred_a, np.float64)
  if not len(p):
    return {"ece": float("nan"), "brier": float("nan"), "bins": [], "pairs": 0}
  order = np.argsort(p, kind="stable")
  table = [{"count": int(len(b)), "mean_probability": float(p[b].mean()), "fraction_preferred": float(y[b].mean())}
           for b in np.array_split(order, min(bins, len(p)))]
  ece = sum(b["count"] / len(p) * abs(b["mean_probability"] - b["fraction_preferred"]) for b in table)
  return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "bins": table, "pairs": int(len(p))}
