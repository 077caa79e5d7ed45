"""Host-side assembly of one fixed-shape backbone batch from token rows and images."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from editreward_jax.models import positions, vision_layout
from editreward_jax.models.config import ModelConfig


def make_batch(token_rows: Sequence[Sequence[int]], cfg: ModelConfig, *, pixel_values: np.ndarray | None = None,
               image_grid_thw: np.ndarray | None = None, rope_mode: str = "sequential", seq_len: int | None = None,
               pad_id: int = 0, vision_buckets: dict[str, Sequence[int]] | None = None,
               dtype=np.float32) -> dict[str, Any]:
  """Right-pads `token_rows` to `seq_len` and lays out the images they refer to (in reading order).

  Returns the keyword arguments of `Qwen25VL.__call__` as NumPy arrays: input_ids, lengths, position_ids,
  image_slots and vision (None without images).
  """
  lengths = np.array([len(r) for r in token_rows], np.int32)
  seq_len = int(lengths.max()) if seq_len is None else seq_len
  if lengths.max() > seq_len:
    raise ValueError(f"a row has {lengths.max()} tokens, more than seq_len={seq_len}")
  input_ids = np.full((len(token_rows), seq_len), pad_id, np.int32)
  for i, r in enumerate(token_rows):
    input_ids[i, :len(r)] = r
  mask = np.arange(seq_len)[None] < lengths[:, None]
  pos = positions.position_ids(rope_mode, input_ids, mask, image_grid_thw, cfg.image_token_id,
                               cfg.vision.spatial_merge_size)
  vision = None
  if image_grid_thw is not None and len(np.asarray(image_grid_thw).reshape(-1, 3)):
    vision = vision_layout.build_vision_batch(pixel_values, image_grid_thw, cfg.vision, dtype=dtype,
                                              **(vision_buckets or {}))
    n_units = int(sum(h * w for _, h, w in np.asarray(image_grid_thw).reshape(-1, 3))) // cfg.vision.merge_unit
  else:
    n_units = 0
  slots = vision_layout.image_token_slots(np.where(mask, input_ids, pad_id), cfg.image_token_id, vision, n_units)
  return dict(input_ids=input_ids, lengths=lengths, position_ids=pos, image_slots=slots,
              vision=None if vision is None else vision.tree())
