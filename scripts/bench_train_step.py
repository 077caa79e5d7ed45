"""The bare jitted train step of a config on real pipeline batches held in memory: no input pipeline, logging or
checkpointing inside the timed loop. Beside the pairs/s that `launch.train` logs for the same config, the gap is
what the loop costs.

  python scripts/bench_train_step.py [--config=configs/tiny.py] [--steps=30] [--data_dir=DIR] [--config.a.b=v]

Builds (or reuses) the config's demo set, collates `--steps` batches up front, then times every step after the first
(which compiles). Prints one JSON line; `cpu_s_per_step` is this process's CPU time (all threads) per timed step, the
budget the loop's host work competes for on a CPU backend.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

import data
from editreward_jax import pipeline, sharding
from editreward_jax.training import loop
from editreward_jax.training.config import from_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 30, "Steps to time (after one compile step).", lower_bound=2)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the demo set is (built when missing); default: a temp dir.")


def main(argv):
  del argv
  config = from_config(_CONFIG.value)
  d = config.data
  (train,) = data.open_splits(d.name, _DATA_DIR.value or d.data_dir or tempfile.mkdtemp(), [d.train_split],
                              demo=d.demo)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  run = loop.prepare(config, mesh, len(train))
  it = iter(pipeline.pair_dataset(train, run.tokenizer, run.setup.prompts, run.setup.cfg,
                                  loop.pipeline_config(config, mesh, training=True),
                                  rope_mode=str(config.model.rope_mode)))
  steps = [[next(it) for _ in range(config.train.grad_accumulation)] for _ in range(_STEPS.value + 1)]
  it.close()
  state, frozen = run.initial_state()
  key = jax.random.key(0)
  with sharding.activation_rules(mesh):
    step_fn, shardings = run.train_step(mesh, steps[0][0])
    placed = [loop.global_batch(micro, shardings) for micro in steps]
    t0 = time.perf_counter()
    state, metrics = step_fn(state, frozen, placed[0], key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    cpu = time.process_time()
    for batch in placed[1:]:
      t = time.perf_counter()
      state, metrics = step_fn(state, frozen, batch, key)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu
  step_s = statistics.median(times)
  print(json.dumps({"config": _CONFIG.value.model.preset, "batch_pairs": config.train.batch_pairs,
                    "steps": len(times), "step_s_median": round(step_s, 4),
                    "step_s_mean": round(statistics.mean(times), 4), "cpu_s_per_step": round(cpu / len(times), 4),
                    "pairs_per_s": round(config.train.batch_pairs / step_s, 2), "compile_s": round(compile_s, 1),
                    "devices": jax.device_count(), "platform": jax.devices()[0].platform, "jax": jax.__version__}))


if __name__ == "__main__":
  app.run(main)
