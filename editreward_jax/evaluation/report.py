"""Curation a person can look at: the top-K choice and a self-contained HTML page of every scored edit.

The page embeds a thumbnail of each source and edited image (JPEG, data URIs), so it can be mailed or archived as
one file; edits are sorted by fused score, the kept ones marked, above a histogram of the scores with the cut.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Mapping, Sequence

import numpy as np
import PIL.Image

from editreward_jax.prompts import DIMENSIONS

THUMBNAIL_PX = 160


def top_k(scored: Sequence[Mapping[str, Any]], k: int) -> list[Any]:
  """Ids of the k rows with the highest fused `mu`, best first (a tie keeps input order)."""
  order = sorted(range(len(scored)), key=lambda i: (-scored[i]["mu"], i))
  return [scored[i]["id"] for i in order[:k]]


def thumbnail(image: Any) -> str:
  """A data URI of a JPEG thumbnail (at most THUMBNAIL_PX on its long side) of a path, bytes or PIL image."""
  if isinstance(image, PIL.Image.Image):
    small = image.convert("RGB")
  else:
    with PIL.Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray, memoryview)) else image) as opened:
      small = opened.convert("RGB")
  small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
  buf = io.BytesIO()
  small.save(buf, format="JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram_svg(values: np.ndarray, cut: float | None, width: int = 640, height: int = 160, bins: int = 40) -> str:
  counts, edges = np.histogram(values, bins=bins)
  top = max(int(counts.max()), 1)
  bar = width / bins
  x = lambda v: (v - edges[0]) / max(edges[-1] - edges[0], 1e-12) * width
  rects = "".join(f'<rect x="{i * bar:.1f}" y="{height - c / top * height:.1f}" width="{bar - 1:.1f}" '
                  f'height="{c / top * height:.1f}" fill="#1f77b4"/>' for i, c in enumerate(counts))
  line = (f'<line x1="{x(cut):.1f}" y1="0" x2="{x(cut):.1f}" y2="{height}" stroke="#d62728" stroke-width="2"/>'
          if cut is not None else "")
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}">{rects}{line}'
          f'<text x="0" y="{height + 15}" font-size="12">{edges[0]:.3f}</text>'
          f'<text x="{width - 50}" y="{height + 15}" font-size="12">{edges[-1]:.3f}</text></svg>')


def write_html(path: str, scored: Sequence[Mapping[str, Any]], requests: Mapping[Any, Any],
               kept: Sequence[Any] | None = None, title: str = "EditReward scores") -> str:
  """The page: `scored` are output rows (id, mu, per-dimension objects), `requests` maps each id to its
  (instruction, source image, edited image); `kept` (top-K ids) marks the chosen edits."""
  kept_ids = set(kept or ())
  mu = np.array([row["mu"] for row in scored], np.float64)
  cut = min((row["mu"] for row in scored if row["id"] in kept_ids), default=None) if kept is not None else None
  rows = []
  for rank, i in enumerate(sorted(range(len(scored)), key=lambda i: (-scored[i]["mu"], i)), 1):
    row = scored[i]
    instruction, source, edited = requests[row["id"]]
    status = "kept" if row["id"] in kept_ids else ("dropped" if kept is not None else "")
    dims = "".join(f"<td>{row[d]['mu']:.4f}</td>" for d in DIMENSIONS)
    rows.append(f'<tr class="{status}"><td>{rank}</td><td>{html.escape(str(row["id"]))}</td><td>{status}</td>'
                f'<td><img src="{thumbnail(source)}" alt="source"></td>'
                f'<td><img src="{thumbnail(edited)}" alt="edited"></td>'
                f'<td>{html.escape(instruction)}</td><td><b>{row["mu"]:.4f}</b></td>{dims}</tr>')
  header = "".join(f"<th>{d.replace('_', ' ')}</th>" for d in DIMENSIONS)
  summary = (f"{len(scored)} edits" + (f", {len(kept_ids)} kept (fused score >= {cut:.4f})" if cut is not None
                                        else ""))
  page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:middle}} tr.kept{{background:#e8f5e9}}
tr.dropped{{background:#fbe9e7;opacity:.8}} img{{max-width:{THUMBNAIL_PX}px;max-height:{THUMBNAIL_PX}px}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{summary}; sorted by fused score (higher is better).</p>
<h2>Fused scores</h2>{_histogram_svg(mu, cut)}
<h2>Edits</h2><table><tr><th>rank</th><th>id</th><th></th><th>source</th><th>edited</th><th>instruction</th>
<th>fused</th>{header}</tr>
{"".join(rows)}
</table></body></html>
"""
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path
