"""Scoring edits with a trained reward model: `load_scorer(CKPT).score(instructions, sources, edits)`.

Host work (decode, resize, tokenize) for the next batch overlaps the device's forward of the current one (JAX
dispatch is asynchronous). Batches are padded to power-of-two buckets (rows, sequence length, windows, ...), so a run
compiles a handful of programs whatever the image sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from concurrent import futures
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editreward_jax import batching, cli, model_dir, processing, row_checks, sharding
from editreward_jax.models import positions
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.prompts import DIMENSIONS, PromptError, Prompts, load_prompts
from editreward_jax.reward import FUSIONS, RewardModel, fuse
from editreward_jax.scores import Scores  # re-exported: scoring.Scores

BAD_ROWS = ("raise", "skip")
DEFAULT_MAX_SEQ_LEN = 4096  # tokens per prompt; the reference's are about 850 (two 448x448 images and the rubric)


@nnx.jit
def _forward(model: RewardModel, arrays: dict[str, Any]) -> jax.Array:
  return model(arrays["batch"], arrays["reward_index"], arrays["dimension"])


class Scorer:

  def __init__(self, model: RewardModel, processor: processing.Processor, *, rope_mode: str, fusion: str,
               batch_size: int = 8, dedup: bool = True, prefix_sharing: bool = True, mesh=None,
               max_seq_len: int = DEFAULT_MAX_SEQ_LEN, max_image_pixels: int = row_checks.MAX_IMAGE_PIXELS, min_image_side: int = row_checks.MIN_IMAGE_SIDE):
    if rope_mode not in positions.ROPE_MODES:
      raise ValueError(f"unknown rope mode {rope_mode!r}; choose one of {positions.ROPE_MODES}")
    if fusion not in FUSIONS:
      raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.model, self.processor = model, processor
    self.rope_mode, self.fusion, self.batch_size, self.dedup = rope_mode, fusion, batch_size, dedup
    self.prefix_sharing = prefix_sharing  # an edit's two rubric rows compute their common prefix once (exact)
    self.mesh = mesh  # parameters sharded over it (load_scorer); activations follow the sharding table
    self.max_seq_len, self.max_image_pixels, self.min_image_side = max_seq_len, max_image_pixels, min_image_side
    self.pad_id = processor.tokenizer.pad_token_id or 0

  def collate(self, examples: Sequence[processing.ProcessedExample], batch_size: int) -> dict[str, Any]:
    """Rows [edit 0: dim 0, dim 1, edit 1: ...], padded to 2 * batch_size rows."""
    table = batching.ImageTable(self.dedup)
    rows = [r for ex in examples for r in batching.edit_rows(ex, table)]
    shape = batching.BatchShape(rows=2 * batch_size, images=2 * batch_size)
    groups = len(DIMENSIONS) if self.prefix_sharing else None
    return batching.stack_shards([batching.collate(rows, table, self.model.cfg, rope_mode=self.rope_mode, shape=shape,
                                                   pad_id=self.pad_id, prefix_groups=groups)])  # one shard

  def _process(self, batch_size, indices, instructions, sources, edits, where, skip: bool):
    """(arrays, indices of the edits kept, [(index, message)] of those skipped): with `skip`, an edit whose image
    or prompt fails is left out of the batch instead of raising."""
    examples, kept, errors = [], [], []
    for k, i, s, e, w in zip(indices, instructions, sources, edits, where):
      try:
        examples.append(self._example(i, s, e, w))
        kept.append(k)
      except ValueError as error:  # ImageError, PromptError: the message names the row and field
        if not skip:
          raise
        errors.append((k, str(error)))
    return (self.collate(examples, batch_size) if examples else None), kept, errors

  def _example(self, instruction, source, edited, where: str) -> processing.ProcessedExample:
    """One edit through the training pipeline's guards: each image's size judged from its header before it is
    decoded (a decompression bomb never is), and every prompt at most max_seq_len tokens."""
    for column, image in (("source_image", source), ("edited_image", edited)):
      row = {column: image}
      if isinstance(image, (str, os.PathLike)):
        row[f"{column}_path"] = os.fspath(image)  # named in the message
      try:
        row_checks.check_image_header(row, column, self.max_image_pixels, self.min_image_side)
      except row_checks.BadRow as bad:
        raise processing.ImageError(f"{where}: {bad.field}: {bad.problem}") from None
    example = self.processor(instruction, source, edited, where=where)
    for dimension, ids in example.prompts.items():
      if len(ids) > self.max_seq_len:
        raise PromptError(f"{where}: the {dimension} prompt is {len(ids)} tokens, more than max_seq_len="
                          f"{self.max_seq_len} (a long instruction, or images above the model's max_pixels)")
    return example

  def score_batches(self, instructions: Sequence[str], source_images: Sequence[Any], edited_images: Sequence[Any],
                    *, batch_size: int | None = None, where: Sequence[str] | None = None, bad_rows: str = "raise",
                    progress: bool = False) -> Iterator[tuple[list[int], Scores, list[tuple[int, str]]]]:
    """Scores N edits batch by batch, in order: yields (indices of the edits scored, their Scores, [(index,
    message)] of the edits skipped). Images are PIL images, paths or encoded bytes; `where` labels each edit in
    errors. `bad_rows="skip"` skips an edit whose image or prompt fails (the others are still scored); "raise"
    raises on it, after the batches before it were yielded."""
    n = len(instructions)
    if not n == len(source_images) == len(edited_images):
      raise ValueError(f"got {n} instructions, {len(source_images)} source images, {len(edited_images)} edits")
    if bad_rows not in BAD_ROWS:
      raise ValueError(f"unknown bad_rows {bad_rows!r}; choose one of {BAD_ROWS}")
    if n == 0:
      return
    bs = batch_size or self.batch_size
    where = list(where) if where is not None else [f"edit {i}" for i in range(n)]
    starts = list(range(0, n, bs))
    t0, done = time.time(), 0
    rules = sharding.activation_rules(self.mesh) if self.mesh is not None else contextlib.nullcontext()
    with futures.ThreadPoolExecutor(max_workers=1) as host, rules:
      submit = lambda s: host.submit(self._process, bs, range(s, min(s + bs, n)),
                                     *(x[s:s + bs] for x in (instructions, source_images, edited_images, where)),
                                     bad_rows == "skip")
      pending = submit(starts[0])
      for k in range(len(starts)):
        arrays, kept, errors = pending.result()
        out = None if arrays is None else _forward(self.model, jax.tree.map(jnp.asarray, arrays))  # asynchronous
        if k + 1 < len(starts):
          pending = submit(starts[k + 1])
        per_dim = np.zeros((0, len(DIMENSIONS), 2), np.float32) if out is None else \
            batching.edit_outputs(np.asarray(out)[:2 * len(kept)])
        done += len(kept) + len(errors)
        if progress:
          rate = done / (time.time() - t0)
          print(f"scored {done}/{n} edits ({rate:.1f} edits/s, ETA {cli.duration((n - done) / rate)})", flush=True)
        yield kept, self._scores(per_dim), errors

  def score(self, instructions: Sequence[str], source_images: Sequence[Any], edited_images: Sequence[Any], *,
            batch_size: int | None = None, where: Sequence[str] | None = None, bad_rows: str = "raise",
            progress: bool = False) -> Scores:
    """Scores N edits (see `score_batches`); a skipped edit scores NaN and its message is in `Scores.errors`."""
    n = len(instructions)
    per_dim = np.full((n, len(DIMENSIONS), 2), np.nan, np.float32)
    errors: dict[int, str] = {}
    for kept, scores, skipped in self.score_batches(instructions, source_images, edited_images,
                                                    batch_size=batch_size, where=where, bad_rows=bad_rows,
                                                    progress=progress):
      per_dim[kept] = np.stack([np.stack(scores.dims[d], -1) for d in DIMENSIONS], 1)
      errors.update(skipped)
    return dataclasses.replace(self._scores(per_dim), errors=errors)

  def _scores(self, per_dim: np.ndarray) -> Scores:
    """per_dim [N, dimension, (mu, log_sigma)] -> Scores, fused as configured."""
    fused = np.asarray(fuse(jnp.asarray(per_dim), self.fusion)) if len(per_dim) else np.zeros((0, 2), np.float32)
    return Scores(mu=fused[:, 0], log_sigma=fused[:, 1],
                  dims={d: (per_dim[:, i, 0], per_dim[:, i, 1]) for i, d in enumerate(DIMENSIONS)})


def load_scorer(checkpoint: str, *, prompts: str | Prompts | None = None, rope_mode: str | None = None,
                fusion: str | None = None, options: RuntimeOptions | None = None, batch_size: int = 8,
                dedup: bool = True, prefix_sharing: bool = True, param_dtype: str | None = None, mesh=None,
                max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> Scorer:
  """A Scorer for a CKPT (model directory, training workdir or step); `prompts` / `rope_mode` / `fusion` override
  what the checkpoint records. `param_dtype` (e.g. "bfloat16": half the memory) overrides `options.param_dtype`;
  with `mesh` (e.g. `sharding.make_mesh(fsdp=-1)`: every local device) the parameters are sharded over it."""
  options = options or RuntimeOptions()
  if param_dtype is not None:
    options = dataclasses.replace(options, param_dtype=param_dtype)
  meta = model_dir.resolve(checkpoint)
  if meta.tokenizer_dir is None:
    raise ValueError(f"{meta.directory} has no tokenizer/ directory: scoring needs the tokenizer")
  if isinstance(prompts, (str, os.PathLike)):
    prompts = load_prompts(prompts)
  prompts = prompts or meta.prompts()
  model, _ = model_dir.load_model(checkpoint, options, mesh)
  if meta.settings.get("heads_trained") is False:
    logging.warning("%s: the reward heads were never trained (%s): its scores are not meaningful until it is "
                    "trained", meta.directory, meta.settings.get("heads", "fresh"))
  tokenizer = processing.load_tokenizer(meta.tokenizer_dir)
  processor = processing.Processor(tokenizer, prompts, patch_size=meta.model.vision.patch_size,
                                   merge_size=meta.model.vision.spatial_merge_size,
                                   temporal_patch_size=meta.model.vision.temporal_patch_size, **meta.pixels())
  return Scorer(model, processor, rope_mode=rope_mode or meta.settings.get("rope_mode", "sequential"),
                fusion=fusion or meta.settings.get("fusion", "mean"), batch_size=batch_size, dedup=dedup,
                prefix_sharing=prefix_sharing, mesh=mesh, max_seq_len=max_seq_len)
