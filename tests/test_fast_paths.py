"""The input pipeline's fast paths against the slow computations they replace: the cached chat frame against
rendering every prompt, a pair's shared prompt tokens against encoding each row, and the remembered row fan-out
against Grain's FlatMapMapDataset (same elements, fewer reads). The pixel lookup table is tested in test_pixels.py."""

from __future__ import annotations

import collections
import pathlib

import grain
import numpy as np
import pytest

from configs.presets import TINY
from data.editreward_demo import generate_rows
from editreward_jax import pairs, pipeline, processing, prompts, row_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 56
CONFIG = pipeline.PipelineConfig(batch_pairs=2, seq_buckets=(352, 384, 512), patch_buckets=(64, 96, 128),
                                 min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE, prefetch=0, num_epochs=1)


@pytest.fixture(scope="module")
def tokenizer():
  return processing.load_tokenizer(ROOT / "data" / "tiny_tokenizer")


INSTRUCTIONS = ["Make the sky purple.", "  spaced out \n", 'braces {x} {{y}} "quotes" & <b>', "Ünïcode 日本 édit",
                "<|im_end|> <|vision_start|> sneaky", ""]


def rendered_ids(processor: processing.Processor, dimension: str, instruction: str, num_images: int) -> list[int]:
  """Token ids with the chat rendered by the template for this very text (the path without a frame)."""
  chat = processor._render(processor.prompts.text(dimension, instruction), num_images)
  return processor.tokenizer.encode(chat, add_special_tokens=False)


@pytest.mark.parametrize("prompts_file", [None, ROOT / "data" / "demo_prompts.json"])
def test_chat_frame_gives_the_rendered_tokens(tokenizer, prompts_file):
  processor = processing.Processor(tokenizer, prompts.load_prompts(prompts_file))
  for num_images in (1, 2):
    for dimension in prompts.DIMENSIONS:
      for instruction in INSTRUCTIONS:
        got = processor.prompt_ids(dimension, instruction, num_images)
        assert got.dtype == np.int32 and got.tolist() == rendered_ids(processor, dimension, instruction, num_images)
  assert processor._frames.keys() == {1, 2} and None not in processor._frames.values()


@pytest.mark.parametrize("changed", ["{{ part.text | trim }}", "{{ part.text | e }}", "{{ part.text | upper }}",
                                     "{{ part.text }}{{ part.text }}"])
def test_a_template_that_changes_its_text_is_rendered_per_prompt(tokenizer, changed):
  """A template that strips, escapes, rewrites or repeats its text must not be framed: head + text + tail would not
  be its chat (for the last three, not even a valid prompt: <|Reward|> escaped, renamed or doubled)."""
  tok = processing.load_tokenizer(ROOT / "data" / "tiny_tokenizer")
  tok.chat_template = tokenizer.chat_template.replace("{{ part.text }}", changed)
  processor = processing.Processor(tok, prompts.load_prompts())
  reward_id = tok.convert_tokens_to_ids(prompts.REWARD_TOKEN)
  for instruction in INSTRUCTIONS:
    want = rendered_ids(processor, "visual_quality", instruction, 2)
    if want.count(reward_id) == 1:
      assert processor.prompt_ids("visual_quality", instruction, 2).tolist() == want
    else:
      with pytest.raises(prompts.PromptError, match="<\\|Reward\\|> tokens"):
        processor.prompt_ids("visual_quality", instruction, 2)
  assert processor._frames == {2: None}
  plain = processing.Processor(tokenizer, prompts.load_prompts())
  assert processor._render(" <b> ", 2) != plain._render(" <b> ", 2)


def test_pair_rows_share_prompt_tokens_but_equal_encoding_each(tokenizer):
  rows = list(generate_rows("train", 6, seed=1, image_size=SIZE, edits_per_source=4))
  processor = pipeline.make_processor(tokenizer, prompts.load_prompts(), TINY, CONFIG)
  process = pipeline._ProcessPair(processor, row_checks.RowPolicy("rows", "raise"), CONFIG)
  for index, row in enumerate(rows):
    for k, pair in enumerate(pairs.pairs_from_row(row)):
      done = process(pipeline._PairTask(index, row, pair, k == 0))
      for c, candidate in enumerate(done.images[1:]):
        for d, dimension in enumerate(prompts.DIMENSIONS):
          ids, reward = processor.encode(dimension, row["instruction"], [done.images[0].grid_thw, candidate.grid_thw])
          np.testing.assert_array_equal(done.tokens[2 * c + d], ids)
          assert done.reward_index[2 * c + d] == reward


class _CountingRows:
  def __init__(self, rows):
    self.rows, self.reads = rows, collections.Counter()

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, index):
    self.reads[index] += 1
    return self.rows[index]


class _GrainFlatMap(grain.experimental.FlatMapTransform):
  """What the pipeline used before `_RowPairs`: Grain's flat map over the same per-row function."""
  max_fan_out = pipeline._RowPairs.fan_out

  def __init__(self, row_pairs):
    self.row_pairs = row_pairs

  def flat_map(self, index):
    return self.row_pairs._flat_map(int(index))


def elements(ds, order):
  return [None if e is None else (e.index, e.pair) if isinstance(e, pipeline._PairTask) else (e.reason, e.message)
          for e in (ds[i] for i in order)]


@pytest.mark.parametrize("policy", pairs.TIE_POLICIES)
def test_row_pairs_are_grains_flat_map_with_fewer_reads(policy):
  rows = list(generate_rows("train", 30, seed=2, image_size=SIZE, edits_per_source=4))
  rows[3] = {**rows[3], "vote_type": "maybe"}  # a bad row: one skip in its first slot
  source = _CountingRows(rows)
  rows_policy = row_checks.RowPolicy("rows", "skip")
  fast = pipeline._RowPairs(grain.MapDataset.range(len(rows))[1::2], source, rows_policy, policy)
  slow = grain.experimental.FlatMapMapDataset(grain.MapDataset.range(len(rows))[1::2], _GrainFlatMap(fast))
  order = np.random.default_rng(0).permutation(3 * len(slow))  # three epochs' indices, in a random order
  want = elements(slow, order)
  slow_reads = sum(source.reads.values())
  source.reads.clear()
  assert len(fast) == len(slow) and elements(fast, order) == want
  assert any(w and w[0] == "vote_type" for w in want)  # the bad row's skip
  if policy == "duplicate":
    assert any(w and isinstance(w[1], pairs.Pair) and w[1].tie for w in want)  # rows with two pairs
  nonempty = sum(w is not None for w in want)
  assert sum(source.reads.values()) <= nonempty + len(fast) // 2 < slow_reads
  assert max(source.reads[i] for i in source.reads) <= 1 + 3 * 2  # per epoch: at most one read per slot

