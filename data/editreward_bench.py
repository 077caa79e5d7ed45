"""TFDS builder for EditReward-Bench: its pair rows regrouped into K-way groups (K = 2, 3, 4).

A group is keyed by (dataset, full id): ids minted in the same second share long prefixes, so nothing shorter is safe.
How candidates are identified: a row compares `candidate_1` with `candidate_2`, and its `comparison_type` "XvsY"
names their letters in the group (X for candidate_1, Y for candidate_2; a one-row group without such a type is read
as "AvsB"). A candidate is the pair (model name, image bytes): every row naming a letter must show the same model and
the same bytes for it, else the group is rejected, so deduplication never merges two different candidates. Candidates
are listed by letter (A, B, C, D) and pairs by their letters, so a group reads the same whatever order its rows come in.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import string
from typing import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data import parquet
from data.local_builder import LocalBuilder
from data.schema import DataError, encoded_image_feature, row_error
from editreward_jax.evaluation.metrics import parse_ranking

FOLDERS = ("2pair", "3pair", "4pair")
COLUMNS = ("id", "instruction", "dataset", "source_image", "candidate_1", "candidate_2", "ranking", "comparison_type",
           "model_1", "model_2")
# Human scores of each side; kept when present, NaN when a file lacks the column or the value is null.
SCORE_COLUMNS = tuple(f"{name}_{side}" for name in ("score", "overall_score", "instruction_following",
                                                     "visual_quality") for side in (1, 2))
_TEXT_COLUMNS = ("id", "instruction", "dataset", "ranking", "model_1", "model_2")
_COMPARISON = re.compile(r"^\s*([A-Z])\s*vs\s*([A-Z])\s*$")


@dataclasses.dataclass(frozen=True)
class BenchRow:
  """One pair row, checked for types; group-level consistency is checked by `group_rows`."""
  path: pathlib.Path
  index: int
  id: str
  dataset: str
  instruction: str
  source_image: bytes
  images: tuple[bytes, bytes]
  models: tuple[str, str]
  ranking: str
  comparison_type: str
  scores: dict[str, float]

  def error(self, field: str, problem: str) -> DataError:
    return row_error(self.path, f"row {self.index}", field, problem)


def read_rows(path: pathlib.Path) -> Iterator[BenchRow]:
  for index, row in parquet.iter_rows(path, COLUMNS, optional=SCORE_COLUMNS):
    for column in _TEXT_COLUMNS:
      if not isinstance(row[column], str) or not row[column]:
        raise row_error(path, f"row {index}", column, f"expected a non-empty string, got {row[column]!r}")
    scores = {}
    for column in SCORE_COLUMNS:
      value = row.get(column)
      if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise row_error(path, f"row {index}", column, f"expected a number, got {value!r}")
      scores[column] = math.nan if value is None else float(value)
    yield BenchRow(
        path=path, index=index, id=row["id"], dataset=row["dataset"], instruction=row["instruction"],
        source_image=parquet.image_bytes(row["source_image"], path, index, "source_image")[0],
        images=tuple(parquet.image_bytes(row[c], path, index, c)[0] for c in ("candidate_1", "candidate_2")),
        models=(row["model_1"], row["model_2"]), ranking=row["ranking"],
        comparison_type=row["comparison_type"] or "", scores=scores)


def _letters(row: BenchRow, group_size: int) -> tuple[str, str]:
  match = _COMPARISON.match(row.comparison_type)
  if match:
    if match[1] == match[2]:
      raise row.error("comparison_type", f"{row.comparison_type!r} compares a candidate with itself")
    return match[1], match[2]
  if group_size == 1:
    return "A", "B"
  raise row.error("comparison_type", f"expected 'XvsY' with candidate letters, got {row.comparison_type!r}")


def _preference(row: BenchRow, letters: tuple[str, str]) -> int:
  """+1 when candidate_1 ranks higher, -1 when candidate_2 does, 0 for a tie."""
  try:
    first, second, label = parse_ranking(row.ranking)
  except ValueError:
    first = second = None
  if {first, second} != set(letters):
    raise row.error("ranking", f"expected 'X>Y', 'X<Y' or 'X=Y' over the row's letters {letters}, got {row.ranking!r}")
  return label if first == letters[0] else -label


def _group_example(rows: list[BenchRow]) -> dict:
  head = rows[0]
  for row in rows[1:]:
    if row.instruction != head.instruction:
      raise row.error("instruction", f"differs from {head.path} row {head.index} of the same group")
    if row.source_image != head.source_image:
      raise row.error("source_image", f"differs from {head.path} row {head.index} of the same group")
  candidates: dict[str, tuple[str, bytes, BenchRow]] = {}
  pairs: dict[tuple[str, str], dict] = {}
  for row in rows:
    letters = _letters(row, len(rows))
    for side, letter in enumerate(letters):
      seen = candidates.setdefault(letter, (row.models[side], row.images[side], row))
      if seen[0] != row.models[side]:
        raise row.error(f"model_{side + 1}", f"candidate {letter} is {row.models[side]!r} here but {seen[0]!r} in "
                        f"{seen[2].path} row {seen[2].index}")
      if seen[1] != row.images[side]:
        raise row.error(f"candidate_{side + 1}", f"candidate {letter} has other image bytes than in {seen[2].path} "
                        f"row {seen[2].index}")
    pair_key = tuple(sorted(letters))
    if pair_key in pairs:
      raise row.error("comparison_type", f"pair {'vs'.join(pair_key)} appears twice in group {head.dataset}/{head.id}")
    pairs[pair_key] = {"candidate_1": letters[0], "candidate_2": letters[1], "ranking": row.ranking,
                       "comparison_type": row.comparison_type, "preference": _preference(row, letters), **row.scores}
  k = len(candidates)
  if sorted(candidates) != list(string.ascii_uppercase[:k]):
    raise head.error("comparison_type", f"group {head.dataset}/{head.id} has candidate letters {sorted(candidates)}, "
                     f"not A..{string.ascii_uppercase[k - 1]}")
  if len(pairs) != k * (k - 1) // 2:
    logging.warning("editreward_bench: group %s/%s has %d of the %d pairs of %d candidates", head.dataset, head.id,
                    len(pairs), k * (k - 1) // 2, k)
  return {
      "id": head.id, "dataset": head.dataset, "instruction": head.instruction, "source_image": head.source_image,
      "num_candidates": k,
      "candidates": [{"letter": letter, "model": candidates[letter][0], "image": candidates[letter][1]}
                     for letter in sorted(candidates)],
      "pairs": [pairs[key] for key in sorted(pairs)],
  }


def group_rows(rows: Iterable[BenchRow]) -> Iterator[tuple[str, dict]]:
  """(key 'dataset/id', group example) per K-way group, groups in order of first appearance."""
  groups: dict[tuple[str, str], list[BenchRow]] = {}
  for row in rows:
    groups.setdefault((row.dataset, row.id), []).append(row)
  for (dataset, group_id), members in groups.items():
    yield f"{dataset}/{group_id}", _group_example(members)


def bench_features() -> tfds.features.FeaturesDict:
  score = tfds.features.Scalar(np.float32, doc="human score of one side; NaN when the source has none")
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(doc="24-hex id shared by the rows of a group"),
      "dataset": tfds.features.Text(doc="2pair, 3pair or 4pair"),
      "instruction": tfds.features.Text(),
      "source_image": encoded_image_feature("encoded source image"),
      "num_candidates": tfds.features.Scalar(np.int32, doc="K"),
      "candidates": tfds.features.Sequence({
          "letter": tfds.features.Text(doc="A, B, C or D"),
          "model": tfds.features.Text(doc="editing model that made the candidate"),
          "image": encoded_image_feature("encoded candidate image"),
      }),
      "pairs": tfds.features.Sequence({
          "candidate_1": tfds.features.Text(doc="letter of the row's candidate_1"),
          "candidate_2": tfds.features.Text(doc="letter of the row's candidate_2"),
          "ranking": tfds.features.Text(doc="as in the source, e.g. 'A>B' or 'A=B'"),
          "comparison_type": tfds.features.Text(doc="as in the source, e.g. 'AvsC'"),
          "preference": tfds.features.Scalar(np.int32, doc="+1 candidate_1 ranks higher, -1 candidate_2, 0 tie"),
          **{column: score for column in SCORE_COLUMNS},
      }),
  })


class EditrewardBench(LocalBuilder):
  """EditReward-Bench: K-way groups of human-ranked edits for evaluation (one `test` split)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Pair rows grouped by (dataset, id); images as encoded bytes."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the EditReward-Bench folders 2pair/, 3pair/ and 4pair/ (parquet files as in the Hugging Face "
      "repository) in the manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=bench_features(),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {"test": self._generate_examples(pathlib.Path(dl_manager.manual_dir))}

  def _generate_examples(self, root: pathlib.Path) -> Iterator[tuple[int, dict]]:
    # With shuffling off, TFDS writes examples in the order of these integer keys.
    yield from enumerate(iter_groups(root), 1)


def iter_groups(root: str | pathlib.Path) -> Iterator[dict]:
  """The K-way groups of an EditReward-Bench download (its 2pair/, 3pair/, 4pair/ folders of parquet files) in the
  builder's example format. One folder at a time bounds memory; a group split across folders is an error."""
  root = pathlib.Path(root)
  folders = [root / name for name in FOLDERS if (root / name).is_dir()]
  if not folders:
    raise DataError(f"{root}: none of the folders {FOLDERS}")
  seen: set[str] = set()
  for folder in folders:
    files = parquet.find_files(folder, "*.parquet")
    before = len(seen)
    for key, example in group_rows(row for path in files for row in read_rows(path)):
      if key in seen:
        raise DataError(f"{folder}: group {key} also appears in another folder")
      seen.add(key)
      yield example
    logging.info("editreward_bench: %d groups from %s", len(seen) - before, folder)
