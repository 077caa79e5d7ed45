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
  if remat not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}")
  graphdef, state = nnx.split(stack)

  def step(c, layer_and_x):
    layer_state, x = layer_and_x
    return body(nnx.merge(graphdef, layer_state), c, x), None

  if remat != "none":
    step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
  carry, _ = jax.lax.scan(step, carry, (state, xs))
  return carry
