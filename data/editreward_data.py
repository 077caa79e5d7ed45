"""TFDS builder for EditReward-Data from its local parquet shards (nothing is downloaded).

Every column is kept; images stay as the encoded bytes of the parquet image structs (see data/schema.py).
"""

from __future__ import annotations

import math
import pathlib
from typing import Iterator

import tensorflow_datasets as tfds
from absl import logging

from data import parquet
from data.local_builder import LocalBuilder
from data.schema import (
  COLUMNS,
  IMAGE_COLUMNS,
  INT_COLUMNS,
  SCORE_COLUMNS,
  TEXT_COLUMNS,
  VOTE_TYPES,
  image_path_field,
  pair_features,
  row_error,
)

_SHARD_PATTERN = "train-*.parquet"
# Columns whose nulls would make a row meaningless; other text columns read null as '' and int columns as -1.
_REQUIRED_TEXT = ("instruction", "vote_type")
_LOG_EVERY = 10_000


def convert_row(row: dict, path: pathlib.Path, index: int) -> dict:
  """A parquet row -> the project's pair row, checked; errors name the file, row and column."""
  where = f"row {index}"
  out: dict = {}
  for column in TEXT_COLUMNS:
    value = row[column]
    if value is None and column not in _REQUIRED_TEXT:
      value = ""
    if not isinstance(value, str) or (column in _REQUIRED_TEXT and not value):
      raise row_error(path, where, column, f"expected a non-empty string, got {value!r}")
    out[column] = value
  if out["vote_type"] not in VOTE_TYPES:
    raise row_error(path, where, "vote_type", f"{out['vote_type']!r} is not one of {VOTE_TYPES}")
  for column in INT_COLUMNS:
    value = -1 if row[column] is None else row[column]
    if not isinstance(value, int) or isinstance(value, bool):
      raise row_error(path, where, column, f"expected an integer, got {value!r}")
    out[column] = value
  for column in SCORE_COLUMNS:
    value = row[column]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
      raise row_error(path, where, column, f"expected a finite number, got {value!r}")
    out[column] = float(value)
  for column in IMAGE_COLUMNS:
    out[column], out[image_path_field(column)] = parquet.image_bytes(row[column], path, index, column)
  return out


class EditrewardData(LocalBuilder):
  """EditReward-Data: human-rated pairs of edits of one source image under one instruction."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "All columns of the parquet release; images as encoded bytes."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the EditReward-Data parquet shards (data/train-XXXXX-of-NNNNN.parquet, as in the Hugging Face "
      "repository) under the manual directory; sub-folders are searched.")

  def _info(self) -> tfds.core.DatasetInfo:
    # Parquet order is kept (examples are keyed by their position): the pipeline shuffles with its own seed.
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=pair_features(),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = parquet.find_files(pathlib.Path(dl_manager.manual_dir), _SHARD_PATTERN)
    return {"train": self._generate_examples(files)}

  def _generate_examples(self, files: list[pathlib.Path]) -> Iterator[tuple[int, dict]]:
    total = 0
    for path in files:
      logging.info("editreward_data: reading %s", path)
      for index, row in parquet.iter_rows(path, COLUMNS):
        yield total, convert_row(row, path, index)  # with shuffling off, TFDS writes in the order of these keys
        total += 1
        if total % _LOG_EVERY == 0:
          logging.info("editreward_data: %d rows", total)
    logging.info("editreward_data: %d rows from %d files", total, len(files))
