"""Readers for the JSON inputs of the project, as random-access sources (Grain-compatible, picklable).

- `PairJsonSource`: the reference trainer's rows (`prompt, path_src, path1 (preferred), path2, model1, model2,
  model{1,2}_dim1_score, model{1,2}_dim2_score, model{1,2}_overall_score, tie_case`) as EditReward-Data pair rows.
  dim1 is instruction following and dim2 visual quality; path1 is the left image, voted for unless `tie_case`.
- `ScoringSource`: the scoring rows `{"id", "instruction", "source_image", "edited_image"}` of `launch.score`.

Both accept a JSON list file or JSON Lines. Image paths are absolute or relative to the input file's folder. Every row
is checked when the file is opened (fields, types, image files present); image bytes are read when a row is fetched.
A bad row raises `DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Iterator

from data.schema import DataError, row_error
from editreward_jax import paths


def _skip_space(text: str, pos: int) -> int:
  while pos < len(text) and text[pos].isspace():
    pos += 1
  return pos


def _line_at(text: str, pos: int) -> int:
  return text.count("\n", 0, pos) + 1


def iter_json_rows(path: pathlib.Path) -> Iterator[tuple[int, object]]:
  """(line number, value) of each item of a JSON list file, or of each non-blank line of a JSON Lines file."""
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  text = path.read_text(encoding="utf-8")
  pos = _skip_space(text, 0)
  if not text.startswith("[", pos):
    for number, line in enumerate(text.splitlines(), start=1):
      if line.strip():
        try:
          yield number, json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}: line {number}: invalid JSON: {e.msg}") from None
    return
  # A JSON list, decoded item by item so that each row keeps the line it starts on.
  decoder = json.JSONDecoder()
  line, counted = 1, 0
  pos = _skip_space(text, pos + 1)
  while not text.startswith("]", pos):
    line, counted = line + text.count("\n", counted, pos), pos
    try:
      value, pos = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
    yield line, value
    pos = _skip_space(text, pos)
    if text.startswith(",", pos):
      pos = _skip_space(text, pos + 1)
      if text.startswith("]", pos):
        raise DataError(f"{path}: line {_line_at(text, pos)}: trailing comma in the JSON list")
    elif not text.startswith("]", pos):
      raise DataError(f"{path}: line {_line_at(text, pos)}: expected ',' or ']' after a list item")
  if text[pos + 1:].strip():
    raise DataError(f"{path}: line {_line_at(text, pos)}: unexpected text after the JSON list")


class _Fields:
  """Typed access to the fields of one row; errors name the file, line and field."""

  def __init__(self, path: pathlib.Path, line: int, row: object):
    if not isinstance(row, dict):
      raise DataError(f"{path}: line {line}: expected a JSON object, got {type(row).__name__}")
    self.path, self.line, self.row = path, line, row

  def error(self, field: str, problem: str) -> DataError:
    return row_error(self.path, f"line {self.line}", field, problem)

  def get(self, field: str) -> object:
    if field not in self.row:
      raise self.error(field, "missing")
    return self.row[field]

  def text(self, field: str) -> str:
    value = self.get(field)
    if not isinstance(value, str) or not value.strip():
      raise self.error(field, f"expected a non-empty string, got {value!r}")
    return value

  def number(self, field: str) -> float:
    value = self.get(field)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise self.error(field, f"expected a number, got {value!r}")
    return float(value)

  def flag(self, field: str) -> bool:
    value = self.get(field)
    if value not in (True, False, 0, 1) or isinstance(value, float):
      raise self.error(field, f"expected true/false (or 0/1), got {value!r}")
    return bool(value)

  def image(self, field: str) -> pathlib.Path:
    image = pathlib.Path(self.text(field))
    image = image if image.is_absolute() else self.path.parent / image
    if not image.is_file():
      raise self.error(field, f"image file {image} does not exist")
    return image


def _read_image(image: pathlib.Path, source: pathlib.Path, line: int, field: str) -> bytes:
  try:
    return image.read_bytes()
  except OSError as e:
    raise row_error(source, f"line {line}", field, f"cannot read {image}: {e.strerror}") from None


@dataclasses.dataclass(frozen=True)
class _PairRecord:
  line: int
  fields: dict            # every pair-row field but the image bytes
  images: dict[str, pathlib.Path]


class PairJsonSource:
  """Pair rows (data/schema.py) from the reference trainer's JSON.

  `key` is '<file stem>:<line>', `metadata_index` the row's position in the file, `*_img_rel` the paths as written
  and `*_path` the resolved ones.
  """

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    self._records = [self._parse(index, line, row) for index, (line, row) in enumerate(iter_json_rows(self.path))]
    if not self._records:
      raise DataError(f"{self.path}: no rows")

  def _parse(self, index: int, line: int, row: object) -> _PairRecord:
    f = _Fields(self.path, line, row)
    images = {"source_img": f.image("path_src"), "left_output_image": f.image("path1"),
              "right_output_image": f.image("path2")}
    key = f"{self.path.stem}:{line}"
    fields = {"key": key, "unique_key": key, "pair_index": 0, "instruction": f.text("prompt"),
              "left_model": f.text("model1"), "right_model": f.text("model2"),
              "vote_type": "tie" if f.flag("tie_case") else "leftvote", "metadata_index": index,
              "left_img_rel": f.text("path1"), "right_img_rel": f.text("path2")}
    for side, n in (("left", 1), ("right", 2)):
      fields[f"{side}_instruction_following_score"] = f.number(f"model{n}_dim1_score")
      fields[f"{side}_quality_aesthetic_score"] = f.number(f"model{n}_dim2_score")
      fields[f"{side}_overall_score"] = f.number(f"model{n}_overall_score")
    return _PairRecord(line, fields, images)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    record = self._records[index]
    row = dict(record.fields)
    for column, image in record.images.items():
      row[column] = _read_image(image, self.path, record.line, column)
      row[f"{column}_path"] = str(image)
    return row

  def __repr__(self) -> str:
    return f"PairJsonSource({self.path}, {len(self)} rows)"


@dataclasses.dataclass(frozen=True)
class ScoringRequest:
  line: int
  id: str | int
  instruction: str
  source_image: pathlib.Path
  edited_image: pathlib.Path


class ScoringSource:
  """Rows `{"id", "instruction", "source_image": bytes, "edited_image": bytes}` of a scoring JSONL.

  `id` is a string or an integer, returned as given, and unique within the file. `requests` keeps the resolved
  image paths and line of each row. A malformed row raises a DataError naming its line and field, or with
  `skip_bad_rows` is left out and listed in `skipped` as {"line", "id", "error"}.
  """

  def __init__(self, path: str | pathlib.Path, *, skip_bad_rows: bool = False):
    self.path = pathlib.Path(paths.expand(os.fspath(path)))
    self.requests: list[ScoringRequest] = []
    self.skipped: list[dict] = []
    first_line: dict[str | int, int] = {}
    for line, row in iter_json_rows(self.path):
      try:
        self.requests.append(self._request(line, row, first_line))
      except DataError as e:
        if not skip_bad_rows:
          raise
        self.skipped.append({"line": line, "id": row.get("id") if isinstance(row, dict) else None,
                             "error": str(e)})
    if not self.requests and not self.skipped:
      raise DataError(f"{self.path}: no rows")

  def _request(self, line: int, row: object, first_line: dict[str | int, int]) -> ScoringRequest:
    f = _Fields(self.path, line, row)
    row_id = f.get("id")
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool) or row_id == "":
      raise f.error("id", f"expected a non-empty string or an integer, got {row_id!r}")
    if row_id in first_line:
      raise f.error("id", f"{row_id!r} already used on line {first_line[row_id]}")
    request = ScoringRequest(line, row_id, f.text("instruction"), f.image("source_image"), f.image("edited_image"))
    first_line[row_id] = line
    return request

  def __len__(self) -> int:
    return len(self.requests)

  def __getitem__(self, index: int) -> dict:
    request = self.requests[index]
    return {"id": request.id, "instruction": request.instruction,
            "source_image": _read_image(request.source_image, self.path, request.line, "source_image"),
            "edited_image": _read_image(request.edited_image, self.path, request.line, "edited_image")}

  def __repr__(self) -> str:
    return f"ScoringSource({self.path}, {len(self)} rows)"


PREFERENCES = {"A": 1, "B": -1, "tie": 0}  # a pairwise benchmark's `preference` -> label


def _rows(path: str | os.PathLike, read_row) -> list[dict]:
  """Every row of a JSON/JSONL benchmark file through `read_row(fields)`, ids unique; errors name file, line, field."""
  path = pathlib.Path(paths.expand(os.fspath(path)))
  out, first_line = [], {}
  for line, row in iter_json_rows(path):
    f = _Fields(path, line, row)
    item = {"line": line, "id": f.text("id"), **read_row(f)}
    if item["id"] in first_line:
      raise f.error("id", f"{item['id']!r} already used on line {first_line[item['id']]}")
    first_line[item["id"]] = line
    out.append(item)
  if not out:
    raise DataError(f"{path}: no rows")
  return out


def read_pair_set(path: str | os.PathLike) -> list[dict]:
  """A pairwise benchmark (GenAI-Bench / AURORA style), JSON list or JSONL, rows {"id", "instruction",
  "source_image", "image_a", "image_b", "preference": "A" | "B" | "tie"} (image paths absolute or relative to the
  file): dicts with the paths resolved and `label` +1 / -1 / 0."""
  def row(f: _Fields) -> dict:
    preference = f.get("preference")
    if preference not in PREFERENCES:
      raise f.error("preference", f"expected one of {list(PREFERENCES)}, got {preference!r}")
    return {"instruction": f.text("instruction"), "source_image": f.image("source_image"),
            "image_a": f.image("image_a"), "image_b": f.image("image_b"), "label": PREFERENCES[preference]}
  return _rows(path, row)


def read_pointwise(path: str | os.PathLike) -> list[dict]:
  """A pointwise benchmark (ImagenHub style), JSON list or JSONL, rows {"id", "instruction", "source_image",
  "edited_image", "model" (the editing model), "human_score"}: dicts with the image paths resolved."""
  def row(f: _Fields) -> dict:
    return {"instruction": f.text("instruction"), "source_image": f.image("source_image"),
            "edited_image": f.image("edited_image"), "model": f.text("model"), "human_score": f.number("human_score")}
  return _rows(path, row)
