"""Dry runs: the train state of a config built abstractly on its mesh (no memory), with per-device bytes.

An abstract mesh of the config's sizes stands in for the devices, so a 7B plan for 8 or 256 accelerators can be
checked on a laptop. The bytes are those of each parameter's shard under the sharding table: model parameters
(trainable and frozen, in param_dtype), gradients (one per trainable parameter, same dtype and sharding) and AdamW's
state (two moments per trainable parameter). Activations are not counted: they depend on the batch and remat.
`unsplit` lists the dimensions the table would split but this mesh cannot (kept whole on every device).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from editreward_jax import model_dir, sharding
from editreward_jax.training import optimizer as opt_lib
from editreward_jax.training import state as state_lib
from editreward_jax.training.config import from_config


def mesh_sizes(data: int, fsdp: int, tensor: int, devices: int) -> tuple[int, int, int]:
  sizes = [data, fsdp, tensor]
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    sizes[sizes.index(-1)] = max(devices // known, 1)
  return tuple(sizes)


def dry_run(raw_config: Mapping[str, Any]) -> dict[str, Any]:
  config = from_config(raw_config)
  sizes = mesh_sizes(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, jax.device_count())
  mesh = AbstractMesh(sizes, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  setup = state_lib.model_setup(config, require_base=False)
  _, state, abstract = model_dir.abstract_params(setup.cfg, setup.options, setup.head, mesh)
  reward_id = setup.cfg.text.vocab_size - 1  # any row: only shapes matter here
  trainable, frozen = state_lib.split_abstract(config, abstract, reward_id, mesh)
  tx, _ = opt_lib.make_optimizer(config.optimizer, max(config.train.steps, 1), trainable)
  train_state = state_lib.abstract_train_state(tx, trainable, mesh)
  shape = dict(zip(sharding.MESH_AXES, sizes))
  per_device = {
      "trainable_params": state_lib.per_device_bytes(trainable, shape),
      "frozen_params": state_lib.per_device_bytes(frozen, shape),
      "gradients": state_lib.per_device_bytes(trainable, shape),
      "optimizer_state": state_lib.per_device_bytes(train_state["opt_state"], shape),
  }
  per_device["total"] = sum(per_device.values())
  count = lambda tree: int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
  return {"mesh": shape, "devices": int(np.prod(sizes)), "model_source": setup.base or f"preset {config.model.preset}",
          "params": count(abstract), "trainable": count(trainable), "frozen": count(frozen),
          "per_device_bytes": per_device, "per_device_gib": round(per_device["total"] / 2**30, 3),
          "unsplit": sharding.unsplit_dims(state, mesh)}
