"""Structural properties of the backbone: scanned depth, remat policies, dtypes, initial weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.presets import TINY
from editreward_jax.models import inputs
from editreward_jax.models.qwen2_5_vl import Qwen25VL, RuntimeOptions

GRID = np.array([[1, 4, 6]])


def batch_for(cfg):
  tokens = [1, 2, cfg.vision_start_token_id] + [cfg.image_token_id] * 6 + [cfg.vision_end_token_id, 5, 6, 7]
  pixels = np.random.default_rng(0).standard_normal((24, cfg.vision.patch_dim)).astype(np.float32)
  return jax.tree.map(jnp.asarray, inputs.make_batch([tokens, [5, 6, 7, 8]], cfg, pixel_values=pixels,
                                                     image_grid_thw=GRID, rope_mode="mrope"))


def with_depth(text_layers: int, vision_depth: int, full_blocks=(1,)):
  return TINY.replace(text=dataclasses.replace(TINY.text, num_hidden_layers=text_layers),
                      vision=dataclasses.replace(TINY.vision, depth=vision_depth, fullatt_block_indexes=full_blocks))


def test_program_size_does_not_grow_with_depth():
  def size(cfg):
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    fn = lambda s, b: nnx.merge(graphdef, s)(**b)
    return len(str(jax.make_jaxpr(fn)(state, batch_for(cfg))).splitlines())

  # Vision blocks: a window block then a full one, repeated (as Qwen2.5-VL's 7 + 1, 4 times).
  assert size(with_depth(2, 4, (1, 3))) == size(with_depth(9, 8, (1, 3, 5, 7)))


def test_remat_policies_give_the_same_gradients():
  cfg = with_depth(2, 2)
  batch = batch_for(cfg)

  # A random projection: sum(h**2) of RMS-normed states is constant, so its gradient would be rounding noise.
  proj = jax.random.normal(jax.random.key(1), (*batch["input_ids"].shape, cfg.text.hidden_size))

  def grads(remat):
    model = Qwen25VL(cfg, RuntimeOptions(remat=remat), rngs=nnx.Rngs(0))
    g = nnx.jit(nnx.grad(lambda m, b: jnp.sum(m(**b) * proj)))(model, batch)
    return jax.tree.leaves(nnx.to_pure_dict(g))

  ref = grads("none")
  for remat in ("full", "dots", "dots_no_batch"):
    for a, b in zip(grads(remat), ref):
      # Recomputation may fuse and round differently: compare against each gradient's own scale.
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max(), err_msg=remat)


def test_bfloat16_compute_and_params():
  batch = batch_for(TINY)
  forward = nnx.jit(lambda m, b: m(**b))
  f32 = Qwen25VL(TINY, rngs=nnx.Rngs(0))
  ref = np.asarray(forward(f32, batch))
  model = Qwen25VL(TINY, RuntimeOptions(dtype="bfloat16", param_dtype="bfloat16"), rngs=nnx.Rngs(0))
  nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(f32, nnx.Param)))  # same weights
  assert model.decoder.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  out = forward(model, batch)
  assert out.dtype == jnp.bfloat16
  valid = np.asarray(batch["lengths"])[:, None] > np.arange(out.shape[1])[None]
  err = np.abs(np.asarray(out, np.float32) - ref)[valid]
  assert err.max() < 0.1 * np.abs(ref[valid]).max()  # bf16 has 8 bits of mantissa


def test_unknown_options_are_rejected():
  with pytest.raises(ValueError, match="remat"):
    nnx.jit(lambda m, b: m(**b))(Qwen25VL(TINY, RuntimeOptions(remat="some"), rngs=nnx.Rngs(0)), batch_for(TINY))
  with pytest.raises(ValueError, match="attention implementation"):
    nnx.jit(lambda m, b: m(**b))(Qwen25VL(TINY, RuntimeOptions(attention_impl="flash"), rngs=nnx.Rngs(0)),
                                 batch_for(TINY))


def test_fresh_weights_follow_each_towers_initializer_range():
  cfg = TINY.replace(vision=dataclasses.replace(TINY.vision, initializer_range=0.05),
                     text=dataclasses.replace(TINY.text, initializer_range=0.3))
  drawn = 0
  for path, value in nnx.iter_graph(Qwen25VL(cfg, rngs=nnx.Rngs(0))):
    if not isinstance(value, nnx.Param):
      continue
    values = np.asarray(value[...])
    if path[-1] in ("bias", "scale"):
      np.testing.assert_array_equal(values, 0.0 if path[-1] == "bias" else 1.0, err_msg=str(path))
      continue
    expected = 0.05 if path[0] == "visual" else 0.3
    assert abs(values.std() / expected - 1) < 0.1, (path, values.std())
    drawn += 1
  assert drawn == 8 + 9  # vision: patch_embed, qkv, proj, 3 MLP, fc1, fc2; text: embed, lm_head, q, k, v, o, 3 MLP


@pytest.mark.parametrize("kinds", [(False, True) * 3, (False, False, True, False, True, True)])
def test_layers_run_by_kind_as_one_by_one(kinds):
  """Runs of one kind scanned (and a repeating pattern scanned over its repeats): the same values and gradients
  as applying the layers one by one, each with its own kind."""
  from editreward_jax.models import scan
  stack = scan.make_stack(lambda r: nnx.Linear(8, 8, rngs=r), len(kinds), "layers", nnx.Rngs(0))
  body = lambda layer, h, full: jnp.tanh(layer(h)) * (2.0 if full else 1.0) + (0.0 if full else 0.5)
  x = jax.random.normal(jax.random.key(0), (3, 8))

  def by_kind(s):
    return jnp.sum(scan.run_stack_by_kind(s, x, kinds, body) ** 2)

  def one_by_one(s):
    graphdef, state = nnx.split(s)
    h = x
    for i, kind in enumerate(kinds):
      h = body(nnx.merge(graphdef, jax.tree.map(lambda p, i=i: p[i], state)), h, kind)
    return jnp.sum(h**2)

  np.testing.assert_allclose(by_kind(stack), one_by_one(stack), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(nnx.grad(by_kind)(stack)), jax.tree.leaves(nnx.grad(one_by_one)(stack))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
