"""Two processes joined with jax.distributed on localhost train the tiny config; see test_training_mesh.py.

  python multiprocess_train.py worker PROCESS_ID PORT WORKDIR   # one of the two processes (one CPU device each)
  python multiprocess_train.py reference WORKDIR                 # one process, the same global batches

The workers run `train_and_evaluate` (each reads its own half of the rows and lays out its own batch shard); the
reference builds both halves' batches in one process, joins them as the two processes' arrays are joined, and runs
the same jitted step on a 2-device mesh. Each prints a JSON report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import numpy as np

STEPS = 3


def config():
  from configs import tiny
  c = tiny.get_config()
  c.data.min_pixels = c.data.max_pixels = 56 * 56
  c.data.patch_buckets = (96,)  # 6 images of 16 patches per process: the fixed shape every process agrees on
  c.data.seq_buckets = (128,)
  c.data.packed_buckets = (256,)  # a pair's 4 rows with their common prefixes once
  c.data.prefetch = 0
  c.data.eval_split = ""
  c.train.steps = STEPS
  c.train.batch_pairs = 4
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.checkpoint_every = 100
  c.optimizer.warmup_fraction = 0.0
  # AdamW's first updates are about lr * g / (|g| + eps): at eps 1e-8 a gradient element near 0 turns rounding
  # differences of 1e-10 into lr-sized moves. A larger eps keeps the comparison of two layouts well conditioned.
  c.optimizer.eps = 1e-3
  return c


def rows():
  from data.editreward_demo import generate_rows
  return [r for r in generate_rows("train", 16, seed=0, image_size=56, edits_per_source=4) if r["vote_type"] != "tie"]


def worker(process_id: int, port: int, workdir: str) -> None:
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)
  from editreward_jax.training import loop
  result = loop.train_and_evaluate(config(), workdir, loop.Sources(rows()))
  print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(), "step": result["step"]}))


def reference(workdir: str) -> None:
  from editreward_jax import model_dir, pipeline, sharding
  from editreward_jax.training import loop
  from editreward_jax.training.config import from_config
  cfg = from_config(config())
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=1)
  data = rows()
  run = loop.prepare(cfg, mesh, len(data))
  # What each of 2 processes lays out: half the micro-batch, one batch shard, fixed shapes.
  per_process = dataclasses.replace(loop.pipeline_config(cfg, mesh, training=True), batch_pairs=2, shards=1,
                                    fixed_shapes=True)
  halves = []
  for index in range(2):
    it = iter(pipeline.pair_dataset(data, run.tokenizer, run.setup.prompts, run.setup.cfg, per_process,
                                    shard=(index, 2)))
    halves.append([next(it) for _ in range(STEPS)])
    it.close()
  # Join the two processes' arrays along the batch axis of each, as the global arrays of the 2-process run join them.
  def join(a, b, path):
    return np.concatenate([a, b], axis=sharding.BATCH_SPLIT_AXIS.get(path[-1].key, 0))

  joined = [jax.tree_util.tree_map_with_path(lambda path, a, b: join(a, b, path), loop.step_inputs(h0),
                                             loop.step_inputs(h1)) for h0, h1 in zip(*halves)]
  losses = []
  with sharding.activation_rules(mesh):
    state, frozen = run.initial_state()
    step_fn, shardings = run.train_step(mesh, joined[0])
    for batch in joined:
      state, metrics = step_fn(state, frozen, loop.global_batch([batch], shardings), jax.random.key(cfg.train.seed))
      losses.append(float(metrics["loss"]))
  want = jax.tree.map(np.asarray, run.merge(state["params"], frozen))
  got, _ = model_dir.load_model(os.path.join(workdir, "model"))
  from flax import nnx
  got = nnx.to_pure_dict(nnx.state(got, nnx.Param))
  diff = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  print(json.dumps({"losses": losses, "max_param_diff": diff}))


if __name__ == "__main__":
  if sys.argv[1] == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  else:
    reference(sys.argv[2])
