"""Parity of the Flax backbone with transformers' Qwen2.5-VL (float32, CPU), weights moved through the importer."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from editreward_jax.models import inputs, shared_prefix, vision_layout

pytest.importorskip("torch")  # what follows needs PyTorch: without it the module is skipped, not an error
import torch

from torch_reference import IMAGE_TOKEN, image_tokens, random_pixels, torch_forward

pytestmark = pytest.mark.torch

TOL = 1e-4
# Two images of different sizes: 56x84 px (grid 4x6) and 112x168 px (grid 8x12); with window_size 56 they span
# 2 and 6 windows, and block 1 of the tiny tower attends over each whole image.
GRIDS = np.array([[1, 4, 6], [1, 8, 12]])


@nnx.jit
def _forward(model, batch):
  hidden = model(**batch)
  return hidden, model.logits(hidden)


def jax_forward(model, rows, *, mode, pixel_values=None, grid=None):
  batch = inputs.make_batch(rows, model.cfg, pixel_values=pixel_values, image_grid_thw=grid, rope_mode=mode)
  hidden, logits = _forward(model, jax.tree.map(jax.numpy.asarray, batch))
  return np.asarray(hidden), np.asarray(logits)


def assert_close(ours, theirs, mask, what):
  diff = np.abs(ours - theirs)[mask].max()
  scale = np.abs(theirs[mask]).max()
  assert diff <= TOL, f"{what}: max abs diff {diff:.3g} (reference magnitude {scale:.3g})"
  assert scale > 0.5, f"{what}: reference activations too small ({scale:.3g}) for a meaningful comparison"


def check(tiny_torch, tiny_jax, rows, mode, pixel_values=None, grid=None):
  h_ref, l_ref, mask = torch_forward(tiny_torch, rows, pixel_values=pixel_values, image_grid_thw=grid, mode=mode)
  h, logits = jax_forward(tiny_jax, rows, mode=mode, pixel_values=pixel_values, grid=grid)
  assert_close(h, h_ref, mask, "hidden states")
  assert_close(logits, l_ref, mask, "logits")


TEXT = [5, 17, 33, 2, 101, 7, 64, 12, 250, 3]


@pytest.mark.parametrize("mode", ["sequential", "mrope"])
def test_text_only(tiny_torch, tiny_jax, mode):
  check(tiny_torch, tiny_jax, [TEXT], mode)


@pytest.mark.parametrize("mode", ["sequential", "mrope"])
def test_one_image(tiny_torch, tiny_jax, mode):
  grid = GRIDS[1:]
  rows = [[1, 2] + image_tokens(tuple(grid[0])) + TEXT]
  check(tiny_torch, tiny_jax, rows, mode, random_pixels(grid, seed=1), grid)


@pytest.mark.parametrize("mode", ["sequential", "mrope"])
def test_two_images_of_different_sizes(tiny_torch, tiny_jax, mode):
  rows = [[1, 2] + image_tokens(tuple(GRIDS[0])) + [9, 8] + image_tokens(tuple(GRIDS[1])) + TEXT]
  check(tiny_torch, tiny_jax, rows, mode, random_pixels(GRIDS, seed=2), GRIDS)


@pytest.mark.parametrize("mode", ["sequential", "mrope"])
def test_padded_batch(tiny_torch, tiny_jax, mode):
  """Two sequences of different lengths, right-padded, each with its own image."""
  rows = [[1, 2] + image_tokens(tuple(GRIDS[1])) + TEXT,
          [4] + image_tokens(tuple(GRIDS[0])) + TEXT[:4]]
  check(tiny_torch, tiny_jax, rows, mode, random_pixels(GRIDS[::-1], seed=3), GRIDS[::-1])


@pytest.mark.parametrize("mode", ["sequential", "mrope"])
def test_shared_prefixes_computed_once(tiny_torch, tiny_jax, mode):
  """Groups of two rows sharing text and images (the second group also sharing an image of another size), packed
  by shared_prefix with the second row of each attending from its new tokens only (the second group's show a new
  image): every row's hidden states and logits as transformers computes the full rows."""
  a = [1, 2] + image_tokens(tuple(GRIDS[0])) + [9, 8] + image_tokens(tuple(GRIDS[1]))
  b = [4] + image_tokens(tuple(GRIDS[1]))
  rows = [a + TEXT, a + TEXT[:3] + [77, 78], b + TEXT[:4], b + [6] + image_tokens(tuple(GRIDS[0])) + TEXT]
  refs = [[0, 1], [0, 1], [1], [1, 0]]
  pixels = random_pixels(GRIDS, seed=4)
  offsets = np.concatenate([[0], np.cumsum(np.prod(GRIDS, axis=1))])
  shown = [i for r in refs for i in r]
  h_ref, l_ref, mask = torch_forward(tiny_torch, rows, pixel_values=np.concatenate(
      [pixels[offsets[i]:offsets[i + 1]] for i in shown]), image_grid_thw=GRIDS[shown], mode=mode)
  batch = shared_prefix.pack(inputs.make_batch(rows, tiny_jax.cfg, pixel_values=pixels, image_grid_thw=GRIDS,
                                               image_refs=refs, rope_mode=mode), 2, suffix_slots=(1,))
  assert shared_prefix.packed_tokens(batch) < sum(map(len, rows)) - len(a)  # both groups share
  hidden, logits = _forward(tiny_jax, jax.tree.map(jax.numpy.asarray, batch))
  to_rows = lambda x: np.asarray(shared_prefix.to_rows(x, jax.numpy.asarray(batch["row_tokens"])))
  assert_close(to_rows(hidden), h_ref, mask, "hidden states")
  assert_close(to_rows(logits), l_ref, mask, "logits")


def test_vision_tower_alone(tiny_torch, tiny_jax):
  pixels = random_pixels(GRIDS, seed=4)
  with torch.no_grad():
    ref = tiny_torch.model.visual(torch.from_numpy(pixels), grid_thw=torch.from_numpy(GRIDS)).pooler_output.numpy()
  vb = vision_layout.build_vision_batch(pixels, GRIDS, tiny_jax.cfg.vision)
  ours = np.asarray(nnx.jit(lambda m, b: m.visual.features(b))(tiny_jax, jax.tree.map(jax.numpy.asarray, vb.tree())))
  assert ours.shape == ref.shape
  assert_close(ours, ref, np.ones(ref.shape, bool), "vision features")


def test_mrope_positions_are_3d(tiny_jax):
  """Guards the mrope comparison itself: with images, mrope positions differ from sequential ones."""
  rows = [[1, 2] + image_tokens(tuple(GRIDS[1])) + TEXT]
  seq = inputs.make_batch(rows, tiny_jax.cfg, image_grid_thw=GRIDS[1:], rope_mode="sequential")["position_ids"]
  mro = inputs.make_batch(rows, tiny_jax.cfg, image_grid_thw=GRIDS[1:], rope_mode="mrope")["position_ids"]
  assert not np.array_equal(seq, mro)
  assert (np.asarray(rows[0]) == IMAGE_TOKEN).sum() == 24
