"""Host-side collation of processed edits and pairs into fixed-shape reward-model batches.

A batch is a list of rows (one prompt each: token ids, the images it shows, the `<|Reward|>` position, the quality
dimension) plus the distinct images they show. With `dedup`, an image that several rows show (the source image of
both prompts and both candidates, the edited image of both prompts) is laid out, and so encoded, once: a scored edit
has 2 distinct images for 2 rows, a training pair 3 for 4 rows. Sizes are padded to a few buckets (`BatchShape`),
so a run compiles a handful of programs. Every batch the model sees is `stack_shards` of one or more such collated
shards (one per device group of the batch mesh axes in training), so each shard's images are encoded on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Sequence

import numpy as np

from editreward_jax.models import inputs, shared_prefix, vision_layout
from editreward_jax.models.config import ModelConfig
from editreward_jax.processing import PIXEL_TABLE, ProcessedExample, ProcessedImage
from editreward_jax.prompts import DIMENSIONS


@dataclasses.dataclass(frozen=True)
class Row:
  """One prompt row. `tokens` keeps the prompt up to and including `<|Reward|>`: under causal attention the
  tokens after it (the end of the turn) cannot change its hidden state, so they are never computed."""
  tokens: np.ndarray        # [L] int32
  images: tuple[int, ...]   # index into the batch's image table, one per image-token run
  reward_index: int         # position of <|Reward|>
  dimension: int            # index into DIMENSIONS

  def __post_init__(self):
    object.__setattr__(self, "tokens", np.asarray(self.tokens)[:self.reward_index + 1])


class ImageTable:
  """The distinct images of a batch, in insertion order; `add` returns an image's index."""

  def __init__(self, dedup: bool = True):
    self.dedup = dedup
    self.images: list[ProcessedImage] = []
    self._index: dict[Hashable, int] = {}

  def add(self, image: ProcessedImage, key: Hashable | None = None) -> int:
    """`key` identifies equal images (default: the pixel bytes); without dedup every call adds a copy."""
    if self.dedup:
      key = (image.pixel_values.tobytes(), tuple(image.grid_thw)) if key is None else key
      if key in self._index:
        return self._index[key]
      self._index[key] = len(self.images)
    self.images.append(image)
    return len(self.images) - 1


def edit_rows(example: ProcessedExample, table: ImageTable, keys: Sequence[Hashable | None] = (None, None)
              ) -> list[Row]:
  """One scored edit: a row per dimension, each showing (source, edited)."""
  refs = tuple(table.add(im, k) for im, k in zip(example.images, keys))
  return [Row(example.prompts[d], refs, example.reward_index[d], i) for i, d in enumerate(DIMENSIONS)]


def bucket(n: int, minimum: int = 1) -> int:
  """Next power of two >= max(n, minimum): at most log2 distinct sizes."""
  n = max(n, minimum)
  return 1 << (n - 1).bit_length()


def fine_bucket(n: int, per_octave: int = 4) -> int:
  """Smallest multiple of 2^k that is >= n with n in (per_octave, 2 per_octave] x 2^k (and n itself up to
  `per_octave`, a power of two): per_octave sizes per octave, so at most 1 / per_octave padding (4: 96 stays 96,
  where `bucket` makes it 128) for per_octave times as many distinct sizes."""
  if per_octave < 1 or per_octave & (per_octave - 1):
    raise ValueError(f"per_octave must be a power of two, got {per_octave}")
  if n <= per_octave:
    return max(n, 1)
  scale = 1 << max((n - 1).bit_length() - per_octave.bit_length(), 0)
  return -(-n // scale) * scale


@dataclasses.dataclass(frozen=True)
class BatchShape:
  """Static sizes of a collated batch. None: the bucket of the actual size."""
  rows: int | None = None
  seq_len: int | None = None
  images: int | None = None
  windows: int | None = None
  patches: int | None = None
  units: int | None = None
  packed_len: int | None = None  # tokens per packed group under prefix sharing
  suffix_len: int | None = None  # query slots of each suffix row under prefix sharing; 0: every row attends in full
  seq_multiple: int = 64  # sequence lengths are a multiple of this times a count with 8 sizes per octave


def seq_bucket(n: int, multiple: int = BatchShape.seq_multiple) -> int:
  """A sequence (or packed group) length: `multiple` times a count of 8 sizes per octave (at most 12.5% padding
  beyond the multiple: the decoder's work grows with every padded token, and a few more compiled sizes are cheap
  next to it)."""
  return fine_bucket(-(-n // multiple), per_octave=8) * multiple


def suffix_slots(rows_per_group: int) -> tuple[int, ...]:
  """The rows of a group (a pair's 4, an edit's 2; candidate-major, dimension-minor) that attend from their own new
  tokens only under prefix sharing: every rubric row after a candidate's first, whose images that row already showed,
  so that only its rubric text is new."""
  return tuple(j for j in range(rows_per_group) if j % len(DIMENSIONS))


def packed_sizes(rows: Sequence[Row], rows_per_group: int, image_token_id: int) -> tuple[int, int]:
  """(tokens of the longest group, new tokens of the longest suffix row) of `rows` packed by `shared_prefix.pack`
  (which finds the same common prefixes from image slots: two rows' image tokens are the same exactly when they
  show the same image of the table)."""
  longest, longest_suffix = 0, 0
  suffixes = suffix_slots(rows_per_group)
  for g in range(0, len(rows), rows_per_group):
    group = rows[g:g + rows_per_group]
    seq = max(len(r.tokens) for r in group)
    ids = np.zeros((len(group), seq), np.int32)
    images = np.full((len(group), seq), -1, np.int32)
    for i, r in enumerate(group):
      ids[i, :len(r.tokens)] = r.tokens
      for (start, end), image in zip(vision_layout.image_runs(np.asarray(r.tokens), image_token_id), r.images):
        images[i, start:end] = image
    lengths = [len(r.tokens) for r in group]
    _, first, shared = shared_prefix.group_layout(ids, images, np.array(lengths))
    longest = max(longest, len(first))
    longest_suffix = max([longest_suffix] + [lengths[j] - shared[j] for j in suffixes if j < len(group)])
  return longest, longest_suffix


def collate(rows: Sequence[Row], table: ImageTable, cfg: ModelConfig, *, rope_mode: str,
            shape: BatchShape = BatchShape(), pad_id: int = 0, prefix_groups: int | None = None) -> dict[str, Any]:
  """NumPy arrays for `RewardModel.__call__`: {"batch", "reward_index", "dimension", "row_valid"}.

  With `prefix_groups` = n, consecutive groups of n rows (a pair's 4, an edit's 2) compute their common prefixes
  once (`shared_prefix.pack`, suffix rows by `suffix_slots`); the outputs are the same.
  """
  images = table.images
  n_rows = shape.rows or bucket(len(rows))
  seq_len = shape.seq_len or seq_bucket(max(len(r.tokens) for r in rows), shape.seq_multiple)
  grids = np.array([im.grid_thw for im in images], np.int64).reshape(-1, 3)
  pixels = np.concatenate([im.pixel_values for im in images]) if images else None
  vision_buckets = {}
  if images or shape.windows:  # a shard of padding still gets the layout of its batch's other shards, all padding
    max_patches = max((int(h * w) for _, h, w in grids), default=1)
    windows = vision_layout.num_windows(grids, cfg.vision)
    units = int(sum(h * w for _, h, w in grids)) // cfg.vision.merge_unit
    vision_buckets = {
        "images_bucket": [shape.images or bucket(len(images))],
        "windows_bucket": [shape.windows or fine_bucket(windows)],
        "patches_bucket": [shape.patches or fine_bucket(max_patches)],
        "units_bucket": [shape.units or fine_bucket(units)],
    }
  batch = inputs.make_batch([r.tokens for r in rows], cfg, pixel_values=pixels, image_grid_thw=grids,
                            image_refs=[list(r.images) for r in rows], rope_mode=rope_mode, seq_len=seq_len,
                            num_rows=n_rows, pad_id=pad_id, vision_buckets=vision_buckets, pixel_table=PIXEL_TABLE)
  if prefix_groups:
    batch = shared_prefix.pack(batch, prefix_groups, shape.packed_len,
                               bucket=lambda n: seq_bucket(n, shape.seq_multiple),
                               suffix_slots=() if shape.suffix_len == 0 else suffix_slots(prefix_groups),
                               suffix_len=shape.suffix_len)
  reward_index = np.zeros(n_rows, np.int32)
  dimension = np.zeros(n_rows, np.int32)
  valid = np.zeros(n_rows, bool)
  for i, r in enumerate(rows):
    reward_index[i], dimension[i], valid[i] = r.reward_index, r.dimension, True
  return {"batch": batch, "reward_index": reward_index, "dimension": dimension, "row_valid": valid}


# [rows or groups, ...] in "batch" (the layout's indices are group-local); position_ids is [3, rows or groups, seq]
_ROW_ARRAYS = ("input_ids", "lengths", "image_slots")
_ROW_FIELDS = ("reward_index", "dimension", "row_valid")


def stack_shards(shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """`collate` outputs of K batch shards with one static shape -> one batch of K * R_s rows.

  Row arrays are concatenated shard-major (shard k owns rows k * R_s .. (k + 1) * R_s - 1; position_ids along their
  row axis 1), and every vision array gets a leading [K] axis. Indices stay shard-local: a row's image_slots point
  into the merged-unit slots of its own shard, which the model encodes on its own (on its shard's devices).
  """
  def shapes(shard):
    b = shard["batch"]
    vision = b["vision"] or {}
    return {**{k: np.shape(b[k]) for k in _ROW_ARRAYS + ("position_ids",) + _layout_keys(b)},
            **{k: np.shape(shard[k]) for k in _ROW_FIELDS}, **{f"vision/{k}": np.shape(v) for k, v in vision.items()}}

  want = shapes(shards[0])
  for i, shard in enumerate(shards[1:], 1):
    if shapes(shard) != want:
      raise ValueError(f"batch shard {i} has shapes {shapes(shard)}, shard 0 has {want}: collate every shard of a "
                       "batch with one BatchShape")
  batch = {k: _concatenate([s["batch"][k] for s in shards]) for k in _ROW_ARRAYS + _layout_keys(shards[0]["batch"])}
  batch["position_ids"] = _concatenate([s["batch"]["position_ids"] for s in shards], axis=1)
  visions = [s["batch"]["vision"] for s in shards]
  batch["vision"] = None if visions[0] is None else {k: stack([v[k] for v in visions]) for k in visions[0]}
  return {"batch": batch, **{k: _concatenate([s[k] for s in shards]) for k in _ROW_FIELDS}}


def _layout_keys(batch: dict[str, Any]) -> tuple[str, ...]:
  return shared_prefix.LAYOUT_KEYS if "row_tokens" in batch else ()


def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
  """np.stack, but one array becomes a view with a leading axis of 1, not a copy (pixels are most of a batch)."""
  return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def _concatenate(arrays: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
  return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)


def pair_outputs(outputs):
  """Model outputs of training-pair rows [4P, 2] -> [P, 2 (A, B), D, 2 (mu, log_sigma)] (row 4p + 2c + d)."""
  return outputs.reshape(-1, 2, len(DIMENSIONS), outputs.shape[-1])


def edit_outputs(outputs):
  """Model outputs of scored-edit rows [2N, 2] -> [N, D, 2 (mu, log_sigma)] (row 2n + d)."""
  return outputs.reshape(-1, len(DIMENSIONS), outputs.shape[-1])
