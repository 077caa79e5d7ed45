"""Pixels of the synthetic demo set: flat scenes of simple shapes, degradations, deterministic PNG.

Everything here is a pure function of its arguments (a `RandomState` supplies the noise), with integer rasterization
by PIL and arithmetic in NumPy, so the same inputs give byte-identical PNGs on a given Pillow/zlib build.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
# Saturated colours that stay far apart in RGB, so a colour change is obvious even after degradation.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
# Pale backgrounds, so every shape colour stands out against them.
BACKGROUNDS = ((245, 245, 245), (205, 205, 205), (235, 225, 200), (200, 220, 240), (210, 235, 210), (245, 215, 225))
DEGRADATIONS = ("noise", "blur", "blocky")
# Severity 1 (mild) .. 3 (severe): noise standard deviation, box-blur radius (applied twice), block size; all as a
# fraction of 112 px so they look the same at any image size.
_STRENGTH = {"noise": (18.0, 40.0, 70.0), "blur": (1 / 112, 3 / 112, 6 / 112), "blocky": (4 / 112, 8 / 112, 16 / 112)}


@dataclasses.dataclass(frozen=True)
class Shape:
  kind: str
  color: str
  cx: float      # centre, fraction of the image side
  cy: float
  radius: float  # half extent, fraction of the image side
  alpha: float = 1.0


@dataclasses.dataclass(frozen=True)
class Scene:
  background: tuple[tuple[int, int, int], tuple[int, int, int]]
  split: str  # "none", "vertical" (left | right colours) or "horizontal" (top / bottom)
  shapes: tuple[Shape, ...]


def _shape_mask(shape: Shape, size: int) -> np.ndarray:
  mask = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(mask)
  cx, cy, r = shape.cx * size, shape.cy * size, max(shape.radius * size, 1.0)
  box = [round(cx - r), round(cy - r), round(cx + r), round(cy + r)]
  if shape.kind == "circle":
    draw.ellipse(box, fill=255)
  elif shape.kind == "square":
    draw.rectangle(box, fill=255)
  elif shape.kind == "triangle":
    draw.polygon([(round(cx), round(cy - r)), (round(cx - r), round(cy + r)), (round(cx + r), round(cy + r))], fill=255)
  else:
    raise ValueError(f"unknown shape {shape.kind!r}")
  return np.asarray(mask, np.float32)[..., None] / 255.0


def render(scene: Scene, size: int) -> np.ndarray:
  """[size, size, 3] uint8: background, then the shapes in order (later ones on top)."""
  first, second = (np.asarray(c, np.float32) for c in scene.background)
  img = np.empty((size, size, 3), np.float32)
  img[:] = first
  if scene.split == "vertical":
    img[:, size // 2:] = second
  elif scene.split == "horizontal":
    img[size // 2:] = second
  for shape in scene.shapes:
    cover = _shape_mask(shape, size) * shape.alpha
    img = img * (1.0 - cover) + np.asarray(COLORS[shape.color], np.float32) * cover
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
  """Separable mean filter of width 2*radius+1 with edge padding."""
  width = 2 * radius + 1
  for axis in (0, 1):
    pad = [(0, 0)] * 3
    pad[axis] = (radius + 1, radius)
    cum = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis)
    hi = np.take(cum, np.arange(width, cum.shape[axis]), axis=axis)
    lo = np.take(cum, np.arange(0, cum.shape[axis] - width), axis=axis)
    img = (hi - lo) / width
  return img


def _blocky(img: np.ndarray, block: int) -> np.ndarray:
  """Each block x block tile replaced by its mean, like a heavily compressed or upscaled image."""
  h, w, c = img.shape
  ph, pw = -h % block, -w % block
  padded = np.pad(img, [(0, ph), (0, pw), (0, 0)], mode="edge")
  tiles = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block, c).mean(axis=(1, 3))
  return np.repeat(np.repeat(tiles, block, axis=0), block, axis=1)[:h, :w]


def degrade(img: np.ndarray, kind: str, severity: int, rng: np.random.RandomState) -> np.ndarray:
  """`img` (uint8) with a visible degradation of `kind` at `severity` 1..3; uint8 out."""
  if not 1 <= severity <= 3:
    raise ValueError(f"severity {severity} is not in 1..3")
  strength = _STRENGTH[kind][severity - 1]
  size = img.shape[0]
  out = img.astype(np.float64)
  if kind == "noise":
    out = out + rng.normal(0.0, strength, size=img.shape)
  elif kind == "blur":
    radius = max(1, round(strength * size))
    out = _box_blur(_box_blur(out, radius), radius)
  else:
    out = _blocky(out, max(2, round(strength * size)))
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
  """PNG with fixed settings and no metadata chunks, so equal pixels give equal bytes."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(img, np.uint8)).save(buf, format="PNG", compress_level=6)
  return buf.getvalue()
