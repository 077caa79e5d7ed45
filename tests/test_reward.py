"""Reward heads and fusion: shapes, float32 heads under a bf16 backbone, dropout only in training, fusion rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editreward_jax.reward import HeadConfig, RewardHead, fuse


@pytest.fixture(scope="module")
def head():
  return RewardHead(32, HeadConfig(), nnx.Rngs(0))


def test_head_shapes_match_the_reference(head):
  assert head.fc0.kernel[...].shape == (32, 1024) and head.fc3.kernel[...].shape == (1024, 16)
  assert head.fc5.kernel[...].shape == (16, 2)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(head, nnx.Param)))
  h = jax.random.normal(jax.random.key(1), (5, 32), jnp.bfloat16).astype(jnp.float32)
  assert head(h).shape == (5, 2) and head(h).dtype == jnp.float32


def test_dropout_only_with_a_key(head):
  h = jax.random.normal(jax.random.key(1), (64, 32))
  np.testing.assert_array_equal(head(h), head(h))  # no key: deterministic (evaluation)
  a, b = head(h, jax.random.key(2)), head(h, jax.random.key(3))
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  # inverted dropout keeps the expectation of the first layer's activations
  x = jax.nn.relu(head.fc0(h))
  keep = jax.random.bernoulli(jax.random.key(2), 0.95, x.shape)
  manual = head.fc5(jax.nn.relu(head.fc3(jnp.where(keep, x / 0.95, 0.0))))
  np.testing.assert_allclose(a, manual, rtol=1e-6, atol=1e-6)


def test_fusions():
  per_dim = jnp.array([[[1.0, -2.0], [3.0, -1.0]], [[-0.5, 0.5], [0.25, -3.0]]])  # [edits, dims, (mu, log_sigma)]
  np.testing.assert_allclose(fuse(per_dim, "mean"), [[2.0, -1.5], [-0.125, -1.25]])
  np.testing.assert_allclose(fuse(per_dim, "min"), [[1.0, -2.0], [-0.5, -3.0]])
  summed = fuse(per_dim, "sum")
  np.testing.assert_allclose(summed[:, 0], [4.0, -0.25])
  sigma = np.sqrt(np.exp(2 * np.array([-2.0, 0.5])) + np.exp(2 * np.array([-1.0, -3.0])))
  np.testing.assert_allclose(summed[:, 1], np.log(sigma), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown fusion"):
    fuse(per_dim, "max")
