"""The training loop: `train_and_evaluate(config, workdir, sources)`.

One readable loop: build the mesh, the model and the optimizer; resume from the newest checkpoint of the workdir if
there is one (parameters, optimizer state, step and the data iterator's position), else start from the base model
or a fresh init; then per step take M micro-batches from this process's Grain iterator, place them as global arrays
(each process contributes its own shards), run the jitted step, and every few steps log, evaluate and checkpoint.
Training ends by step count, so every process runs the same steps. SIGTERM (preemption) saves and returns.
Process 0 alone prints, writes TensorBoard events and the run's metadata files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from editreward_jax import model_dir, pipeline, sharding
from editreward_jax.evaluation import metrics as eval_metrics
from editreward_jax.prompts import DIMENSIONS
from editreward_jax.reward import fuse
from editreward_jax.training import checkpoints, flops
from editreward_jax.training import state as state_lib
from editreward_jax.training.config import ConfigError, TrainConfig, from_config
from editreward_jax.training.run import Run, global_batch, prepare, stacked_shardings, total_steps  # noqa: F401 (re-exported)
from editreward_jax.training.step import make_eval_forward, step_inputs
from editreward_jax.training.summaries import ProgressLog


@dataclasses.dataclass(frozen=True)
class Sources:
  """Random-access row sources (EditReward-Data schema) of this run's splits; `eval` may be None."""
  train: Sequence[Any]
  eval: Sequence[Any] | None = None


def pipeline_config(config: TrainConfig, mesh, *, training: bool) -> pipeline.PipelineConfig:
  """This process's share of a micro-batch, laid out in one shard per device group of the batch axes."""
  processes = jax.process_count()
  micro = config.train.micro_pairs
  batch_shards = sharding.batch_shard_count(mesh)
  if micro % batch_shards or batch_shards % processes:
    raise ConfigError(f"config.train.batch_pairs: a micro-batch of {micro} pairs (batch_pairs / grad_accumulation) "
                      f"must split evenly over the mesh's {batch_shards} batch shards (data x fsdp), which must "
                      f"split over {processes} processes")
  d = config.data
  if processes > 1 and config.runtime.prefix_sharing and not d.packed_buckets:
    raise ConfigError("config.data.packed_buckets: a multi-process run pads every pair to one fixed packed length "
                      "(the largest packed bucket); set it, or config.runtime.prefix_sharing=False")
  return pipeline.PipelineConfig(
      batch_pairs=micro // processes, shards=batch_shards // processes, seq_buckets=d.seq_buckets,
      patch_buckets=d.patch_buckets, prefix_sharing=config.runtime.prefix_sharing, packed_buckets=d.packed_buckets,
      tie_policy=str(d.tie_policy) if training else "duplicate",
      tie_weight=d.tie_weight, bad_rows=str(d.bad_rows), min_pixels=d.min_pixels, max_pixels=d.max_pixels,
      workers=d.workers if training else 0, read_threads=d.read_threads, prefetch=d.prefetch,
      seed=config.train.seed, shuffle=training, num_epochs=None if training else 1,
      fixed_shapes=processes > 1)


def _write_run_files(workdir: str, raw_config: Mapping[str, Any], setup: state_lib.ModelSetup, config: TrainConfig,
                     tokenizer) -> None:
  """config.json, editreward.json and tokenizer/ in the workdir (process 0), so the workdir is a CKPT."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, checkpoints.CONFIG_FILE), "w") as f:
    json.dump(raw_config, f, indent=2, sort_keys=True, default=str)
  tokenizer.save_pretrained(os.path.join(workdir, model_dir.TOKENIZER_DIR))
  model_dir.write_meta(workdir, setup.cfg, setup.head, setup.settings(config))


class _Preemption:
  """Remembers a SIGTERM so the loop can save and stop at the next step boundary; with several processes they agree
  (any process signalled stops all at the same step, so their collective saves match)."""

  def __init__(self):
    self._signalled = False

  @property
  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self._signalled
    return bool(np.any(multihost_utils.process_allgather(np.array(self._signalled))))

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def evaluate(forward, trainable, frozen, source, tokenizer, setup: state_lib.ModelSetup, config: TrainConfig,
             mesh) -> dict[str, float]:
  """Held-out accuracy: fused on non-tie pairs, with ties (tie calibration), and each head on its own label."""
  cfg = dataclasses.replace(pipeline_config(config, mesh, training=False), prefetch=0)
  it = iter(pipeline.pair_dataset(source, tokenizer, setup.prompts, setup.cfg, cfg,
                                  rope_mode=str(config.model.rope_mode), name="eval split"))
  rows, deltas, dim_deltas, dim_labels, ties = [], [], [], [], []
  seen = 0
  with contextlib.closing(it):
    for batch in it:
      inputs = step_inputs(batch)
      placed = jax.make_array_from_process_local_data(sharding.batch_shardings(inputs, mesh), inputs)
      out = np.asarray(multihost_utils.process_allgather(forward(trainable, frozen, placed),
                                                                         tiled=True))
      local = {k: multihost_utils.process_allgather(batch[k], tiled=True)
               for k in ("pair_valid", "source_row", "tie", "labels")}
      valid = np.asarray(local["pair_valid"])
      mu = out[..., 0]  # [P, 2, D]
      fused = np.asarray(fuse(out, str(config.model.fusion)))[..., 0]  # [P, 2]
      rows.append(np.asarray(local["source_row"])[valid])
      ties.append(np.asarray(local["tie"])[valid])
      deltas.append((fused[:, 0] - fused[:, 1])[valid])
      dim_deltas.append((mu[:, 0] - mu[:, 1])[valid])
      dim_labels.append(np.asarray(local["labels"])[valid])
      seen += int(valid.sum())
      if config.data.eval_max_pairs and seen >= config.data.eval_max_pairs:
        break
  rows, ties, deltas = np.concatenate(rows), np.concatenate(ties), np.concatenate(deltas)
  dim_deltas, dim_labels = np.concatenate(dim_deltas), np.concatenate(dim_labels)
  # A tie row gives (left, right) and (right, left): keep its first pair only.
  _, first = np.unique(rows, return_index=True)
  keep = np.zeros(len(rows), bool)
  keep[first] = True
  labels = np.where(ties, 0, 1)
  result = {"accuracy": eval_metrics.pairwise_accuracy(deltas[keep], labels[keep]),
            "accuracy_with_ties": eval_metrics.accuracy_with_ties(deltas[keep], labels[keep])[0]}
  for d, name in enumerate(DIMENSIONS):
    result[name] = eval_metrics.pairwise_accuracy(dim_deltas[keep, d], dim_labels[keep, d])
  result["pairs"] = int(keep.sum())
  result["ties"] = int(ties[keep].sum())
  return result


def train_and_evaluate(raw_config: Mapping[str, Any], workdir: str, sources: Sources) -> dict[str, Any]:
  """Trains as `raw_config` says, checkpointing into `workdir`; returns the last metrics and evaluation."""
  config = from_config(raw_config)
  workdir = os.path.abspath(workdir)
  primary = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  run = prepare(config, mesh, len(sources.train))
  steps = run.steps
  if primary:
    _write_run_files(workdir, raw_config.to_dict() if hasattr(raw_config, "to_dict") else dict(raw_config),
                     run.setup, config, run.tokenizer)

  train_cfg = pipeline_config(config, mesh, training=True)
  train_it = iter(pipeline.pair_dataset(sources.train, run.tokenizer, run.setup.prompts, run.setup.cfg, train_cfg,
                                        rope_mode=str(config.model.rope_mode)))
  mngr = checkpoints.manager(workdir, keep=config.train.keep_checkpoints)
  progress = {"step": 0, "skipped_rows": train_it.skipped, "skipped_updates": 0}
  start = mngr.latest_step()
  if start is not None:
    params, opt_state, progress = checkpoints.restore(mngr, start, run.abstract, run.state_abstract["opt_state"],
                                                      train_it)
    trainable, frozen = run.partition(params)
    state = {"step": jax.device_put(np.int32(start), run.state_abstract["step"].sharding), "params": trainable,
             "opt_state": opt_state}
    del params
    if primary:
      print(f"resumed from step {start} of {steps} ({checkpoints.step_dir(workdir, start)})", flush=True)
  else:
    start = 0
    state, frozen = run.initial_state()

  eval_forward = jax.jit(make_eval_forward(run.graphdef, run.reward_id))
  log = ProgressLog(workdir if primary else None, steps, config.runtime.peak_tflops, jax.device_count())
  key = jax.random.key(config.train.seed)
  step_fn, batch_shardings = None, None
  evaluation: dict[str, float] = {}

  def run_eval(step: int) -> None:
    nonlocal evaluation
    if sources.eval is None:
      return
    evaluation = evaluate(eval_forward, state["params"], frozen, sources.eval, run.tokenizer, run.setup, config,
                          mesh)
    log.evaluation(step, evaluation)

  def save(step: int, force: bool = False) -> None:
    checkpoints.save(mngr, step, run.merge(state["params"], frozen), state["opt_state"], train_it,
                     dict(progress, step=step), force=force)

  with sharding.activation_rules(mesh), _Preemption() as preemption, contextlib.closing(train_it):
    if start == 0 and config.train.eval_every:
      run_eval(0)
    for step in range(start + 1, steps + 1):
      micro_batches = [next(train_it) for _ in range(config.train.grad_accumulation)]
      if step_fn is None:
        step_fn, batch_shardings = run.train_step(mesh, micro_batches[0])
      step_flops = sum(flops.train_flops(run.setup.cfg, run.setup.head, b) for b in micro_batches)
      state, metrics = step_fn(state, frozen, global_batch(micro_batches, batch_shardings), key)
      log.step(step, metrics, step_flops * jax.process_count(), train_it.skipped)
      if step % config.train.log_every == 0 or step == steps:
        bad = log.flush(step)
        if bad:
          progress["skipped_updates"] += len(bad)
          if str(config.train.nonfinite) == "stop":
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad[0]}: stopped; parameters were not updated by it and the "
                f"last good checkpoint is kept ({mngr.latest_step()}); set config.train.nonfinite=skip to skip such "
                "steps")
          logging.warning("skipped the update of steps %s (non-finite loss or gradient)", bad)
      progress["skipped_rows"] = train_it.skipped
      if preemption.requested:
        save(step, force=True)
        mngr.wait_until_finished()
        if primary:
          print(f"SIGTERM: saved step {step}; re-run the same command to resume", flush=True)
        return {"step": step, "preempted": True}
      if step % config.train.checkpoint_every == 0 and step != steps:
        save(step)
      if config.train.eval_every and step % config.train.eval_every == 0 and step != steps:
        run_eval(step)
    final = max(start, steps)
    if start < steps:
      save(steps, force=True)
    run_eval(final)
  mngr.wait_until_finished()
  mngr.close()
  _write_final_model(workdir, run.merge(state["params"], frozen), run.setup, config, run.tokenizer, primary)
  log.close()
  return {"step": final, "evaluation": evaluation, "train": log.last}


def _write_final_model(workdir: str, params: Any, setup: state_lib.ModelSetup, config: TrainConfig, tokenizer,
                       primary: bool) -> None:
  """WORKDIR/model: the final parameters as a plain model directory (what convert.to_torch and scoring read)."""
  model_dir.save_model_dir(os.path.join(workdir, checkpoints.FINAL_MODEL_DIR), params, setup.cfg, setup.head,
                           setup.settings(config), tokenizer, primary=primary)
