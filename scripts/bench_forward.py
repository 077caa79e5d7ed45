"""CPU benchmark: the jitted Flax backbone forward against transformers' PyTorch forward, same weights and inputs.

  python scripts/bench_forward.py [--iters=10] [--batch=2] [--threads=2]

Builds a small random Qwen2.5-VL (text hidden 512 x 8 layers, vision 8 blocks) in transformers, imports it with
convert.from_hf, and times both on a batch of sequences with two 224x224 images each. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("iters", 10, "Timed forward passes per framework (after warm-up).")
flags.DEFINE_integer("batch", 2, "Sequences per batch.")
flags.DEFINE_integer("threads", os.cpu_count(), "torch intra-op threads (XLA uses every core; keep them equal).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  import numpy as np
  import torch
  import transformers
  from flax import nnx

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
  from convert.from_hf import import_hf
  from editreward_jax.model_dir import load_model
  from editreward_jax.models import inputs
  from torch_reference import image_tokens, random_pixels, redraw_, tiny_hf_config

  torch.set_num_threads(FLAGS.threads)
  cfg = tiny_hf_config(vision_depth=8, text_layers=8, window_size=112, fullatt=(3, 7), hidden_size=512,
                       intermediate_size=1408, num_attention_heads=8, num_key_value_heads=2,
                       rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
  cfg.vision_config.hidden_size = 256
  cfg.vision_config.num_heads = 4
  cfg.vision_config.intermediate_size = 704
  cfg.vision_config.out_hidden_size = 512
  cfg._attn_implementation = "sdpa"
  torch.manual_seed(0)
  tmodel = redraw_(transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval())
  with tempfile.TemporaryDirectory() as hf_dir, tempfile.TemporaryDirectory() as ckpt:
    tmodel.save_pretrained(hf_dir)
    import_hf(hf_dir, ckpt, param_dtype="float32")
    jmodel = load_model(ckpt)[0].backbone

  grid = (1, 16, 16)  # 224x224 px
  grids = np.array([grid] * (2 * FLAGS.batch))
  text = list(range(3, 200))
  rows = [[1, 2] + image_tokens(grid) + [9] + image_tokens(grid) + text[:150 + 20 * i] for i in range(FLAGS.batch)]
  pixels = random_pixels(grids, seed=0)

  batch = jax.tree.map(jax.numpy.asarray, inputs.make_batch(rows, jmodel.cfg, pixel_values=pixels,
                                                            image_grid_thw=grids, rope_mode="sequential"))
  forward = nnx.jit(lambda m, b: m(**b))
  t0 = time.perf_counter()
  ours = forward(jmodel, batch).block_until_ready()
  compile_s = time.perf_counter() - t0

  length = max(len(r) for r in rows)
  ids = torch.zeros((len(rows), length), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = torch.tensor(r)
    mask[i, :len(r)] = 1
  pos = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
  tkw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=torch.from_numpy(pixels),
             image_grid_thw=torch.from_numpy(grids))

  def run_torch():
    with torch.inference_mode():
      return tmodel.model(**tkw).last_hidden_state

  ref = run_torch()
  valid = mask.numpy().astype(bool)
  diff = float(np.abs(np.asarray(ours) - ref.numpy())[valid].max())

  def timeit(fn):
    fn()
    times = []
    for _ in range(FLAGS.iters):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    return statistics.median(times)

  jax_s = timeit(lambda: forward(jmodel, batch).block_until_ready())
  torch_s = timeit(run_torch)
  print(json.dumps({
      "batch": FLAGS.batch, "seq_len": length, "images": len(grids), "threads": FLAGS.threads,
      "jax_forward_s": round(jax_s, 4), "torch_forward_s": round(torch_s, 4),
      "torch_over_jax": round(torch_s / jax_s, 2), "jax_compile_s": round(compile_s, 1),
      "max_abs_diff": diff, "jax": jax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__,
  }))


if __name__ == "__main__":
  app.run(main)
