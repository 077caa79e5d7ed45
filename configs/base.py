"""The structure shared by every experiment config (ml_collections; override any field with --config.a.b=v)."""

from __future__ import annotations

import ml_collections


def base_config(preset: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.preset = preset  # shapes from configs/presets.py unless `base` names a checkpoint
  c.model.base = ""  # Hugging Face directory or project model directory to start from (its config wins)
  c.model.rope_mode = "sequential"  # sequential (released EditReward checkpoints) | mrope (native 3-D)

  c.runtime = ml_collections.ConfigDict()
  c.runtime.dtype = "bfloat16"  # compute dtype
  c.runtime.param_dtype = "float32"
  c.runtime.remat = "dots_no_batch"  # none | full | dots | dots_no_batch
  c.runtime.attention_impl = "xla"  # xla | cudnn (GPU)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1  # -1: all remaining devices
  c.mesh.tensor = 1
  return c
