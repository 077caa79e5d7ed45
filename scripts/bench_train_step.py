"""Forward+backward rate of the reward model on synthetic pair batches (the compute side of input-bound checks).

  python scripts/bench_train_step.py [--config=configs/tiny.py] [--pairs=4] [--image_px=112] [--iters=5]

A batch of P pairs is 4P rows [A-dim0, A-dim1, B-dim0, B-dim1 per pair] showing 3 distinct images per pair
(source, A, B; vision dedup), each image `image_px` square. The step is value_and_grad of the Gauss-Hermite
ranking loss on the fused outputs. Prints one JSON line with pairs/s.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from configs import presets
from editreward_jax import batching, losses
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.processing import ProcessedImage
from editreward_jax.reward import RewardModel, fuse

config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config (model preset and runtime).")
flags.DEFINE_integer("pairs", 4, "Pairs per batch.")
flags.DEFINE_integer("image_px", 112, "Side of the square synthetic images (a multiple of 28).")
flags.DEFINE_integer("prompt_tokens", 256, "Text tokens per row besides the image tokens.")
flags.DEFINE_integer("iters", 5, "Timed steps after the compile.")
FLAGS = flags.FLAGS


def synthetic_batch(cfg, pairs: int, px: int, prompt_tokens: int, rng: np.random.Generator) -> dict:
  grid = np.array([1, px // 14, px // 14])
  table = batching.ImageTable()
  rows = []
  n_img = int(grid.prod()) // cfg.vision.merge_unit
  for _ in range(pairs):
    src, a, b = (table.add(ProcessedImage(rng.standard_normal((int(grid.prod()), cfg.vision.patch_dim),
                                                              np.float32), grid)) for _ in range(3))
    for cand in (a, b):
      for dim in range(2):
        text = rng.integers(0, 1000, prompt_tokens).tolist()
        tokens = ([cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id]) * 2 + text
        rows.append(batching.Row(np.asarray(tokens, np.int32), (src, cand), len(tokens) - 1, dim))
  return batching.collate(rows, table, cfg, rope_mode="sequential")


def main(argv):
  del argv
  c = FLAGS.config
  cfg = presets.PRESETS[c.model.preset]
  options = RuntimeOptions(dtype=c.runtime.dtype, param_dtype=c.runtime.param_dtype, remat=c.runtime.remat,
                           attention_impl=c.runtime.attention_impl)
  model = RewardModel(cfg, options, rngs=nnx.Rngs(0))
  arrays = jax.tree.map(jnp.asarray, synthetic_batch(cfg, FLAGS.pairs, FLAGS.image_px, FLAGS.prompt_tokens,
                                                     np.random.default_rng(0)))

  def loss_fn(m, arrays, key):
    out = m(arrays["batch"], arrays["reward_index"], arrays["dimension"], dropout_key=key)
    fused = fuse(out.reshape(FLAGS.pairs, 2, 2, 2), "mean")  # [pair, candidate, (mu, log_sigma)]
    return losses.pairwise_loss(fused[:, 0, 0], fused[:, 0, 1], fused[:, 1, 0], fused[:, 1, 1])

  @nnx.jit
  def step(m, arrays, key):
    return nnx.value_and_grad(loss_fn)(m, arrays, key)

  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(step(model, arrays, key))
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(FLAGS.iters):
    t = time.perf_counter()
    jax.block_until_ready(step(model, arrays, jax.random.fold_in(key, i)))
    times.append(time.perf_counter() - t)
  s = statistics.median(times)
  print(json.dumps({"preset": c.model.preset, "pairs": FLAGS.pairs, "image_px": FLAGS.image_px,
                    "seq_len": int(arrays["batch"]["input_ids"].shape[1]), "step_s": round(s, 4),
                    "pairs_per_s": round(FLAGS.pairs / s, 2), "compile_s": round(compile_s, 1),
                    "devices": str(jax.devices()[0].platform), "jax": jax.__version__}))


if __name__ == "__main__":
  app.run(main)
