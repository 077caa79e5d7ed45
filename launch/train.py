"""Train a reward model.

  python -m launch.train --config=configs/tiny.py --workdir=DIR [--config.train.steps=100 ...] [--dry_run]

Re-running the same command resumes from the newest checkpoint in DIR. Multi-process runs call
`jax.distributed.initialize()` first: automatic on TPU pods and under SLURM/Open MPI; elsewhere give
--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). `--dry_run` builds the train state abstractly on the config's mesh and prints per-device bytes.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from editreward_jax import cli, paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard events, resolved config.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build the train state abstractly and print per-device bytes.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process GPU runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (multi-process GPU runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process GPU runs).")
_VERBOSE = cli.verbose_flag()
flags.mark_flags_as_required(["config"])


def _distributed() -> None:
  import jax
  address = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address or _NUM_PROCESSES.value:
    env = lambda name: int(os.environ[name]) if name in os.environ else None
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=_NUM_PROCESSES.value or env("JAX_NUM_PROCESSES"),
                               process_id=_PROCESS_ID.value if _PROCESS_ID.value is not None else env("JAX_PROCESS_ID"))
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) and \
      int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "2"))) > 1:
    jax.distributed.initialize()  # the cluster environment says where the coordinator is


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(_VERBOSE.value)  # the progress and eval lines are printed; library INFO logs are noise
  from editreward_jax.schema import DataError
  from editreward_jax.training import plan
  from editreward_jax.training.config import ConfigError
  config = _CONFIG.value
  with cli.one_line_errors(ConfigError, DataError, FloatingPointError):
    if _DRY_RUN.value:
      print(json.dumps(plan.dry_run(config)))
      return
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required (except with --dry_run)")
    _distributed()
    import data
    from editreward_jax.training import loop
    from editreward_jax.training.config import from_config
    workdir = paths.expand(_WORKDIR.value)
    d = from_config(config).data
    data_dir = d.data_dir or os.path.join(workdir, "tfds")
    splits = [d.train_split] + ([d.eval_split] if d.eval_split else [])
    opened = data.open_splits(d.name, data_dir, splits, demo=d.demo)
    result = loop.train_and_evaluate(config, workdir, loop.Sources(opened[0], opened[1] if d.eval_split else None))
  if not result.get("preempted"):
    print(f"done: step {result['step']}; model directory {os.path.join(workdir, 'model')}", flush=True)


if __name__ == "__main__":
  cli.run(main)
