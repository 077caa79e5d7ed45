"""Backward parity: every parameter gradient of the Flax backbone against torch autograd on transformers' model.

The forward parity tests cannot see a wrong backward (a stray stop_gradient, a custom VJP, an index that gathers
but does not scatter back). Loss: a fixed random projection of the final hidden states and of the logits over the
real (unpadded) tokens of a right-padded batch with three images of two sizes, so every parameter gets a gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convert import hf_keys
from editreward_jax.models import inputs

pytest.importorskip("torch")  # what follows needs PyTorch: without it the module is skipped, not an error
import torch

from torch_reference import image_tokens, random_pixels, torch_inputs

pytestmark = pytest.mark.torch

REL_TOL = 1e-4  # of each tensor's largest gradient; measured worst is about 3e-6
GRIDS = np.array([[1, 4, 6], [1, 8, 12], [1, 4, 6]])
TEXT = [5, 17, 33, 2, 101, 7, 64, 12, 250, 3]
ROWS = [[1, 2] + image_tokens(tuple(GRIDS[0])) + [9, 8] + image_tokens(tuple(GRIDS[1])) + TEXT,
        [4] + image_tokens(tuple(GRIDS[2])) + TEXT[:4]]


def projections(hidden: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
  """Random [B, L, hidden] and [B, L, vocab] weights, zero on padding."""
  mask = np.zeros((len(ROWS), max(map(len, ROWS))), bool)
  for i, row in enumerate(ROWS):
    mask[i, :len(row)] = True
  rng = np.random.default_rng(0)
  shape = mask.shape
  hidden_proj = rng.standard_normal(shape + (hidden,)).astype(np.float32) * mask[..., None]
  logit_proj = rng.standard_normal(shape + (vocab,)).astype(np.float32) * mask[..., None] / np.sqrt(vocab)
  return hidden_proj, logit_proj


def torch_gradients(model, pixels: np.ndarray, mode: str) -> dict[str, np.ndarray]:
  kwargs, _ = torch_inputs(ROWS, pixel_values=pixels, image_grid_thw=GRIDS, mode=mode)
  hidden_proj, logit_proj = projections(model.config.text_config.hidden_size, model.lm_head.out_features)
  model.model.rope_deltas = None
  hidden = model.model(**kwargs).last_hidden_state
  loss = (hidden * torch.from_numpy(hidden_proj)).sum() + (model.lm_head(hidden) * torch.from_numpy(logit_proj)).sum()
  names, params = zip(*model.named_parameters())
  grads = torch.autograd.grad(loss, params)  # leaves the shared fixture's .grad untouched
  return {name: g.numpy() for name, g in zip(names, grads)}


def jax_gradients(model, pixels: np.ndarray, mode: str) -> dict[str, np.ndarray]:
  batch = jax.tree.map(jnp.asarray, inputs.make_batch(ROWS, model.cfg, pixel_values=pixels, image_grid_thw=GRIDS,
                                                       rope_mode=mode))
  hidden_proj, logit_proj = projections(model.cfg.text.hidden_size, model.cfg.text.vocab_size)

  def loss(m):
    hidden = m(**batch)
    return jnp.sum(hidden * hidden_proj) + jnp.sum(m.logits(hidden) * logit_proj)

  grads = nnx.to_pure_dict(nnx.state(nnx.jit(nnx.grad(loss))(model)))
  out = {}
  for spec in hf_keys.param_specs(model.cfg):
    value = grads
    for key in spec.path:
      value = value[key]
    value = np.asarray(value)
    for i, name in enumerate(spec.hf_keys()):
      out[name] = hf_keys.to_hf(spec, value[i] if spec.num_layers else value, model.cfg)
  return out


@pytest.mark.parametrize("mode", ["sequential", "mrope"])
def test_every_parameter_gradient_matches_torch(tiny_torch, tiny_jax, mode):
  pixels = random_pixels(GRIDS, seed=7)
  theirs = torch_gradients(tiny_torch, pixels, mode)
  ours = jax_gradients(tiny_jax, pixels, mode)
  assert set(ours) == set(theirs)
  for name, ref in theirs.items():
    scale = np.abs(ref).max()
    assert scale > 0, f"{name}: the loss does not reach this parameter"
    diff = np.abs(ours[name] - ref).max()
    assert diff <= REL_TOL * scale, f"{name}: max abs diff {diff:.3g} against a gradient scale of {scale:.3g}"
