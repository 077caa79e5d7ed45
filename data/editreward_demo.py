"""The synthetic demo set: the project's embedded default data, fully offline and deterministic from a seed.

Each source image is a flat scene with two shapes of different kinds (circle, square, triangle) in strong colours on
a plain or two-tone pale background. Its instruction asks for one concrete change of one shape: recolour, move,
remove or resize. Several edits of the source are then made by recipe, and the recipe alone sets the labels:

  change            what the edit did                                       instruction following
  right             the requested change                                    4
  partial           half of it (half recoloured, a third of the move, a    3
                    smaller resize, faded instead of removed)
  wrong_attribute   the wrong change on the right shape (other colour,      2
                    other direction, opposite resize, shrunk not removed)
  wrong_object      the requested change on the other shape                 2
  none              the source unchanged                                    1

  degradation       clean, or noise / blur / blocky at severity 1..3        visual quality 4 - severity

overall = instruction following + visual quality. The first edit of every source is a `right` one, so each source
has a correct answer. Edits of one source are paired all against all, sides shuffled, `vote_type` from the overall
scores (equal overall scores are ties). Rows follow the EditReward-Data schema (data/schema.py); the model columns
name the recipe, e.g. "right+clean" or "wrong_object+blur-2".

Every source draws from its own `RandomState((seed, split, source index))` (RandomState because NumPy freezes its
streams), so a larger set extends a smaller one with the same seed and nothing depends on generation order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterator, Sequence, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data import demo_images
from data.demo_images import Scene, Shape
from data.local_builder import LocalBuilder
from data.schema import pair_features, vote_from_scores

T = TypeVar("T")

SPLITS = {"train": 0, "test": 1}
CHANGES = ("right", "partial", "wrong_attribute", "wrong_object", "none")
INSTRUCTION_FOLLOWING = {"right": 4, "partial": 3, "wrong_attribute": 2, "wrong_object": 2, "none": 1}
_CHANGE_WEIGHTS = (0.3, 0.2, 0.15, 0.15, 0.2)
_CLEAN_PROBABILITY = 0.4
OPERATIONS = ("recolor", "move", "remove", "resize")
MIN_IMAGE_SIZE = 28  # smart_resize's factor: no smaller side survives Qwen2.5-VL's processing
_MOVE = 0.25          # move distance, fraction of the image side
_PARTIAL_MOVE = 1 / 3
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_DIRECTION_WORDS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
_RESIZE = {"bigger": (1.6, 1.2), "smaller": (0.55, 0.8)}  # (full, partial) factor
_OPPOSITE_SIZE = {"bigger": "smaller", "smaller": "bigger"}
_FADED = 0.45
_TEMPLATES = {
    "recolor": ("make the {shape} {value}", "change the colour of the {shape} to {value}", "turn the {shape} {value}"),
    "move": ("move the {shape} {value}", "shift the {shape} {value}"),
    "remove": ("remove the {shape}", "delete the {shape}", "take the {shape} out of the picture"),
    "resize": ("make the {shape} {value}", "make the {shape} a lot {value}"),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one edit was made; its name is what the row's model column says."""
  change: str
  degradation: str = "clean"  # or one of demo_images.DEGRADATIONS
  severity: int = 0           # 0 when clean, else 1..3

  @property
  def name(self) -> str:
    quality = "clean" if self.severity == 0 else f"{self.degradation}-{self.severity}"
    return f"{self.change}+{quality}"

  @property
  def instruction_following(self) -> int:
    return INSTRUCTION_FOLLOWING[self.change]

  @property
  def visual_quality(self) -> int:
    return 4 - self.severity


@dataclasses.dataclass(frozen=True)
class Task:
  """The requested change of `scene.shapes[-1]` (the target, drawn on top); `value` is a colour, direction or size
  word, and `wrong_value` the one a `wrong_attribute` edit uses instead."""
  operation: str
  value: str = ""
  wrong_value: str = ""


def _pick(rng: np.random.RandomState, options: Sequence[T]) -> T:
  return options[rng.randint(len(options))]


def random_scene(rng: np.random.RandomState) -> Scene:
  """Two shapes of different kinds and colours, apart from each other; the second is the one instructions target."""
  first, second = rng.choice(len(demo_images.BACKGROUNDS), size=2, replace=False)
  split = _pick(rng, ("none", "vertical", "horizontal"))
  kinds = rng.choice(demo_images.SHAPES, size=2, replace=False)
  colors = rng.choice(list(demo_images.COLORS), size=2, replace=False)
  radii = rng.uniform(0.13, 0.19, size=2)
  while True:  # two shapes apart from each other; a handful of tries at most
    centres = [rng.uniform(r + 0.05, 0.95 - r, size=2) for r in radii]
    if np.hypot(*(centres[0] - centres[1])) >= radii.sum() + 0.05:
      break
  shapes = tuple(Shape(str(k), str(c), float(x), float(y), float(r))
                 for k, c, (x, y), r in zip(kinds, colors, centres, radii))
  background = (demo_images.BACKGROUNDS[first], demo_images.BACKGROUNDS[second if split != "none" else first])
  return Scene(background=background, split=split, shapes=shapes)


def _room(shape: Shape, direction: str) -> float:
  dx, dy = _DIRECTIONS[direction]
  if dx:
    return (1 - shape.radius - shape.cx) if dx > 0 else (shape.cx - shape.radius)
  return (1 - shape.radius - shape.cy) if dy > 0 else (shape.cy - shape.radius)


def random_task(rng: np.random.RandomState, scene: Scene) -> Task:
  """A change of the target that stays visible: a new colour, a direction with room, a size."""
  other, target = scene.shapes
  operation = _pick(rng, OPERATIONS)
  if operation == "recolor":
    free = [c for c in demo_images.COLORS if c not in (target.color, other.color)]
    value, wrong = rng.choice(free, size=2, replace=False)
    return Task(operation, str(value), str(wrong))
  if operation == "move":
    # Only directions with room for the full move, so a right edit never looks like no edit. Scene margins leave
    # at least one such direction per axis, hence always a second one for the wrong edit.
    feasible = [d for d in _DIRECTIONS if _room(target, d) >= _MOVE]
    value = _pick(rng, feasible)
    dx, dy = _DIRECTIONS[value]
    opposite = next(d for d, v in _DIRECTIONS.items() if v == (-dx, -dy))
    wrong = opposite if opposite in feasible else _pick(rng, [d for d in feasible if d != value])
    return Task(operation, value, wrong)
  if operation == "resize":
    value = _pick(rng, ("bigger", "smaller"))
    return Task(operation, value, _OPPOSITE_SIZE[value])
  return Task(operation)


def _instruction(rng: np.random.RandomState, scene: Scene, task: Task) -> str:
  template = _pick(rng, _TEMPLATES[task.operation])
  value = _DIRECTION_WORDS[task.value] if task.operation == "move" else task.value
  return template.format(shape=scene.shapes[-1].kind, value=value)


def _changed(shape: Shape, operation: str, value: str, partial: bool = False) -> Shape | None:
  """`shape` after `operation` with `value`, in full or partly done; None when removed."""
  if operation == "recolor":  # a partial recolouring is made in pixels, see `edit_pixels`
    return dataclasses.replace(shape, color=value)
  if operation == "move":
    dx, dy = _DIRECTIONS[value]
    step = _MOVE * (_PARTIAL_MOVE if partial else 1.0)
    return dataclasses.replace(shape, cx=float(np.clip(shape.cx + dx * step, shape.radius, 1 - shape.radius)),
                               cy=float(np.clip(shape.cy + dy * step, shape.radius, 1 - shape.radius)))
  if operation == "resize":
    full, part = _RESIZE[value]
    return dataclasses.replace(shape, radius=shape.radius * (part if partial else full))
  if operation == "remove":
    return dataclasses.replace(shape, alpha=_FADED) if partial else None
  raise ValueError(f"unknown operation {operation!r}")


def _with_shape(scene: Scene, index: int, shape: Shape | None) -> Scene:
  shapes = list(scene.shapes)
  shapes[index] = shape
  return dataclasses.replace(scene, shapes=tuple(s for s in shapes if s is not None))


def _edited_scene(scene: Scene, task: Task, change: str) -> Scene:
  target = len(scene.shapes) - 1
  shape = scene.shapes[target]
  if change == "none":
    return scene
  if change in ("right", "partial"):
    return _with_shape(scene, target, _changed(shape, task.operation, task.value, partial=change == "partial"))
  if change == "wrong_object":
    return _with_shape(scene, 0, _changed(scene.shapes[0], task.operation, task.value))
  if change == "wrong_attribute":
    if task.operation == "remove":  # shrunk instead of removed
      return _with_shape(scene, target, _changed(shape, "resize", "smaller"))
    return _with_shape(scene, target, _changed(shape, task.operation, task.wrong_value))
  raise ValueError(f"unknown change {change!r}")


def edit_pixels(scene: Scene, task: Task, change: str, size: int) -> np.ndarray:
  """The clean edit of `scene` for `change` ([size, size, 3] uint8)."""
  pixels = demo_images.render(_edited_scene(scene, task, change), size)
  if change == "partial" and task.operation == "recolor":
    # Colour is all or nothing per pixel, so half done is half the shape: its left part keeps the old colour.
    cut = round(scene.shapes[-1].cx * size)
    pixels[:, :cut] = demo_images.render(scene, size)[:, :cut]
  return pixels


def _recipe(rng: np.random.RandomState, change: str) -> Recipe:
  if rng.uniform() < _CLEAN_PROBABILITY:
    return Recipe(change)
  return Recipe(change, _pick(rng, demo_images.DEGRADATIONS), int(rng.randint(1, 4)))


def _recipes(rng: np.random.RandomState, count: int) -> list[Recipe]:
  """`count` different recipes, the first a right edit."""
  recipes = [_recipe(rng, "right")]
  while len(recipes) < count:
    recipe = _recipe(rng, CHANGES[rng.choice(len(CHANGES), p=_CHANGE_WEIGHTS)])
    if recipe not in recipes:
      recipes.append(recipe)
  return recipes


def check_sizes(num_pairs: int, image_size: int, edits_per_source: int) -> None:
  if num_pairs < 1:
    raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
  if not 2 <= edits_per_source <= 10:
    raise ValueError(f"edits_per_source must be in 2..10, got {edits_per_source}")


def generate_rows(split: str, num_pairs: int, *, seed: int, image_size: int, edits_per_source: int) -> Iterator[dict]:
  """`num_pairs` rows of `split` ("train" or "test"), in the EditReward-Data schema."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
  check_sizes(num_pairs, image_size, edits_per_source)
  pairs_per_source = edits_per_source * (edits_per_source - 1) // 2
  made = 0
  for index in range(math.ceil(num_pairs / pairs_per_source)):
    rng = np.random.RandomState([seed, SPLITS[split], index])
    scene = random_scene(rng)
    task = random_task(rng, scene)
    instruction = _instruction(rng, scene, task)
    recipes = _recipes(rng, edits_per_source)
    key = f"demo-{split}-{index:06d}"
    source = demo_images.encode_png(demo_images.render(scene, image_size))
    images = []
    for recipe in recipes:
      pixels = edit_pixels(scene, task, recipe.change, image_size)
      if recipe.severity:
        pixels = demo_images.degrade(pixels, recipe.degradation, recipe.severity, rng)
      images.append(demo_images.encode_png(pixels))
    for pair_index, pair in enumerate(itertools.combinations(range(edits_per_source), 2)):
      if made == num_pairs:
        return
      left, right = pair if rng.uniform() < 0.5 else pair[::-1]
      row = {"key": key, "unique_key": f"{key}-{pair_index}", "pair_index": pair_index, "instruction": instruction,
             "source_img": source, "source_img_path": f"{key}/source.png", "metadata_index": index}
      for side, edit in (("left", left), ("right", right)):
        recipe = recipes[edit]
        rel = f"{key}/edit{edit}.png"
        row.update({
            f"{side}_output_image": images[edit], f"{side}_output_image_path": rel, f"{side}_img_rel": rel,
            f"{side}_model": recipe.name, f"{side}_instruction_following_score": float(recipe.instruction_following),
            f"{side}_quality_aesthetic_score": float(recipe.visual_quality),
            f"{side}_overall_score": float(recipe.instruction_following + recipe.visual_quality),
        })
      row["vote_type"] = vote_from_scores(row["left_overall_score"], row["right_overall_score"])
      made += 1
      yield row
    if (index + 1) % 100 == 0:
      logging.info("editreward_demo %s: %d sources, %d pairs", split, index + 1, made)


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train_pairs: int = 2000
  num_test_pairs: int = 300
  image_size: int = 112
  edits_per_source: int = 4


def demo_config(*, seed: int = 0, num_train_pairs: int = 2000, num_test_pairs: int = 300, image_size: int = 112,
                edits_per_source: int = 4) -> DemoConfig:
  """The config for these settings; its name (the data_dir sub-folder) spells out all but the defaults'."""
  for num_pairs in (num_train_pairs, num_test_pairs):
    check_sizes(num_pairs, image_size, edits_per_source)
  settings = dict(seed=seed, num_train_pairs=num_train_pairs, num_test_pairs=num_test_pairs, image_size=image_size,
                  edits_per_source=edits_per_source)
  is_default = settings == {f.name: f.default for f in dataclasses.fields(DemoConfig) if f.name in settings}
  name = "default" if is_default else (f"seed{seed}-train{num_train_pairs}-test{num_test_pairs}-px{image_size}-"
                                        f"edits{edits_per_source}")
  return DemoConfig(name=name, description=f"synthetic edits: {settings}", **settings)


class EditrewardDemo(LocalBuilder):
  """Synthetic instruction-guided edits of simple shape scenes, labelled by how each edit was made."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Recolour, move, remove and resize edits; noise, blur and blocky degradations."}
  BUILDER_CONFIGS = [demo_config()]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=pair_features(),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    sizes = {"train": cfg.num_train_pairs, "test": cfg.num_test_pairs}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, num_pairs: int) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    rows = generate_rows(split, num_pairs, seed=cfg.seed, image_size=cfg.image_size,
                         edits_per_source=cfg.edits_per_source)
    yield from enumerate(rows)  # with shuffling off, TFDS writes in the order of these keys
