"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_training_mesh.py): 3 train steps of the
tiny config on one device and on a (data=2, fsdp=2, tensor=2) mesh from the same pairs; prints a JSON report."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np

from configs import tiny
from data.editreward_demo import generate_rows
from editreward_jax import pipeline, sharding
from editreward_jax.training import loop
from editreward_jax.training.config import from_config

STEPS = 3


def train(config, rows, mesh):
  run = loop.prepare(config, mesh, len(rows))
  cfg = dataclasses.replace(loop.pipeline_config(config, mesh, training=True), prefetch=0)
  it = iter(pipeline.pair_dataset(rows, run.tokenizer, run.setup.prompts, run.setup.cfg, cfg, shard=(0, 1)))
  batches = [next(it) for _ in range(STEPS)]
  it.close()
  losses = []
  with sharding.activation_rules(mesh):
    state, frozen = run.initial_state()
    step_fn, shardings = run.train_step(mesh, batches[0])
    for batch in batches:
      state, metrics = step_fn(state, frozen, loop.global_batch([batch], shardings), jax.random.key(0))
      losses.append(float(metrics["loss"]))
  params = jax.tree.map(np.asarray, run.merge(state["params"], frozen))
  return losses, params, batches[0]["batch"]["vision"]["pixels"].shape


def main() -> None:
  c = tiny.get_config()
  c.data.min_pixels = c.data.max_pixels = 56 * 56
  c.train.batch_pairs = 4
  c.optimizer.warmup_fraction = 0.0
  # AdamW's first updates are about lr * g / (|g| + eps): at eps 1e-8 a gradient element near 0 turns rounding
  # differences of 1e-10 into lr-sized moves. A larger eps keeps the comparison of two layouts well conditioned.
  c.optimizer.eps = 1e-3
  config = from_config(c)
  rows = [r for r in generate_rows("train", 16, seed=0, image_size=56, edits_per_source=4) if r["vote_type"] != "tie"]
  one_losses, one_params, one_shape = train(config, rows, sharding.make_mesh(devices=jax.devices()[:1]))
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  many_losses, many_params, many_shape = train(config, rows, mesh)
  diffs = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(many_params))]
  scales = [float(np.abs(a).max()) for a in jax.tree.leaves(one_params)]
  print(json.dumps({"devices": len(jax.devices()), "one_losses": one_losses, "mesh_losses": many_losses,
                    "max_param_diff": max(diffs), "param_scale": max(scales),
                    "one_pixels_shape": list(one_shape), "mesh_pixels_shape": list(many_shape)}))


if __name__ == "__main__":
  main()
