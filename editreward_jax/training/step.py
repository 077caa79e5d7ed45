"""The jitted train step (gradient accumulation, clipping, AdamW, non-finite guard) and the evaluation forward.

A step takes M micro-batches stacked on a leading axis (M = train.grad_accumulation) and scans over them, summing
each micro-batch's gradient of sum(weight * loss) / W, where W is the total pair weight of the whole step: so M
micro-batches of P pairs give exactly the update of one batch of M * P pairs. The loss follows `train.objective`:
"fused" is the reference's (the pairwise loss of the fused outputs of A and B), "multi_dimensional" adds each head's
own-label term. A step whose loss or gradient norm is not finite leaves parameters and optimizer state unchanged
and says so in its metrics (`finite`), whatever the policy; the loop stops or counts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from editreward_jax import batching, losses
from editreward_jax.prompts import DIMENSIONS
from editreward_jax.reward import fuse
from editreward_jax.training import optimizer as opt_lib
from editreward_jax.training.config import Objective

MODEL_INPUTS = ("batch", "reward_index", "dimension")
STEP_INPUTS = MODEL_INPUTS + ("pair_weight", "pair_valid", "labels")


@dataclasses.dataclass(frozen=True)
class LossSettings:
  objective: Objective
  loss_kind: str
  dimension_weight: float
  fusion: str


def step_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  """The device inputs of a pipeline batch (drops host-only fields such as metrics and source rows)."""
  return {k: batch[k] for k in STEP_INPUTS}


def model_outputs(graphdef: nnx.GraphDef, params: Mapping[str, Any], inputs: Mapping[str, Any],
                  dropout_key: jax.Array | None = None) -> jax.Array:
  """[P, 2 (A, B), D, 2 (mu, log_sigma)] per-dimension outputs of a batch of training pairs."""
  model = nnx.merge(graphdef, params)
  out = model(inputs["batch"], inputs["reward_index"], inputs["dimension"], dropout_key=dropout_key)
  return batching.pair_outputs(out)


def pair_loss_sum(per_dim: jax.Array, inputs: Mapping[str, Any], settings: LossSettings,
                  key: jax.Array | None) -> jax.Array:
  """sum over pairs of pair_weight * loss (padded pairs have weight 0)."""
  fused = fuse(per_dim, settings.fusion)  # [P, 2, 2]
  fused_pairs = losses.PairOutputs(fused[:, 0, 0], fused[:, 0, 1], fused[:, 1, 0], fused[:, 1, 1])
  kw = dict(kind=settings.loss_kind, key=key)
  if settings.objective == Objective.FUSED:
    values = losses.pairwise_loss_values(*fused_pairs, **kw)
  else:
    dims = losses.PairOutputs(per_dim[:, 0, :, 0].T, per_dim[:, 0, :, 1].T, per_dim[:, 1, :, 0].T,
                              per_dim[:, 1, :, 1].T)  # fields [D, P]
    values = losses.multi_dimensional_loss_values(
        fused_pairs, dims, inputs["labels"].T, dimension_weights=[settings.dimension_weight] * len(DIMENSIONS), **kw)
  weight = inputs["pair_weight"]
  return jnp.sum(jnp.where(weight > 0, weight * values, 0.0))


def _pair_stats(per_dim: jax.Array, inputs: Mapping[str, Any], fusion: str) -> dict[str, jax.Array]:
  fused = fuse(per_dim, fusion)
  valid = inputs["pair_weight"] > 0
  return {"pairs": jnp.sum(valid), "correct": jnp.sum(valid & (fused[:, 0, 0] > fused[:, 1, 0])),
          "sigma_sum": jnp.sum(jnp.where(valid[:, None], jnp.exp(fused[:, :, 1]), 0.0)),
          "tokens": jnp.sum(inputs["batch"]["lengths"])}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, lr: Callable[[jax.Array], jax.Array],
                    settings: LossSettings, reward_token_id: int) -> Callable:
  """step(state, frozen, micro_batches, key) -> (state, metrics); jit it with the run's shardings."""

  def micro_loss(trainable, frozen, inputs, key, total_weight):
    params = opt_lib.merge(trainable, frozen, reward_token_id)
    dropout_key, loss_key = jax.random.split(key)
    per_dim = model_outputs(graphdef, params, inputs, dropout_key)
    loss = pair_loss_sum(per_dim, inputs, settings, loss_key) / total_weight
    return loss, _pair_stats(per_dim, inputs, settings.fusion)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(state, frozen, micro_batches, key):
    key = jax.random.fold_in(key, state["step"])
    weight = micro_batches["pair_weight"]
    total_weight = jnp.maximum(jnp.sum(jnp.where(weight > 0, weight, 0.0)), 1e-12)
    params = state["params"]

    def accumulate(carry, inputs_and_index):
      inputs, i = inputs_and_index
      grads, loss, stats = carry
      (micro, micro_stats), micro_grads = grad_fn(params, frozen, inputs, jax.random.fold_in(key, i), total_weight)
      return (jax.tree.map(jnp.add, grads, micro_grads), loss + micro,
              jax.tree.map(jnp.add, stats, micro_stats)), None

    num_micro = weight.shape[0]
    zero_stats = {"pairs": jnp.int32(0), "correct": jnp.int32(0), "sigma_sum": jnp.float32(0),
                  "tokens": jnp.int32(0)}
    init = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0), zero_stats)
    (grads, loss, stats), _ = jax.lax.scan(accumulate, init, (micro_batches, jnp.arange(num_micro)))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {"step": state["step"] + 1, "params": keep(new_params, params),
                 "opt_state": keep(opt_state, state["opt_state"])}
    pairs = jnp.maximum(stats["pairs"], 1)
    metrics = {"loss": loss, "accuracy": stats["correct"] / pairs, "sigma": stats["sigma_sum"] / (2 * pairs),
               "grad_norm": grad_norm, "lr": lr(state["step"]), "finite": finite, "pairs": stats["pairs"],
               "tokens": stats["tokens"]}
    return new_state, metrics

  return step


def make_eval_forward(graphdef: nnx.GraphDef, reward_token_id: int) -> Callable:
  """forward(trainable, frozen, inputs) -> [P, 2, D, 2] per-dimension outputs, no dropout."""

  def forward(trainable, frozen, inputs):
    return model_outputs(graphdef, opt_lib.merge(trainable, frozen, reward_token_id), inputs)

  return forward
