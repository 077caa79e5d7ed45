"""Grain input pipeline for training: pair rows -> tie-disentangled pairs -> processed pairs -> fixed-shape batches.

Stages (`pair_dataset` builds them; `iter(dataset)` gives a checkpointable `PairBatchIterator`):

  MapDataset.range(rows)[shard.index::shard.count]   this host's rows (strided over jax.process_index/count)
  -> flat map row -> pairs (max fan-out 2)           `pairs.pairs_from_row` with the config's tie policy; row checks
  -> shuffle(seed) -> repeat(num_epochs)             a new order every epoch, the same orders for the same seed
  -> map: decode, resize, patchify, tokenize         3 images and 4 prompts per pair (runs on Grain read threads)
  -> to_iter_dataset -> batch P pairs -> collate     K batch shards, static shapes from the bucket sets
  -> mp_prefetch(workers) -> thread prefetch         0 workers: everything in this process
  -> PairBatchIterator                               skip totals, get_state/set_state

Shuffling comes after the flat map so that the two pairs of a tie are spread apart and the empty fan-out slots of
non-tie rows spread evenly over worker processes (Grain hands worker w the elements w, w + W, ...; without shuffling,
an even worker count leaves the odd workers only the second pairs of ties).

Batch layout (P = `batch_pairs` pairs, K = `shards` batch shards of P_s = P / K consecutive pairs, D = 2 quality
dimensions in head order, R = 4P rows, R_s = 4P_s, L = seq_len; `batching.stack_shards` builds it, the scorer's
batches are the same with K = 1):
- shards: pair p is pair q = p mod P_s of shard p // P_s. Each shard is collated on its own (its own images and
  vision layout), all shards with one static shape, then stacked, so under a mesh (`sharding.batch_shardings`)
  each device group of the batch axes encodes only its own shards' images. The trainer sets K to this process's
  share of the mesh's data x fsdp groups; a shard of padding only still has a valid (all padding) vision layout.
- rows: pair p owns rows 4p..4p+3 = (A, dim 0), (A, dim 1), (B, dim 0), (B, dim 1); A is the preferred candidate;
  shard k owns rows k R_s .. (k + 1) R_s - 1. So the model's [R, 2] output reshapes to [P, 2 (A, B), D, 2].
- images: local pair q of a shard owns that shard's images 3q, 3q+1, 3q+2 = source, A, B (no dedup across pairs, so
  the count is static); rows of candidate A show (3q, 3q+1), rows of B show (3q, 3q+2). Padded pairs have no images
  and zero-length rows.
- "batch" (the model's inputs, `Qwen25VL.__call__`): "input_ids" [R, L] int32, "lengths" [R] int32 (right padding,
  0 for padded rows), "position_ids" [3, R, L] int32, "image_slots" [R, L] int32 (the merged-unit slot, in the
  row's own shard, of each image token; -1 elsewhere), "vision": `vision_layout.VisionBatch` arrays with a leading
  [K] axis and shard-local indices: "pixels" [K, S, patch_dim] uint8, "rope_pos" [K, S, 2], "window_lengths" [K, W],
  "image_slots" [K, 3P_s, patches per image], "image_lengths" [K, 3P_s], "slot_to_image" [K, S], "unit_slots"
  [K, U], "pixel_table" [K, C, 256] float32 (S patch slots, W = S / window patches, U = S / merge_unit, all per
  shard; the model normalises the pixels by the table).
- "reward_index" [R] int32 (position of `<|Reward|>`), "dimension" [R] int32 (follows the row layout on padded rows
  too, so it is the same [0, 1, 0, 1, ...] in every batch), "row_valid" [R] bool; pair-level, in pair order:
  "pair_valid" [P] bool; "labels" [P, D] int32 (+1 A better on that dimension, -1 worse, 0 equal); "pair_weight"
  [P] float32 (0 for padding, `tie_weight` for pairs made from a tie, else 1); "tie" [P] bool; "source_row" [P]
  int64 (index into the source, -1 for padding); "metrics": host-only numbers, not model inputs: "skipped"
  [len(row_checks.SKIP_REASONS)] int64 (bad rows skipped while this batch was assembled), "pairs" (valid pairs),
  "token_padding" and "patch_padding" (padded fraction of the [R, L] token grid and of all shards' patch slots).
- static shapes, common to the K shards: L is the smallest of `seq_buckets` that fits the longest row of any shard;
  S the smallest of `patch_buckets` (multiples of one attention window's patches) that fits the shard needing the
  most windows or, with none given, one window's patches times the next power of two of that window count;
  patches per image (full-attention blocks) the next power of two of the largest image's. With `fixed_shapes`
  (multi-host runs, where every host must build the same shapes) L is the largest seq bucket, S the largest patch
  bucket and patches per image `fixed_image_patches` whatever the content, so every batch has one shape.
- with `prefix_sharing`, "batch" is packed per pair (`shared_prefix.pack`: input_ids, image_slots, position_ids
  [G = P, Lu] plus the layout arrays of `shared_prefix.LAYOUT_KEYS`): Lu the smallest of `packed_buckets` that fits
  the longest packed pair (with none given, `batching.seq_bucket` of it), and rows 1 and 3 of a pair (a candidate's
  second rubric) attend from their Q new tokens only, Q = `batching.seq_bucket` of the most new tokens of such a row
  (at most L); with
  `fixed_shapes`, Lu is the largest packed bucket and every row attends in full.
The last batch of a finite run is padded (pair_valid False); with several worker processes each worker's last one is.

Bad rows (`bad_rows`, checks in `row_checks`): "raise" raises `DataError` naming the source, the row (and its key)
and the field; "skip" drops the row, logs why, and counts it under one of `row_checks.SKIP_REASONS`. Counts travel
inside the batches (metrics.skipped) from whichever process found them, so `PairBatchIterator.skipped` totals are
exact: each bad row is counted once per epoch that reads it (a tie row's second pair fails exactly like its first
and is not counted again). Images are checked from their header (size, aspect) before any pixel is decoded. No
prompt is ever truncated: one longer than the largest sequence bucket makes its row bad.

Checkpoints: `PairBatchIterator.get_state()` is a JSON-serialisable dict (Grain's iterator state plus the skip
totals); `set_state` on an iterator of an identically built dataset (same source, config, shard and worker count)
resumes with exactly the batches an uninterrupted run would give. The iterator is a `grain.DatasetIterator`, so
Orbax's Grain checkpoint handlers (which json-encode `get_state()`) can save it beside the train state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import grain
import numpy as np
from absl import flags, logging

from editreward_jax import batching, pairs, row_checks
from editreward_jax.models import vision_layout
from editreward_jax.models.config import ModelConfig
from editreward_jax.processing import DEFAULT_PIXELS, ImageError, ProcessedImage, Processor, check_pixel_bounds
from editreward_jax.prompts import DIMENSIONS, PromptError, Prompts
from editreward_jax.schema import DataError

PAIR_IMAGES = 3  # source, A, B
CANDIDATES = 2   # A, B
ROW_IMAGES = 2   # source, candidate: the images each prompt row shows
ROWS_PER_PAIR = CANDIDATES * len(DIMENSIONS)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Settings of the training input pipeline (plain fields, so an ml_collections config can carry them)."""

  batch_pairs: int = 2                                      # pairs per batch (P): 4P rows, 3P images
  shards: int = 1                                           # batch shards (K), each laid out on its own; divides P
  seq_buckets: tuple[int, ...] = (512, 1024, 1536, 2048)    # padded sequence lengths; the largest is the budget
  patch_buckets: tuple[int, ...] = ()                       # vision patch slots per shard; () = next power of two
  fixed_shapes: bool = False                                # every batch the largest buckets (multi-host runs)
  prefix_sharing: bool = False                              # a pair's common prefixes computed once (exact)
  packed_buckets: tuple[int, ...] = ()                      # packed tokens per pair with sharing; () = rounded
  tie_policy: str = "duplicate"                             # pairs.TIE_POLICIES
  tie_weight: float = 1.0                                   # pair_weight of each pair made from a tie
  bad_rows: str = "raise"                                   # row_checks.BAD_ROW_POLICIES
  max_image_pixels: int = row_checks.MAX_IMAGE_PIXELS       # larger images are bad rows (judged from the header)
  min_image_side: int = row_checks.MIN_IMAGE_SIDE           # images with a shorter side are bad rows
  min_pixels: int = DEFAULT_PIXELS                          # smart_resize bounds
  max_pixels: int = DEFAULT_PIXELS
  workers: int = 0                                          # worker processes; 0 = in this process
  worker_buffer: int = 2                                    # batches each worker process keeps ready
  read_threads: int = 2                                     # threads processing pairs in each process
  prefetch: int = 2                                         # batches a background thread keeps ready; 0 = none
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None                             # None: repeat forever

  def validate(self) -> PipelineConfig:
    if self.batch_pairs < 1:
      raise ValueError(f"batch_pairs must be >= 1, got {self.batch_pairs}")
    if self.shards < 1 or self.batch_pairs % self.shards:
      raise ValueError(f"batch_pairs {self.batch_pairs} must be a positive multiple of shards {self.shards} (each "
                       "batch shard holds batch_pairs / shards pairs)")
    for name in ("seq_buckets", "patch_buckets", "packed_buckets"):
      values = getattr(self, name)
      if any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(f"{name} must be positive and strictly increasing, got {values}")
    if not self.seq_buckets:
      raise ValueError("seq_buckets must name at least one sequence length")
    if self.fixed_shapes and not self.patch_buckets:
      raise ValueError("fixed_shapes needs patch_buckets: every batch is padded to the largest of them")
    if self.fixed_shapes and self.prefix_sharing and not self.packed_buckets:
      raise ValueError("fixed_shapes with prefix_sharing needs packed_buckets: every pair is padded to the largest")
    pairs.validate_tie_policy(self.tie_policy)
    if self.bad_rows not in row_checks.BAD_ROW_POLICIES:
      raise ValueError(f"unknown bad-row policy {self.bad_rows!r}; known: {list(row_checks.BAD_ROW_POLICIES)}")
    check_pixel_bounds(self.min_pixels, self.max_pixels)
    for name in ("max_image_pixels", "min_image_side"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("workers", "worker_buffer", "read_threads", "prefetch"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
    return self

  @property
  def max_seq_len(self) -> int:
    return self.seq_buckets[-1]


class Shard(NamedTuple):
  index: int
  count: int


def process_shard() -> Shard:
  """This host's shard: one per JAX process."""
  import jax  # deferred: only a caller that does not pass its shard needs JAX initialised
  return Shard(jax.process_index(), jax.process_count())


def fixed_image_patches(config: PipelineConfig, patch_size: int) -> int:
  """Patches per image (full-attention block size) of every batch with fixed_shapes: the bucket of the most that
  smart_resize gives an image within max_pixels (an image it scales up above max_pixels makes its row bad)."""
  return batching.bucket(config.max_pixels // patch_size**2)


def make_processor(tokenizer, prompts: Prompts, model_cfg: ModelConfig, config: PipelineConfig) -> Processor:
  """The Processor whose patch geometry is the model's and whose pixel bounds are the config's."""
  v = model_cfg.vision
  return Processor(tokenizer, prompts, min_pixels=config.min_pixels, max_pixels=config.max_pixels,
                   patch_size=v.patch_size, merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size)


# ----------------------------------------------------------------------------------------------------------------
# Rows -> pairs -> processed pairs


@dataclasses.dataclass(frozen=True)
class _PairTask:
  index: int        # source row
  row: Mapping[str, Any]
  pair: pairs.Pair
  first: bool       # the row's first pair: the one whose failure counts the row as skipped


class _RowPairs(grain.MapDataset):
  """Source row indices -> the rows' pairs (tie-disentangled), or a skip for a bad row: element 2i + k is pair k of
  row i, None where the row has fewer (Grain's FlatMapMapDataset layout, so orders and iterator states are its).

  FlatMapMapDataset reads and checks a row again for each of its slots; this remembers each row's element count,
  so an empty slot met after the row was read costs nothing (most rows give one pair, ties two or none).
  """

  fan_out = 2

  def __init__(self, parent: grain.MapDataset, source: Sequence[Any], rows: row_checks.RowPolicy, tie_policy: str):
    super().__init__(parent)
    self.source, self.rows, self.tie_policy = source, rows, tie_policy
    self._counts = np.full(len(parent), -1, np.int8)  # elements of each row once read; -1 before

  def __len__(self) -> int:
    return self.fan_out * len(self._parent)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    position, slot = divmod(index % len(self), self.fan_out)  # Grain indexes past the end for later epochs
    if 0 <= self._counts[position] <= slot:
      return None
    found = self._flat_map(int(self._parent[position]))
    self._counts[position] = len(found)
    return found[slot] if slot < len(found) else None

  def _flat_map(self, index: int) -> list[_PairTask | row_checks.Skip]:
    try:
      row = self.source[index]
    except DataError as e:  # the source names its file, line and field
      if self.rows.policy == "raise":
        raise
      return [row_checks.Skip("unreadable", str(e))]
    try:
      row_checks.check_row(row)
    except row_checks.BadRow as bad:
      return [self.rows.reject(index, row, bad)]
    found = pairs.pairs_from_row(row, self.tie_policy)
    return [_PairTask(index, row, pair, i == 0) for i, pair in enumerate(found)]


@dataclasses.dataclass(frozen=True)
class _ProcessedPair:
  """One pair ready to collate: its 3 images and 4 prompt rows in the batch layout's order."""
  index: int
  pair: pairs.Pair
  images: tuple[ProcessedImage, ...]  # source, A, B
  tokens: tuple[np.ndarray, ...]      # (A, dim 0), (A, dim 1), (B, dim 0), (B, dim 1)
  reward_index: tuple[int, ...]


class _ProcessPair:
  """Decodes, resizes and patchifies a pair's images and tokenizes its prompts; picklable for worker processes."""

  def __init__(self, processor: Processor, rows: row_checks.RowPolicy, config: PipelineConfig):
    self.processor, self.rows = processor, rows
    self.max_image_pixels, self.min_image_side = config.max_image_pixels, config.min_image_side
    self.max_seq_len = config.max_seq_len
    self.max_image_patches = fixed_image_patches(config, processor.patch_size) if config.fixed_shapes else None

  def __call__(self, task: _PairTask | row_checks.Skip) -> _ProcessedPair | row_checks.Skip | None:
    if isinstance(task, row_checks.Skip):
      return task
    try:
      return self._process(task)
    except row_checks.BadRow as bad:
      skip = self.rows.reject(task.index, task.row, bad)
      # Both pairs of a tie show the same images and prompts, so they fail alike: count the row once.
      return skip if task.first else None

  def _process(self, task: _PairTask) -> _ProcessedPair:
    columns = ("source_img", f"{task.pair.preferred}_output_image", f"{task.pair.other}_output_image")
    for column in columns:
      row_checks.check_image_header(task.row, column, self.max_image_pixels, self.min_image_side)
    images = tuple(self._image(task.row, column) for column in columns)
    tokens, reward_index = [], []
    prompt_ids = {}  # a dimension's text is the same for both candidates: tokenized once, expanded per candidate
    for candidate in images[1:]:
      for dimension in DIMENSIONS:
        if dimension not in prompt_ids:
          try:
            prompt_ids[dimension] = self.processor.prompt_ids(dimension, task.row["instruction"], ROW_IMAGES)
          except PromptError as e:
            raise row_checks.BadRow("special_token", "instruction", str(e)) from e
        ids, reward = self.processor.expand_images(prompt_ids[dimension], [images[0].grid_thw, candidate.grid_thw])
        if len(ids) > self.max_seq_len:
          raise row_checks.BadRow("too_long", "instruction",
                        f"the {dimension} prompt has {len(ids)} tokens, more than the largest sequence bucket "
                        f"{self.max_seq_len} (prompts are never truncated)")
        tokens.append(ids)
        reward_index.append(reward)
    return _ProcessedPair(task.index, task.pair, images, tuple(tokens), tuple(reward_index))

  def _image(self, row: Mapping[str, Any], column: str) -> ProcessedImage:
    try:
      image = self.processor.image(row[column], row_checks.image_label(row, column))
    except ImageError as e:
      raise row_checks.BadRow("image_undecodable", column, str(e)) from e
    patches = int(np.prod(image.grid_thw))
    if self.max_image_patches is not None and patches > self.max_image_patches:
      raise row_checks.BadRow("image_too_large", column,
                              f"resized to {patches} patches, more than the {self.max_image_patches} per image that "
                              "fixed_shapes allows (a very elongated image scaled up to min_pixels)")
    return image


# ----------------------------------------------------------------------------------------------------------------
# Batching and collation


class _Collate:
  """Up to P processed pairs -> the fixed-shape batch of the module docstring: K shards of P / K consecutive pairs,
  each collated on its own, all with one static shape, stacked by `batching.stack_shards`."""

  def __init__(self, model_cfg: ModelConfig, config: PipelineConfig, rope_mode: str, pad_id: int):
    self.model_cfg, self.rope_mode, self.pad_id = model_cfg, rope_mode, pad_id
    self.batch_pairs, self.shards, self.tie_weight = config.batch_pairs, config.shards, config.tie_weight
    self.seq_buckets, self.patch_buckets, self.fixed = config.seq_buckets, config.patch_buckets, config.fixed_shapes
    self.packed_buckets = config.packed_buckets if config.prefix_sharing else None
    v = model_cfg.vision
    self.window_patches = v.window_units**2 * v.merge_unit
    self.merge_unit = v.merge_unit
    self.image_patches = fixed_image_patches(config, v.patch_size) if self.fixed else None

  def _patch_slots(self, windows: int) -> int:
    """Vision patch slots of every shard, for `windows`, the most attention windows any shard needs."""
    if not self.patch_buckets:
      return batching.fine_bucket(windows) * self.window_patches
    needed = windows * self.window_patches
    if needed > self.patch_buckets[-1]:
      raise ValueError(f"a batch shard needs {needed} vision patch slots, more than the largest patch bucket "
                       f"{self.patch_buckets[-1]}: add a larger bucket or lower max_pixels")
    return self.patch_buckets[-1] if self.fixed else vision_layout.pad_to(needed, self.patch_buckets)

  def _packed_sizes(self, shards) -> tuple[int | None, int | None]:
    """(packed tokens per pair, query slots per suffix row), common to the K shards; (None, None) without prefix
    sharing. Fixed shapes keep every row attending in full (suffix length 0): its length would vary by batch."""
    if self.packed_buckets is None:
      return None, None
    if self.fixed:
      return self.packed_buckets[-1], 0
    sizes = [batching.packed_sizes(rows, ROWS_PER_PAIR, self.model_cfg.image_token_id) for rows, _ in shards]
    longest, longest_suffix = max(s[0] for s in sizes), max(s[1] for s in sizes)
    suffix_len = batching.seq_bucket(max(longest_suffix, 1))
    if not self.packed_buckets:
      return batching.seq_bucket(longest), suffix_len
    if longest > self.packed_buckets[-1]:
      raise ValueError(f"a pair packs to {longest} tokens, more than the largest packed bucket "
                       f"{self.packed_buckets[-1]}")
    return vision_layout.pad_to(longest, self.packed_buckets), suffix_len

  @staticmethod
  def _shard_rows(found: Sequence[_ProcessedPair]) -> tuple[list[batching.Row], batching.ImageTable]:
    table = batching.ImageTable()
    rows = []
    for i, pair in enumerate(found):
      source, a, b = (table.add(image, key=(i, role)) for role, image in enumerate(pair.images))
      for c, candidate in enumerate((a, b)):
        for d in range(len(DIMENSIONS)):
          k = c * len(DIMENSIONS) + d
          rows.append(batching.Row(pair.tokens[k], (source, candidate), pair.reward_index[k], d))
    return rows, table

  def __call__(self, found: Sequence[_ProcessedPair], skipped: np.ndarray) -> dict[str, Any]:
    p, per_shard = self.batch_pairs, self.batch_pairs // self.shards
    shards = [self._shard_rows(found[k * per_shard:(k + 1) * per_shard]) for k in range(self.shards)]
    grids = [np.array([im.grid_thw for im in table.images], np.int64).reshape(-1, 3) for _, table in shards]
    slots = self._patch_slots(max(vision_layout.num_windows(g, self.model_cfg.vision) for g in grids))
    longest = max(len(r.tokens) for rows, _ in shards for r in rows)
    seq_len = self.seq_buckets[-1] if self.fixed else vision_layout.pad_to(longest, self.seq_buckets)
    largest_image = max(int(h * w) for g in grids for _, h, w in g)
    packed_len, suffix_len = self._packed_sizes(shards)
    shape = batching.BatchShape(rows=ROWS_PER_PAIR * per_shard, seq_len=seq_len, images=PAIR_IMAGES * per_shard,
                                windows=slots // self.window_patches, units=slots // self.merge_unit,
                                patches=self.image_patches or batching.fine_bucket(largest_image),
                                packed_len=packed_len, suffix_len=suffix_len)
    groups = None if self.packed_buckets is None else ROWS_PER_PAIR
    out = batching.stack_shards([batching.collate(rows, table, self.model_cfg, rope_mode=self.rope_mode,
                                                  shape=shape, pad_id=self.pad_id, prefix_groups=groups)
                                 for rows, table in shards])
    n = len(found)
    labels = np.zeros((p, len(pairs.DIMENSIONS)), np.int32)
    weight = np.zeros(p, np.float32)
    tie = np.zeros(p, bool)
    source_row = np.full(p, -1, np.int64)
    for i, pair in enumerate(found):
      labels[i] = pair.pair.labels
      weight[i] = self.tie_weight if pair.pair.tie else 1.0
      tie[i], source_row[i] = pair.pair.tie, pair.index
    lengths = out["batch"]["lengths"]
    real_patches = sum(int(np.prod(g, axis=1).sum()) for g in grids)
    out["dimension"] = np.tile(np.arange(len(DIMENSIONS), dtype=np.int32), CANDIDATES * p)  # padded rows too
    out.update(pair_valid=np.arange(p) < n, labels=labels, pair_weight=weight, tie=tie, source_row=source_row,
               metrics={"skipped": skipped, "pairs": np.int32(n),
                        "token_padding": np.float32(1 - lengths.sum() / lengths.size / seq_len),
                        "patch_padding": np.float32(1 - real_patches / (slots * self.shards))})
    return out


class _PairBatches(grain.IterDataset):
  """Groups processed pairs into batches of P, counting the skips met on the way; see `_PairBatchesIterator`."""

  def __init__(self, parent: grain.IterDataset, batch_pairs: int, collate: _Collate):
    super().__init__(parent)
    self.batch_pairs, self.collate = batch_pairs, collate

  def __iter__(self) -> _PairBatchesIterator:
    return _PairBatchesIterator(self._parent.__iter__(), self.batch_pairs, self.collate)


class _PairBatchesIterator(grain.DatasetIterator):
  """Consumes exactly the elements of each batch and buffers nothing, so its state is its parent's.

  When the stream ends with skips after the last pair, a record with only "metrics" carries their count to
  `PairBatchIterator`, which absorbs it.
  """

  def __init__(self, parent: grain.DatasetIterator, batch_pairs: int, collate: _Collate):
    super().__init__(parent)
    self.batch_pairs, self.collate = batch_pairs, collate

  def __next__(self) -> dict[str, Any]:
    found: list[_ProcessedPair] = []
    skipped = np.zeros(len(row_checks.SKIP_REASONS), np.int64)
    while len(found) < self.batch_pairs:
      try:
        item = next(self._parent)
      except StopIteration:
        if found or skipped.any():
          break
        raise
      if isinstance(item, row_checks.Skip):
        logging.warning("skipping a bad row (%s): %s", item.reason, item.message)
        skipped[row_checks.SKIP_REASONS.index(item.reason)] += 1
      else:
        found.append(item)
    if not found:
      return {"metrics": {"skipped": skipped}}
    return self.collate(found, skipped)

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _SkipTotals(grain.IterDataset):
  """The outermost stage: iterating gives a `PairBatchIterator`."""

  def __iter__(self) -> PairBatchIterator:
    return PairBatchIterator(self._parent.__iter__())


class PairBatchIterator(grain.DatasetIterator):
  """Batches of `pair_dataset`, with running totals of skipped bad rows; checkpoint with get_state/set_state."""

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._skipped = np.zeros(len(row_checks.SKIP_REASONS), np.int64)

  @property
  def skipped(self) -> dict[str, int]:
    """Bad rows skipped so far, by reason (every reason present, zeros included)."""
    return {reason: int(n) for reason, n in zip(row_checks.SKIP_REASONS, self._skipped)}

  def __next__(self) -> dict[str, Any]:
    while True:
      element = next(self._parent)
      counts = element["metrics"]["skipped"]
      if counts.any():
        self._skipped += counts
        logging.warning("skipped %d bad rows; totals so far: %s", counts.sum(),
                        {r: n for r, n in self.skipped.items() if n})
      if "batch" in element:
        return element

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._parent.get_state(), "skipped": self.skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["pipeline"])
    self._skipped = np.array([state["skipped"].get(r, 0) for r in row_checks.SKIP_REASONS], np.int64)

  def close(self) -> None:
    super().close()
    # Grain's thread-prefetch iterator closes again when it is collected, which at interpreter exit fails
    # ("Exception ignored in DatasetIterator.__del__"): drop the closed chain now, while its modules still exist.
    self._parents = ()


# ----------------------------------------------------------------------------------------------------------------
# The pipeline


def pair_dataset(source: Sequence[Any], tokenizer, prompts: Prompts, model_cfg: ModelConfig, config: PipelineConfig,
                 *, rope_mode: str = "sequential", shard: Shard | None = None, name: str | None = None
                 ) -> grain.IterDataset:
  """The training batches of `source` (random-access rows in the EditReward-Data schema, e.g. `data.open_source`).

  `shard` defaults to this JAX process's; `name` (default: the source's file or repr) is what errors call the
  source. `iter()` of the result is a `PairBatchIterator`; close it when done if `config.workers > 0`.
  """
  config.validate()
  shard = process_shard() if shard is None else Shard(*shard)
  if not 0 <= shard.index < shard.count:
    raise ValueError(f"shard index {shard.index} is outside [0, {shard.count})")
  if config.patch_buckets:
    v = model_cfg.vision
    window_patches = v.window_units**2 * v.merge_unit
    if any(b % window_patches for b in config.patch_buckets):
      raise ValueError(f"patch_buckets {config.patch_buckets} must be multiples of {window_patches}, the patches "
                       "of one vision attention window")
  processor = make_processor(tokenizer, prompts, model_cfg, config)
  rows = row_checks.RowPolicy(name or row_checks.source_name(source), config.bad_rows)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

  ds = grain.MapDataset.range(len(source))[shard.index::shard.count]
  ds = _RowPairs(ds, source, rows, config.tie_policy)
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  ds = ds.repeat(config.num_epochs)
  ds = ds.map(_ProcessPair(processor, rows, config))
  buffer = max(config.read_threads, config.batch_pairs)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=buffer))
  it = _PairBatches(it, config.batch_pairs, _Collate(model_cfg, config, rope_mode, pad_id))
  if config.workers:
    if not flags.FLAGS.is_parsed():
      # Grain reads absl flags when it starts workers; outside absl.app.run (pytest, notebooks) use their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.workers,
                                                     per_worker_buffer_size=config.worker_buffer))
  if config.prefetch:
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=config.prefetch)
  return _SkipTotals(it)
