"""Parameter groups, the learning-rate schedule and the optax optimizer of a training run.

The reward model's parameters (the pure-dict tree of `nnx.split(RewardModel, nnx.Param)`) fall into the groups of
`config.GROUPS`; lm_head belongs to none: the reward model never uses it, so it is not trained and not part of the
training state. `partition` splits the tree into what trains (gradients and AdamW moments) and what stays frozen (a
constant input of the step): a group with learning-rate multiplier 0 is frozen whole, and with
`embedding="reward_row"` the token table is frozen and only its `<|Reward|>` row trains, as a separate [D] vector,
so the 150K-row table carries no gradient and no optimizer state.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import optax

from editreward_jax.training.config import Embedding, OptimizerSection, Schedule

REWARD_ROW = "reward_row"  # key of the trainable <|Reward|> embedding row in the trainable tree
Params = dict[str, Any]


def group_of(path: tuple[str, ...]) -> str | None:
  """The parameter group of a leaf path of the reward model's tree; None for lm_head (never trained)."""
  if path[0] == "heads":
    return "heads"
  if path[0] == REWARD_ROW or path[1] == "embed_tokens":
    return "embedding"
  if path[1] == "lm_head":
    return None
  if path[1] == "visual":
    return "merger" if path[2] == "merger" else "vision"
  if path[1] == "decoder":
    return "language_model"
  raise ValueError(f"parameter {'/'.join(path)} belongs to no parameter group")


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _nest(flat: Mapping[tuple[str, ...], Any]) -> Params:
  out: Params = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def _trains(group: str | None, multipliers: Mapping[str, float], embedding: Embedding) -> bool:
  if group is None:
    return False
  if group == "embedding" and embedding != Embedding.ALL:
    return False  # frozen whole, or only its reward row trains (added separately)
  return multipliers[group] > 0


def partition(params: Mapping[str, Any], multipliers: Mapping[str, float], embedding: Embedding,
              reward_token_id: int, row: Callable[[Any, int], Any] = lambda table, i: table[i]
              ) -> tuple[Params, Params]:
  """(trainable, frozen) trees whose union is `params`; with reward_row, `row(table, id)` is also trainable."""
  trainable, frozen = {}, {}
  for path, value in _flat(params).items():
    (trainable if _trains(group_of(path), multipliers, embedding) else frozen)[path] = value
  trainable = _nest(trainable)
  if embedding == Embedding.REWARD_ROW and multipliers["embedding"] > 0:
    trainable[REWARD_ROW] = row(params["backbone"]["embed_tokens"], reward_token_id)
  return trainable, _nest(frozen)


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any], reward_token_id: int) -> Params:
  """The full parameter tree of the reward model from the two parts (inverse of `partition`)."""
  flat = _flat(frozen)
  flat.update((path, v) for path, v in _flat(trainable).items() if path[0] != REWARD_ROW)
  full = _nest(flat)
  if REWARD_ROW in trainable:
    table = full["backbone"]["embed_tokens"]
    # A copy of the table with one row replaced; the gradient reaches the row only.
    full["backbone"]["embed_tokens"] = table.at[reward_token_id].set(trainable[REWARD_ROW].astype(table.dtype))
  return full


def labels(trainable: Mapping[str, Any]) -> Params:
  """The group name of every trainable leaf (for optax.multi_transform)."""
  return _nest({path: group_of(path) for path in _flat(trainable)})


def schedule(opt: OptimizerSection, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over warmup_fraction of the steps, then constant or cosine to 0 at total_steps."""
  warmup = int(round(opt.warmup_fraction * total_steps))
  if opt.schedule == Schedule.COSINE:
    return optax.warmup_cosine_decay_schedule(0.0, opt.lr, warmup, max(total_steps, warmup + 1))
  if warmup == 0:
    return optax.constant_schedule(opt.lr)
  return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), optax.constant_schedule(opt.lr)],
                              [warmup])


def make_optimizer(opt: OptimizerSection, total_steps: int, trainable: Mapping[str, Any]
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """Global-norm clipping of the whole gradient, then AdamW per group at lr * multiplier; and the base schedule."""
  lr = schedule(opt, total_steps)
  groups = sorted({g for g in jax.tree.leaves(labels(trainable))})
  per_group = {
      g: optax.adamw(lambda step, m=opt.lr_multipliers[g]: m * lr(step), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay)
      for g in groups
  }
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  parts.append(optax.multi_transform(per_group, labels(trainable)))
  return optax.chain(*parts), lr
