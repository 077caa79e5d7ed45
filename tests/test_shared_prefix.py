"""Shared-prefix computation (models/shared_prefix.py) is exact: with and without it, a batch of training pairs or
scored edits gives the same per-dimension outputs and the same parameter gradients (float32, both position modes,
padding, images of different sizes, candidates of different sizes); a layout that lets a row see another rubric's or
the other candidate's tokens fails these checks."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from flax import nnx

import data
from editreward_jax import batching, processing
from editreward_jax.models import shared_prefix
from editreward_jax.models.presets import TINY
from editreward_jax.prompts import load_prompts
from editreward_jax.reward import RewardModel
from editreward_jax.training import flops

OUT_TOL = 1e-5
GRAD_TOL = 1e-5  # of each parameter's largest gradient
# A wider init than transformers' 0.02, so that every layer moves the outputs (activations O(1)).
CFG = TINY.replace(text=dataclasses.replace(TINY.text, initializer_range=0.1),
                   vision=dataclasses.replace(TINY.vision, initializer_range=0.1))


@pytest.fixture(scope="module")
def processor():
  prompts = load_prompts(os.path.join(os.path.dirname(data.__file__), "demo_prompts.json"))  # short rubric
  return processing.Processor(processing.load_tokenizer(data.TINY_TOKENIZER), prompts, min_pixels=28 * 28,
                              max_pixels=112 * 112)


@pytest.fixture(scope="module")
def model():
  return RewardModel(CFG, rngs=nnx.Rngs(3))


def image(seed: int, width: int, height: int) -> PIL.Image.Image:
  return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def pair_rows(processor, table, instruction, source, a, b) -> list[batching.Row]:
  """(A, dim 0), (A, dim 1), (B, dim 0), (B, dim 1): the pipeline's order."""
  return [r for edit in (a, b) for r in batching.edit_rows(processor(instruction, source, edit), table)]


def pairs_batch(processor, rope_mode, prefix_groups, pad_rows: int = 0, suffix_len: int | None = None):
  """Two pairs: one whose candidates differ in size (56x84 and 112x56), one at another size; padded with
  `pad_rows` rows of padding (a padding pair). `suffix_len=0`: every row attends in full (fixed shapes)."""
  table = batching.ImageTable()
  rows = pair_rows(processor, table, "make the sky purple", image(0, 84, 56), image(1, 56, 84), image(2, 112, 56))
  rows += pair_rows(processor, table, "remove the cat", image(3, 56, 56), image(4, 56, 56), image(5, 56, 56))
  shape = batching.BatchShape(rows=len(rows) + pad_rows, suffix_len=suffix_len)
  return batching.collate(rows, table, CFG, rope_mode=rope_mode, shape=shape, prefix_groups=prefix_groups)


def outputs(model, collated):
  arrays = jax.tree.map(jnp.asarray, collated)
  return np.asarray(model(arrays["batch"], arrays["reward_index"], arrays["dimension"]))


def gradients(model, collated):
  arrays = jax.tree.map(jnp.asarray, collated)
  graphdef, params = nnx.split(model, nnx.Param)
  weights = jnp.asarray(np.random.default_rng(0).normal(size=(len(collated["row_valid"]), 2)), jnp.float32)

  def loss(p):
    out = nnx.merge(graphdef, p)(arrays["batch"], arrays["reward_index"], arrays["dimension"])
    return jnp.sum(jnp.where(arrays["row_valid"][:, None], out * weights, 0.0))

  return jax.tree.leaves(jax.grad(loss)(params))


def assert_same(ours, theirs, valid):
  diff = np.abs(ours - theirs)[valid].max()
  assert diff <= OUT_TOL, f"outputs differ by {diff:.3g}"
  assert np.abs(theirs[valid]).max() > 0.1  # outputs large enough for the comparison to mean something


def test_pair_layout_shares_the_prefixes(processor):
  off = pairs_batch(processor, "sequential", None)
  on = pairs_batch(processor, "sequential", 4)
  rows, packed = off["batch"], on["batch"]
  assert packed["input_ids"].shape[0] == rows["input_ids"].shape[0] // 4
  lengths = rows["lengths"]
  # Every row position reads back its own token, image slot and position from the packed layout.
  for name in ("input_ids", "image_slots"):
    back = np.asarray(shared_prefix.to_rows(jnp.asarray(packed[name]), jnp.asarray(packed["row_tokens"])))
    valid = np.arange(rows[name].shape[1])[None] < lengths[:, None]
    np.testing.assert_array_equal(back[valid], rows[name][valid])
  back = np.stack([np.asarray(shared_prefix.to_rows(jnp.asarray(p), jnp.asarray(packed["row_tokens"])))
                   for p in packed["position_ids"]])
  np.testing.assert_array_equal(back[:, valid], rows["position_ids"][:, valid])
  # What is shared: a candidate's two rows everything up to their rubric, the two candidates the source image.
  for g in range(2):
    ids = rows["input_ids"][4 * g:4 * g + 4]
    slots = rows["image_slots"][4 * g:4 * g + 4]
    common = [shared_prefix.common_prefix(ids[i], slots[i], ids[j], slots[j]) for i, j in ((0, 1), (0, 2), (2, 3))]
    end_of_edit = np.flatnonzero(ids[0] == CFG.vision_end_token_id)[-1]
    end_of_source = np.flatnonzero(ids[0] == CFG.vision_end_token_id)[0]
    assert common[0] > end_of_edit and common[2] > end_of_edit
    assert end_of_source < common[1] < end_of_edit
    n = lengths[4 * g:4 * g + 4]
    expected = n[0] + (n[1] - common[0]) + (n[2] - common[1]) + (n[3] - common[2])
    assert (packed["token_rows"][g] >= 0).sum() == expected


@pytest.mark.parametrize("rope_mode, suffix_len", [("sequential", None), ("mrope", None), ("sequential", 0)],
                         ids=["sequential", "mrope", "full_rows"])
def test_pairs_same_outputs_and_gradients(processor, model, rope_mode, suffix_len):
  off = pairs_batch(processor, rope_mode, None, pad_rows=4)
  on = pairs_batch(processor, rope_mode, 4, pad_rows=4, suffix_len=suffix_len)
  assert on["batch"]["suffix_rows"].shape[1] == (0 if suffix_len == 0 else 2)
  valid = off["row_valid"]
  assert_same(outputs(model, on), outputs(model, off), valid)
  for g_on, g_off in zip(gradients(model, on), gradients(model, off)):
    scale = np.abs(g_off).max()
    assert np.abs(g_on - g_off).max() <= GRAD_TOL * max(scale, 1e-30), f"gradient differs (scale {scale:.3g})"


def test_scored_edits_same_outputs(processor, model):
  """A scored edit shares its system turn and both images between its two rubric rows (odd batch: padding)."""
  def collate(prefix_groups):
    table = batching.ImageTable()
    rows = []
    for k, (w, h) in enumerate([(56, 56), (112, 56), (84, 112)]):
      rows += batching.edit_rows(processor(f"edit {k}", image(10 + k, w, h), image(20 + k, h, w)), table)
    return batching.collate(rows, table, CFG, rope_mode="mrope", shape=batching.BatchShape(rows=8),
                            prefix_groups=prefix_groups)

  off, on = collate(None), collate(2)
  assert_same(outputs(model, on), outputs(model, off), off["row_valid"])


def test_suffix_rows_attention_flops(processor):
  """A suffix row's attention queries start after its shared prefix; the FLOP count leaves the skipped ones out."""
  off = pairs_batch(processor, "sequential", None)["batch"]
  on = pairs_batch(processor, "sequential", 4)["batch"]
  ids, slots = off["input_ids"], off["image_slots"]
  want = np.zeros(len(ids), np.int64)
  for g in range(2):
    for row, earlier in ((4 * g + 1, 4 * g), (4 * g + 3, 4 * g + 2)):  # each candidate's second rubric row
      want[row] = shared_prefix.common_prefix(ids[row], slots[row], ids[earlier], slots[earlier])
  starts = shared_prefix.query_starts(on)
  np.testing.assert_array_equal(starts, want)
  assert (starts[1::2] > 0).all()
  t = CFG.text
  skipped = flops.decoder_flops(CFG, off["lengths"], 0.0) - flops.decoder_flops(CFG, off["lengths"], 0.0, starts)
  assert skipped == pytest.approx(2.0 * (want**2).sum() * t.num_attention_heads * t.head_dim * t.num_hidden_layers)


@pytest.mark.parametrize("planted", ["other_rubric", "other_candidate", "suffix_sees_ahead"])
def test_a_layout_that_sees_too_much_fails(processor, model, monkeypatch, planted):
  """Plant a mistake in what counts as shared, or in where a suffix row's queries are: the check above must
  catch it."""
  exact = shared_prefix.common_prefix
  if planted == "other_rubric":  # share 3 tokens past the real common prefix: a rubric row sees the other's
    wrong = lambda a, sa, b, sb: min(exact(a, sa, b, sb) + 3, len(a), len(b))
  elif planted == "other_candidate":  # compare token ids only: candidate B's image tokens are taken for A's
    wrong = lambda a, sa, b, sb: exact(a, np.zeros_like(sa), b, np.zeros_like(sb))
  off = pairs_batch(processor, "sequential", None)
  if planted != "suffix_sees_ahead":
    monkeypatch.setattr(shared_prefix, "common_prefix", wrong)
  on = pairs_batch(processor, "sequential", 4)
  assert on["batch"]["suffix_rows"].shape[1] == 2  # rows 1 and 3 of a pair attend from their rubric only
  if planted == "suffix_sees_ahead":  # each suffix query one position late: it sees the next token
    on["batch"]["suffix_positions"] = on["batch"]["suffix_positions"] + 1
  with pytest.raises(AssertionError, match="outputs differ"):
    assert_same(outputs(model, on), outputs(model, off), off["row_valid"])
