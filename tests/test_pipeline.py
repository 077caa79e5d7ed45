"""The Grain training pipeline on the synthetic demo set: sharding, epochs, ties, batch layout, checkpoints."""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest
from etils import epath

import data
from configs.presets import TINY
from data.editreward_demo import generate_rows
from editreward_jax import pairs, pipeline, processing, prompts
from editreward_jax.models import vision_layout

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 56
# Tiny model: one 56x56 image is 16 patches = one 16-patch attention window, so a 2-pair batch needs 96 slots.
SMALL = pipeline.PipelineConfig(batch_pairs=2, seq_buckets=(352, 384, 512), patch_buckets=(64, 96, 128),
                                min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE, prefetch=0, num_epochs=1)


@pytest.fixture(scope="module")
def tokenizer():
  return processing.load_tokenizer(ROOT / "data" / "tiny_tokenizer")


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory):
  """24 demo rows as the TFDS builder writes them (ArrayRecord), opened like training does."""
  config = data.demo_config(num_train_pairs=24, num_test_pairs=4, image_size=SIZE)
  data_dir = tmp_path_factory.mktemp("demo")
  data.build("editreward_demo", data_dir, config=config)
  return data.open_source("editreward_demo", "train", data_dir, config=config)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
  return list(generate_rows("train", 12, seed=0, image_size=SIZE, edits_per_source=4))


def dataset(source, tokenizer, shard=(0, 1), **overrides):
  return pipeline.pair_dataset(source, tokenizer, prompts.load_prompts(), TINY,
                               dataclasses.replace(SMALL, **overrides), shard=shard)


def valid_pairs(batches) -> list[int]:
  """Source rows of the valid pairs, in stream order."""
  return [int(r) for b in batches for r in b["source_row"][b["pair_valid"]]]


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    flat_g, flat_w = flatten(g), flatten(w)
    assert flat_g.keys() == flat_w.keys()
    for key in flat_w:
      np.testing.assert_array_equal(flat_g[key], flat_w[key], err_msg=key)


def flatten(tree, prefix="") -> dict:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}/").items()}
  return {prefix: tree}


def test_process_shards_are_disjoint_and_cover_the_data(demo_source, tokenizer):
  seen = [valid_pairs(dataset(demo_source, tokenizer, shard=(i, 2))) for i in range(2)]
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(len(demo_source)))
  want = collections.Counter({i: len(pairs.pairs_from_row(demo_source[i])) for i in range(len(demo_source))})
  assert collections.Counter(seen[0] + seen[1]) == want


def test_shuffle_differs_by_epoch_and_repeats_by_seed(rows, tokenizer):
  per_epoch = sum(len(pairs.pairs_from_row(r)) for r in rows)
  stream = valid_pairs(dataset(rows, tokenizer, num_epochs=2, seed=3))
  first, second = stream[:per_epoch], stream[per_epoch:]
  assert sorted(first) == sorted(second) and first != second
  assert valid_pairs(dataset(rows, tokenizer, num_epochs=2, seed=3)) == stream
  assert valid_pairs(dataset(rows, tokenizer, num_epochs=1, seed=4)) != first
  assert valid_pairs(dataset(rows, tokenizer, shuffle=False)) == sorted(first)


def test_restored_iterator_continues_exactly(rows, tokenizer, tmp_path):
  """State after k batches, saved by Grain's Orbax handler (JSON), restored into a freshly built pipeline; with
  read threads, a thread prefetch and a skipped bad row."""
  rows = list(rows)
  rows[4] = {**rows[4], "vote_type": "maybe"}
  settings = dict(num_epochs=None, prefetch=2, bad_rows="skip")
  uninterrupted = iter(dataset(rows, tokenizer, **settings))
  want = [next(uninterrupted) for _ in range(9)]
  it = iter(dataset(rows, tokenizer, **settings))
  for _ in range(3):
    next(it)
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)
  restored = iter(dataset(rows, tokenizer, **settings))
  grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=restored)
  assert restored.skipped == it.skipped
  assert_same_batches([next(restored) for _ in range(6)], want[3:])
  assert restored.skipped == uninterrupted.skipped and restored.skipped["vote_type"] >= 1


def test_batch_shapes_come_from_the_buckets(demo_source, tokenizer):
  config = dataclasses.replace(SMALL, batch_pairs=4, patch_buckets=(64, 96, 128, 192))
  p = config.batch_pairs
  batches = list(dataset(demo_source, tokenizer, batch_pairs=p, patch_buckets=config.patch_buckets))
  total = sum(len(pairs.pairs_from_row(demo_source[i])) for i in range(len(demo_source)))
  assert total % p and batches[-1]["pair_valid"].sum() == total % p  # the last batch is padded
  assert {b["batch"]["vision"]["pixels"].shape[:2] for b in batches} == {(1, 96), (1, 192)}  # one batch shard
  for b in batches:
    ids, lengths = b["batch"]["input_ids"], b["batch"]["lengths"]
    vision = shard_vision(b)
    assert ids.shape[0] == 4 * p and vision["image_lengths"].shape == (3 * p,)
    assert ids.shape[1] == vision_layout.pad_to(lengths.max(), config.seq_buckets)  # the smallest that fits
    slots = vision["pixels"].shape[0]
    real = int(vision["image_lengths"].sum())
    assert slots == vision_layout.pad_to(-(-real // 16) * 16, config.patch_buckets)
    assert vision["unit_slots"].shape == (slots // 4,)
    assert b["metrics"]["token_padding"] == pytest.approx(1 - lengths.sum() / ids.size)
    assert b["metrics"]["patch_padding"] == pytest.approx(1 - real / slots)
    np.testing.assert_array_equal(b["row_valid"], np.repeat(b["pair_valid"], 4))
    np.testing.assert_array_equal(b["dimension"], np.tile([0, 1], 2 * p))


@pytest.mark.parametrize("policy", pairs.TIE_POLICIES)
def test_tie_policies_expand_rows(rows, tokenizer, policy):
  want = collections.Counter((i, p.labels, p.tie) for i, r in enumerate(rows)
                             for p in pairs.pairs_from_row(r, policy))
  batches = list(dataset(rows, tokenizer, tie_policy=policy, tie_weight=0.5))
  got = collections.Counter((int(b["source_row"][k]), tuple(b["labels"][k].tolist()), bool(b["tie"][k]))
                            for b in batches for k in np.flatnonzero(b["pair_valid"]))
  assert got == want and any(tie for _, _, tie in want) == (policy != "drop")
  for b in batches:
    np.testing.assert_array_equal(b["pair_weight"], np.where(b["tie"], 0.5, 1.0) * b["pair_valid"])


def shard_vision(batch: dict, shard: int = 0) -> dict:
  return {k: v[shard] for k, v in batch["batch"]["vision"].items()}


def shown_images(batch: dict, row: int, shard: int = 0) -> list[int]:
  """The images of `shard` whose merged-unit slots the image-token runs of `row` point at."""
  vision = shard_vision(batch, shard)
  units = vision["image_lengths"] // 4
  offsets = np.concatenate([[0], np.cumsum(units)])
  slots = batch["batch"]["image_slots"][row]
  shown = []
  for start, end in vision_layout.image_runs(slots >= 0, True):
    run = slots[start:end]
    shown.append(next(i for i in range(len(units)) if units[i] and np.array_equal(
        vision["unit_slots"][offsets[i]:offsets[i + 1]], run)))
  return shown


def image_pixels(batch: dict, image: int, shard: int = 0) -> np.ndarray:
  vision = shard_vision(batch, shard)
  return vision["pixels"][vision["image_slots"][image, :vision["image_lengths"][image]]]


@pytest.mark.parametrize("shards", [1, 2])
def test_rows_show_the_pair_images_in_the_documented_layout(rows, tokenizer, shards):
  """Pair p is local pair q of shard k; its rows point at its own shard's images 3q.. (shard-local slots)."""
  processor = pipeline.make_processor(tokenizer, prompts.load_prompts(), TINY, SMALL)
  reward_id = tokenizer.convert_tokens_to_ids(prompts.REWARD_TOKEN)
  per_shard = SMALL.batch_pairs // shards
  for b in dataset(rows, tokenizer, shuffle=False, tie_policy="drop", shards=shards):
    for p in np.flatnonzero(b["pair_valid"]):
      k, q = divmod(p, per_shard)
      row = rows[b["source_row"][p]]
      (pair,) = pairs.pairs_from_row(row, "drop")
      for r, images in zip(range(4 * p, 4 * p + 4), ([0, 1], [0, 1], [0, 2], [0, 2])):
        assert shown_images(b, r, k) == [3 * q + i for i in images]
        assert b["batch"]["input_ids"][r, b["reward_index"][r]] == reward_id
      for i, column in enumerate(("source_img", f"{pair.preferred}_output_image", f"{pair.other}_output_image")):
        alone = processor.image(row[column])
        layout = vision_layout.build_vision_batch(alone.pixel_values, alone.grid_thw[None], TINY.vision,
                                                  pixel_table=processing.PIXEL_TABLE)
        np.testing.assert_array_equal(image_pixels(b, 3 * q + i, k), layout.pixels[layout.image_slots[0]])
      assert tuple(b["labels"][p]) == pair.labels


def test_config_errors(rows, tokenizer):
  with pytest.raises(ValueError, match="multiples of 16"):
    dataset(rows, tokenizer, patch_buckets=(40,))
  with pytest.raises(ValueError, match="strictly increasing"):
    dataset(rows, tokenizer, seq_buckets=(512, 384))
  with pytest.raises(ValueError, match="tie policy"):
    dataset(rows, tokenizer, tie_policy="sometimes")
  with pytest.raises(ValueError, match="shard index"):
    dataset(rows, tokenizer, shard=(2, 2))


@pytest.mark.slow
def test_one_worker_process_gives_the_in_process_batches_and_restores(demo_source, tokenizer):
  want = list(dataset(demo_source, tokenizer, num_epochs=2))
  it = iter(dataset(demo_source, tokenizer, num_epochs=2, workers=1))
  try:
    got = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(it.get_state()))
  finally:
    it.close()
  restored = iter(dataset(demo_source, tokenizer, num_epochs=2, workers=1))
  try:
    restored.set_state(state)
    got += list(restored)
  finally:
    restored.close()
  assert_same_batches(got, want)


def test_a_closed_iterator_leaves_nothing_at_interpreter_exit(tmp_path):
  script = (
      "import sys, data\n"
      "from configs.presets import TINY\n"
      "from editreward_jax import pipeline, processing, prompts\n"
      "data.build('editreward_demo', sys.argv[1], config=data.demo_config(num_train_pairs=8, num_test_pairs=2))\n"
      "source = data.open_source('editreward_demo', 'train', sys.argv[1])\n"
      "config = pipeline.PipelineConfig(batch_pairs=2, seq_buckets=(512,), min_pixels=112 * 112, max_pixels=112 * 112)\n"
      "it = iter(pipeline.pair_dataset(source, processing.load_tokenizer(data.TINY_TOKENIZER), prompts.load_prompts(),"
      " TINY, config))\n"
      "next(it)\n"
      "it.close()\n")
  run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "tfds")], capture_output=True, text=True,
                       cwd=ROOT)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
