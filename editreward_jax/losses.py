"""Probabilistic pairwise ranking losses: pure, jittable functions of arrays.

Each candidate gets a Gaussian score N(mu, sigma^2) with sigma = exp(log_sigma). For a preferred candidate A and
another candidate B the score difference is z ~ N(delta, tau^2), delta = mu_a - mu_b, tau^2 = sigma_a^2 + sigma_b^2.
Three losses of (delta, tau) are offered (`kind`):

- "gauss_hermite" (default): E_z[-log sigmoid(z)], what the reference trains on, computed deterministically.
- "monte_carlo": the reference's own estimate of that expectation, the mean of softplus(-(delta + tau * eps)) over
  `num_samples` draws eps ~ N(0, 1); needs a PRNG key.
- "paper": -log E_z[sigmoid(z)], the loss as the paper writes it (<= the reference's by Jensen).

tau is carried as log_tau = 0.5 * logaddexp(2 log_sigma_a, 2 log_sigma_b): it neither overflows nor underflows for
log_sigma in [-20, 10] and, unlike sqrt at 0, has finite gradients everywhere. Sums over quadrature nodes and
samples are elementwise multiply-and-reduce rather than matmuls, so GPUs do not run them in TF32.

`kind`, `num_nodes` and `num_samples` are Python values: make them static when jitting a caller.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

LOSS_KINDS = ("gauss_hermite", "monte_carlo", "paper")
# 128 nodes: float64 errors against adaptive quadrature for |delta| <= 10, tau <= 4 are 6e-9 (reference loss) and
# 1.3e-7 (paper loss); 96 nodes miss 1e-6 on the paper loss. Wider z distributions need more nodes.
DEFAULT_NUM_NODES = 128
DEFAULT_NUM_SAMPLES = 1000  # the reference's M


class PairOutputs(NamedTuple):
  """Reward outputs of the preferred candidate A and the other candidate B; every field has the same shape."""

  mu_a: jax.Array
  log_sigma_a: jax.Array
  mu_b: jax.Array
  log_sigma_b: jax.Array


def delta_and_log_tau(mu_a: jax.Array, log_sigma_a: jax.Array, mu_b: jax.Array,
                      log_sigma_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and log standard deviation of z = s_a - s_b, in at least float32 (heads may hand over bfloat16)."""
  dtype = jnp.promote_types(jnp.result_type(mu_a, log_sigma_a, mu_b, log_sigma_b), jnp.float32)
  mu_a, log_sigma_a, mu_b, log_sigma_b = (jnp.asarray(x, dtype) for x in (mu_a, log_sigma_a, mu_b, log_sigma_b))
  return mu_a - mu_b, 0.5 * jnp.logaddexp(2.0 * log_sigma_a, 2.0 * log_sigma_b)


@functools.cache
def _standard_normal_rule(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes and log weights with E_{eps~N(0,1)}[f(eps)] ~= sum_i exp(log_w_i) f(node_i), in float64.

  Log weights because the outermost Hermite weights (1e-102 at 128 nodes) underflow float32.
  """
  if num_nodes < 1:
    raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
  x, w = np.polynomial.hermite.hermgauss(num_nodes)
  return np.sqrt(2.0) * x, np.log(w) - 0.5 * np.log(np.pi)


def _quadrature_points(delta: jax.Array, log_tau: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array]:
  """z at every node, shape [..., num_nodes], and the log weights cast to its dtype."""
  nodes, log_w = _standard_normal_rule(num_nodes)
  dtype = delta.dtype
  z = delta[..., None] + jnp.exp(log_tau)[..., None] * jnp.asarray(nodes, dtype)
  return z, jnp.asarray(log_w, dtype)


def expected_neg_log_sigmoid(delta: jax.Array, log_tau: jax.Array,
                             num_nodes: int = DEFAULT_NUM_NODES) -> jax.Array:
  """E_{z~N(delta, tau^2)}[-log sigmoid(z)] by Gauss-Hermite quadrature; elementwise over delta's shape."""
  z, log_w = _quadrature_points(delta, log_tau, num_nodes)
  return jnp.sum(jnp.exp(log_w) * jax.nn.softplus(-z), axis=-1)


def neg_log_expected_sigmoid(delta: jax.Array, log_tau: jax.Array,
                             num_nodes: int = DEFAULT_NUM_NODES) -> jax.Array:
  """-log E_{z~N(delta, tau^2)}[sigmoid(z)] by Gauss-Hermite, in log space.

  For delta < 0 the win probability P is small and log P = logsumexp(log w + log_sigmoid(z)) keeps it exact. For
  delta >= 0 P is near 1 and that sum would carry the rounding of the weights (~1e-7 in float32, more than the loss
  itself); there the loss is -log1p(-Q) with Q = 1 - P = E[sigmoid(-z)] <= 1/2, also summed in log space.
  """
  z, log_w = _quadrature_points(delta, log_tau, num_nodes)
  log_p = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(z), axis=-1)
  log_q = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(-z), axis=-1)
  likely_win = delta >= 0
  # The unused branch still gets differentiated: keep log1p away from log1p(-1) there.
  log_q = jnp.where(likely_win, log_q, -1.0)
  return jnp.where(likely_win, -jnp.log1p(-jnp.exp(log_q)), -log_p)


def monte_carlo_neg_log_sigmoid(delta: jax.Array, log_tau: jax.Array, key: jax.Array,
                                num_samples: int = DEFAULT_NUM_SAMPLES) -> jax.Array:
  """The reference's estimate of E[-log sigmoid(z)]: mean of softplus(-(delta + tau * eps)) over fresh eps ~ N(0,1).

  Every element of delta gets its own `num_samples` draws; gradients flow through the reparameterisation.
  """
  eps = jax.random.normal(key, (*delta.shape, num_samples), delta.dtype)
  return jnp.mean(jax.nn.softplus(-(delta[..., None] + jnp.exp(log_tau)[..., None] * eps)), axis=-1)


def preference_loss_values(delta: jax.Array, log_tau: jax.Array, *, kind: str = "gauss_hermite",
                           key: jax.Array | None = None, num_nodes: int = DEFAULT_NUM_NODES,
                           num_samples: int = DEFAULT_NUM_SAMPLES) -> jax.Array:
  """Loss of "A is better than B" for z ~ N(delta, tau^2), elementwise; `kind` is one of LOSS_KINDS."""
  if kind == "gauss_hermite":
    return expected_neg_log_sigmoid(delta, log_tau, num_nodes)
  if kind == "paper":
    return neg_log_expected_sigmoid(delta, log_tau, num_nodes)
  if kind == "monte_carlo":
    if key is None:
      raise ValueError("loss kind 'monte_carlo' needs a PRNG key")
    return monte_carlo_neg_log_sigmoid(delta, log_tau, key, num_samples)
  raise ValueError(f"unknown loss kind {kind!r}; known: {list(LOSS_KINDS)}")


def labelled_loss_values(delta: jax.Array, log_tau: jax.Array, labels: jax.Array, **loss_kw) -> jax.Array:
  """Loss against a label per element: +1 = A better, -1 = B better, 0 = tie.

  The loss is (1 + y)/2 * L(A>B) + (1 - y)/2 * L(B>A), so a tie gets the symmetric 0.5 * (L(A>B) + L(B>A)), which
  pulls delta to 0 without a preferred direction. Under "monte_carlo" both directions share the same draws.
  `loss_kw` are `preference_loss_values`' keyword arguments.
  """
  labels = jnp.asarray(labels, delta.dtype)
  a_better = preference_loss_values(delta, log_tau, **loss_kw)
  b_better = preference_loss_values(-delta, log_tau, **loss_kw)
  return 0.5 * (1.0 + labels) * a_better + 0.5 * (1.0 - labels) * b_better


def weighted_mean(values: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Mean of `values` weighted by `weight` (a mask or per-pair weights of the same shape); 0 if all weights are 0.

  Entries with weight 0 are replaced before summing, so a padded pair's value (even NaN) cannot leak in; its
  gradient still could if its own backward pass were NaN, so pad with finite inputs (zeros are fine).
  """
  if weight is None:
    return jnp.mean(values)
  weight = jnp.asarray(weight, values.dtype)
  total = jnp.sum(weight)
  weighted_sum = jnp.sum(jnp.where(weight > 0, weight * values, 0.0))
  return jnp.where(total > 0, weighted_sum / jnp.where(total > 0, total, 1.0), 0.0)


def pairwise_loss_values(mu_a: jax.Array, log_sigma_a: jax.Array, mu_b: jax.Array, log_sigma_b: jax.Array,
                         **loss_kw) -> jax.Array:
  """Per-pair loss of "A is better than B", same shape as mu_a; `loss_kw` as in `preference_loss_values`."""
  delta, log_tau = delta_and_log_tau(mu_a, log_sigma_a, mu_b, log_sigma_b)
  return preference_loss_values(delta, log_tau, **loss_kw)


def pairwise_loss(mu_a: jax.Array, log_sigma_a: jax.Array, mu_b: jax.Array, log_sigma_b: jax.Array, *,
                  weight: jax.Array | None = None, **loss_kw) -> jax.Array:
  """Batch loss: the mean over valid pairs (weight > 0) of `pairwise_loss_values`.

  Example: `pairwise_loss(mu_a, ls_a, mu_b, ls_b, weight=mask, kind="monte_carlo", key=key)`.
  """
  return weighted_mean(pairwise_loss_values(mu_a, log_sigma_a, mu_b, log_sigma_b, **loss_kw), weight)


def multi_dimensional_loss_values(fused: PairOutputs, dims: PairOutputs, labels: jax.Array, *,
                                  dimension_weights: Sequence[float] | jax.Array, overall_weight: float = 1.0,
                                  key: jax.Array | None = None, **loss_kw) -> jax.Array:
  """Per-pair overall_weight * L(fused A>B) + sum_d dimension_weights[d] * L_d(labels[d]), shape [B].

  Args:
    fused: fused outputs of A and B, fields of shape [B]; always trained as "A is better".
    dims: per-dimension outputs, fields of shape [D, B] (row d from head d, e.g. instruction following, quality).
    labels: [D, B] per-dimension labels of A vs B: +1 A better, -1 B better, 0 tie (see `labelled_loss_values`).
    dimension_weights: D weights; 0 switches a dimension off.
    overall_weight: weight of the fused term.
    key: PRNG key, needed only for kind "monte_carlo"; split between the fused and the per-dimension terms.
    **loss_kw: `kind`, `num_nodes`, `num_samples` as in `preference_loss_values`.
  """
  fused_key = dims_key = None
  if key is not None:
    fused_key, dims_key = jax.random.split(key)
  overall = pairwise_loss_values(*fused, key=fused_key, **loss_kw)
  delta, log_tau = delta_and_log_tau(*dims)
  per_dim = labelled_loss_values(delta, log_tau, labels, key=dims_key, **loss_kw)
  dim_weights = jnp.asarray(dimension_weights, per_dim.dtype)
  if dim_weights.shape != per_dim.shape[:1]:
    raise ValueError(f"dimension_weights has shape {dim_weights.shape}, expected ({per_dim.shape[0]},) to match "
                     f"per-dimension outputs of shape {per_dim.shape}")
  return overall_weight * overall + jnp.sum(dim_weights[:, None] * per_dim, axis=0)


def multi_dimensional_loss(fused: PairOutputs, dims: PairOutputs, labels: jax.Array, *,
                           weight: jax.Array | None = None, **kw) -> jax.Array:
  """Batch loss: the mean over valid pairs (weight > 0) of `multi_dimensional_loss_values(..., **kw)`."""
  return weighted_mean(multi_dimensional_loss_values(fused, dims, labels, **kw), weight)


def pair_accuracy(mu_a: jax.Array, mu_b: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Fraction of valid pairs ranked right (mu_a > mu_b strictly; a tied score counts as wrong)."""
  return weighted_mean(jnp.asarray(mu_a > mu_b, jnp.float32), weight)
