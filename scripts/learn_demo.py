"""Learnability check: a tiny reward model trained from scratch on the synthetic demo set beats chance held out.

  python scripts/learn_demo.py [--data_dir=DIR] [--image_size=56] [--steps=600] [--batch_pairs=8] [--lr=1e-3]

Builds the demo set (data.demo_config) into --data_dir (default: a fresh temporary folder), trains
RewardModel(TINY) in float32 with AdamW (linear warmup, then constant; global-norm clip 1.0) on the Gauss-Hermite
ranking loss of the mean-fused outputs, weighted by pair_weight, with head dropout on. Training pairs follow
--tie_policy (default "drop": ties give no pair). Held-out accuracy is mean(mu_A > mu_B) over the test split's
non-tie pairs, measured before and after training. Images stay at --image_size (min_pixels = max_pixels =
image_size**2), not the reference's 448. Prints one JSON line at the end.
"""

from __future__ import annotations

import dataclasses
import json
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
from editreward_jax.prompts import load_prompts
from editreward_jax.reward import RewardModel, fuse

flags.DEFINE_string("data_dir", None, "Where to build the demo set; default: a new temporary folder.")
flags.DEFINE_integer("image_size", 56, "Side of the demo images in pixels (a multiple of 28); kept unresized.")
flags.DEFINE_integer("num_train_pairs", 2000, "Train rows of the demo set (ties included).")
flags.DEFINE_integer("num_test_pairs", 300, "Test rows of the demo set (ties included).")
flags.DEFINE_integer("steps", 600, "Training steps.")
flags.DEFINE_integer("batch_pairs", 8, "Pairs per batch (training and evaluation).")
flags.DEFINE_float("lr", 1e-3, "Peak learning rate of AdamW.")
flags.DEFINE_integer("warmup", 20, "Linear warmup steps.")
flags.DEFINE_float("weight_decay", 0.0, "AdamW weight decay.")
flags.DEFINE_enum("tie_policy", "drop", ["drop", "duplicate", "disagree"], "How training ties become pairs.")
flags.DEFINE_string("prompts", None, "Rubric prompts file; default: the project's rubric.")
flags.DEFINE_list("seq_buckets", ["384", "512"], "Padded sequence lengths (the default rubric fits 384 tokens).")
flags.DEFINE_integer("log_every", 25, "Log mean training loss and accuracy every this many steps.")
flags.DEFINE_integer("seed", 0, "Seed of the model init, data order and dropout.")
FLAGS = flags.FLAGS


def pair_outputs(model: RewardModel, arrays: dict, dropout_key: jax.Array | None = None) -> jax.Array:
  """Fused [P, 2 (A, B), 2 (mu, log_sigma)] of a pipeline batch."""
  out = model(arrays["batch"], arrays["reward_index"], arrays["dimension"], dropout_key=dropout_key)
  return fuse(out.reshape(-1, 2, 2, 2), "mean")


def loss_and_accuracy(model: RewardModel, arrays: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  fused = pair_outputs(model, arrays, key)
  (mu_a, ls_a), (mu_b, ls_b) = fused[:, 0].T, fused[:, 1].T
  loss = losses.pairwise_loss(mu_a, ls_a, mu_b, ls_b, weight=arrays["pair_weight"], kind="gauss_hermite")
  return loss, losses.pair_accuracy(mu_a, mu_b, arrays["pair_valid"])


@nnx.jit
def train_step(model: RewardModel, optimizer: nnx.Optimizer, arrays: dict, key: jax.Array):
  (loss, accuracy), grads = nnx.value_and_grad(loss_and_accuracy, has_aux=True)(model, arrays, key)
  optimizer.update(model, grads)
  return loss, accuracy


@nnx.jit
def eval_mu(model: RewardModel, arrays: dict) -> jax.Array:
  return pair_outputs(model, arrays)[..., 0]  # [P, 2 (A, B)]


def device_arrays(batch: dict) -> dict:
  return jax.tree.map(jnp.asarray, {k: v for k, v in batch.items() if k != "metrics"})


def test_accuracy(model: RewardModel, batches: list[dict]) -> float:
  right = total = 0
  for arrays in batches:
    mu = np.asarray(eval_mu(model, arrays))
    valid = np.asarray(arrays["pair_valid"])
    right += int((mu[valid, 0] > mu[valid, 1]).sum())
    total += int(valid.sum())
  return right / total


def main(argv):
  del argv
  t0 = time.time()
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="learn_demo_")
  demo = data.demo_config(num_train_pairs=FLAGS.num_train_pairs, num_test_pairs=FLAGS.num_test_pairs,
                          image_size=FLAGS.image_size)
  data.build("editreward_demo", data_dir, config=demo)
  tokenizer = processing.load_tokenizer("data/tiny_tokenizer")
  prompts = load_prompts(FLAGS.prompts)
  pixels = FLAGS.image_size**2
  base = pipeline.PipelineConfig(batch_pairs=FLAGS.batch_pairs, seq_buckets=tuple(map(int, FLAGS.seq_buckets)),
                                 min_pixels=pixels, max_pixels=pixels, seed=FLAGS.seed)

  def batches(split: str, **overrides) -> pipeline.PairBatchIterator:
    source = data.open_source("editreward_demo", split, data_dir, config=demo)
    config = dataclasses.replace(base, **overrides)
    return iter(pipeline.pair_dataset(source, tokenizer, prompts, TINY, config, shard=(0, 1)))

  test = [device_arrays(b) for b in batches("test", tie_policy="drop", shuffle=False, num_epochs=1)]
  train = batches("train", tie_policy=FLAGS.tie_policy)

  model = RewardModel(TINY, rngs=nnx.Rngs(FLAGS.seed))  # float32 (RuntimeOptions' default)
  schedule = optax.join_schedules([optax.linear_schedule(0.0, FLAGS.lr, FLAGS.warmup),
                                   optax.constant_schedule(FLAGS.lr)], [FLAGS.warmup])
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=FLAGS.weight_decay))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  accuracy_before = test_accuracy(model, test)
  logging.info("test accuracy before training: %.3f over %d pairs", accuracy_before,
               sum(int(b["pair_valid"].sum()) for b in test))
  key = jax.random.key(FLAGS.seed)
  window, first_loss, pairs_seen = [], None, 0
  for step in range(1, FLAGS.steps + 1):
    batch = next(train)
    pairs_seen += int(batch["metrics"]["pairs"])
    loss, accuracy = train_step(model, optimizer, device_arrays(batch), jax.random.fold_in(key, step))
    window.append((float(loss), float(accuracy)))
    if step % FLAGS.log_every == 0 or step == FLAGS.steps:
      mean_loss, mean_accuracy = np.mean(window, axis=0)
      first_loss = mean_loss if first_loss is None else first_loss
      logging.info("step %d: loss %.4f, train accuracy %.3f (%.0f s)", step, mean_loss, mean_accuracy,
                   time.time() - t0)
      window = []
  accuracy_after = test_accuracy(model, test)
  print(json.dumps({
      "steps": FLAGS.steps, "pairs_seen": pairs_seen, "train_loss_first": round(float(first_loss), 4),
      "train_loss_last": round(float(mean_loss), 4), "train_accuracy_last": round(float(mean_accuracy), 4),
      "test_accuracy_before": round(accuracy_before, 4), "test_accuracy_after": round(accuracy_after, 4),
      "test_pairs": sum(int(b["pair_valid"].sum()) for b in test), "image_size": FLAGS.image_size,
      "batch_pairs": FLAGS.batch_pairs, "lr": FLAGS.lr, "tie_policy": FLAGS.tie_policy,
      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
  app.run(main)
