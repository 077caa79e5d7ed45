"""Scoring edits with a trained reward model: `load_scorer(CKPT).score(instructions, sources, edits)`.

Host work (decode, resize, tokenize) for the next batch overlaps the device's forward of the current one (JAX
dispatch is asynchronous). Batches are padded to power-of-two buckets (rows, sequence length, windows, ...), so a run
compiles a handful of programs whatever the image sizes.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent import futures
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editreward_jax import batching, model_dir, processing
from editreward_jax.models import positions
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.prompts import DIMENSIONS, Prompts, load_prompts
from editreward_jax.reward import FUSIONS, RewardModel, fuse
from editreward_jax.scores import Scores  # re-exported: scoring.Scores


@nnx.jit
def _forward(model: RewardModel, arrays: dict[str, Any]) -> jax.Array:
  return model(arrays["batch"], arrays["reward_index"], arrays["dimension"])


class Scorer:

  def __init__(self, model: RewardModel, processor: processing.Processor, *, rope_mode: str, fusion: str,
               batch_size: int = 8, dedup: bool = True):
    if rope_mode not in positions.ROPE_MODES:
      raise ValueError(f"unknown rope mode {rope_mode!r}; choose one of {positions.ROPE_MODES}")
    if fusion not in FUSIONS:
      raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.model, self.processor = model, processor
    self.rope_mode, self.fusion, self.batch_size, self.dedup = rope_mode, fusion, batch_size, dedup
    self.pad_id = processor.tokenizer.pad_token_id or 0

  def collate(self, examples: Sequence[processing.ProcessedExample], batch_size: int) -> dict[str, Any]:
    """Rows [edit 0: dim 0, dim 1, edit 1: ...], padded to 2 * batch_size rows."""
    table = batching.ImageTable(self.dedup)
    rows = [r for ex in examples for r in batching.edit_rows(ex, table)]
    shape = batching.BatchShape(rows=2 * batch_size, images=2 * batch_size)
    return batching.stack_shards([batching.collate(rows, table, self.model.cfg, rope_mode=self.rope_mode, shape=shape,
                                                   pad_id=self.pad_id)])  # one shard: the training batch format

  def _process(self, batch_size, instructions, sources, edits, where) -> dict[str, Any]:
    examples = [self.processor(i, s, e, where=w) for i, s, e, w in zip(instructions, sources, edits, where)]
    return self.collate(examples, batch_size)

  def score(self, instructions: Sequence[str], source_images: Sequence[Any], edited_images: Sequence[Any], *,
            batch_size: int | None = None, where: Sequence[str] | None = None, progress: bool = False) -> Scores:
    """Scores N edits. Images are PIL images, paths or encoded bytes; `where` labels each edit in errors."""
    n = len(instructions)
    if not n == len(source_images) == len(edited_images):
      raise ValueError(f"got {n} instructions, {len(source_images)} source images, {len(edited_images)} edits")
    bs = batch_size or self.batch_size
    where = list(where) if where is not None else [f"edit {i}" for i in range(n)]
    starts = list(range(0, n, bs))
    per_dim = np.zeros((n, len(DIMENSIONS), 2), np.float32)
    t0 = time.time()
    with futures.ThreadPoolExecutor(max_workers=1) as host:
      submit = lambda s: host.submit(self._process, bs, *(x[s:s + bs] for x in
                                                          (instructions, source_images, edited_images, where)))
      pending = submit(starts[0])
      for k, s in enumerate(starts):
        arrays = pending.result()
        out = _forward(self.model, jax.tree.map(jnp.asarray, arrays))  # dispatched asynchronously
        if k + 1 < len(starts):
          pending = submit(starts[k + 1])
        m = min(bs, n - s)
        per_dim[s:s + m] = batching.edit_outputs(np.asarray(out)[:2 * m])
        if progress:
          logging.info("scored %d/%d edits (%.1f edits/s)", s + m, n, (s + m) / (time.time() - t0))
    fused = np.asarray(fuse(jnp.asarray(per_dim), self.fusion))
    return Scores(mu=fused[:, 0], log_sigma=fused[:, 1],
                  dims={d: (per_dim[:, i, 0], per_dim[:, i, 1]) for i, d in enumerate(DIMENSIONS)})


def load_scorer(checkpoint: str, *, prompts: str | Prompts | None = None, rope_mode: str | None = None,
                fusion: str | None = None, options: RuntimeOptions | None = None, batch_size: int = 8,
                dedup: bool = True) -> Scorer:
  """A Scorer for a CKPT (model directory, training workdir or step); `prompts` / `rope_mode` / `fusion` override
  what the checkpoint records."""
  meta = model_dir.resolve(checkpoint)
  if meta.tokenizer_dir is None:
    raise ValueError(f"{meta.directory} has no tokenizer/ directory: scoring needs the tokenizer")
  if isinstance(prompts, (str, os.PathLike)):
    prompts = load_prompts(prompts)
  prompts = prompts or meta.prompts()
  model, _ = model_dir.load_model(checkpoint, options or RuntimeOptions())
  tokenizer = processing.load_tokenizer(meta.tokenizer_dir)
  processor = processing.Processor(tokenizer, prompts, patch_size=meta.model.vision.patch_size,
                                   merge_size=meta.model.vision.spatial_merge_size,
                                   temporal_patch_size=meta.model.vision.temporal_patch_size, **meta.pixels())
  return Scorer(model, processor, rope_mode=rope_mode or meta.settings.get("rope_mode", "sequential"),
                fusion=fusion or meta.settings.get("fusion", "mean"), batch_size=batch_size, dedup=dedup)
