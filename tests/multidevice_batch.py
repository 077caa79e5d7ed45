"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_batch_layout.py): a pipeline batch of 4
shards placed with `sharding.batch_shardings` on a (data=2, fsdp=2, tensor=2) mesh; the jitted RewardModel forward
against one device, and what each device's vision tower encodes, read from the compiled program. The same pairs in
one shard (the old layout: one vision batch for all, replicated) are measured alike. Prints a JSON report."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re

import jax
import numpy as np
from flax import nnx

from configs.presets import TINY
from data.editreward_demo import generate_rows
from editreward_jax import pipeline, processing, prompts, sharding
from editreward_jax.reward import RewardModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 56
# 2 pairs per shard: 6 images of 16 patches -> 128 slots; one shard of all 8 pairs: 384 slots.
CONFIG = pipeline.PipelineConfig(batch_pairs=8, shards=4, seq_buckets=(352, 384, 512), patch_buckets=(64, 128, 384),
                                 min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE, tie_policy="drop", prefetch=0,
                                 num_epochs=1, shuffle=False)
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def first_batch(shards: int) -> dict:
  rows = list(generate_rows("train", 16, seed=0, image_size=SIZE, edits_per_source=4))
  tokenizer = processing.load_tokenizer(ROOT / "data" / "tiny_tokenizer")
  config = dataclasses.replace(CONFIG, shards=shards)
  batch = next(iter(pipeline.pair_dataset(rows, tokenizer, prompts.load_prompts(), TINY, config, shard=(0, 1))))
  assert batch["pair_valid"].all()
  return {k: batch[k] for k in ("batch", "reward_index", "dimension")}


def dims(shape: str) -> list[int]:
  return [int(d) for d in shape.split(",") if d]


def vision_report(hlo: str, patch_dim: int) -> dict:
  """Per-device rows of pixels entering the patch embedding (the dot contracting patch_dim on both operands; the
  kernel operand has at most `hidden` rows, so the larger is the pixels'), and collectives moving pixel rows."""
  shapes = dict(re.findall(r"%([\w.\-]+) = \w+\[([\d,]*)\]", hlo))
  rows = []
  for lhs, rhs, lc, rc in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\), lhs_contracting_dims=\{(\d+)\}, "
                                     r"rhs_contracting_dims=\{(\d+)\}", hlo):
    ls, rs = dims(shapes[lhs]), dims(shapes[rhs])
    if ls[int(lc)] == patch_dim and rs[int(rc)] == patch_dim:
      rows.append(max(math.prod(ls), math.prod(rs)) // patch_dim)
  moved = [line.strip()[:200] for line in hlo.splitlines()
           if any(f" {c}(" in line or f" {c}-start(" in line for c in COLLECTIVES)
           and (m := re.search(r"= \w+\[([\d,]*)\]", line)) and dims(m.group(1))[-1:] == [patch_dim]]
  return {"patch_embed_rows": rows, "pixel_collectives": moved}


def main() -> None:
  model = RewardModel(TINY, rngs=nnx.Rngs(0))
  batch, flat = first_batch(4), first_batch(1)
  forward = nnx.jit(lambda m, b: m(b["batch"], b["reward_index"], b["dimension"]))
  single = np.asarray(forward(model, batch))

  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharding.shard_model(model, mesh)
  graphdef, state = nnx.split(model)
  jitted = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b["batch"], b["reward_index"], b["dimension"]))
  vision_features = jax.jit(lambda s, v: nnx.merge(graphdef, s).backbone.vision_features(v))
  report = {"devices": len(jax.devices()), "slots": int(batch["batch"]["vision"]["pixels"][0].shape[0]),
            "flat_slots": int(flat["batch"]["vision"]["pixels"].shape[1]), "batch_groups": 4}
  with sharding.activation_rules(mesh):
    placed = jax.device_put(batch, sharding.batch_shardings(batch, mesh))
    multi = np.asarray(jitted(state, placed))
    report.update(vision_report(jitted.lower(state, placed).compile().as_text(), TINY.vision.patch_dim))
    feats = vision_features(state, placed["batch"]["vision"])
    report["features_spec"] = [str(s) for s in feats.sharding.spec]
    report["features_shape"] = list(feats.shape)
    report["features_shard_shapes"] = sorted({tuple(s.data.shape) for s in feats.addressable_shards})

    # The old layout: all pairs in one vision batch, replicated (rows still split over the batch axes).
    shardings = sharding.batch_shardings({k: v for k, v in flat.items() if k != "batch"}, mesh)
    shardings["batch"] = sharding.batch_shardings({k: v for k, v in flat["batch"].items() if k != "vision"}, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings["batch"]["vision"] = jax.tree.map(lambda _: replicated, flat["batch"]["vision"])
    old = jax.device_put(flat, shardings)
    report["old"] = vision_report(jitted.lower(state, old).compile().as_text(), TINY.vision.patch_dim)
    report["old_max_abs_diff"] = float(np.abs(np.asarray(jitted(state, old)) - single).max())
    try:
      sharding.batch_shardings(first_batch(2), mesh)
      report["indivisible_error"] = None
    except ValueError as e:
      report["indivisible_error"] = str(e)
  report["max_abs_diff"] = float(np.abs(multi - single).max())
  report["scale"] = float(np.abs(single).max())
  print(json.dumps(report))


if __name__ == "__main__":
  main()
