"""Checks that decide whether a training row is usable, before and while it is processed.

A check raises `BadRow(reason, field, problem)`; `RowPolicy` turns it into a `DataError` naming the source, row and
field (policy "raise") or a `Skip` to be counted under its reason (policy "skip"). Images are judged from their
header (size, aspect) before any pixel is decoded, so an image too large to decode cannot exhaust memory.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import PIL.Image

from editreward_jax import pairs
from editreward_jax.processing import MAX_ASPECT_RATIO
from editreward_jax.schema import IMAGE_COLUMNS, SCORE_COLUMNS, row_error

BAD_ROW_POLICIES = ("raise", "skip")
MAX_IMAGE_PIXELS = 1 << 25  # larger images (33.5 MP, 100 MB as RGB) are refused from their header, before decoding
MIN_IMAGE_SIDE = 28         # a shorter side cannot make one 2x2 block of 14-pixel patches
SKIP_REASONS = (
    "unreadable",         # the source could not read the row
    "missing_field",      # a field is absent, empty or of the wrong type
    "vote_type",          # vote_type is not leftvote | rightvote | tie
    "score",              # a score is not a finite number
    "image_undecodable",  # undecodable or truncated image bytes
    "image_too_small",    # a side below min_image_side
    "image_too_large",    # more than max_image_pixels (checked before decoding)
    "image_aspect",       # aspect ratio above processing.MAX_ASPECT_RATIO
    "special_token",      # the instruction holds <|image_pad|> or <|Reward|>
    "too_long",           # a prompt longer than the largest sequence bucket
)


class BadRow(Exception):
  """A row problem found by a check; the policy turns it into a DataError or a skip."""

  def __init__(self, reason: str, field: str, problem: str):
    super().__init__(problem)
    self.reason, self.field, self.problem = reason, field, problem


@dataclasses.dataclass(frozen=True)
class Skip:
  """A skipped row travelling down the pipeline to be counted (and logged) by the batcher."""
  reason: str
  message: str


@dataclasses.dataclass(frozen=True)
class RowPolicy:
  """What error messages and the bad-row policy need to know about the source."""
  name: str
  policy: str

  def reject(self, index: int, row: object, bad: BadRow) -> Skip:
    """The skip to count, or (policy "raise") the DataError raised."""
    key = (row.get("unique_key") or row.get("key")) if isinstance(row, Mapping) else None
    where = f"row {index}" + (f" (key {key!r})" if key else "")
    error = row_error(self.name, where, bad.field, bad.problem)
    if self.policy == "raise":
      raise error from bad.__cause__
    return Skip(bad.reason, str(error))


def source_name(source: Sequence[Any]) -> str:
  """How errors name a source: its file, else its repr (in-memory lists are not spelled out)."""
  if isinstance(source, (list, tuple)):
    return f"<{len(source)} in-memory rows>"
  path = getattr(source, "path", None)
  return os.fspath(path) if path is not None else repr(source)


def _is_image_value(value: object) -> bool:
  if isinstance(value, Mapping):
    value = value.get("bytes") or value.get("path")
  return isinstance(value, (PIL.Image.Image, str, os.PathLike)) or (
      isinstance(value, (bytes, bytearray, memoryview)) and len(value) > 0)


def check_row(row: object) -> None:
  """Raises BadRow for a row that cannot give pairs: missing fields, unknown vote, non-finite scores."""
  if not isinstance(row, Mapping):
    raise BadRow("missing_field", "row", f"expected a mapping of fields, got {type(row).__name__}")
  instruction = row.get("instruction")
  if not isinstance(instruction, str) or not instruction.strip():
    raise BadRow("missing_field", "instruction", f"expected a non-empty string, got {instruction!r}")
  for column in IMAGE_COLUMNS:
    if not _is_image_value(row.get(column)):
      raise BadRow("missing_field", column, f"expected encoded image bytes, got {type(row.get(column)).__name__}")
  vote = row.get("vote_type")
  if isinstance(vote, bytes):
    vote = vote.decode("utf-8", errors="replace")
  if not isinstance(vote, str):
    raise BadRow("missing_field", "vote_type", f"expected a string, got {vote!r}")
  if vote not in pairs.VOTE_TYPES:
    raise BadRow("vote_type", "vote_type", f"{vote!r} is not one of {list(pairs.VOTE_TYPES)}")
  for column in SCORE_COLUMNS:
    score = row.get(column)
    if score is None:
      raise BadRow("missing_field", column, "missing")
    if isinstance(score, bool) or not isinstance(score, (int, float, np.number)) or not math.isfinite(score):
      raise BadRow("score", column, f"expected a finite number, got {score!r}")


def image_header_size(value: object) -> tuple[int, int]:
  """(width, height) from the image header, without decoding pixels: the guard against decompression bombs."""
  if isinstance(value, PIL.Image.Image):
    return value.size
  if isinstance(value, Mapping):
    value = value.get("bytes") or value.get("path")
  src = io.BytesIO(value) if isinstance(value, (bytes, bytearray, memoryview)) else value
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # the caller compares the size itself
    with PIL.Image.open(src) as image:
      return image.size


def check_image_header(row: Mapping[str, Any], column: str, max_image_pixels: int, min_image_side: int) -> None:
  """Size and aspect of an image from its header alone (a decompression-bomb guard): raises BadRow."""
  try:
    width, height = image_header_size(row[column])
  except PIL.Image.DecompressionBombError as e:
    raise BadRow("image_too_large", column, f"{image_label(row, column)}: {e}") from e
  except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, ValueError, ...)
    raise BadRow("image_undecodable", column, f"{image_label(row, column)}: cannot read the image header: {e}"
                 ) from e
  label = f"{image_label(row, column)} is {width}x{height} pixels"
  if width * height > max_image_pixels:
    raise BadRow("image_too_large", column, f"{label}, more than max_image_pixels={max_image_pixels}")
  if min(width, height) < min_image_side:
    raise BadRow("image_too_small", column, f"{label}, a side below min_image_side={min_image_side}")
  if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
    raise BadRow("image_aspect", column, f"{label}, aspect ratio above {MAX_ASPECT_RATIO}")


def image_label(row: Mapping[str, Any], column: str) -> str:
  """The image's own path when the row records one (e.g. left/edit3.png), else 'image'."""
  return row.get(f"{column}_path") or "image"
