"""The synthetic demo set: deterministic, labelled by how each edit was made, visible to a small model."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

import data
from data import demo_images, editreward_demo, schema
from data.editreward_demo import EditrewardDemo, Recipe

SIZE = 56
EDITS = 4


def rows(split: str = "train", num_pairs: int = 24, seed: int = 0, edits: int = EDITS) -> list[dict]:
  return list(editreward_demo.generate_rows(split, num_pairs, seed=seed, image_size=SIZE, edits_per_source=edits))


def recipe_of(model: str) -> Recipe:
  """The recipe named in a model column, e.g. 'wrong_object+blur-2' or 'right+clean'."""
  match = re.fullmatch(r"(\w+)\+(clean|(noise|blur|blocky)-([123]))", model)
  assert match, model
  return Recipe(match[1], match[3] or "clean", int(match[4] or 0))


def pixels(png: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture(scope="module")
def train_rows() -> list[dict]:
  return rows(num_pairs=60)


def test_same_seed_same_bytes_other_seed_other_images():
  first, second = rows(), rows()
  assert first == second
  other = rows(seed=1)
  assert len(other) == len(first)
  assert not {r["source_img"] for r in first} & {r["source_img"] for r in other}


def test_a_larger_set_extends_a_smaller_one():
  assert rows(num_pairs=10) == rows(num_pairs=24)[:10]


def test_splits_share_no_source():
  assert not {r["source_img"] for r in rows("train")} & {r["source_img"] for r in rows("test")}


def test_rows_follow_the_pair_schema(train_rows):
  expected = set(schema.COLUMNS) | {schema.image_path_field(c) for c in schema.IMAGE_COLUMNS}
  assert all(set(r) == expected for r in train_rows)
  assert len({r["unique_key"] for r in train_rows}) == len(train_rows) == 60
  for column in schema.IMAGE_COLUMNS:
    image = Image.open(io.BytesIO(train_rows[0][column]))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))


def test_labels_follow_the_recipes(train_rows):
  votes = set()
  for row in train_rows:
    for side in schema.SIDES:
      recipe = recipe_of(row[f"{side}_model"])
      instruction = {"right": 4, "partial": 3, "wrong_attribute": 2, "wrong_object": 2, "none": 1}[recipe.change]
      quality = 4 - recipe.severity
      assert row[f"{side}_instruction_following_score"] == instruction
      assert row[f"{side}_quality_aesthetic_score"] == quality
      assert row[f"{side}_overall_score"] == instruction + quality
    left, right = row["left_overall_score"], row["right_overall_score"]
    expected_vote = "leftvote" if left > right else "rightvote" if right > left else "tie"
    assert row["vote_type"] == expected_vote
    votes.add(row["vote_type"])
  assert votes == set(schema.VOTE_TYPES)


def test_no_change_never_beats_a_clean_right_change(train_rows):
  seen = 0
  for row in train_rows:
    by_change = {recipe_of(row[f"{side}_model"]): side for side in schema.SIDES}
    none = [side for recipe, side in by_change.items() if recipe.change == "none"]
    right = [side for recipe, side in by_change.items() if recipe == Recipe("right")]
    if none and right:
      seen += 1
      assert row[f"{right[0]}_instruction_following_score"] > row[f"{none[0]}_instruction_following_score"]
      assert row["vote_type"] == f"{right[0]}vote"
  assert seen


def test_images_show_how_edits_were_made(train_rows):
  """A clean 'none' edit is the source itself; a clean 'right' one is not."""
  checked = set()
  for row in train_rows:
    for side in schema.SIDES:
      recipe = recipe_of(row[f"{side}_model"])
      same = row[f"{side}_output_image"] == row["source_img"]
      if recipe == Recipe("none"):
        assert same
        checked.add("none")
      elif recipe.severity == 0:
        assert not same, row[f"{side}_model"]
        checked.add(recipe.change)
  assert {"none", "right"} <= checked


@pytest.mark.parametrize("operation", editreward_demo.OPERATIONS)
def test_every_change_is_visible_and_distinct(operation):
  rng = np.random.RandomState(3)
  for _ in range(20):  # scenes until one gets `operation`
    scene = editreward_demo.random_scene(rng)
    task = editreward_demo.random_task(rng, scene)
    if task.operation == operation:
      break
  assert task.operation == operation
  edits = {change: editreward_demo.edit_pixels(scene, task, change, 112) for change in editreward_demo.CHANGES}
  np.testing.assert_array_equal(edits["none"], demo_images.render(scene, 112))
  for a in editreward_demo.CHANGES:
    for b in editreward_demo.CHANGES:
      if a < b:
        changed = np.abs(edits[a].astype(int) - edits[b].astype(int)).max(axis=-1) > 40
        assert changed.sum() >= 20, (operation, a, b)  # at least 20 pixels clearly differ


@pytest.mark.parametrize("kind", demo_images.DEGRADATIONS)
def test_degradations_are_visible_and_grow_with_severity(kind):
  scene = editreward_demo.random_scene(np.random.RandomState(0))
  clean = demo_images.render(scene, SIZE).astype(float)
  errors = [np.abs(demo_images.degrade(clean.astype(np.uint8), kind, s, np.random.RandomState(0)) - clean).mean()
            for s in (1, 2, 3)]
  assert errors[0] > 1.0 and errors[0] < errors[1] < errors[2], errors


def test_settings_are_checked():
  with pytest.raises(ValueError, match="image_size must be >= 28"):
    data.demo_config(image_size=27)
  with pytest.raises(ValueError, match="edits_per_source"):
    data.demo_config(edits_per_source=1)
  with pytest.raises(ValueError, match="num_pairs"):
    data.demo_config(num_test_pairs=0)
  assert data.demo_config().name == "default"
  assert data.demo_config(seed=3, num_train_pairs=10).name == "seed3-train10-test300-px112-edits4"


def test_a_config_named_like_the_default_must_be_the_default(tmp_path):
  with pytest.raises(data.DataError, match="differs from the built-in config of the same name 'default'"):
    data.build("editreward_demo", tmp_path, config=data.DemoConfig(name="default", num_train_pairs=3))
  assert data.sources._config_arg(EditrewardDemo, data.demo_config()) == "default"


def test_builder_writes_the_generated_rows(tmp_path):
  config = data.demo_config(seed=5, num_train_pairs=14, num_test_pairs=6, image_size=SIZE, edits_per_source=3)
  builder = data.build("editreward_demo", tmp_path, config=config)
  assert list(tmp_path.glob("editreward_demo/seed5-*/1.0.0/editreward_demo-train.array_record-*"))
  assert builder.info.splits["train"].num_examples == 14
  for split, n in (("train", 14), ("test", 6)):
    source = data.open_source("editreward_demo", split, tmp_path, config=config.name)
    expected = list(editreward_demo.generate_rows(split, n, seed=5, image_size=SIZE, edits_per_source=3))
    assert [source[i] for i in range(len(source))] == expected
