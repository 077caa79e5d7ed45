"""EditReward-Data and EditReward-Bench builders on tiny parquet files written the way `datasets` writes them."""

from __future__ import annotations

import io
import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import data
from data import editreward_bench, editreward_data, schema

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def encoded(mode: str, fmt: str, seed: int, size: tuple[int, int] = (30, 20)) -> bytes:
  """A small random image in `mode` (RGB, L, RGBA), encoded as `fmt` (PNG or JPEG)."""
  channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
  pixels = np.random.RandomState(seed).randint(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(buf, format=fmt)
  return buf.getvalue()


def image_kinds(seed: int) -> list[bytes]:
  return [encoded("RGB", "PNG", seed), encoded("L", "JPEG", seed + 1), encoded("RGBA", "PNG", seed + 2),
          encoded("RGB", "JPEG", seed + 3), encoded("L", "PNG", seed + 4)]


def write_hf_parquet(path: pathlib.Path, rows: list[dict], types: dict[str, pa.DataType]) -> None:
  """Parquet as `datasets` writes it: image columns are struct<bytes, path>, features in the 'huggingface' key."""
  features = {name: ({"_type": "Image"} if t == IMAGE_TYPE else {"dtype": str(t), "_type": "Value"})
              for name, t in types.items()}
  table = pa.Table.from_pylist(rows, schema=pa.schema(list(types.items())))
  table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(table, path)


# ------------------------------------------------------------------ EditReward-Data

DATA_TYPES = {"key": pa.string(), "unique_key": pa.string(), "pair_index": pa.int32(), "instruction": pa.string(),
              "source_img": IMAGE_TYPE, "left_output_image": IMAGE_TYPE, "right_output_image": IMAGE_TYPE,
              "left_model": pa.string(), "right_model": pa.string(),
              **{c: pa.float32() for c in schema.SCORE_COLUMNS},
              "vote_type": pa.string(), "metadata_index": pa.int32(), "left_img_rel": pa.string(),
              "right_img_rel": pa.string()}


def data_row(i: int, vote: str) -> dict:
  images = image_kinds(10 * i)
  row = {"key": f"k{i // 2}", "unique_key": f"k{i // 2}_{i % 2}", "pair_index": i % 2,
         "instruction": f"make the sky {['red', 'grün', '青い'][i % 3]} #{i}",
         "source_img": {"bytes": images[i % 5], "path": None},
         "left_output_image": {"bytes": images[(i + 1) % 5], "path": f"left/{i}.png"},
         "right_output_image": {"bytes": images[(i + 2) % 5], "path": None},
         "left_model": "step1x-edit", "right_model": f"model-{i}", "vote_type": vote, "metadata_index": 1000 + i,
         "left_img_rel": f"imgs/left_{i}.png", "right_img_rel": f"imgs/right_{i}.png"}
  for side, base in (("left", 1.0 + (i % 4)), ("right", 2.5)):
    row[f"{side}_instruction_following_score"] = base
    row[f"{side}_quality_aesthetic_score"] = 4.0 - (i % 3)
    row[f"{side}_overall_score"] = base + 4.0 - (i % 3)
  return row


def expected_pair_row(row: dict) -> dict:
  out = {k: v for k, v in row.items() if k not in schema.IMAGE_COLUMNS}
  for column in schema.IMAGE_COLUMNS:
    out[column] = row[column]["bytes"]
    out[schema.image_path_field(column)] = row[column]["path"] or ""
  return out


@pytest.fixture(scope="module")
def data_release(tmp_path_factory):
  root = tmp_path_factory.mktemp("editreward_data")
  votes = ["leftvote", "rightvote", "tie", "leftvote", "tie"] * 3
  rows = [data_row(i, vote) for i, vote in enumerate(votes)]
  # More than 10 rows in a shard, so that order by position is told apart from order by text ('10' < '2').
  write_hf_parquet(root / "data" / "train-00000-of-00002.parquet", rows[:12], DATA_TYPES)
  write_hf_parquet(root / "data" / "train-00001-of-00002.parquet", rows[12:], DATA_TYPES)
  return root, rows


def test_editreward_data_round_trips_every_field(data_release, tmp_path):
  root, rows = data_release
  builder = data.build("editreward_data", tmp_path, manual_dir=root)
  assert builder.info.splits["train"].num_examples == len(rows)
  assert list(pathlib.Path(builder.data_dir).glob("editreward_data-train.array_record-*"))
  source = data.open_source("editreward_data", "train", tmp_path)
  got = [source[i] for i in range(len(source))]
  assert got == [expected_pair_row(r) for r in rows]  # shard order, then row order
  assert set(got[0]) == set(schema.COLUMNS) | {schema.image_path_field(c) for c in schema.IMAGE_COLUMNS}
  assert Image.open(io.BytesIO(got[1]["source_img"])).mode == "L"
  assert Image.open(io.BytesIO(got[2]["source_img"])).mode == "RGBA"
  assert "tensorflow" not in sys.modules


def test_editreward_data_rejects_a_missing_column(tmp_path):
  types = {k: v for k, v in DATA_TYPES.items() if k != "vote_type"}
  row = {k: v for k, v in data_row(0, "tie").items() if k in types}
  write_hf_parquet(tmp_path / "hf" / "train-00000-of-00001.parquet", [row], types)
  with pytest.raises(data.DataError, match=r"train-00000-of-00001\.parquet: missing columns \['vote_type'\]"):
    data.build("editreward_data", tmp_path / "tfds", manual_dir=tmp_path / "hf")


def test_editreward_data_needs_shards(tmp_path):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "README.md").write_text("no shards here")
  with pytest.raises(data.DataError, match="no files matching 'train-\\*.parquet'"):
    data.build("editreward_data", tmp_path / "tfds", manual_dir=tmp_path / "hf")
  with pytest.raises(data.DataError, match="manual_dir"):
    data.build("editreward_data", tmp_path / "tfds", manual_dir=tmp_path / "absent")


@pytest.mark.parametrize("field, value, problem", [
    ("vote_type", "draw", "is not one of"),
    ("vote_type", None, "non-empty string"),
    ("instruction", "", "non-empty string"),
    ("left_overall_score", None, "finite number"),
    ("right_quality_aesthetic_score", float("nan"), "finite number"),
    ("pair_index", 1.5, "integer"),
    ("source_img", {"bytes": None, "path": "a.png"}, "no embedded bytes"),
    ("right_output_image", b"\x89PNG", "image struct"),
])
def test_editreward_data_bad_rows_name_file_row_and_field(field, value, problem):
  row = dict(data_row(0, "tie"), **{field: value})
  with pytest.raises(data.DataError, match=f"shard.parquet: row 7: field '{field}': .*{problem}"):
    editreward_data.convert_row(row, pathlib.Path("shard.parquet"), 7)


def test_editreward_data_nullable_columns_read_as_empty():
  row = dict(data_row(0, "tie"), left_img_rel=None, metadata_index=None)
  out = editreward_data.convert_row(row, pathlib.Path("shard.parquet"), 0)
  assert (out["left_img_rel"], out["metadata_index"]) == ("", -1)


# ------------------------------------------------------------------ EditReward-Bench

BENCH_TYPES = {"id": pa.string(), "instruction": pa.string(), "dataset": pa.string(), "source_image": IMAGE_TYPE,
               "candidate_1": IMAGE_TYPE, "candidate_2": IMAGE_TYPE, "ranking": pa.string(),
               "comparison_type": pa.string(), "model_1": pa.string(), "model_2": pa.string(),
               **{c: pa.float32() for c in editreward_bench.SCORE_COLUMNS}}
# Ids minted in the same second share long prefixes; SHARED is used by groups of two different datasets.
SHARED = "66f0c1d2e3f4a5b6c7d8e9f0"
NEAR = "66f0c1d2e3f4a5b6c7d8e9f1"


def make_group(dataset: str, group_id: str, k: int, seed: int, rankings: dict[tuple[str, str], tuple[str, int]],
               size: tuple[int, int] = (30, 20)) -> tuple[list[dict], dict]:
  """Pair rows of one K-way group and the group the builder should make of them. `rankings` maps each row (X, Y),
  read 'XvsY' and in row order, to its ranking and the expected preference (+1: X ranks higher, -1: Y, 0: tie)."""
  letters = "ABCD"[:k]
  images = {letter: encoded(["RGB", "L", "RGBA", "RGB"][j], ["PNG", "JPEG", "PNG", "JPEG"][j], seed + j, size)
            for j, letter in enumerate(letters)}
  models = {letter: f"model-{letter}-{seed}" for letter in letters}
  source = encoded("RGB", "JPEG", seed + 9, size)
  instruction = f"replace the cat with a dog ({dataset}, {seed})"
  rows, pairs = [], []
  for n, ((x, y), (rank, preference)) in enumerate(rankings.items()):
    scores = {c: float(n + j) / 2 for j, c in enumerate(editreward_bench.SCORE_COLUMNS)}
    rows.append({"id": group_id, "instruction": instruction, "dataset": dataset,
                 "source_image": {"bytes": source, "path": None},
                 "candidate_1": {"bytes": images[x], "path": None}, "candidate_2": {"bytes": images[y], "path": None},
                 "ranking": rank, "comparison_type": f"{x}vs{y}", "model_1": models[x], "model_2": models[y], **scores})
    pairs.append({"candidate_1": x, "candidate_2": y, "ranking": rank, "comparison_type": f"{x}vs{y}",
                  "preference": preference, **scores})
  group = {"id": group_id, "dataset": dataset, "instruction": instruction, "source_image": source,
           "num_candidates": k,
           "candidates": [{"letter": c, "model": models[c], "image": images[c]} for c in letters],
           "pairs": sorted(pairs, key=lambda p: tuple(sorted((p["candidate_1"], p["candidate_2"]))))}
  return rows, group


@pytest.fixture(scope="module")
def bench_release(tmp_path_factory):
  root = tmp_path_factory.mktemp("editreward_bench")
  two_a, g1 = make_group("2pair", SHARED, 2, 1, {("A", "B"): ("A>B", 1)})
  two_b, g2 = make_group("2pair", NEAR, 2, 20, {("A", "B"): ("A=B", 0)})
  three, g3 = make_group("3pair", SHARED, 3, 40, {("A", "C"): ("C>A", -1), ("C", "B"): ("C>B", 1),
                                                  ("A", "B"): ("B>A", -1)})
  three_near, g4 = make_group("3pair", NEAR, 3, 60, {("B", "C"): ("B>C", 1), ("A", "B"): ("A<B", -1),
                                                     ("A", "C"): ("A>C", 1)})
  four, g5 = make_group("4pair", SHARED, 4, 80, {("C", "D"): ("D>C", -1), ("A", "B"): ("A>B", 1),
                                                 ("B", "D"): ("D>B", -1), ("A", "C"): ("A=C", 0),
                                                 ("B", "C"): ("C<B", 1), ("A", "D"): ("D>A", -1)})
  write_hf_parquet(root / "2pair" / "train-00000-of-00001.parquet", two_a + two_b, BENCH_TYPES)
  # The rows of each K=3 group are spread over both shards.
  write_hf_parquet(root / "3pair" / "train-00000-of-00002.parquet", three[:2] + three_near[:1], BENCH_TYPES)
  write_hf_parquet(root / "3pair" / "train-00001-of-00002.parquet", three[2:] + three_near[1:], BENCH_TYPES)
  write_hf_parquet(root / "4pair" / "train-00000-of-00001.parquet", four, BENCH_TYPES)
  return root, [g1, g2, g3, g4, g5]


def test_editreward_bench_groups_k_way(bench_release, tmp_path):
  root, groups = bench_release
  builder = data.build("editreward_bench", tmp_path, manual_dir=root)
  assert builder.info.splits["test"].num_examples == len(groups)
  source = data.open_source("editreward_bench", "test", tmp_path)
  got = {(g["dataset"], g["id"]): g for g in (source[i] for i in range(len(source)))}
  assert got == {(g["dataset"], g["id"]): g for g in groups}
  assert sorted(g["num_candidates"] for g in got.values()) == [2, 2, 3, 3, 4]
  assert [len(g["pairs"]) for g in got.values()] == [1, 1, 3, 3, 6]


def bench_row(index: int, comparison: str, ranking: str, images=(b"a", b"b"), models=("m1", "m2"),
              group_id: str = SHARED, instruction: str = "add a hat",
              source: bytes = b"src") -> editreward_bench.BenchRow:
  scores = {c: 1.0 for c in editreward_bench.SCORE_COLUMNS}
  return editreward_bench.BenchRow(path=pathlib.Path("3pair/part.parquet"), index=index, id=group_id,
                                   dataset="3pair", instruction=instruction, source_image=source, images=images,
                                   models=models, ranking=ranking, comparison_type=comparison, scores=scores)


def group_of(rows):
  return [example for _, example in editreward_bench.group_rows(rows)]


def test_bench_one_row_group_without_letters_reads_as_a_vs_b():
  (group,) = group_of([bench_row(0, "", "B>A")])
  assert [c["letter"] for c in group["candidates"]] == ["A", "B"]
  assert group["pairs"][0]["preference"] == -1


def test_bench_incomplete_group_is_kept():
  (group,) = group_of([bench_row(0, "AvsB", "A>B", (b"a", b"b"), ("m1", "m2")),
                       bench_row(1, "BvsC", "C>B", (b"b", b"c"), ("m2", "m3"))])
  assert group["num_candidates"] == 3 and len(group["pairs"]) == 2


@pytest.mark.parametrize("rows, field, problem", [
    # Letter B is one image in row 0 and another in row 1: two candidates can not share a letter.
    ([bench_row(0, "AvsB", "A>B", (b"a", b"b")), bench_row(1, "BvsC", "B>C", (b"other", b"c"), ("m2", "m3"))],
     "candidate_1", "candidate B has other image bytes than in 3pair/part.parquet row 0"),
    ([bench_row(0, "AvsB", "A>B", models=("m1", "m2")), bench_row(1, "AvsC", "A>C", models=("m9", "m3"))],
     "model_1", "candidate A is 'm9' here but 'm1'"),
    ([bench_row(0, "AvsB", "A>B"), bench_row(1, "AvsC", "A>C", instruction="other")], "instruction", "differs"),
    ([bench_row(0, "AvsB", "A>B"), bench_row(1, "AvsC", "A>C", source=b"other")], "source_image", "differs"),
    ([bench_row(0, "AvsB", "A>B"), bench_row(1, "A-C", "A>C")], "comparison_type", "expected 'XvsY'"),
    ([bench_row(0, "AvsA", "A>A")], "comparison_type", "with itself"),
    ([bench_row(0, "AvsB", "A>C")], "ranking", "over the row's letters"),
    ([bench_row(0, "AvsB", "A>>B")], "ranking", "expected"),
    ([bench_row(0, "AvsB", "A>B"), bench_row(1, "BvsA", "A>B", (b"b", b"a"), ("m2", "m1"))], "comparison_type",
     "appears twice"),
    ([bench_row(0, "AvsC", "A>C")], "comparison_type", r"candidate letters \['A', 'C'\], not A..B"),
])
def test_bench_bad_groups_name_file_row_and_field(rows, field, problem):
  with pytest.raises(data.DataError, match=f"3pair/part.parquet: row [01]: field '{field}': .*{problem}"):
    group_of(rows)


def test_bench_groups_key_on_the_full_id():
  rows = [bench_row(0, "AvsB", "A>B", group_id=SHARED), bench_row(1, "AvsB", "B>A", group_id=NEAR)]
  assert [g["id"] for g in group_of(rows)] == [SHARED, NEAR]


def test_bench_needs_its_folders(tmp_path):
  (tmp_path / "hf" / "5pair").mkdir(parents=True)
  with pytest.raises(data.DataError, match="none of the folders"):
    data.build("editreward_bench", tmp_path / "tfds", manual_dir=tmp_path / "hf")


def test_open_source_errors(tmp_path):
  with pytest.raises(data.DataError, match="not prepared"):
    data.open_source("editreward_data", "train", tmp_path)
  with pytest.raises(data.DataError, match="unknown dataset 'imagenet'"):
    data.open_source("imagenet", "train", tmp_path)
