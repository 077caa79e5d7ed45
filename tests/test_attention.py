"""Attention paths. TPU splash attention (Pallas, run here in interpret mode) equals XLA's attention: causal GQA and
bidirectional, padded rows, forward and gradients, a whole reward model on packed prefix-shared batches. XLA's path in
query chunks equals one softmax over the whole square."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editreward_jax.models import attention, shared_prefix
from editreward_jax.models import inputs as model_inputs
from editreward_jax.models.presets import TINY
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.reward import RewardModel

TOL = 1e-5


def inputs(seq=128, heads=6, kv_heads=2, hd=32):  # 3 query heads per KV head
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, seq, heads, hd))
  k, v = rng.normal(size=(2, 2, seq, kv_heads, hd))
  lengths = np.array([100, 37])
  valid = np.arange(seq)[None] < lengths[:, None]
  return [jnp.asarray(x, jnp.float32) for x in (q, k, v)], jnp.asarray(lengths), valid


@pytest.mark.parametrize("causal", [True, False])
def test_splash_equals_xla_forward_and_gradients(causal):
  (q, k, v), lengths, valid = inputs()
  weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * valid[..., None, None]

  def loss(impl):
    return lambda q, k, v: jnp.sum(attention.attend(q, k, v, lengths, causal=causal, implementation=impl) * weights)

  out = {impl: np.asarray(attention.attend(q, k, v, lengths, causal=causal, implementation=impl))
         for impl in ("xla", "splash")}
  assert np.abs(out["splash"] - out["xla"])[valid].max() <= TOL
  grads = {impl: jax.grad(loss(impl), argnums=(0, 1, 2))(q, k, v) for impl in ("xla", "splash")}
  for ours, want in zip(grads["splash"], grads["xla"]):
    assert np.abs(np.asarray(ours) - np.asarray(want)).max() <= TOL * np.abs(np.asarray(want)).max()


def test_sequences_off_the_lane_tile_stay_on_xla():
  (q, k, v), lengths, _ = inputs(seq=64)
  lengths = jnp.minimum(lengths, 64)
  np.testing.assert_array_equal(attention.attend(q, k, v, lengths, causal=False, implementation="splash"),
                                attention.attend(q, k, v, lengths, causal=False, implementation="xla"))


def test_reward_model_on_splash_equals_xla():
  """A packed, prefix-shared batch of two rows per group (rows of 128 tokens: the text decoder runs splash)."""
  rng = np.random.default_rng(2)
  common = list(rng.integers(10, 500, 70))
  rows = [common + list(rng.integers(10, 500, n)) for n in (30, 50, 20, 5)]
  # Row 1 of each group is a suffix row: "xla" attends from its new tokens only, splash from every position.
  batch = shared_prefix.pack(model_inputs.make_batch(rows, TINY, seq_len=128), 2, suffix_slots=(1,))
  reward_index = jnp.asarray([len(r) - 1 for r in rows])
  dims = jnp.asarray([0, 1, 0, 1])
  out = {}
  for impl in ("xla", "splash"):
    model = RewardModel(TINY, RuntimeOptions(attention_impl=impl), rngs=nnx.Rngs(0))
    out[impl] = np.asarray(nnx.jit(lambda m, b: m(b, reward_index, dims))(model, jax.tree.map(jnp.asarray, batch)))
  assert np.abs(out["splash"] - out["xla"]).max() <= TOL


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq", [64, 3 * attention.CHUNK + 64])
def test_xla_chunks_equal_one_softmax(causal, seq):
  """The "xla" path runs in query chunks: the same as jax's attention, one softmax over the whole square."""
  (q, k, v), lengths, valid = inputs(seq=seq)
  lengths = jnp.minimum(lengths, seq)
  valid = np.arange(seq)[None] < np.asarray(lengths)[:, None]
  full = jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths)
  chunked = attention.attend(q, k, v, lengths, causal=causal, implementation="xla")
  assert np.abs(np.asarray(chunked) - np.asarray(full))[valid].max() <= TOL
  # Its own backward pass (probabilities recomputed from the log-sum-exp) against autodiff of the one softmax.
  weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * valid[..., None, None]
  grads = [jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * weights), argnums=(0, 1, 2))(q, k, v) for f in (
      lambda q, k, v: attention.attend(q, k, v, lengths, causal=causal, implementation="xla"),
      lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                                   key_value_seq_lengths=lengths))]
  for ours, want in zip(*grads):
    assert np.abs(np.asarray(ours) - np.asarray(want)).max() <= TOL * np.abs(np.asarray(want)).max()


@pytest.mark.parametrize("shift", [0, 1])
def test_queries_at_positions_equal_their_rows(shift):
  """Queries at given positions (a suffix row's new tokens) get the outputs and gradients that the same positions
  get in the whole row's causal attention. A planted mistake (positions one too far: each query sees the next key)
  must fail."""
  seq = 2 * attention.CHUNK + 40
  (q, k, v), lengths, _ = inputs(seq=seq)
  starts = np.array([150, 3])
  count = 2 * attention.CHUNK - 60  # queries per row; row 1's run past its length (padding queries)
  positions = np.minimum(starts[:, None] + np.arange(count), seq - 1)
  real = positions < np.asarray(lengths)[:, None]
  take = lambda x: jnp.take_along_axis(x, jnp.asarray(positions)[:, :, None, None], axis=1)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, count) + q.shape[2:]), jnp.float32)
  weights = weights * real[..., None, None]

  def whole_rows(q, k, v):
    return take(attention.attend(q, k, v, lengths, causal=True, implementation="xla"))

  def at_positions(q, k, v):
    return attention.attend(take(q), k, v, lengths, causal=True, implementation="xla",
                            query_positions=jnp.asarray(positions + shift))

  want, ours = whole_rows(q, k, v), at_positions(q, k, v)
  grads = [jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * weights), argnums=(0, 1, 2))(q, k, v)
           for f in (at_positions, whole_rows)]
  errors = [np.abs(np.asarray(ours - want))[real].max()]
  errors += [np.abs(np.asarray(g - w)).max() / np.abs(np.asarray(w)).max() for g, w in zip(*grads)]
  if shift:
    assert min(errors) > 1e-3
  else:
    assert max(errors) <= TOL
