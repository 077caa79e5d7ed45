"""Host-side assembly of one fixed-shape backbone batch from token rows and images."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from editreward_jax.models import positions, vision_layout
from editreward_jax.models.config import ModelConfig


def sequential_refs(token_rows: Sequence[Sequence[int]], image_token_id: int) -> list[list[int]]:
  """Image references when every image-token run shows the next image in reading order (no reuse)."""
  refs, n = [], 0
  for row in token_rows:
    k = len(vision_layout.image_runs(np.asarray(row), image_token_id))
    refs.append(list(range(n, n + k)))
    n += k
  return refs


def make_batch(token_rows: Sequence[Sequence[int]], cfg: ModelConfig, *, pixel_values: np.ndarray | None = None,
               image_grid_thw: np.ndarray | None = None, image_refs: Sequence[Sequence[int]] | None = None,
               rope_mode: str = "sequential", seq_len: int | None = None, num_rows: int | None = None,
               pad_id: int = 0, vision_buckets: dict[str, Sequence[int]] | None = None,
               dtype=np.float32, pixel_table: np.ndarray | None = None) -> dict[str, Any]:
  """Right-pads `token_rows` to `seq_len` (and `num_rows` rows) and lays out the images they show.

  `pixel_values` / `image_grid_thw` hold the distinct images, concatenated. `image_refs[r]` lists the image shown by
  each image-token run of row r; without it, runs consume the images in reading order. Padding rows have length 0.
  Pixels are float `dtype`, or uint8 with their `pixel_table` (see `vision_layout.build_vision_batch`).
  Returns the keyword arguments of `Qwen25VL.__call__` as NumPy arrays: input_ids, lengths, position_ids,
  image_slots and vision (None without images, unless `vision_buckets` fix its layout: then all padding).
  """
  num_rows = len(token_rows) if num_rows is None else num_rows
  if len(token_rows) > num_rows:
    raise ValueError(f"{len(token_rows)} rows do not fit num_rows={num_rows}")
  lengths = np.zeros(num_rows, np.int32)
  lengths[:len(token_rows)] = [len(r) for r in token_rows]
  seq_len = int(lengths.max()) if seq_len is None else seq_len
  if lengths.max() > seq_len:
    raise ValueError(f"a row has {lengths.max()} tokens, more than seq_len={seq_len}")
  input_ids = np.full((num_rows, seq_len), pad_id, np.int32)
  for i, r in enumerate(token_rows):
    input_ids[i, :len(r)] = r
  mask = np.arange(seq_len)[None] < lengths[:, None]
  if image_refs is None:
    image_refs = sequential_refs(token_rows, cfg.image_token_id)
  image_refs = list(image_refs) + [[]] * (num_rows - len(image_refs))

  grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
  vision = None
  if len(grids) or vision_buckets:
    vision = vision_layout.build_vision_batch(pixel_values, grids, cfg.vision, dtype=dtype, pixel_table=pixel_table,
                                              **(vision_buckets or {}))
  units = [int(t * h * w) // cfg.vision.merge_unit for t, h, w in grids]
  slots = vision_layout.image_token_slots(input_ids, lengths, cfg.image_token_id, vision, units, image_refs)
  shown = np.array([grids[i] for refs in image_refs for i in refs]).reshape(-1, 3)
  pos = positions.position_ids(rope_mode, input_ids, mask, shown, cfg.image_token_id, cfg.vision.spatial_merge_size)
  return dict(input_ids=input_ids, lengths=lengths, position_ids=pos, image_slots=slots,
              vision=None if vision is None else vision.tree())
