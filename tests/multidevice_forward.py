"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_sharding.py): forward of the imported tiny
model on one device, on a (data=2, fsdp=2, tensor=2) mesh and on a (data=1, fsdp=2, tensor=4) mesh (4 query heads
split one per device, 2 KV heads replicated); prints a JSON report."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
from flax import nnx

from convert.from_hf import load_backbone
from editreward_jax import sharding
from editreward_jax.models import inputs
from editreward_jax.models.qwen2_5_vl import Qwen25VL
from torch_reference import image_tokens, random_pixels


def build(cfg, params):
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def main(hf_dir: str) -> None:
  grids = np.array([[1, 4, 6], [1, 8, 12], [1, 4, 6], [1, 8, 12]])
  text = [5, 17, 33, 2, 101, 7]
  rows = [[1] + image_tokens(tuple(g)) + text[:3 + i] for i, g in enumerate(grids)]
  cfg, params = load_backbone(hf_dir, param_dtype="float32")
  batch = inputs.make_batch(rows, cfg, pixel_values=random_pixels(grids, 5), image_grid_thw=grids, rope_mode="mrope")

  forward = nnx.jit(lambda m, b: m(**b))
  single = np.asarray(forward(build(cfg, jax.device_put(params, jax.devices()[0])), batch))

  report = {"devices": len(jax.devices())}
  for name, sizes in (("", (2, 2, 2)), ("tp4_", (1, 2, 4))):
    mesh = sharding.make_mesh(*sizes)
    cfg, sharded_params = load_backbone(hf_dir, param_dtype="float32", mesh=mesh)
    model = build(cfg, sharded_params)
    with sharding.activation_rules(mesh):
      batch_spec = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))
      multi = forward(model, dict(batch, input_ids=jax.device_put(batch["input_ids"], batch_spec)))
    attn = model.decoder.layers.self_attn
    shard_shapes = lambda p: sorted({tuple(s.data.shape) for s in p[...].addressable_shards})
    report.update({
        f"{name}max_abs_diff": float(np.abs(np.asarray(multi) - single).max()),
        f"{name}q_shard_shapes": shard_shapes(attn.q_proj.kernel),
        f"{name}k_shard_shapes": shard_shapes(attn.k_proj.kernel),
    })
    if not name:
      gate = model.decoder.layers.mlp.gate_proj.kernel[...]
      report.update({
          "scale": float(np.abs(single).max()),
          "gate_spec": [str(s) for s in gate.sharding.spec],
          "gate_shape": list(gate.shape),
          "gate_shard_shapes": shard_shapes(model.decoder.layers.mlp.gate_proj.kernel),
          "embed_spec": [str(s) for s in model.embed_tokens[...].sharding.spec],
          "hidden_spec": [str(s) for s in multi.sharding.spec],
      })
  print(json.dumps(report))


if __name__ == "__main__":
  main(sys.argv[1])
