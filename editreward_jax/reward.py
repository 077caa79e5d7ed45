"""The EditReward model: the Qwen2.5-VL backbone, two probabilistic reward heads, the `<|Reward|>` read-out, fusion.

Each row of a batch is one (edit, quality dimension) prompt. The final normed hidden state at the row's `<|Reward|>`
token goes, in float32, through the head of the row's dimension:
  Linear(D, 1024) -> ReLU -> Dropout(0.05) -> Linear(1024, 16) -> ReLU -> Linear(16, 2) = [mu, log_sigma].
head_0 judges instruction following, head_1 visual quality (`prompts.DIMENSIONS` order). `fuse` combines an edit's
per-dimension outputs into one [mu, log_sigma].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from editreward_jax.models import shared_prefix
from editreward_jax.models.config import ModelConfig
from editreward_jax.models.qwen2_5_vl import Qwen25VL, RuntimeOptions
from editreward_jax.prompts import DIMENSIONS

FUSIONS = ("mean", "min", "sum")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  hidden: int = 1024
  bottleneck: int = 16
  dropout: float = 0.05


class HeadLinear(nnx.Module):
  """A float32 Linear initialised like torch.nn.Linear (uniform in +-1/sqrt(fan_in)), as the reference's heads."""

  def __init__(self, fan_in: int, fan_out: int, axes: tuple[str, str], rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(fan_in)
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (fan_in, fan_out), jnp.float32, -bound, bound),
                            logical_axes=axes)
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (fan_out,), jnp.float32, -bound, bound),
                          logical_axes=axes[1:])

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x, self.kernel[...], precision=jax.lax.Precision.HIGHEST) + self.bias[...]


class RewardHead(nnx.Module):

  def __init__(self, dim: int, cfg: HeadConfig, rngs: nnx.Rngs):
    self.fc0 = HeadLinear(dim, cfg.hidden, ("head_in", "head_hidden"), rngs)
    self.fc3 = HeadLinear(cfg.hidden, cfg.bottleneck, ("head_hidden", None), rngs)
    self.fc5 = HeadLinear(cfg.bottleneck, 2, (None, None), rngs)
    self.dropout = cfg.dropout

  def __call__(self, h: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """Dropout after the first ReLU only when a key is given (training); the key is the only random state."""
    x = jax.nn.relu(self.fc0(h))
    if dropout_key is not None and self.dropout > 0:
      keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
    return self.fc5(jax.nn.relu(self.fc3(x)))


class RewardModel(nnx.Module):

  def __init__(self, cfg: ModelConfig, options: RuntimeOptions = RuntimeOptions(), head: HeadConfig = HeadConfig(),
               *, rngs: nnx.Rngs):
    self.backbone = Qwen25VL(cfg, options, rngs=rngs)
    self.heads = nnx.Dict({d: RewardHead(cfg.text.hidden_size, head, rngs) for d in DIMENSIONS})
    self.head_config = head

  @property
  def cfg(self) -> ModelConfig:
    return self.backbone.cfg

  def __call__(self, batch: Mapping[str, jax.Array], reward_index: jax.Array, dimension: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """[R, 2] (mu, log_sigma) of every row from its dimension's head.

    batch: `Qwen25VL.__call__` keyword arguments for R rows (packed or not); reward_index [R]: position of
    `<|Reward|>` in each standalone row;
    dimension [R]: index into `DIMENSIONS` per row; dropout_key: given in training only.
    """
    hidden = self.backbone(**batch)
    if batch.get("row_tokens") is None:
      h = jnp.take_along_axis(hidden, reward_index[:, None, None], axis=1)[:, 0]
    else:  # packed groups (shared_prefix.py)
      h = shared_prefix.at_positions(hidden, batch["row_tokens"], reward_index)
    h = h.astype(jnp.float32)
    keys = [None] * len(DIMENSIONS) if dropout_key is None else list(jax.random.split(dropout_key, len(DIMENSIONS)))
    outputs = jnp.stack([self.heads[d](h, k) for d, k in zip(DIMENSIONS, keys)], axis=1)  # [R, num_dims, 2]
    return jnp.take_along_axis(outputs, dimension[:, None, None], axis=1)[:, 0]


def fuse(per_dimension: jax.Array, fusion: str = "mean") -> jax.Array:
  """[..., num_dims, 2] per-dimension (mu, log_sigma) -> [..., 2] fused.

  mean: average of each column; min: minimum of each column; sum: mu summed, sigma = sqrt(sum of sigma^2).
  """
  mu, log_sigma = per_dimension[..., 0], per_dimension[..., 1]
  if fusion == "mean":
    return jnp.stack([mu.mean(-1), log_sigma.mean(-1)], axis=-1)
  if fusion == "min":
    return jnp.stack([mu.min(-1), log_sigma.min(-1)], axis=-1)
  if fusion == "sum":
    return jnp.stack([mu.sum(-1), 0.5 * jax.nn.logsumexp(2.0 * log_sigma, axis=-1)], axis=-1)
  raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
