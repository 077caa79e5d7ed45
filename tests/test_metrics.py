"""Evaluation metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import scipy.stats

from editreward_jax.evaluation import metrics


def test_tie_threshold_search_takes_the_smallest_of_equal_maxima():
  # eps 0: 1/3, 0.1: 2/3, 0.2: 1/3, 0.3: 2/3 -> 0.1
  assert metrics.accuracy_with_ties([0.1, 0.2, 0.3], [0, 1, 0]) == (pytest.approx(2 / 3), pytest.approx(0.1))
  # eps 0: 1/2, 0.1: 1/4, 0.2: 3/4, 0.5: 1/2 -> 0.2
  assert metrics.accuracy_with_ties([0.5, 0.2, -0.2, 0.1], [1, 0, 0, 1]) == (0.75, pytest.approx(0.2))
  out = metrics.pairwise_set([0.5, 0.2, -0.2, 0.1], [1, 0, 0, 1])
  assert out == {"accuracy_with_ties": 0.75, "epsilon": pytest.approx(0.2), "accuracy_without_ties": 1.0,
                 "pairs": 4, "ties": 2}


def _group(subset, gid, rankings, scores):
  return metrics.BenchGroup(subset, gid, tuple(metrics.parse_ranking(r) for r in rankings), scores)


def test_editreward_bench_metrics_by_hand():
  groups = [
      _group("2pair", "g1", ["A>B"], {"A": 2.0, "B": 1.0}),            # right
      _group("2pair", "g2", ["A=B"], {"A": 1.0, "B": 1.0}),            # a human tie, |delta| 0 <= eps 0: right
      _group("2pair", "g3", ["A<B"], {"A": 1.0, "B": 1.02}),           # right
      _group("2pair", "g4", ["A>B"], {"A": 0.99, "B": 1.0}),           # wrong
      _group("3pair", "g5", ["A>B", "A>C", "B>C"], {"A": 3.0, "B": 2.0, "C": 1.0}),       # all right
      _group("3pair", "g6", ["A>B", "B>C", "A>C"], {"A": 3.0, "B": 1.0, "C": 2.0}),       # B>C wrong
      _group("4pair", "g7", ["A<B", "A>C", "A>D", "B>C", "B>D", "C<D"],                   # order B > A > D > C
             {"A": 3.0, "B": 4.0, "C": 1.0, "D": 2.0}),
  ]
  out = metrics.editreward_bench(groups)
  # K=2 eps: 0 -> 3/4, 0.01 -> 3/4, 0.02 -> 1/2, 1 -> 1/4: the smallest of the maxima, 0.
  assert out["k2"] == {"accuracy_with_ties": 0.75, "epsilon": 0.0, "accuracy_without_ties": pytest.approx(2 / 3),
                       "strict_accuracy": 0.75, "groups": 4, "pairs": 4}
  assert out["k3"] == {"pairwise_accuracy": pytest.approx(5 / 6), "group_accuracy": 0.5, "strict_accuracy": 0.5,
                       "groups": 2, "pairs": 6}
  assert out["k4"] == {"pairwise_accuracy": 1.0, "group_accuracy": 1.0, "strict_accuracy": 1.0, "groups": 1,
                       "pairs": 6}
  # Pooled 16 pairs at eps 0: 3 + 5 + 6 right; strict over the 7 groups: all but g4 and g6.
  assert out["overall"] == {"accuracy_with_ties": 14 / 16, "epsilon": 0.0, "strict_accuracy": pytest.approx(5 / 7)}


def test_a_k2_tie_is_strictly_right_only_within_the_k2_threshold():
  # eps 0.1 and 0.3 both get 4 of 5 (0.3 turns g5 into a wrong tie): the smaller wins. Then g3's tie at |delta| 0.3
  # is wrong, g2's at 0.05 and g4's at 0.1 right.
  groups = [_group("2pair", "g1", ["A>B"], {"A": 1.0, "B": 0.5}), _group("2pair", "g2", ["A=B"], {"A": 1.0, "B": 1.05}),
            _group("2pair", "g3", ["A=B"], {"A": 1.3, "B": 1.0}), _group("2pair", "g4", ["A=B"], {"A": 1.0, "B": 0.9}),
            _group("2pair", "g5", ["A>B"], {"A": 1.3, "B": 1.0})]
  out = metrics.editreward_bench(groups)["k2"]
  assert out["accuracy_with_ties"] == 0.8 and out["epsilon"] == pytest.approx(0.1)
  assert out["strict_accuracy"] == 0.8


def test_bench_input_errors():
  for bad in ("A>A", "A>>B", "AB", "a>b", None):
    with pytest.raises(ValueError, match="is not X>Y"):
      metrics.parse_ranking(bad)
  group = _group("2pair", "g1", ["A>B"], {"A": 1.0, "B": 0.0})
  with pytest.raises(ValueError, match="group 2pair/g1 appears more than once"):
    metrics.editreward_bench([group, group])


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
  y[:10] = y[0]
  assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
  assert np.isnan(metrics.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
  models = np.array(["m1"] * 20 + ["m2"] * 20)
  out = metrics.pointwise(x, y, models)
  per = [scipy.stats.spearmanr(x[models == m], y[models == m]).statistic for m in ("m1", "m2")]
  assert out["per_model"] == {"m1": pytest.approx(per[0]), "m2": pytest.approx(per[1])}
  assert out["spearman_mean_over_models"] == pytest.approx(np.mean(per))
  assert out["spearman_pooled"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)


def test_calibration_by_hand():
  # Two equal-mass bins: {0.1, 0.2} (mean 0.15, 1 of 2 preferred) and {0.8, 0.9} (mean 0.85, 2 of 2).
  out = metrics.calibration([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 1], bins=2)
  assert out["ece"] == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
  assert out["brier"] == pytest.approx((0.01 + 0.01 + 0.04 + 0.64) / 4)
  assert [b["count"] for b in out["bins"]] == [2, 2]


def test_preference_probability():
  # Vanishing sigmas: sigmoid(delta); swapping A and B gives the complement.
  assert metrics.preference_probability(1.0, -20.0, 0.0, -20.0) == pytest.approx(1 / (1 + np.exp(-1.0)))
  p = metrics.preference_probability(0.7, 0.3, -0.2, -0.5)
  assert p + metrics.preference_probability(-0.2, -0.5, 0.7, 0.3) == pytest.approx(1.0)
  # Wider sigmas pull the probability towards 1/2.
  assert 0.5 < metrics.preference_probability(1.0, 1.0, 0.0, 1.0) < metrics.preference_probability(1.0, -2.0, 0.0, -2.0)


def test_reliability_diagram_marks_each_bin(tmp_path):
  from editreward_jax.evaluation import reliability
  bins = metrics.calibration([0.1, 0.2, 0.8, 0.9], [0, 1, 1, 1], bins=2)["bins"]
  path = reliability.write(str(tmp_path / "reliability.png"), bins)
  image = PIL.Image.open(path)
  assert image.format == "PNG" and image.size == (reliability.SIZE, reliability.SIZE)
  for b in bins:  # a blue point where each bin sits
    x, y = reliability._xy(b["mean_probability"], b["fraction_preferred"])
    assert image.getpixel((round(x), round(y))) == (31, 119, 180)
