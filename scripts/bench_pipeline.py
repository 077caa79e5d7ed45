"""Throughput of the training input pipeline: pairs per second for 0, 1 and 2 worker processes.

  python scripts/bench_pipeline.py [--workers=0,1,2] [--pairs=96] [--batch_pairs=2]

Two settings: the default 448x448 resolution (min_pixels = max_pixels = 200704) on demo rows rendered at
--image_size px (PNG), with the Qwen2.5-VL vision geometry; and the demo resolution (the demo set's 112 px images at
112x112) with the tiny model's geometry. Both use the tiny tokenizer and the default rubric, read the demo set from
ArrayRecord files (data.build) and pad vision patches to the exact bucket of square images. Each run times the start-up
(until every worker has delivered a batch), then --pairs pairs, and prints one JSON line to stdout (logs go to stderr).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts to time (0: in this process).")
flags.DEFINE_integer("pairs", 96, "Pairs timed per setting, after the first batch.")
flags.DEFINE_integer("batch_pairs", 2, "Pairs per batch.")
flags.DEFINE_integer("image_size", 512, "Side of the demo images fed to the 448x448 setting.")
flags.DEFINE_integer("read_threads", 2, "Threads processing pairs in each process (PipelineConfig.read_threads).")
FLAGS = flags.FLAGS

DEMO_SIZE = 112  # data.demo_config's default image size


def settings():
  from configs.presets import QWEN25VL_7B, TINY
  from editreward_jax.processing import DEFAULT_PIXELS
  full = TINY.replace(vision=QWEN25VL_7B.vision)  # Qwen2.5-VL patch/window geometry, tiny tokenizer's token ids
  return [("448x448", FLAGS.image_size, DEFAULT_PIXELS, full), ("demo 112x112", DEMO_SIZE, DEMO_SIZE**2, TINY)]


def exact_patch_bucket(model_cfg, pixels: int, batch_pairs: int) -> int:
  """Vision patch slots of a batch of square images of `pixels` pixels: no padding for the demo's square images."""
  import numpy as np

  from editreward_jax.models import vision_layout
  from editreward_jax.processing import smart_resize
  v = model_cfg.vision
  side = smart_resize(int(pixels**0.5), int(pixels**0.5), v.patch_size * v.spatial_merge_size, pixels, pixels)
  grid = np.array([[1, side[0] // v.patch_size, side[1] // v.patch_size]])
  return 3 * batch_pairs * vision_layout.num_windows(grid, v) * v.window_units**2 * v.merge_unit


def demo_source(data_dir: str, image_size: int):
  """Enough demo rows for the timed pairs plus the first batch, built quietly (TFDS prints progress)."""
  import data
  demo = data.demo_config(num_train_pairs=FLAGS.pairs + FLAGS.batch_pairs, num_test_pairs=1, image_size=image_size)
  with contextlib.redirect_stdout(sys.stderr):
    data.build("editreward_demo", data_dir, config=demo)
  return data.open_source("editreward_demo", "train", data_dir, config=demo)


def run(name: str, source, image_size: int, pixels: int, model_cfg, workers: int, tokenizer) -> dict:
  import numpy as np

  from editreward_jax import pipeline, prompts
  config = pipeline.PipelineConfig(
      batch_pairs=FLAGS.batch_pairs, patch_buckets=(exact_patch_bucket(model_cfg, pixels, FLAGS.batch_pairs),),
      min_pixels=pixels, max_pixels=pixels, workers=workers, read_threads=FLAGS.read_threads)
  it = iter(pipeline.pair_dataset(source, tokenizer, prompts.load_prompts(), model_cfg, config, shard=(0, 1)))
  try:
    start = time.perf_counter()
    for _ in range(max(workers, 1)):  # one batch from every worker: their start-up stays out of the timing
      next(it)
    first = time.perf_counter()
    done, token_padding, patch_padding, seq_lens = 0, [], [], set()
    while done < FLAGS.pairs:
      batch = next(it)
      done += int(batch["metrics"]["pairs"])
      token_padding.append(batch["metrics"]["token_padding"])
      patch_padding.append(batch["metrics"]["patch_padding"])
      seq_lens.add(int(batch["batch"]["input_ids"].shape[1]))
    elapsed = time.perf_counter() - first
  finally:
    it.close()
  return {"setting": name, "workers": workers, "read_threads": FLAGS.read_threads, "batch_pairs": FLAGS.batch_pairs,
          "source_image_px": image_size, "pairs": done, "pairs_per_s": round(done / elapsed, 2),
          "startup_s": round(first - start, 2), "seq_lens": sorted(seq_lens),
          "token_padding": round(float(np.mean(token_padding)), 3),
          "patch_padding": round(float(np.mean(patch_padding)), 3), "cpu_count": os.cpu_count(),
          "load_avg_1min": round(os.getloadavg()[0], 2)}


def main(argv):
  del argv
  from editreward_jax import processing
  tokenizer = processing.load_tokenizer(os.path.join(os.path.dirname(__file__), "..", "data", "tiny_tokenizer"))
  for name, image_size, pixels, model_cfg in settings():
    with tempfile.TemporaryDirectory() as data_dir:
      source = demo_source(data_dir, image_size)
      for workers in FLAGS.workers:
        print(json.dumps(run(name, source, image_size, pixels, model_cfg, int(workers), tokenizer)), flush=True)


if __name__ == "__main__":
  app.run(main)
