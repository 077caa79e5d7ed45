"""Readers of the reference trainer's JSON and of the scoring JSONL: good rows, and each bad row's error."""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest

import data
from data import readers, schema


@pytest.fixture
def images(tmp_path) -> dict[str, pathlib.Path]:
  """Image files (their content does not matter to the readers) in a sub-folder of the input files' folder."""
  (tmp_path / "imgs").mkdir()
  paths = {}
  for name in ("src", "a", "b", "c"):
    paths[name] = tmp_path / "imgs" / f"{name}.png"
    paths[name].write_bytes(f"bytes of {name}".encode())
  return paths


def trainer_row(images, tie: bool, absolute: bool = False) -> dict:
  path = (lambda n: str(images[n])) if absolute else (lambda n: f"imgs/{n}.png")
  return {"prompt": "make the cat blue", "path_src": path("src"), "path1": path("a"), "path2": path("b"),
          "model1": "flux-kontext", "model2": "bagel", "model1_dim1_score": 4, "model1_dim2_score": 3.5,
          "model1_overall_score": 7.5, "model2_dim1_score": 2.0, "model2_dim2_score": 3,
          "model2_overall_score": 5.0, "tie_case": tie}


def write_json_list(path: pathlib.Path, rows: list) -> pathlib.Path:
  """Pretty-printed, so each row spans several lines: row i starts on line 2 + i * (lines per row)."""
  path.write_text(json.dumps(rows, indent=2, ensure_ascii=False))
  return path


def write_jsonl(path: pathlib.Path, rows: list, blank_line_after: int | None = None) -> pathlib.Path:
  lines = [json.dumps(r) for r in rows]
  if blank_line_after is not None:
    lines.insert(blank_line_after, "")
  path.write_text("\n".join(lines) + "\n")
  return path


def row_start_line(path: pathlib.Path, index: int) -> int:
  """Line of the index-th '  {' that opens a row of a pretty-printed JSON list."""
  starts = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if line == "  {"]
  return starts[index]


def test_trainer_json_list_maps_to_pair_rows(tmp_path, images):
  path = write_json_list(tmp_path / "train.json", [trainer_row(images, tie=False),
                                                   trainer_row(images, tie=True, absolute=True)])
  source = data.PairJsonSource(path)
  assert len(source) == 2
  first, second = source[0], source[1]
  assert first == {
      "key": f"train:{row_start_line(path, 0)}", "unique_key": f"train:{row_start_line(path, 0)}", "pair_index": 0,
      "instruction": "make the cat blue", "metadata_index": 0,
      "source_img": b"bytes of src", "left_output_image": b"bytes of a", "right_output_image": b"bytes of b",
      "source_img_path": str(images["src"]), "left_output_image_path": str(images["a"]),
      "right_output_image_path": str(images["b"]),
      "left_model": "flux-kontext", "right_model": "bagel", "vote_type": "leftvote",
      "left_instruction_following_score": 4.0, "left_quality_aesthetic_score": 3.5, "left_overall_score": 7.5,
      "right_instruction_following_score": 2.0, "right_quality_aesthetic_score": 3.0, "right_overall_score": 5.0,
      "left_img_rel": "imgs/a.png", "right_img_rel": "imgs/b.png",
  }
  assert set(first) == set(schema.COLUMNS) | {schema.image_path_field(c) for c in schema.IMAGE_COLUMNS}
  assert second["vote_type"] == "tie" and second["metadata_index"] == 1
  assert second["left_img_rel"] == str(images["a"]) and second["left_output_image"] == b"bytes of a"
  assert pickle.loads(pickle.dumps(source))[1] == second


def test_trainer_jsonl_gives_the_same_rows_with_line_keys(tmp_path, images):
  rows = [trainer_row(images, tie=False), trainer_row(images, tie=True)]
  from_list = data.PairJsonSource(write_json_list(tmp_path / "pairs.json", rows))
  from_lines = data.PairJsonSource(write_jsonl(tmp_path / "pairs.jsonl", rows, blank_line_after=1))
  assert [from_lines[i]["key"] for i in range(2)] == ["pairs:1", "pairs:3"]
  for i in range(2):
    assert {**from_lines[i], "key": "", "unique_key": ""} == {**from_list[i], "key": "", "unique_key": ""}


@pytest.mark.parametrize("field, value, problem", [
    ("prompt", None, "missing"),
    ("prompt", "  ", "non-empty string"),
    ("path1", 3, "non-empty string"),
    ("path2", "imgs/absent.png", "image file .*absent.png does not exist"),
    ("model2_dim1_score", "4", "expected a number"),
    ("model1_overall_score", True, "expected a number"),
    ("tie_case", "yes", "true/false"),
    ("tie_case", 2, "true/false"),
])
def test_trainer_bad_rows_name_file_line_and_field(tmp_path, images, field, value, problem):
  bad = trainer_row(images, tie=False)
  if value is None:
    del bad[field]
  else:
    bad[field] = value
  path = write_json_list(tmp_path / "train.json", [trainer_row(images, tie=False), bad])
  with pytest.raises(data.DataError, match=f"train.json: line {row_start_line(path, 1)}: field '{field}': .*{problem}"):
    data.PairJsonSource(path)


def test_json_rows_keep_their_lines(tmp_path):
  (tmp_path / "in.json").write_text('\n [ {"a": 1},\n\n  2,\n  "x\\ny", [\n3]\n ]\n')
  assert list(readers.iter_json_rows(tmp_path / "in.json")) == [(2, {"a": 1}), (4, 2), (5, "x\ny"), (5, [3])]
  (tmp_path / "in.jsonl").write_text('{"a": 1}\n\n  \n[2]\n')
  assert list(readers.iter_json_rows(tmp_path / "in.jsonl")) == [(1, {"a": 1}), (4, [2])]


@pytest.mark.parametrize("text, message", [
    ('[{"prompt": 1}\n\n{"prompt": 2}]', "line 3: expected ',' or ']' after a list item"),
    ('[\n{"prompt": 1},\n]', "line 3: trailing comma"),
    ('[\n{"prompt": 1}\n', "line 3: expected ',' or ']'"),
    ('[{"prompt": 1}] []', "line 1: unexpected text after the JSON list"),
    ('[\n  {"prompt": 1},\n  {"prompt": \n', "line 4: invalid JSON"),
    ('{"prompt": 1}\n{"prompt": \n', "line 2: invalid JSON"),
])
def test_malformed_json_names_the_line(tmp_path, text, message):
  (tmp_path / "in.json").write_text(text)
  with pytest.raises(data.DataError, match=f"in.json: {message}"):
    list(readers.iter_json_rows(tmp_path / "in.json"))


@pytest.mark.parametrize("text, message", [
    ('[\n  "not an object"\n]', "line 2: expected a JSON object, got str"),
    ('[]', "no rows"),
    ('\n\n', "no rows"),
])
def test_files_without_rows(tmp_path, text, message):
  (tmp_path / "in.json").write_text(text)
  with pytest.raises(data.DataError, match=f"in.json: {message}"):
    data.PairJsonSource(tmp_path / "in.json")
  with pytest.raises(data.DataError, match=f"in.json: {message}"):
    data.ScoringSource(tmp_path / "in.json")


def test_missing_input_file(tmp_path):
  with pytest.raises(data.DataError, match="absent.jsonl: no such file"):
    data.ScoringSource(tmp_path / "absent.jsonl")


def scoring_row(row_id, source="imgs/src.png", edited="imgs/a.png") -> dict:
  return {"id": row_id, "instruction": "remove the hat", "source_image": source, "edited_image": edited}


def test_scoring_rows(tmp_path, images):
  path = write_jsonl(tmp_path / "edits.jsonl", [scoring_row("x-1"), scoring_row(7, edited=str(images["c"]))])
  source = data.ScoringSource(path)
  assert len(source) == 2
  assert source[0] == {"id": "x-1", "instruction": "remove the hat", "source_image": b"bytes of src",
                       "edited_image": b"bytes of a"}
  assert source[1]["id"] == 7 and source[1]["edited_image"] == b"bytes of c"
  assert [r.edited_image for r in source.requests] == [images["a"], images["c"]]
  assert pickle.loads(pickle.dumps(source))[0] == source[0]


@pytest.mark.parametrize("row, field, problem", [
    (scoring_row("x-1"), "id", "'x-1' already used on line 1"),
    (scoring_row(True), "id", "non-empty string or an integer"),
    (scoring_row(""), "id", "non-empty string or an integer"),
    (scoring_row(1.5), "id", "non-empty string or an integer"),
    ({k: v for k, v in scoring_row("y").items() if k != "instruction"}, "instruction", "missing"),
    (scoring_row("y", source="nope/src.png"), "source_image", "does not exist"),
    (scoring_row("y", edited=None), "edited_image", "non-empty string"),
])
def test_scoring_bad_rows_name_file_line_and_field(tmp_path, images, row, field, problem):
  path = write_jsonl(tmp_path / "edits.jsonl", [scoring_row("x-1"), row], blank_line_after=1)
  with pytest.raises(data.DataError, match=f"edits.jsonl: line 3: field '{field}': .*{problem}"):
    data.ScoringSource(path)


def test_image_deleted_after_opening_names_row_and_field(tmp_path, images):
  source = data.ScoringSource(write_jsonl(tmp_path / "edits.jsonl", [scoring_row("x")]))
  images["a"].unlink()
  with pytest.raises(data.DataError, match="edits.jsonl: line 1: field 'edited_image': cannot read"):
    source[0]
