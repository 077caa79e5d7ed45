"""Benchmark inputs, FLOP figures and the timed JAX runs behind `python -m launch.bench`.

Inputs are synthetic but laid out like real ones: per (candidate, dimension) one token row of 14 system-turn tokens,
then per image `<|vision_start|>` + H*W/784 image pads + `<|vision_end|>` (source, then edited image), then
`text_tokens` + (7*b mod 11) rubric tokens for item b (a pair in training, an edit in scoring) ending in
`<|Reward|>`, then 8 tokens of generation prompt. The two rows of a candidate share [system, source, edited image]
and differ in their rubric text; the two candidates of a pair share [system, source image] (and the rubric texts).
Token ids are random in the text vocabulary, pixels are random uint8 patches of the image's grid ((1, 32, 32) at 448 px).

FLOPs (`editreward_jax.training.flops`; a multiply-add is 2 FLOPs), on the tokens actually computed and the images
actually encoded, padding not counted:
- decoder dense layers 2 x parameters x tokens (q, k, v, o and the three MLP matrices; embedding lookups and lm_head
  not counted); causal attention as half of full: 2 x T^2 x heads x head_dim per layer for a row of T tokens
  (a prefix-shared suffix row, whose queries start after its S shared tokens: 2 x (T^2 - S^2) x heads x head_dim);
- vision tower 2 x parameters x patches (patch embedding, blocks, merger), attention 4 x hidden x (sum of squared
  window lengths) per window block and 4 x hidden x (sum of squared image lengths) per full-attention block;
- reward heads at the `<|Reward|>` token only; norms, rotary embeddings, softmax and the loss not counted;
- training = 3 x forward (backward = 2 x forward); rematerialised recomputation not counted (model FLOPs, not
  hardware FLOPs).
`gflops_per_pair` (`_edit`) is that count for the layout an implementation executes: this project's (each distinct
image of a pair encoded once: 3 per pair, 2 per edit; with prefix sharing, shared prefixes computed once), or the
reference's for the PyTorch run. `reference_gflops_per_pair` (`_edit`) is the same formula on the reference's layout:
4 standalone rows and 8 image encodings per pair (2 rows, 4 encodings per edit), i.e. the same rows collated with
`batching.ImageTable(dedup=False)`, every row with its own image copies, and no prefix sharing.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editreward_jax import batching, scoring, sharding
from editreward_jax.models.config import ModelConfig, TextConfig, VisionConfig
from editreward_jax.models.presets import MIMO_VL_7B, QWEN25VL_3B, QWEN25VL_7B, TINY
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.processing import ProcessedExample, ProcessedImage
from editreward_jax.prompts import DIMENSIONS
from editreward_jax.reward import HeadConfig, RewardModel
from editreward_jax.training import flops
from editreward_jax.training import run as run_lib
from editreward_jax.training import state as state_lib
from editreward_jax.training.config import TrainConfig

# A CPU-benchmark model with the real structure: text 512 x 8 layers (GQA 8/2), vision 8 blocks of 256.
SMALL = ModelConfig(
    vision=VisionConfig(depth=8, hidden_size=256, intermediate_size=688, num_heads=4, out_hidden_size=512,
                        window_size=112, fullatt_block_indexes=(3, 7)),
    text=TextConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12),
                    tie_word_embeddings=False),
    image_token_id=TINY.image_token_id, video_token_id=TINY.video_token_id,
    vision_start_token_id=TINY.vision_start_token_id, vision_end_token_id=TINY.vision_end_token_id)

SHAPES = {"tiny": TINY, "small": SMALL, "3b": QWEN25VL_3B, "7b": QWEN25VL_7B, "mimo7b": MIMO_VL_7B}
LARGE_SHAPES = ("3b", "7b", "mimo7b")  # too big for a CPU run
SYSTEM_TOKENS = 14
TAIL_TOKENS = 8  # after <|Reward|>: end of turn and the generation prompt
PIXELS_PER_TOKEN = 28 * 28  # one merged 2x2 block of 14-pixel patches per LLM token
TRAIN_ROWS_PER_PAIR, SCORE_ROWS_PER_EDIT = 4, 2


@dataclasses.dataclass(frozen=True)
class Layout:
  """What the synthetic inputs look like."""
  image_px: int = 448
  text_tokens: int = 150
  seed: int = 0


def check_layout(cfg: ModelConfig, layout: Layout) -> None:
  factor = cfg.vision.patch_size * cfg.vision.spatial_merge_size
  if layout.image_px <= 0 or layout.image_px % factor:
    raise ValueError(f"--image_px={layout.image_px} must be a positive multiple of {factor}")
  if layout.text_tokens < 1:
    raise ValueError(f"--text_tokens={layout.text_tokens} must be >= 1")


def _image(cfg: ModelConfig, px: int, rng: np.random.Generator) -> ProcessedImage:
  v = cfg.vision
  side = px // v.patch_size
  patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
  return ProcessedImage(rng.integers(0, 256, (side * side, patch_dim), dtype=np.uint8),
                        np.array([1, side, side], np.int64))


def _text(allowed: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
  return rng.choice(allowed, n)


def _allowed_ids(cfg: ModelConfig, reward_id: int) -> np.ndarray:
  """The text vocabulary less the special ids, which stay where the layout puts them."""
  special = [cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id, reward_id]
  return np.setdiff1d(np.arange(cfg.text.vocab_size), special)


def _image_run(cfg: ModelConfig, px: int) -> list[int]:
  return [cfg.vision_start_token_id] + [cfg.image_token_id] * (px * px // PIXELS_PER_TOKEN) + \
      [cfg.vision_end_token_id]


def synthetic_pairs(cfg: ModelConfig, n: int, layout: Layout, reward_id: int
                    ) -> list[tuple[ProcessedExample, ProcessedExample]]:
  """n training pairs as (candidate A, candidate B) edits of one source image with the same rubric texts."""
  check_layout(cfg, layout)
  rng = np.random.default_rng(layout.seed)
  allowed = _allowed_ids(cfg, reward_id)
  images = _image_run(cfg, layout.image_px)
  out = []
  for b in range(n):
    system = _text(allowed, SYSTEM_TOKENS, rng)
    source, a, other = (_image(cfg, layout.image_px, rng) for _ in range(3))
    prompts, reward_index = {}, {}
    for d in DIMENSIONS:
      rubric = _text(allowed, layout.text_tokens + (7 * b) % 11 - 1, rng)
      head = np.concatenate([system, images, images, rubric, [reward_id]])
      prompts[d] = np.concatenate([head, _text(allowed, TAIL_TOKENS, rng)]).astype(np.int32)
      reward_index[d] = len(head) - 1
    out.append((ProcessedExample((source, a), prompts, reward_index),
                ProcessedExample((source, other), prompts, reward_index)))
  return out


def synthetic_edits(cfg: ModelConfig, n: int, layout: Layout, reward_id: int) -> list[ProcessedExample]:
  """n scored edits (each pair's candidate A: the same layout as a training pair's rows)."""
  return [a for a, _ in synthetic_pairs(cfg, n, layout, reward_id)]


def _rows(edits: Sequence[ProcessedExample], keys: Sequence[tuple[Any, Any]], table: batching.ImageTable
          ) -> list[batching.Row]:
  """A row per (edit, dimension) in that order; each row adds its two images (shared under dedup by `keys`)."""
  return [batching.Row(ex.prompts[d], tuple(table.add(im, k) for im, k in zip(ex.images, key)), ex.reward_index[d],
                       i) for ex, key in zip(edits, keys) for i, d in enumerate(DIMENSIONS)]


def _collate(rows, table, cfg, shape, prefix_groups: int | None) -> dict[str, Any]:
  return batching.stack_shards([batching.collate(rows, table, cfg, rope_mode="sequential", shape=shape,
                                                 prefix_groups=prefix_groups)])


def train_batch(cfg: ModelConfig, pairs: Sequence[tuple[ProcessedExample, ProcessedExample]], *,
                reference: bool = False, prefix_sharing: bool = False) -> dict[str, Any]:
  """The pipeline's training batch of these pairs (one shard; rows (A, dim 0), (A, dim 1), (B, dim 0), (B, dim 1)
  per pair; A preferred on both dimensions). `reference`: the reference's layout (every row its own image copies)."""
  table = batching.ImageTable(dedup=not reference)
  edits = [ex for pair in pairs for ex in pair]
  keys = [((p, 0), (p, 1 + c)) for p in range(len(pairs)) for c in range(2)]  # source, then candidate c
  n = len(pairs)
  shape = batching.BatchShape() if reference else batching.BatchShape(rows=TRAIN_ROWS_PER_PAIR * n, images=3 * n)
  out = _collate(_rows(edits, keys, table), table, cfg, shape, TRAIN_ROWS_PER_PAIR if prefix_sharing else None)
  out.update(pair_valid=np.ones(n, bool), labels=np.ones((n, len(DIMENSIONS)), np.int32),
             pair_weight=np.ones(n, np.float32))
  return out


def score_batch(cfg: ModelConfig, edits: Sequence[ProcessedExample], *, reference: bool = False,
                prefix_sharing: bool = False) -> dict[str, Any]:
  """The scorer's batch of these edits (rows (edit n, dim 0), (edit n, dim 1)), or the reference's layout."""
  table = batching.ImageTable(dedup=not reference)
  keys = [((e, 0), (e, 1)) for e in range(len(edits))]
  n = len(edits)
  shape = batching.BatchShape() if reference else batching.BatchShape(rows=SCORE_ROWS_PER_EDIT * n, images=2 * n)
  return _collate(_rows(edits, keys, table), table, cfg, shape, SCORE_ROWS_PER_EDIT if prefix_sharing else None)


def _reference_parts(cfg: ModelConfig, head: HeadConfig, batch: dict[str, Any], prompts: Sequence[np.ndarray]
                     ) -> dict[str, float]:
  """Forward FLOPs by part (the terms of `flops.forward_flops`) of the reference on a batch in its layout: its
  rows are the whole `prompts`, the end of the turn after `<|Reward|>` included (collated rows stop there)."""
  model_in = batch["batch"]
  lengths = np.array([len(p) for p in prompts])
  vision = model_in["vision"]
  return {"decoder": flops.decoder_flops(cfg, lengths),
          "vision": flops.vision_flops(cfg, vision["window_lengths"], vision["image_lengths"]),
          "heads": flops.head_flops(cfg, head, int(np.sum(lengths > 0)))}


def flop_figures(cfg: ModelConfig, head: HeadConfig, mode: str, n: int, layout: Layout, reward_id: int, *,
                 prefix_sharing: bool = False) -> dict[str, Any]:
  """GFLOPs per pair (train) or edit (score): this project's layout, the reference's, their ratio, and the
  reference's parts. No model is built."""
  unit = "pair" if mode == "train" else "edit"
  factor = 3.0 if mode == "train" else 1.0
  if mode == "train":
    items = synthetic_pairs(cfg, n, layout, reward_id)
    make = lambda **kw: train_batch(cfg, items, **kw)
    edits = [ex for pair in items for ex in pair]
  else:
    items = edits = synthetic_edits(cfg, n, layout, reward_id)
    make = lambda **kw: score_batch(cfg, items, **kw)
  ours = factor * flops.forward_flops(cfg, head, make(prefix_sharing=prefix_sharing)) / n / 1e9
  prompts = [ex.prompts[d] for ex in edits for d in DIMENSIONS]
  parts = {k: factor * v / n / 1e9 for k, v in _reference_parts(cfg, head, make(reference=True), prompts).items()}
  reference = sum(parts.values())
  return {f"jax_gflops_per_{unit}": ours, f"reference_gflops_per_{unit}": reference,
          f"reference_gflops_per_{unit}_parts": parts, "flop_ratio": ours / reference}


def peak_memory(device_bytes: int | None) -> dict[str, Any]:
  """Device peak bytes when the backend reports them, else this process's peak resident set (Linux: KiB)."""
  if device_bytes:
    return {"peak_mem_gib": device_bytes / 2**30, "peak_mem_source": "device"}
  return {"peak_mem_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_mem_source": "host_rss"}


def time_calls(call: Callable[[], Any], steps: int, warmup: int) -> dict[str, float]:
  """Runs `call` warmup + steps times (it must block until done); times the last `steps`. compile_s is the first
  call's time less the median step (tracing, compilation, first allocations)."""
  times = []
  for _ in range(warmup + steps):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  median = statistics.median(times[warmup:])
  return {"step_s_median": median, "step_s_min": min(times[warmup:]), "compile_s": max(times[0] - median, 0.0)}


def _device_peak() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


@dataclasses.dataclass(frozen=True)
class Program:
  """One prepared JAX program on synthetic inputs: `call()` runs it once and blocks; `hlo()` is its compiled HLO."""
  call: Callable[[], Any]
  hlo: Callable[[], str]
  seq_len: int


def train_program(config: TrainConfig, setup: state_lib.ModelSetup, layout: Layout, *,
                  prefix_sharing: bool = False) -> Program:
  """The real jitted train step (forward, loss, backward, clipping, AdamW) of `config` on one synthetic batch of
  config.train.batch_pairs pairs, on the config's mesh; each call is one step from the state the last one left."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  run = run_lib.prepare(config, mesh, train_rows=config.train.batch_pairs, setup=setup)
  batch = train_batch(setup.cfg, synthetic_pairs(setup.cfg, config.train.batch_pairs, layout, run.reward_id),
                      prefix_sharing=prefix_sharing)
  state, frozen = run.initial_state()
  key = jax.random.key(config.train.seed)
  with sharding.activation_rules(mesh):
    step_fn, shardings = run.train_step(mesh, batch)
    placed = run_lib.global_batch([batch], shardings)
  box = [state]

  def call():
    with sharding.activation_rules(mesh):
      box[0], metrics = step_fn(box[0], frozen, placed, key)
      jax.block_until_ready((box[0], metrics))

  def hlo():
    with sharding.activation_rules(mesh):
      return step_fn.lower(box[0], frozen, placed, key).compile().as_text()

  return Program(call, hlo, int(batch["batch"]["input_ids"].shape[-1]))


def score_program(cfg: ModelConfig, head: HeadConfig, options: RuntimeOptions, n: int, layout: Layout,
                  reward_id: int, *, prefix_sharing: bool = False) -> Program:
  """The scorer's jitted forward (`scoring._forward`) on one collated batch of n synthetic edits."""
  model = RewardModel(cfg, options, head, rngs=nnx.Rngs(0))
  batch = score_batch(cfg, synthetic_edits(cfg, n, layout, reward_id), prefix_sharing=prefix_sharing)
  arrays = jax.tree.map(jnp.asarray, batch)
  return Program(lambda: scoring._forward(model, arrays).block_until_ready(),
                 lambda: scoring._forward.lower(model, arrays).compile().as_text(),
                 int(batch["batch"]["input_ids"].shape[-1]))


def time_program(program: Program, *, steps: int, warmup: int) -> dict[str, Any]:
  """`time_calls` of the program, its sequence length and the device's (or process's) memory peak."""
  return {**time_calls(program.call, steps, warmup), "seq_len": program.seq_len, **peak_memory(_device_peak())}


def torch_passes(mode: str, cfg: ModelConfig, n: int, layout: Layout, reward_id: int) -> list[dict[str, Any]]:
  """The reference's batched passes as NumPy (for the PyTorch run): training, one per (candidate, dimension) of n
  pairs in the order (A, dim 0), (A, dim 1), (B, dim 0), (B, dim 1); scoring, one per dimension of n edits. A pass
  is {"dimension", "tokens" [rows], "reward_index" [rows], "pixel_values" (every row's two images, in row order),
  "image_grid_thw"}."""
  if mode == "train":
    pairs = synthetic_pairs(cfg, n, layout, reward_id)
    groups = [[pair[c] for pair in pairs] for c in range(2)]
  else:
    groups = [synthetic_edits(cfg, n, layout, reward_id)]
  passes = []
  for edits in groups:
    for i, d in enumerate(DIMENSIONS):
      images = [im for ex in edits for im in ex.images]
      passes.append({"dimension": i, "tokens": [ex.prompts[d] for ex in edits],
                     "reward_index": [ex.reward_index[d] for ex in edits],
                     "pixel_values": np.concatenate([im.normalised() for im in images]),
                     "image_grid_thw": np.stack([im.grid_thw for im in images])})
  return passes
