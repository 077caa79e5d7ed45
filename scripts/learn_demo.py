"""Learnability check: a tiny reward model trained from scratch on the synthetic demo set, accuracy held out.

  python scripts/learn_demo.py [--data_dir=DIR] [--steps=2000] [--lr=3e-4] [--dimension_weight=0]

Builds the demo set (data.demo_config) into --data_dir (default: a fresh temporary folder), trains
RewardModel(TINY) in float32 with AdamW (linear warmup, then constant or --decay=cosine; global-norm clip 1.0) and
head dropout on: the reference's loss (Gauss-Hermite, on the mean-fused outputs, weighted by pair_weight), plus, with
--dimension_weight > 0, each head's own loss against that dimension's label (losses.multi_dimensional_loss). Training
pairs follow --tie_policy (default "drop": ties give no pair). Every --eval_every steps it measures, over the test
split's non-tie pairs, the fused accuracy mean(mu_A > mu_B) on the overall vote, and each head's accuracy on the pairs
that its dimension's label orders. The rubric is the short data/demo_prompts.json (the default rubric is about 300
tokens, which triples the step time of a model this small). Images stay at --image_size (min_pixels = max_pixels =
image_size**2). Prints one JSON line at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx

import data
from configs.presets import TINY
from editreward_jax import losses, pipeline, processing
from editreward_jax.prompts import DIMENSIONS, load_prompts
from editreward_jax.reward import RewardModel, fuse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("data_dir", None, "Where to build the demo set; default: a new temporary folder.")
flags.DEFINE_integer("image_size", 56, "Side of the demo images in pixels (a multiple of 28); kept unresized.")
flags.DEFINE_integer("num_train_pairs", 12000, "Train rows of the demo set (ties included).")
flags.DEFINE_integer("num_test_pairs", 300, "Test rows of the demo set (ties included).")
flags.DEFINE_integer("steps", 2000, "Training steps.")
flags.DEFINE_integer("batch_pairs", 8, "Pairs per batch (training and evaluation).")
flags.DEFINE_float("lr", 3e-4, "Peak learning rate of AdamW.")
flags.DEFINE_integer("warmup", 20, "Linear warmup steps.")
flags.DEFINE_enum("decay", "constant", ["constant", "cosine"],
                  "After warmup: hold the peak (the reference configs) or cosine to 0 at --steps (the paper).")
flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay.")
flags.DEFINE_float("dimension_weight", 0.0, "Weight of each head's loss on its own dimension's label (0: fused only).")
flags.DEFINE_enum("tie_policy", "drop", ["drop", "duplicate", "disagree"], "How training ties become pairs.")
flags.DEFINE_string("prompts", os.path.join(REPO, "data", "demo_prompts.json"), "Rubric prompts file.")
flags.DEFINE_list("seq_buckets", ["128", "256"], "Padded sequence lengths (the demo rubric fits 128 tokens).")
flags.DEFINE_integer("eval_every", 200, "Measure held-out accuracy every this many steps (and at the end).")
flags.DEFINE_integer("log_every", 50, "Log the mean training loss every this many steps.")
flags.DEFINE_integer("seed", 0, "Seed of the model init, data order and dropout.")
FLAGS = flags.FLAGS


def model_outputs(model: RewardModel, arrays: dict, dropout_key: jax.Array | None = None) -> jax.Array:
  """[P, 2 (A, B), D, 2 (mu, log_sigma)] per-dimension outputs of a pipeline batch."""
  out = model(arrays["batch"], arrays["reward_index"], arrays["dimension"], dropout_key=dropout_key)
  return out.reshape(-1, 2, len(DIMENSIONS), 2)


def pair_outputs(outputs: jax.Array) -> losses.PairOutputs:
  """[P, 2 (A, B), ..., 2] -> (mu_a, log_sigma_a, mu_b, log_sigma_b), each [P, ...]."""
  return losses.PairOutputs(outputs[:, 0, ..., 0], outputs[:, 0, ..., 1], outputs[:, 1, ..., 0], outputs[:, 1, ..., 1])


def loss_fn(model: RewardModel, arrays: dict, key: jax.Array, dimension_weight: float) -> jax.Array:
  outputs = model_outputs(model, arrays, key)
  fused = pair_outputs(fuse(outputs, "mean"))
  if dimension_weight == 0:
    return losses.pairwise_loss(*fused, weight=arrays["pair_weight"], kind="gauss_hermite")
  dims = losses.PairOutputs(*(x.T for x in pair_outputs(outputs)))  # fields [D, P]
  return losses.multi_dimensional_loss(fused, dims, arrays["labels"].T, weight=arrays["pair_weight"],
                                       dimension_weights=[dimension_weight] * len(DIMENSIONS), kind="gauss_hermite")


@nnx.jit(static_argnums=4)
def train_step(model: RewardModel, optimizer: nnx.Optimizer, arrays: dict, key: jax.Array, dimension_weight: float):
  loss, grads = nnx.value_and_grad(loss_fn)(model, arrays, key, dimension_weight)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_mu(model: RewardModel, arrays: dict) -> tuple[jax.Array, jax.Array]:
  outputs = model_outputs(model, arrays)
  return fuse(outputs, "mean")[..., 0], outputs[..., 0]  # [P, 2 (A, B)], [P, 2, D]


def device_arrays(batch: dict) -> dict:
  return jax.tree.map(jnp.asarray, {k: v for k, v in batch.items() if k != "metrics"})


def held_out_accuracy(model: RewardModel, batches: list[dict]) -> dict[str, float]:
  """Fused accuracy on the overall vote, and each head's on the pairs its own label orders (A > B strictly)."""
  right, total = np.zeros(1 + len(DIMENSIONS)), np.zeros(1 + len(DIMENSIONS))
  for arrays in batches:
    fused, dims = (np.asarray(x) for x in eval_mu(model, arrays))
    valid, labels = np.asarray(arrays["pair_valid"]), np.asarray(arrays["labels"])
    right[0] += (fused[valid, 0] > fused[valid, 1]).sum()
    total[0] += valid.sum()
    for d in range(len(DIMENSIONS)):
      ordered = valid & (labels[:, d] != 0)
      right[1 + d] += ((dims[ordered, 0, d] - dims[ordered, 1, d]) * labels[ordered, d] > 0).sum()
      total[1 + d] += ordered.sum()
  return {name: round(float(r / max(t, 1)), 4) for name, r, t in zip(("fused",) + DIMENSIONS, right, total)}


def main(argv):
  del argv
  t0 = time.time()
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="learn_demo_")
  demo = data.demo_config(num_train_pairs=FLAGS.num_train_pairs, num_test_pairs=FLAGS.num_test_pairs,
                          image_size=FLAGS.image_size)
  data.build("editreward_demo", data_dir, config=demo)
  tokenizer = processing.load_tokenizer(os.path.join(REPO, "data", "tiny_tokenizer"))
  prompts = load_prompts(FLAGS.prompts)
  pixels = FLAGS.image_size**2
  base = pipeline.PipelineConfig(batch_pairs=FLAGS.batch_pairs, seq_buckets=tuple(map(int, FLAGS.seq_buckets)),
                                 min_pixels=pixels, max_pixels=pixels, seed=FLAGS.seed)

  def batches(split: str, **overrides) -> pipeline.PairBatchIterator:
    source = data.open_source("editreward_demo", split, data_dir, config=demo)
    config = dataclasses.replace(base, **overrides)
    return iter(pipeline.pair_dataset(source, tokenizer, prompts, TINY, config, shard=(0, 1)))

  with contextlib.closing(batches("test", tie_policy="drop", shuffle=False, num_epochs=1)) as test_it:
    test = [device_arrays(b) for b in test_it]
  test_pairs = sum(int(b["pair_valid"].sum()) for b in test)

  model = RewardModel(TINY, rngs=nnx.Rngs(FLAGS.seed))  # float32 (RuntimeOptions' default)
  if FLAGS.decay == "cosine":
    if FLAGS.warmup >= FLAGS.steps:
      raise app.UsageError(f"--decay=cosine needs --warmup ({FLAGS.warmup}) below --steps ({FLAGS.steps})")
    schedule = optax.warmup_cosine_decay_schedule(0.0, FLAGS.lr, FLAGS.warmup, FLAGS.steps)
  else:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, FLAGS.lr, FLAGS.warmup),
                                     optax.constant_schedule(FLAGS.lr)], [FLAGS.warmup])
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=FLAGS.weight_decay))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  curve = {0: held_out_accuracy(model, test)}
  logging.info("held-out accuracy before training (%d pairs): %s", test_pairs, curve[0])
  key = jax.random.key(FLAGS.seed)
  window, pairs_seen = [], 0
  with contextlib.closing(batches("train", tie_policy=FLAGS.tie_policy)) as train:
    for step in range(1, FLAGS.steps + 1):
      batch = next(train)
      pairs_seen += int(batch["metrics"]["pairs"])
      loss = train_step(model, optimizer, device_arrays(batch), jax.random.fold_in(key, step),
                        FLAGS.dimension_weight)
      window.append(float(loss))
      if step % FLAGS.log_every == 0:
        logging.info("step %d: loss %.4f (%.0f s)", step, np.mean(window), time.time() - t0)
        window = []
      if step % FLAGS.eval_every == 0 or step == FLAGS.steps:
        curve[step] = held_out_accuracy(model, test)
        logging.info("step %d: held-out accuracy %s", step, curve[step])
  print(json.dumps({
      "steps": FLAGS.steps, "pairs_seen": pairs_seen, "test_pairs": test_pairs,
      "test_accuracy_before": curve[0]["fused"], "test_accuracy_after": curve[FLAGS.steps]["fused"],
      "curve": {str(s): acc for s, acc in curve.items()}, "image_size": FLAGS.image_size,
      "num_train_pairs": FLAGS.num_train_pairs, "batch_pairs": FLAGS.batch_pairs, "lr": FLAGS.lr, "decay": FLAGS.decay,
      "dimension_weight": FLAGS.dimension_weight, "tie_policy": FLAGS.tie_policy, "seed": FLAGS.seed,
      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
  app.run(main)
