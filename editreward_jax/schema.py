"""The pair-row schema shared by every pairwise data set of the project, and the error a bad row raises.

EditReward-Data, the synthetic demo set and the reference trainer's JSON all become rows with the EditReward-Data
columns, so the pipeline reads one schema. Types once read back: text columns are `str`, `pair_index` and
`metadata_index` are `int`, scores are `float` (float32 values), image columns hold the encoded image bytes (PNG or
JPEG, any mode) and `<image column>_path` keeps the `path` member of the parquet image struct ('' when null).

Plain Python on purpose: the library (row checks, pipeline) reads it without TensorFlow Datasets; the TFDS feature
specs built from these names live in data/schema.py, which re-exports everything here.
"""

from __future__ import annotations


class DataError(ValueError):
  """A bad input file or row; the message names the file, the row and the field."""


def row_error(path: object, row: str, field: str, problem: str) -> DataError:
  """`row` reads like 'row 12' (parquet, 0-based) or 'line 3' (JSON, 1-based)."""
  return DataError(f"{path}: {row}: field {field!r}: {problem}")


SIDES = ("left", "right")
DIMENSIONS = ("overall", "instruction_following", "quality_aesthetic")
VOTE_TYPES = ("leftvote", "rightvote", "tie")

IMAGE_COLUMNS = ("source_img", "left_output_image", "right_output_image")
TEXT_COLUMNS = ("key", "unique_key", "instruction", "left_model", "right_model", "vote_type", "left_img_rel",
                "right_img_rel")
INT_COLUMNS = ("pair_index", "metadata_index")
SCORE_COLUMNS = tuple(f"{side}_{dim}_score" for side in SIDES for dim in DIMENSIONS)
# Columns of EditReward-Data, in its order.
COLUMNS = ("key", "unique_key", "pair_index", "instruction", *IMAGE_COLUMNS, "left_model", "right_model",
           *SCORE_COLUMNS, "vote_type", "metadata_index", "left_img_rel", "right_img_rel")


def image_path_field(column: str) -> str:
  return f"{column}_path"


def vote_from_scores(left_overall: float, right_overall: float) -> str:
  if left_overall > right_overall:
    return "leftvote"
  if right_overall > left_overall:
    return "rightvote"
  return "tie"
