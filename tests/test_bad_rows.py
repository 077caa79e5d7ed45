"""Bad rows in the training pipeline: every class raises naming file, row and field, or is skipped and counted."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pathlib
import struct
import zlib

import numpy as np
import PIL.Image
import pytest

import data
from configs.presets import TINY
from data.editreward_demo import generate_rows
from data.schema import DataError, row_error
from editreward_jax import pairs, pipeline, processing, prompts, row_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 56
CONFIG = pipeline.PipelineConfig(batch_pairs=2, seq_buckets=(384, 512), min_pixels=SIZE * SIZE,
                                 max_pixels=SIZE * SIZE, prefetch=0, num_epochs=2)
NAME = "fixture.parquet"
BAD = 2  # index of the corrupted row: a tie, so its two pairs must still count it once


@pytest.fixture(scope="module")
def tokenizer():
  return processing.load_tokenizer(ROOT / "data" / "tiny_tokenizer")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
  rows = list(generate_rows("train", 4, seed=0, image_size=SIZE, edits_per_source=4))
  assert rows[BAD]["vote_type"] == "tie"
  return rows


def png(width: int, height: int) -> bytes:
  out = io.BytesIO()
  PIL.Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
  return out.getvalue()


def png_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height but holds no pixel data: decoding it would fail (or exhaust memory)."""
  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def without(field: str):
  return lambda row: {k: v for k, v in row.items() if k != field}


def with_field(field: str, value):
  return lambda row: {**row, field: value}


# name: (corruption, skip reason, field named in the error)
CASES = {
    "undecodable": (with_field("source_img", b"not an image"), "image_undecodable", "source_img"),
    "truncated": (lambda row: {**row, "left_output_image": row["left_output_image"][:200]}, "image_undecodable",
                  "left_output_image"),
    "missing_field": (without("instruction"), "missing_field", "instruction"),
    "missing_score": (without("right_overall_score"), "missing_field", "right_overall_score"),
    "vote_type": (with_field("vote_type", "bothvote"), "vote_type", "vote_type"),
    "non_finite_score": (with_field("left_quality_aesthetic_score", math.nan), "score",
                         "left_quality_aesthetic_score"),
    "too_small": (with_field("right_output_image", png(20, SIZE)), "image_too_small", "right_output_image"),
    "too_large": (with_field("source_img", png_header(10_000, 8_000)), "image_too_large", "source_img"),
    "decompression_bomb": (with_field("source_img", png_header(30_000, 30_000)), "image_too_large", "source_img"),
    "aspect": (with_field("left_output_image", png(6000, 28)), "image_aspect", "left_output_image"),
    "too_long": (with_field("instruction", "make the circle " + "very " * 200 + "red"), "too_long", "instruction"),
    "special_token": (with_field("instruction", "make it <|Reward|> red"), "special_token", "instruction"),
}


def corrupted(rows: list[dict], corrupt) -> list[dict]:
  return [corrupt(row) if i == BAD else row for i, row in enumerate(rows)]


def dataset(source, tokenizer, **overrides):
  return pipeline.pair_dataset(source, tokenizer, prompts.load_prompts(), TINY,
                               dataclasses.replace(CONFIG, **overrides), shard=(0, 1), name=NAME)


def good_pairs(rows: list[dict]) -> int:
  return sum(len(pairs.pairs_from_row(row)) for i, row in enumerate(rows) if i != BAD)


@pytest.mark.parametrize("case", CASES)
def test_raise_names_file_row_and_field(rows, tokenizer, case):
  corrupt, _, field = CASES[case]
  with pytest.raises(DataError) as error:
    list(dataset(corrupted(rows, corrupt), tokenizer, bad_rows="raise"))
  assert str(error.value).startswith(f"{NAME}: row {BAD} (key '{rows[BAD]['unique_key']}'): field '{field}': ")


@pytest.mark.parametrize("case", CASES)
def test_skip_counts_each_bad_row_once_per_epoch(rows, tokenizer, case):
  corrupt, reason, _ = CASES[case]
  it = iter(dataset(corrupted(rows, corrupt), tokenizer, bad_rows="skip"))
  batches = list(it)
  assert sum(int(b["pair_valid"].sum()) for b in batches) == CONFIG.num_epochs * good_pairs(rows)
  assert it.skipped == {r: CONFIG.num_epochs if r == reason else 0 for r in row_checks.SKIP_REASONS}
  assert BAD not in {int(r) for b in batches for r in b["source_row"]}


class FailingSource:
  """A source whose row BAD cannot be read, like a JSON row whose image file vanished."""

  def __init__(self, rows: list[dict]):
    self.rows = rows

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    if index == BAD:
      raise row_error("pairs.json", "line 7", "path1", "cannot read a.png: No such file or directory")
    return self.rows[index]


def test_unreadable_rows_raise_the_source_error_or_are_counted(rows, tokenizer):
  with pytest.raises(DataError, match=r"^pairs.json: line 7: field 'path1': cannot read"):
    list(dataset(FailingSource(rows), tokenizer, bad_rows="raise"))
  it = iter(dataset(FailingSource(rows), tokenizer, bad_rows="skip"))
  assert sum(int(b["pair_valid"].sum()) for b in it) == CONFIG.num_epochs * good_pairs(rows)
  assert it.skipped["unreadable"] == CONFIG.num_epochs


def test_skips_after_the_last_pair_are_still_counted(rows, tokenizer):
  """The worker-side batcher hands trailing skips over in a metrics-only record that the iterator absorbs."""
  source = [row for row in rows if row["vote_type"] != "tie"][:2] + [with_field("vote_type", "?")(rows[0])]
  it = iter(dataset(source, tokenizer, bad_rows="skip", shuffle=False, num_epochs=1))
  batches = list(it)
  assert len(batches) == 1 and batches[0]["pair_valid"].all()
  assert not batches[0]["metrics"]["skipped"].any() and it.skipped["vote_type"] == 1


def test_batch_metrics_carry_the_counts(rows, tokenizer):
  corrupt, reason, _ = CASES["undecodable"]
  it = iter(dataset(corrupted(rows, corrupt), tokenizer, bad_rows="skip", num_epochs=3, shuffle=False))
  counts = sum(b["metrics"]["skipped"] for b in it)
  assert counts[row_checks.SKIP_REASONS.index(reason)] == 3 == it.skipped[reason]


def test_json_source_errors_name_the_file_and_the_image(rows, tokenizer, tmp_path):
  for name, content in (("src.png", rows[0]["source_img"]), ("a.png", rows[0]["left_output_image"][:300]),
                        ("b.png", rows[0]["right_output_image"])):
    (tmp_path / name).write_bytes(content)
  record = {"prompt": "make it red", "path_src": "src.png", "path1": "a.png", "path2": "b.png", "model1": "m1",
            "model2": "m2", "model1_dim1_score": 4, "model1_dim2_score": 3, "model1_overall_score": 7,
            "model2_dim1_score": 2, "model2_dim2_score": 2, "model2_overall_score": 4, "tie_case": False}
  (tmp_path / "pairs.json").write_text(json.dumps([record]))
  source = data.PairJsonSource(tmp_path / "pairs.json")
  with pytest.raises(DataError) as error:
    list(pipeline.pair_dataset(source, tokenizer, prompts.load_prompts(), TINY, CONFIG, shard=(0, 1)))
  message = str(error.value)
  assert message.startswith(f"{tmp_path / 'pairs.json'}: row 0 (key 'pairs:1'): field 'left_output_image': ")
  assert str(tmp_path / "a.png") in message


def test_the_size_guard_reads_only_the_header():
  assert row_checks.image_header_size(png_header(10_000, 8_000)) == (10_000, 8_000)
  with pytest.raises(OSError):  # the pixels were never there: decoding is what would fail
    PIL.Image.open(io.BytesIO(png_header(10_000, 8_000))).load()
  np.testing.assert_array_equal(row_checks.image_header_size(png(30, 40)), (30, 40))
