"""Training checkpoints: an Orbax CheckpointManager over the workdir, one numbered folder per saved step.

  WORKDIR/
    config.json        the resolved experiment config (written once, by process 0)
    editreward.json    the model's config and settings, tokenizer/   (so the workdir reads as a model directory)
    checkpoints/N/
      params/          the full reward-model parameters, in the same format as a model directory's params/
      opt_state/       AdamW's state of the trainable parameters
      data/            the Grain iterator state of every process (one JSON file per process)
      progress/        step and host counters (skipped rows, skipped updates), JSON
  WORKDIR/model/       the final step as a plain model directory (written at the end of training)

Saves are asynchronous (training goes on while arrays are written); `latest_step` and `restore` resume a run.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import grain
import orbax.checkpoint as ocp

from editreward_jax.model_dir import CHECKPOINT_DIR

CONFIG_FILE = "config.json"
FINAL_MODEL_DIR = "model"
ITEMS = ("params", "opt_state", "data", "progress")


def manager(workdir: str, *, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's CheckpointManager (keeps the `keep` newest steps; async saves)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options,
                               item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, params: Any, opt_state: Any, iterator: grain.DatasetIterator,
         progress: Mapping[str, Any], *, force: bool = False) -> bool:
  """Starts saving step `step` (returns before the arrays are written); False if the manager skipped it."""
  return mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
      data=grain.checkpoint.CheckpointSave(iterator), progress=ocp.args.JsonSave(dict(progress))), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_params: Any, abstract_opt_state: Any,
            iterator: grain.DatasetIterator) -> tuple[Any, Any, dict[str, Any]]:
  """(params, opt_state, progress) of `step` on the abstract trees' shardings; sets `iterator` to its position."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params), opt_state=ocp.args.StandardRestore(abstract_opt_state),
      data=grain.checkpoint.CheckpointRestore(iterator), progress=ocp.args.JsonRestore()))
  return restored["params"], restored["opt_state"], dict(restored["progress"])


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step))
