"""Layer stacks: create N identical layers with stacked parameters and run them with `jax.lax.scan`.

Scanning keeps compile time flat in depth. Each stacked parameter gets a leading 'layers' logical axis so the
sharding table can place it (it is never split). The per-layer body can be rematerialised with a named policy.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
}


def make_stack(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, axis_name: str,
               rngs: nnx.Rngs) -> nnx.Module:
  """One module whose parameters carry a leading axis of size `num_layers`."""

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axis_name,
                                                          "logical_axes": axis_name})
  def create(r: nnx.Rngs):
    return make_layer(r)

  return create(rngs)


def run_stack(stack: nnx.Module, carry: Any, xs: Any, body: Callable[[nnx.Module, Any, Any], Any],
              remat: str = "none") -> Any:
  """carry = body(layer_i, carry, xs[i]) for each layer i, scanned; returns the final carry."""
  graphdef, state = nnx.split(stack)
  return _scan(graphdef, state, carry, xs, body, remat)


def run_stack_by_kind(stack: nnx.Module, carry: Any, kinds: tuple[Any, ...],
                      body: Callable[[nnx.Module, Any, Any], Any], remat: str = "none") -> Any:
  """carry = body(layer_i, carry, kinds[i]) for each layer i, with `kinds[i]` a Python value: each run of layers
  of one kind is scanned on its own, so the body branches in Python. (A `lax.cond` inside one scan would, under
  differentiation, store zero residuals of the branch not taken in every layer: the vision tower's full-attention
  probabilities in every window block, which made its backward pass 3-6x its forward.) A pattern that repeats
  (Qwen2.5-VL: 7 window blocks, then a full one, 4 times) is one outer scan over the repeats, so the program does not
  grow with depth."""
  graphdef, state = nnx.split(stack)
  n = len(kinds)
  period = next(p for p in range(1, n + 1) if n % p == 0 and tuple(kinds) == tuple(kinds[:p]) * (n // p))
  runs, start = [], 0
  while start < period:
    end = start
    while end < period and kinds[end] == kinds[start]:
      end += 1
    runs.append((start, end, kinds[start]))
    start = end

  def one_period(c, period_state):
    for a, b, kind in runs:
      segment = jax.tree.map(lambda x, a=a, b=b: x[a:b], period_state)
      c = _scan(graphdef, segment, c, None, lambda layer, h, _, k=kind: body(layer, h, k), remat)
    return c

  if period == n:
    return one_period(carry, state)
  repeats = jax.tree.map(lambda x: x.reshape(n // period, period, *x.shape[1:]), state)
  carry, _ = jax.lax.scan(lambda c, s: (one_period(c, s), None), carry, repeats)
  return carry


def _scan(graphdef, state, carry, xs, body, remat):
  if remat not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}")

  def step(c, layer_and_x):
    layer_state, x = layer_and_x
    return body(nnx.merge(graphdef, layer_state), c, x), None

  if remat != "none":
    step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
  carry, _ = jax.lax.scan(step, carry, (state, xs))
  return carry
