"""The per-shard batch layout: K shards of one static shape, shard-local indices, outputs equal to one shard, fixed
shapes for multi-host runs, batch shardings, and (8 simulated devices) each device group encoding its own images."""

from __future__ import annotations

import dataclasses
import io
import pathlib

import jax
import numpy as np
import PIL.Image
import pytest
from flax import nnx

from configs.presets import TINY
from data.editreward_demo import generate_rows
from editreward_jax import batching, pairs, pipeline, processing, prompts, sharding
from editreward_jax.models import vision_layout
from editreward_jax.reward import RewardModel
from subprocess_run import run_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 56
# Tiny model: a 56x56 image is 16 patches (one attention window) and 4 merged units; a pair shows 3 images.
CONFIG = pipeline.PipelineConfig(batch_pairs=4, seq_buckets=(352, 384, 512), patch_buckets=(64, 128, 192),
                                 min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE, prefetch=0, num_epochs=1,
                                 shuffle=False)


@pytest.fixture(scope="module")
def tokenizer():
  return processing.load_tokenizer(ROOT / "data" / "tiny_tokenizer")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
  return list(generate_rows("train", 4, seed=0, image_size=SIZE, edits_per_source=4))  # 5 pairs


def batches(rows, tokenizer, **overrides) -> list[dict]:
  config = dataclasses.replace(CONFIG, **overrides)
  return list(pipeline.pair_dataset(rows, tokenizer, prompts.load_prompts(), TINY, config, shard=(0, 1)))


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_shards_have_one_shape_and_point_into_their_own_units(rows, tokenizer, shards):
  found = batches(rows, tokenizer, shards=shards)
  p, per_shard = CONFIG.batch_pairs, CONFIG.batch_pairs // shards
  padding_shards = 0
  for b in found:
    model_in, vision = b["batch"], b["batch"]["vision"]
    seq_len = model_in["input_ids"].shape[1]
    assert model_in["input_ids"].shape == model_in["image_slots"].shape == (4 * p, seq_len)
    assert model_in["position_ids"].shape == (3, 4 * p, seq_len)
    assert {b[k].shape for k in ("reward_index", "dimension", "row_valid")} | {model_in["lengths"].shape} == {(4 * p,)}
    assert {b[k].shape[0] for k in ("pair_valid", "labels", "pair_weight", "tie", "source_row")} == {p}
    slots = vision["pixels"].shape[1]
    assert vision["pixels"].shape == (shards, slots, TINY.vision.patch_dim)
    assert vision["image_lengths"].shape == (shards, 3 * per_shard)
    assert vision["unit_slots"].shape == (shards, slots // 4)
    assert vision["window_lengths"].shape == (shards, slots // 16)
    assert {v.shape[0] for v in vision.values()} == {shards}
    for k in range(shards):
      rows_k = slice(4 * per_shard * k, 4 * per_shard * (k + 1))
      real_units = vision["image_lengths"][k].sum() // 4
      own = set(vision["unit_slots"][k, :real_units].tolist())
      pointed = model_in["image_slots"][rows_k]
      assert set(pointed[pointed >= 0].tolist()) == own  # every real unit of the shard is shown, no other
      if not b["pair_valid"][k * per_shard:(k + 1) * per_shard].any():  # a shard of padding: valid, all padding
        assert not own and not vision["window_lengths"][k].any() and not vision["pixels"][k].any()
        assert not model_in["lengths"][rows_k].any()
        padding_shards += 1
  assert padding_shards == shards - 1  # the last batch holds 1 pair


def forward_valid_rows(model, found: list[dict]) -> np.ndarray:
  forward = nnx.jit(lambda m, b: m(b["batch"], b["reward_index"], b["dimension"]))
  outs = [np.asarray(forward(model, b)) for b in found]
  assert all(np.isfinite(o).all() for o in outs)  # padding rows and all-padding shards too
  return np.concatenate([o[b["row_valid"]] for o, b in zip(outs, found)])


def test_sharded_batches_give_the_one_shard_outputs(rows, tokenizer):
  model = RewardModel(TINY, rngs=nnx.Rngs(0))
  want = forward_valid_rows(model, batches(rows, tokenizer, shards=1))
  for shards in (2, 4):
    np.testing.assert_allclose(forward_valid_rows(model, batches(rows, tokenizer, shards=shards)), want, atol=1e-6,
                               rtol=0, err_msg=f"shards={shards}")


def test_prefix_sharing_gives_the_same_outputs_on_every_shard_count(rows, tokenizer):
  """The pipeline's packed batches (a pair's common prefixes once) score every row as the standalone rows do."""
  model = RewardModel(TINY, rngs=nnx.Rngs(0))
  want = forward_valid_rows(model, batches(rows, tokenizer, shards=1))
  for shards in (1, 2):
    found = batches(rows, tokenizer, shards=shards, prefix_sharing=True)
    packed = found[0]["batch"]
    assert packed["input_ids"].shape[0] == CONFIG.batch_pairs and packed["row_tokens"].shape[0] == 4 * CONFIG.batch_pairs
    np.testing.assert_allclose(forward_valid_rows(model, found), want, atol=1e-5, rtol=0, err_msg=f"shards={shards}")
  fixed = batches(rows, tokenizer, shards=2, prefix_sharing=True, fixed_shapes=True, packed_buckets=(1200, 1400))
  assert {b["batch"]["input_ids"].shape for b in fixed} == {(CONFIG.batch_pairs, 1400)}
  with pytest.raises(ValueError, match="more than the largest packed bucket 20"):
    batches(rows, tokenizer, prefix_sharing=True, packed_buckets=(20,))


def shapes(batch: dict) -> dict:
  model_in = batch["batch"]
  return {**{k: model_in[k].shape for k in ("input_ids", "position_ids")},
          **{k: v.shape for k, v in model_in["vision"].items()}}


def test_fixed_shapes_do_not_depend_on_content(tokenizer):
  """Images of two sizes and a padded last batch: bucketed shapes vary, fixed ones do not (the largest buckets)."""
  mixed = (list(generate_rows("train", 3, seed=0, image_size=SIZE, edits_per_source=4))
           + list(generate_rows("train", 4, seed=1, image_size=2 * SIZE, edits_per_source=4)))
  settings = {"shards": 2, "batch_pairs": 2, "max_pixels": 4 * SIZE * SIZE}  # 16 or 64 patches per image
  assert len({repr(shapes(b)) for b in batches(mixed, tokenizer, **settings)}) > 1
  fixed = [shapes(b) for rows in (mixed, mixed[:2]) for b in batches(rows, tokenizer, fixed_shapes=True, **settings)]
  assert all(s == fixed[0] for s in fixed)
  assert fixed[0]["input_ids"] == (4 * 2, CONFIG.seq_buckets[-1])
  assert fixed[0]["pixels"][:2] == (2, CONFIG.patch_buckets[-1])
  assert fixed[0]["image_slots"] == (2, 3, 64)  # fixed_image_patches: the bucket of max_pixels / 14**2


def png(width: int, height: int) -> bytes:
  out = io.BytesIO()
  PIL.Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
  return out.getvalue()


def test_fixed_shapes_make_an_image_above_the_per_image_size_a_bad_row(rows, tokenizer):
  """smart_resize scales a 280x14 image up to min_pixels as 252x28: 36 patches, above the fixed 16 per image."""
  bad = [{**rows[0], "source_img": png(280, 14)}] + rows[1:]
  settings = {"shards": 2, "min_image_side": 1, "bad_rows": "skip"}
  assert sum(b["pair_valid"].sum() for b in batches(bad, tokenizer, **settings)) == 5  # bucketed: it fits
  it = iter(pipeline.pair_dataset(bad, tokenizer, prompts.load_prompts(), TINY,
                                  dataclasses.replace(CONFIG, fixed_shapes=True, **settings), shard=(0, 1)))
  assert sum(b["pair_valid"].sum() for b in it) == 5 - len(pairs.pairs_from_row(rows[0]))
  assert it.skipped["image_too_large"] == 1


def test_config_and_stacking_errors(rows, tokenizer):
  with pytest.raises(ValueError, match="multiple of shards 3"):
    batches(rows, tokenizer, shards=3)
  with pytest.raises(ValueError, match="fixed_shapes needs patch_buckets"):
    batches(rows, tokenizer, fixed_shapes=True, patch_buckets=())
  b = batches(rows, tokenizer, shards=1, batch_pairs=1)[0]
  shard = {"batch": {**b["batch"], "vision": {k: v[0] for k, v in b["batch"]["vision"].items()}},
           **{k: b[k] for k in ("reward_index", "dimension", "row_valid")}}
  longer = {**shard, "batch": {**shard["batch"], "input_ids": np.pad(shard["batch"]["input_ids"], ((0, 0), (0, 8)))}}
  with pytest.raises(ValueError, match="batch shard 1 has shapes"):
    batching.stack_shards([shard, longer])


def test_batch_shardings_split_every_array_on_its_batch_axis(rows, tokenizer):
  b = batches(rows, tokenizer, shards=2)[0]
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  specs = jax.tree.map(lambda s: tuple(s.spec), sharding.batch_shardings(b, mesh))
  assert "metrics" not in specs
  batch_axes = ("data", "fsdp")
  assert specs["batch"]["position_ids"] == (None, batch_axes, None)
  assert specs["batch"]["input_ids"] == specs["batch"]["image_slots"] == (batch_axes, None)
  assert specs["batch"]["vision"]["pixels"] == (batch_axes, None, None)
  assert specs["labels"] == (batch_axes, None) and specs["pair_valid"] == specs["reward_index"] == (batch_axes,)
  assert sharding.batch_shard_count(mesh) == 1


@pytest.mark.slow
def test_eight_devices_each_batch_group_encodes_only_its_own_images():
  report = run_report("multidevice_batch.py", devices=8)
  assert report["devices"] == 8
  assert report["max_abs_diff"] <= 1e-5 and report["scale"] > 0.1, report
  # 4 shards of `slots` patch slots over 4 (data x fsdp) groups: each device embeds one shard's pixel rows, and no
  # collective moves pixel rows between devices.
  assert report["patch_embed_rows"] == [report["slots"]], report
  assert report["pixel_collectives"] == [], report
  assert report["features_spec"][0] == str(("data", "fsdp"))
  assert report["features_shard_shapes"] == [[1] + report["features_shape"][1:]]
  # The old layout (one vision batch for all pairs, replicated) fails the same check: every device embeds them all.
  assert report["old"]["patch_embed_rows"] == [report["flat_slots"]]
  assert report["flat_slots"] > report["slots"] and report["old_max_abs_diff"] <= 1e-5
  assert "batch/vision/pixels" in report["indivisible_error"] and "data=2 x fsdp=2" in report["indivisible_error"]


def test_buckets_have_four_sizes_per_octave_and_sequences_eight():
  """At most 25% padding: the 96 windows of six 448x448 images stay 96 (not 128). Sequences, 12.5% beyond a multiple
  of 64: 695 tokens pad to 704 (not 1024 or 768), a packed pair of 1401 to 1408."""
  assert [batching.fine_bucket(n) for n in (1, 4, 5, 8, 9, 11, 17, 96, 97, 129)] == [1, 4, 5, 8, 10, 12, 20, 96, 112,
                                                                                    160]
  assert [batching.seq_bucket(n) for n in (1, 64, 65, 695, 1401, 1448, 2375)] == [64, 64, 128, 704, 1408, 1536, 2560]
  assert all(n <= batching.fine_bucket(n) <= 1.25 * n + 1 for n in range(1, 3000))
  assert all(n <= batching.fine_bucket(n, 8) <= 1.125 * n + 1 for n in range(1, 3000))
  vision = dataclasses.replace(TINY.vision, window_size=112)  # the released models' 8x8-patch windows
  assert batching.fine_bucket(vision_layout.num_windows(np.tile([1, 32, 32], (6, 1)), vision)) == 96
