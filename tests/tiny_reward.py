"""A tiny random reward model directory (TINY preset, bundled tokenizer): what scoring and evaluation tests score with."""

from __future__ import annotations

import os

from flax import nnx

import data
from editreward_jax import model_dir, processing
from editreward_jax.models.presets import TINY
from editreward_jax.reward import HeadConfig, RewardModel

SETTINGS = {"rope_mode": "sequential", "fusion": "mean", "min_pixels": 56 * 56, "max_pixels": 112 * 112}


def make_reward_dir(path: str | os.PathLike, seed: int = 0) -> str:
  params = nnx.to_pure_dict(nnx.state(RewardModel(TINY, rngs=nnx.Rngs(seed)), nnx.Param))
  return model_dir.save_model_dir(os.fspath(path), params, TINY, HeadConfig(), SETTINGS,
                                  processing.load_tokenizer(data.TINY_TOKENIZER))
