"""Ranking losses against adaptive quadrature, closed forms and their known properties."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from editreward_jax import losses
from editreward_jax.losses import PairOutputs

DELTAS = (-10.0, -3.0, -1.0, 0.0, 0.5, 2.0, 8.0)
TAUS = (0.01, 0.1, 0.5, 1.0, 2.0, 4.0)


def normal_expectation(f, delta: float, tau: float) -> float:
  """E_{eps~N(0,1)}[f(delta + tau * eps)] by adaptive quadrature; beyond |eps| = 12 the mass is below 1e-32."""
  integrand = lambda eps: f(delta + tau * eps) * np.exp(-0.5 * eps * eps) / np.sqrt(2.0 * np.pi)
  kink = -delta / tau  # where z = 0, the only place the integrand bends sharply
  points = [kink] if abs(kink) < 12.0 else None
  value, _ = integrate.quad(integrand, -12.0, 12.0, points=points, limit=400, epsabs=1e-14, epsrel=1e-12)
  return value


def softplus(x):
  return np.logaddexp(0.0, x)


def outputs_for(delta, tau) -> tuple[jax.Array, ...]:
  """mu_a, log_sigma_a, mu_b, log_sigma_b with the given delta and tau (equal sigmas)."""
  delta, tau = np.asarray(delta, np.float64), np.asarray(tau, np.float64)
  log_sigma = np.log(tau / np.sqrt(2.0))
  return jnp.asarray(delta), jnp.asarray(log_sigma), jnp.zeros_like(jnp.asarray(delta)), jnp.asarray(log_sigma)


def grid() -> tuple[np.ndarray, np.ndarray]:
  deltas, taus = zip(*itertools.product(DELTAS, TAUS))
  return np.array(deltas), np.array(taus)


# float32 rounds losses near 10 to ~1e-6 on its own, so the 1e-6 comparisons run in float64.
@pytest.mark.parametrize("kind, reference", [
    ("gauss_hermite", lambda d, t: normal_expectation(lambda z: softplus(-z), d, t)),
    ("paper", lambda d, t: -np.log(normal_expectation(special.expit, d, t))),
])
def test_gauss_hermite_matches_quadrature(kind, reference):
  deltas, taus = grid()
  expected = np.array([reference(d, t) for d, t in zip(deltas, taus)])
  with jax.enable_x64(True):
    got = losses.pairwise_loss_values(*outputs_for(deltas, taus), kind=kind)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-6)


def test_monte_carlo_agrees_with_gauss_hermite_within_four_standard_errors():
  deltas = np.array([0.0, 2.0, -1.0, 3.0, -3.0, 0.5])
  taus = np.array([1.0, 0.5, 2.0, 4.0, 0.3, 0.05])
  num_samples = 1000
  args = outputs_for(deltas.astype(np.float32), taus.astype(np.float32))
  mc = losses.pairwise_loss_values(*args, kind="monte_carlo", key=jax.random.key(0), num_samples=num_samples)
  gh = losses.pairwise_loss_values(*args, kind="gauss_hermite")
  # Standard error of a num_samples-draw mean, from the spread of softplus(-z) on independent NumPy draws.
  eps = np.random.default_rng(0).standard_normal(200_000)
  std = np.array([np.std(softplus(-(d + t * eps))) for d, t in zip(deltas, taus)])
  stderr = std / np.sqrt(num_samples)
  assert np.all(np.abs(np.asarray(mc) - np.asarray(gh)) < 4.0 * stderr), (mc, gh, stderr)
  # A different key gives a different estimate: the draws are really random, not a fixed rule.
  other = losses.pairwise_loss_values(*args, kind="monte_carlo", key=jax.random.key(1), num_samples=num_samples)
  assert not np.allclose(np.asarray(mc), np.asarray(other))


@pytest.mark.parametrize("kind", losses.LOSS_KINDS)
def test_extremes_have_finite_values_and_gradients(kind):
  deltas, log_sigmas = (-50.0, -1.0, 0.0, 1.0, 50.0), (-20.0, 0.0, 10.0)
  rows = np.array(list(itertools.product(deltas, log_sigmas, log_sigmas)), np.float32)
  mu_a, ls_a, ls_b = (jnp.asarray(rows[:, i]) for i in range(3))
  mu_a, mu_b = 0.5 * mu_a, -0.5 * mu_a  # both nonzero, delta = rows[:, 0]

  @functools.partial(jax.jit, static_argnames="kind")
  def values_and_grads(mu_a, ls_a, mu_b, ls_b, kind):
    fn = lambda *a: losses.pairwise_loss_values(*a, kind=kind, key=jax.random.key(0))
    values = fn(mu_a, ls_a, mu_b, ls_b)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2, 3))(mu_a, ls_a, mu_b, ls_b)
    return values, grads

  values, grads = values_and_grads(mu_a, ls_a, mu_b, ls_b, kind)
  assert np.all(np.isfinite(values))
  for g in grads:
    assert np.all(np.isfinite(g))
  # With both sigmas at e^-20 the score difference is certain, so every kind reduces to softplus(-delta).
  certain = (rows[:, 1] == -20.0) & (rows[:, 2] == -20.0)
  np.testing.assert_allclose(np.asarray(values)[certain], softplus(-rows[certain, 0]), rtol=1e-6, atol=1e-30)


def test_reference_loss_grows_with_tau_and_paper_loss_is_below_it():
  taus = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0])
  deltas = np.array([-3.0, 0.0, 0.5, 2.0, 6.0])
  d, t = np.meshgrid(deltas, taus, indexing="ij")  # [delta, tau]
  with jax.enable_x64(True):
    args = outputs_for(d, t)
    reference = np.asarray(losses.pairwise_loss_values(*args, kind="gauss_hermite"))
    paper = np.asarray(losses.pairwise_loss_values(*args, kind="paper"))
    grad_ls_a = jax.grad(lambda ls: jnp.sum(losses.pairwise_loss_values(args[0], ls, args[2], args[3])))(args[1])
  assert np.all(np.diff(reference, axis=1) > 0), reference
  assert np.all(np.asarray(grad_ls_a) > 0)
  # Jensen: -log E[sigmoid] < E[-log sigmoid] for tau > 0, by a wide margin at delta = 0 once tau is not tiny.
  assert np.all(paper < reference)
  assert np.all((reference - paper)[np.ix_(deltas == 0.0, taus >= 1.0)] > 1e-2)


def test_weighted_mean_ignores_padded_pairs():
  mu_a = jnp.array([1.0, -0.5, 2.0, jnp.nan, 0.0])
  ls_a = jnp.array([-1.0, 0.0, -2.0, jnp.nan, 0.0])
  mu_b = jnp.array([0.0, 0.5, -1.0, 0.0, 0.0])
  ls_b = jnp.array([-1.0, -0.5, 0.0, 0.0, 0.0])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
  valid = slice(0, 3)
  per_pair = losses.pairwise_loss_values(mu_a[valid], ls_a[valid], mu_b[valid], ls_b[valid])
  masked = losses.pairwise_loss(mu_a, ls_a, mu_b, ls_b, weight=mask)
  np.testing.assert_allclose(masked, np.mean(np.asarray(per_pair)), rtol=1e-6)
  weight = jnp.array([2.0, 0.5, 1.0, 0.0, 0.0])
  weighted = losses.pairwise_loss(mu_a, ls_a, mu_b, ls_b, weight=weight)
  np.testing.assert_allclose(weighted, np.average(np.asarray(per_pair), weights=[2.0, 0.5, 1.0]), rtol=1e-6)
  assert losses.pairwise_loss(mu_a, ls_a, mu_b, ls_b, weight=jnp.zeros(5)) == 0.0
  # Padding with zeros instead of NaN: its pairs get no gradient at all.
  mu_a0, ls_a0 = jnp.nan_to_num(mu_a), jnp.nan_to_num(ls_a)
  grads = jax.grad(lambda m: losses.pairwise_loss(m, ls_a0, mu_b, ls_b, weight=mask))(mu_a0)
  assert np.all(np.asarray(grads)[3:] == 0.0) and np.all(np.asarray(grads)[:3] < 0.0)


def test_multi_dimensional_loss_hand_computed():
  # Sigmas of e^-20 make every term the deterministic softplus(-delta), so the expected values are closed forms.
  tiny = -20.0
  fused = PairOutputs(jnp.array([1.0, 0.5]), jnp.full(2, tiny), jnp.array([0.0, 1.5]), jnp.full(2, tiny))
  # [D=2, B=2]: dimension 0 = instruction following, dimension 1 = quality.
  dims = PairOutputs(jnp.array([[2.0, 0.0], [1.0, -1.0]]), jnp.full((2, 2), tiny),
                     jnp.array([[0.5, 1.0], [0.0, 2.0]]), jnp.full((2, 2), tiny))
  labels = jnp.array([[1, -1], [0, 1]])
  dim_weights, overall_weight = (0.7, 0.3), 0.5
  sp = lambda x: float(softplus(x))
  fused_terms = [sp(-1.0), sp(1.0)]  # delta = 1, -1
  dim0 = [sp(-1.5), sp(-1.0)]  # pair 0: A better by 1.5; pair 1: B better (label -1), delta = -1
  dim1 = [0.5 * (sp(-1.0) + sp(1.0)), sp(3.0)]  # pair 0: tie at delta = 1; pair 1: A better at delta = -3
  expected = [overall_weight * f + dim_weights[0] * a + dim_weights[1] * b for f, a, b in zip(fused_terms, dim0, dim1)]
  for kind, key in (("gauss_hermite", None), ("paper", None), ("monte_carlo", jax.random.key(3))):
    got = losses.multi_dimensional_loss_values(fused, dims, labels, dimension_weights=dim_weights,
                                               overall_weight=overall_weight, kind=kind, key=key)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, err_msg=kind)
  mean = losses.multi_dimensional_loss(fused, dims, labels, weight=jnp.array([0.0, 1.0]),
                                       dimension_weights=dim_weights, overall_weight=overall_weight)
  np.testing.assert_allclose(mean, expected[1], rtol=1e-6)
  only_quality = losses.multi_dimensional_loss_values(fused, dims, labels, dimension_weights=(0.0, 2.0),
                                                      overall_weight=0.0)
  np.testing.assert_allclose(np.asarray(only_quality), [2.0 * v for v in dim1], rtol=1e-6)
  with pytest.raises(ValueError, match="dimension_weights"):
    losses.multi_dimensional_loss_values(fused, dims, labels, dimension_weights=(1.0, 1.0, 1.0))


def test_multi_dimensional_loss_uses_each_dimensions_own_sigma():
  rng = np.random.default_rng(0)
  mu_a, ls_a, mu_b, ls_b = (rng.normal(size=(2, 3)) for _ in range(4))
  labels = np.array([[1, 0, -1], [-1, 1, 0]])
  fused = PairOutputs(*(jnp.zeros(3) for _ in range(4)))
  got = losses.multi_dimensional_loss_values(fused, PairOutputs(*map(jnp.asarray, (mu_a, ls_a, mu_b, ls_b))),
                                             jnp.asarray(labels), dimension_weights=(1.0, 1.0), overall_weight=0.0)
  delta = mu_a - mu_b
  log_tau = 0.5 * np.log(np.exp(2 * ls_a) + np.exp(2 * ls_b))
  win = lambda d: np.asarray(losses.expected_neg_log_sigmoid(jnp.asarray(d), jnp.asarray(log_tau)))
  expected = (0.5 * (1 + labels) * win(delta) + 0.5 * (1 - labels) * win(-delta)).sum(axis=0)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_tie_term_is_symmetric_with_real_uncertainty():
  delta, log_tau = jnp.array([1.3]), jnp.array([0.4])
  tie = losses.labelled_loss_values(delta, log_tau, jnp.array([0]))
  a_better = losses.expected_neg_log_sigmoid(delta, log_tau)
  b_better = losses.expected_neg_log_sigmoid(-delta, log_tau)
  np.testing.assert_allclose(tie, 0.5 * (a_better + b_better), rtol=1e-6)
  np.testing.assert_allclose(tie, losses.labelled_loss_values(-delta, log_tau, jnp.array([0])), rtol=1e-6)
  assert not np.allclose(a_better, b_better)


def test_dispatcher_errors():
  args = (jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
  with pytest.raises(ValueError, match="'hinge'"):
    losses.pairwise_loss(*args, kind="hinge")
  with pytest.raises(ValueError, match="PRNG key"):
    losses.pairwise_loss(*args, kind="monte_carlo")
  with pytest.raises(ValueError, match="num_nodes"):
    losses.pairwise_loss(*args, num_nodes=0)


def test_pair_accuracy():
  mu_a, mu_b = jnp.array([1.0, 0.0, 2.0, -1.0]), jnp.array([0.0, 0.0, 3.0, 5.0])
  assert losses.pair_accuracy(mu_a, mu_b) == 0.25
  assert losses.pair_accuracy(mu_a, mu_b, weight=jnp.array([1.0, 1.0, 0.0, 0.0])) == 0.5
