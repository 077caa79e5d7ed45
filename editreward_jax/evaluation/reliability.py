"""A reliability diagram as a PNG (PIL only): the fraction of pairs the humans preferred against the model's mean
P(A preferred), one point per equal-mass bin of `metrics.calibration`, over the diagonal of perfect calibration."""

from __future__ import annotations

from typing import Mapping, Sequence

import PIL.Image
import PIL.ImageDraw

SIZE, MARGIN = 480, 48


def _xy(probability: float, fraction: float) -> tuple[float, float]:
  span = SIZE - 2 * MARGIN
  return MARGIN + probability * span, SIZE - MARGIN - fraction * span


def draw(bins: Sequence[Mapping[str, float]], title: str = "") -> PIL.Image.Image:
  image = PIL.Image.new("RGB", (SIZE, SIZE), "white")
  pen = PIL.ImageDraw.Draw(image)
  pen.rectangle([_xy(0, 1), _xy(1, 0)], outline="black")
  pen.line([_xy(0, 0), _xy(1, 1)], fill=(160, 160, 160), width=1)
  for tick in (0.0, 0.5, 1.0):
    pen.text((_xy(tick, 0)[0] - 8, SIZE - MARGIN + 6), f"{tick:.1f}", fill="black")
    pen.text((8, _xy(0, tick)[1] - 6), f"{tick:.1f}", fill="black")
  pen.text((MARGIN, SIZE - 20), "model P(A preferred), per equal-mass bin", fill="black")
  pen.text((MARGIN, 12), title or "fraction the humans preferred A", fill="black")
  points = [_xy(b["mean_probability"], b["fraction_preferred"]) for b in bins]
  if len(points) > 1:
    pen.line(points, fill=(31, 119, 180), width=2)
  for x, y in points:
    pen.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(31, 119, 180))
  return image


def write(path: str, bins: Sequence[Mapping[str, float]], title: str = "") -> str:
  draw(bins, title).save(path, format="PNG")
  return path
