"""Host-side (NumPy) layout of a batch of images for the vision tower.

The vision tower keeps its hidden states in a *padded window layout*: the sequence is cut into slots of fixed size
(one attention window = `window_units**2` merged units = 64 patches for Qwen2.5-VL), windows follow transformers'
window order (image by image, windows row-major, units row-major inside a window), and a window with fewer units is
padded at its end. Window attention is then a reshape to [num_windows, window_patches] with per-window valid lengths;
full-attention blocks gather each image's patches into a compact [num_images, max_patches] layout. Everything that
depends on image sizes is computed here, once, outside jit; the jitted tower sees only fixed-shape index arrays, so a
batch of images of different sizes is one call with no Python loop over images.

Pixel rows arrive as `Qwen2VLImageProcessor` writes them: per image, patches in merge-block order (each run of
`spatial_merge_size**2` consecutive rows is one merged unit), images concatenated; each row is C x temporal x patch x
patch values, channel-major (the Conv3d weight's flattening). They are either float (normalised, as transformers
gives them) or uint8 with the table of every normalised value (`processing.PIXEL_TABLE`): a quarter of the bytes to
move through worker shared memory and to the device, where `normalise_pixels` turns them into the same floats.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from editreward_jax.models.config import VisionConfig


@dataclasses.dataclass(frozen=True)
class VisionBatch:
  """Fixed-shape inputs of the vision tower (NumPy on the host, jax arrays once transferred)."""
  pixels: np.ndarray          # [S, patch_dim] pixel rows in window-slot order, zeros in padding slots; float or uint8
  rope_pos: np.ndarray        # [S, 2] int32 (row, column) patch coordinates for the 2-D rotary embedding
  window_lengths: np.ndarray  # [W] int32 valid patches per window (valid slots are a prefix of each window)
  image_slots: np.ndarray     # [I, P] int32 slot of each patch of each image (compact, for full attention)
  image_lengths: np.ndarray   # [I] int32 patches per image
  slot_to_image: np.ndarray   # [S] int32 flat index into [I * P] for each slot (0 for padding slots)
  unit_slots: np.ndarray      # [U] int32 merged-unit slot of each merged token, images in input order
  pixel_table: np.ndarray | None = None  # [C, 256] float32 value of each uint8 pixel per channel; None: float pixels

  def tree(self) -> dict[str, np.ndarray]:
    """The arrays the model takes (no `pixel_table` key with float pixels)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def normalise_pixels(pixels, table):
  """uint8 pixel rows [..., C * temporal * patch * patch] -> float rows: `table[c, value]` for each value of
  channel c. Plain array methods, so the one definition serves NumPy on the host and JAX on the device."""
  channels = table.shape[0]
  shape = pixels.shape
  index = pixels.reshape(*shape[:-1], channels, -1).astype(np.int32)
  index = index + (256 * np.arange(channels, dtype=np.int32))[:, None]  # rows of the flat table
  return table.reshape(-1)[index].reshape(shape)


def pad_to(n: int, buckets: Sequence[int] | None) -> int:
  """Smallest bucket >= n (n itself without buckets)."""
  if not buckets:
    return n
  for b in sorted(buckets):
    if b >= n:
      return b
  raise ValueError(f"size {n} exceeds the largest bucket {max(buckets)}")


def check_grids(grid_thw: np.ndarray, cfg: VisionConfig) -> np.ndarray:
  grid_thw = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
  m = cfg.spatial_merge_size
  for i, (t, h, w) in enumerate(grid_thw):
    if t != 1:
      raise ValueError(f"image {i}: grid_t={t}; only still images (grid_t=1) are supported")
    if h % m or w % m or h <= 0 or w <= 0:
      raise ValueError(f"image {i}: grid (h={h}, w={w}) is not a positive multiple of spatial_merge_size {m}")
  return grid_thw


def _unit_windows(llm_h: int, llm_w: int, wu: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For each unit (row-major in the image): its window (windows row-major) and its place in that window (row-major
  within the window, whose width is cut at the image's right edge); and each window's unit count."""
  r, c = np.divmod(np.arange(llm_h * llm_w), llm_w)
  windows_per_row = -(-llm_w // wu)
  window = (r // wu) * windows_per_row + c // wu
  width = np.minimum(wu, llm_w - (c // wu) * wu)
  place = (r % wu) * width + c % wu
  return window, place, np.bincount(window, minlength=-(-llm_h // wu) * windows_per_row)


def _patch_coords(h: int, w: int, m: int) -> np.ndarray:
  """(row, col) of each patch in merge-block order, as the processor lays patches out."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  shape = (h // m, m, w // m, m)
  rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
  cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
  return np.stack([rows, cols], axis=-1)


def num_windows(grid_thw: np.ndarray, cfg: VisionConfig) -> int:
  wu = cfg.window_units
  m = cfg.spatial_merge_size
  return int(sum(-(-(h // m) // wu) * -(-(w // m) // wu) for _, h, w in np.asarray(grid_thw).reshape(-1, 3)))


def build_vision_batch(pixel_values: np.ndarray | None, grid_thw: np.ndarray, cfg: VisionConfig, *,
                       windows_bucket: Sequence[int] | None = None, images_bucket: Sequence[int] | None = None,
                       patches_bucket: Sequence[int] | None = None, units_bucket: Sequence[int] | None = None,
                       dtype=np.float32, pixel_table: np.ndarray | None = None) -> VisionBatch:
  """Lays out `pixel_values` [sum(h*w), patch_dim] of images with `grid_thw` [n, 3] for the vision tower.

  The buckets pad the number of windows, images, patches per image and merged units to one of a few sizes so that a
  run compiles a handful of programs. `pixel_values=None` lays out indices only (pixels then all zero). Pixels are
  float `dtype`, or, with `pixel_table` ([C, 256], `processing.PIXEL_TABLE`), uint8 values carried with the table
  that gives their floats (the model normalises them).
  """
  grid_thw = check_grids(grid_thw, cfg)
  m, mu, wu = cfg.spatial_merge_size, cfg.merge_unit, cfg.window_units
  win_patches = wu * wu * mu
  n_img = len(grid_thw)
  patches_per_image = [int(h * w) for _, h, w in grid_thw]
  total_patches = sum(patches_per_image)
  if pixel_values is not None:
    pixel_values = np.asarray(pixel_values)
    if pixel_values.shape != (total_patches, cfg.patch_dim):
      raise ValueError(f"pixel_values has shape {pixel_values.shape}; grid_thw implies ({total_patches}, "
                       f"{cfg.patch_dim})")
    if (pixel_values.dtype == np.uint8) != (pixel_table is not None):
      raise ValueError(f"{pixel_values.dtype} pixel_values " + ("with" if pixel_table is not None else "without") +
                       " a pixel_table: uint8 values need the table that gives their floats, float values none")
  if pixel_table is not None:
    pixel_table = np.asarray(pixel_table, np.float32)
    if pixel_table.ndim != 2 or pixel_table.shape[1] != 256 or cfg.patch_dim % pixel_table.shape[0]:
      raise ValueError(f"pixel_table has shape {pixel_table.shape}; need [channels, 256] with channels dividing "
                       f"patch_dim {cfg.patch_dim}")
    dtype = np.uint8

  n_win = pad_to(max(num_windows(grid_thw, cfg), 1), windows_bucket)
  n_slots = n_win * win_patches
  n_img_pad = pad_to(max(n_img, 1), images_bucket)
  p_max = pad_to(max(patches_per_image, default=1), patches_bucket)
  n_units = pad_to(max(total_patches // mu, 1), units_bucket)

  patch_src = np.full(n_slots, -1, np.int64)
  rope_pos = np.zeros((n_slots, 2), np.int32)
  window_lengths = np.zeros(n_win, np.int32)
  image_slots = np.zeros((n_img_pad, p_max), np.int32)
  image_lengths = np.zeros(n_img_pad, np.int32)
  slot_to_image = np.zeros(n_slots, np.int32)
  unit_slots = np.zeros(n_units, np.int32)

  win = 0
  patch_base = 0
  for i, (_, h, w) in enumerate(grid_thw):
    n_units = int(h * w) // mu
    window, place, counts = _unit_windows(int(h) // m, int(w) // m, wu)
    unit_slot = (win + window) * (wu * wu) + place  # merged-unit slot of each unit of this image
    unit_slots[patch_base // mu:patch_base // mu + n_units] = unit_slot
    slots = (unit_slot[:, None] * mu + np.arange(mu)).reshape(-1)  # patch slots, in the processor's patch order
    patch_src[slots] = patch_base + np.arange(n_units * mu)
    rope_pos[slots] = _patch_coords(int(h), int(w), m)
    window_lengths[win:win + len(counts)] = counts * mu
    win += len(counts)
    slots = np.sort(slots)  # window order: any order works for full attention, this one reads memory in sequence
    image_slots[i, :len(slots)] = slots
    image_lengths[i] = len(slots)
    slot_to_image[slots] = i * p_max + np.arange(len(slots))
    patch_base += int(h * w)

  pixels = np.zeros((n_slots, cfg.patch_dim), dtype)
  if pixel_values is not None:
    valid = patch_src >= 0
    pixels[valid] = pixel_values[patch_src[valid]]
  return VisionBatch(pixels=pixels, rope_pos=rope_pos, window_lengths=window_lengths, image_slots=image_slots,
                     image_lengths=image_lengths, slot_to_image=slot_to_image, unit_slots=unit_slots,
                     pixel_table=pixel_table)


def image_runs(row: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
  """[start, end) of each run of consecutive image tokens in one row of token ids."""
  is_image = np.concatenate([[False], np.asarray(row) == image_token_id, [False]])
  edges = np.flatnonzero(np.diff(is_image.astype(np.int8)))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def image_token_slots(input_ids: np.ndarray, lengths: np.ndarray, image_token_id: int, batch: VisionBatch | None,
                      units_per_image: Sequence[int], image_refs: Sequence[Sequence[int]]) -> np.ndarray:
  """[B, L] int32: for each `<|image_pad|>` token, the merged-unit slot whose feature goes there; -1 elsewhere.

  The k-th run of image tokens in row r shows image `image_refs[r][k]` (an index into the images of `batch`), so
  one encoded image can feed several rows (vision dedup). Each run must have exactly that image's unit count.
  """
  out = np.full(np.shape(input_ids), -1, np.int32)
  offsets = np.concatenate([[0], np.cumsum(units_per_image, dtype=np.int64)])
  for r, (row, n) in enumerate(zip(np.asarray(input_ids), lengths)):
    runs = image_runs(row[:n], image_token_id)
    if len(runs) != len(image_refs[r]):
      raise ValueError(f"row {r}: {len(runs)} runs of image tokens but {len(image_refs[r])} images referenced")
    for (start, end), img in zip(runs, image_refs[r]):
      if batch is None or not 0 <= img < len(units_per_image):
        raise ValueError(f"row {r}: image {img} referenced, but the batch has {len(units_per_image)} images")
      if end - start != units_per_image[img]:
        raise ValueError(f"image features and image tokens do not match: row {r} has a run of {end - start} image "
                         f"tokens for image {img}, which has {units_per_image[img]} merged units")
      out[r, start:end] = batch.unit_slots[offsets[img]:offsets[img + 1]]
  return out
