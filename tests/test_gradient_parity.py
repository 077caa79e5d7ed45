"""Backward parity: every parameter gradient of the Flax backbone against torch autograd on transformers' model.

The forward parity tests cannot see a wrong backward (a stray stop_gradient, a custom VJP, an index that gathers
but does not scatter back). Loss: a fixed random projection of the final hidden states and of the logits over the
real (unpadded) tokens of a right-padded batch with three images of two sizes, so every parameter gets a gradient.
With prefix sharing (models/shared_prefix.py) the rows come in pairs that share a prefix of text and images, and the
Flax side computes each shared prefix once; transformers computes every row in full.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convert import hf_keys
from editreward_jax.models import inputs, shared_prefix

pytest.importorskip("torch")  # what follows needs PyTorch: without it the module is skipped, not an error
import torch

from torch_reference import image_tokens, random_pixels, torch_inputs

pytestmark = pytest.mark.torch

REL_TOL = 1e-4  # of each tensor's largest gradient; measured worst is about 3e-6
GRIDS = np.array([[1, 4, 6], [1, 8, 12], [1, 4, 6]])
TEXT = [5, 17, 33, 2, 101, 7, 64, 12, 250, 3]
ROWS = [[1, 2] + image_tokens(tuple(GRIDS[0])) + [9, 8] + image_tokens(tuple(GRIDS[1])) + TEXT,
        [4] + image_tokens(tuple(GRIDS[2])) + TEXT[:4]]
REFS = [[0, 1], [2]]
# Two groups of two rows: the first pair shares both images and part of the text, the second one image.
SHARED_ROWS = [ROWS[0], ROWS[0][:-6] + [44, 45, 46], ROWS[1], ROWS[1][:-3] + [71, 72, 73, 74, 75]]
SHARED_REFS = [[0, 1], [0, 1], [2], [2]]


def projections(hidden: int, vocab: int, rows) -> tuple[np.ndarray, np.ndarray]:
  """Random [B, L, hidden] and [B, L, vocab] weights, zero on padding."""
  mask = np.zeros((len(rows), max(map(len, rows))), bool)
  for i, row in enumerate(rows):
    mask[i, :len(row)] = True
  rng = np.random.default_rng(0)
  shape = mask.shape
  hidden_proj = rng.standard_normal(shape + (hidden,)).astype(np.float32) * mask[..., None]
  logit_proj = rng.standard_normal(shape + (vocab,)).astype(np.float32) * mask[..., None] / np.sqrt(vocab)
  return hidden_proj, logit_proj


def torch_gradients(model, pixels: np.ndarray, mode: str, rows, refs) -> dict[str, np.ndarray]:
  offsets = np.concatenate([[0], np.cumsum(np.prod(GRIDS, axis=1))])
  shown = [i for r in refs for i in r]  # transformers takes every row's images in reading order
  pixels = np.concatenate([pixels[offsets[i]:offsets[i + 1]] for i in shown])
  kwargs, _ = torch_inputs(rows, pixel_values=pixels, image_grid_thw=GRIDS[shown], mode=mode)
  hidden_proj, logit_proj = projections(model.config.text_config.hidden_size, model.lm_head.out_features, rows)
  model.model.rope_deltas = None
  hidden = model.model(**kwargs).last_hidden_state
  loss = (hidden * torch.from_numpy(hidden_proj)).sum() + (model.lm_head(hidden) * torch.from_numpy(logit_proj)).sum()
  names, params = zip(*model.named_parameters())
  grads = torch.autograd.grad(loss, params)  # leaves the shared fixture's .grad untouched
  return {name: g.numpy() for name, g in zip(names, grads)}


def jax_gradients(model, pixels: np.ndarray, mode: str, rows, refs, groups: int | None) -> dict[str, np.ndarray]:
  batch = inputs.make_batch(rows, model.cfg, pixel_values=pixels, image_grid_thw=GRIDS, image_refs=refs,
                            rope_mode=mode)
  if groups:
    batch = shared_prefix.pack(batch, groups, suffix_slots=tuple(range(1, groups)))  # later rows: suffix queries
  batch = jax.tree.map(jnp.asarray, batch)
  hidden_proj, logit_proj = projections(model.cfg.text.hidden_size, model.cfg.text.vocab_size, rows)

  def loss(m):
    hidden = m(**batch)
    if groups:  # packed -> standalone rows, so each row's projection applies as transformers sees it
      hidden = shared_prefix.to_rows(hidden, batch["row_tokens"])
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
@pytest.mark.parametrize("shared", [False, True], ids=["rows", "shared_prefix"])
def test_every_parameter_gradient_matches_torch(tiny_torch, tiny_jax, mode, shared):
  pixels = random_pixels(GRIDS, seed=7)
  rows, refs = (SHARED_ROWS, SHARED_REFS) if shared else (ROWS, REFS)
  theirs = torch_gradients(tiny_torch, pixels, mode, rows, refs)
  ours = jax_gradients(tiny_jax, pixels, mode, rows, refs, 2 if shared else None)
  assert set(ours) == set(theirs)
  for name, ref in theirs.items():
    scale = np.abs(ref).max()
    assert scale > 0, f"{name}: the loss does not reach this parameter"
    diff = np.abs(ours[name] - ref).max()
    assert diff <= REL_TOL * scale, f"{name}: max abs diff {diff:.3g} against a gradient scale of {scale:.3g}"
