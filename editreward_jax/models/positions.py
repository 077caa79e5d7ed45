"""Rotary position ids [3, B, L], computed on the host exactly as transformers computes them.

Two modes (see REFERENCE.md):
- "sequential": cumsum(attention_mask) - 1 on all three axes. The reference EditReward forward passes
  `inputs_embeds` without `input_ids`, so transformers 4.56/4.57 fell back to this; released checkpoints expect it.
- "mrope": native Qwen2.5-VL 3-D positions (what transformers 5.x computes from `mm_token_type_ids`): text tokens
  advance all three axes together; an image of llm grid (h, w) starting at position p gets temporal p, height
  p + row, width p + column, and the text after it resumes at p + max(h, w).
"""

from __future__ import annotations

import numpy as np

ROPE_MODES = ("sequential", "mrope")


def sequential_positions(mask: np.ndarray) -> np.ndarray:
  mask = np.asarray(mask, bool)
  pos = np.cumsum(mask, axis=-1) - 1
  pos = np.where(mask, pos, 0).astype(np.int32)
  return np.broadcast_to(pos[None], (3,) + pos.shape).copy()


def mrope_positions(input_ids: np.ndarray, mask: np.ndarray, image_grid_thw: np.ndarray | None, image_token_id: int,
                    spatial_merge_size: int) -> np.ndarray:
  input_ids = np.asarray(input_ids)
  mask = np.asarray(mask, bool)
  b, l = input_ids.shape
  out = np.zeros((3, b, l), np.int32)
  grids = iter(np.asarray(image_grid_thw).reshape(-1, 3) if image_grid_thw is not None else [])
  for row in range(b):
    ids = input_ids[row][mask[row]]
    is_image = ids == image_token_id
    pos = np.zeros((3, len(ids)), np.int64)
    cur, i = 0, 0
    while i < len(ids):
      j = i
      while j < len(ids) and is_image[j] == is_image[i]:
        j += 1
      if not is_image[i]:
        pos[:, i:j] = np.arange(j - i) + cur
        cur += j - i
      else:
        try:
          t, h, w = (int(v) for v in next(grids))
        except StopIteration:
          raise ValueError(f"row {row}: more image-token runs than images in image_grid_thw") from None
        gh, gw = h // spatial_merge_size, w // spatial_merge_size
        if t * gh * gw != j - i:
          raise ValueError(f"row {row}: an image run of {j - i} tokens does not match grid {(t, h, w)} "
                           f"({t * gh * gw} merged tokens)")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        pos[:, i:j] = np.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)]) + cur
        cur += max(gh, gw)
      i = j
    out[:, row, mask[row]] = pos
  if next(grids, None) is not None:
    raise ValueError("image_grid_thw has more images than the input has image-token runs")
  return out


def position_ids(mode: str, input_ids: np.ndarray, mask: np.ndarray, image_grid_thw: np.ndarray | None,
                 image_token_id: int, spatial_merge_size: int) -> np.ndarray:
  if mode == "sequential":
    return sequential_positions(mask)
  if mode == "mrope":
    return mrope_positions(input_ids, mask, image_grid_thw, image_token_id, spatial_merge_size)
  raise ValueError(f"unknown rope mode {mode!r}; choose one of {ROPE_MODES}")
