"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_scoring.py): a tiny reward model scored on
one device and with its parameters sharded over all 8 (float32, then bfloat16 parameters); prints a JSON report."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import PIL.Image

from editreward_jax import load_scorer, sharding
from tiny_reward import make_reward_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(folder: str) -> None:
  ckpt = make_reward_dir(os.path.join(folder, "ckpt"))
  rng = np.random.default_rng(0)
  image = lambda w, h: PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
  sizes = [(70, 50), (112, 112), (40, 150), (90, 64), (56, 56)]
  args = ([f"make square {i} red" for i in range(len(sizes))], [image(*s) for s in sizes],
          [image(*reversed(s)) for s in sizes])
  single = load_scorer(ckpt, batch_size=4).score(*args)
  mesh = sharding.make_mesh(fsdp=-1)
  report = {"devices": jax.device_count()}
  for dtype in ("float32", "bfloat16"):
    scorer = load_scorer(ckpt, batch_size=4, param_dtype=dtype, mesh=mesh)
    scores = scorer.score(*args)
    gate = scorer.model.backbone.decoder.layers.mlp.gate_proj.kernel[...]
    report[dtype] = {"max_abs_diff": float(np.abs(scores.mu - single.mu).max()),
                     "dims_max_abs_diff": max(float(np.abs(scores.dims[d][0] - single.dims[d][0]).max())
                                              for d in scores.dims),
                     "param_dtype": str(gate.dtype), "gate_shape": list(gate.shape),
                     "gate_shard_shape": list(gate.addressable_shards[0].data.shape)}
  report["scale"] = float(np.abs(single.mu).max())
  print(json.dumps(report))


if __name__ == "__main__":
  main(sys.argv[1])
