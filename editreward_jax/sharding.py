"""Device mesh and the one table that maps logical axis names to mesh axes.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimizer state split over
it: ZeRO-3 style) and `tensor` (Megatron-style splitting of heads and MLP width). Parameters name their dimensions
with logical names (see `models/layers.py`); activations are constrained with `constrain`. Nothing else in the
project writes a PartitionSpec.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of mesh axes, or None for replicated).
LOGICAL_RULES: dict[str, Any] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    "vis_layers": None,
    "vis_patch": None,
    "vis_embed": "fsdp",
    "vis_qkv": "tensor",
    "vis_heads": "tensor",
    "vis_mlp": "tensor",
    "vis_norm": None,
    "vis_merge": "fsdp",
    "vis_merge_out": "tensor",
    "head_in": None,
    "head_hidden": None,
    # activations
    "batch": ("data", "fsdp"),
    "seq": None,
    "embed_act": None,
    "vis_tokens": None,
    "vis_embed_act": None,
}

_ACTIVE_RULES: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("rules", default=None)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError("at most one mesh axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split as data={data}, fsdp={fsdp}, tensor={tensor}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {int(np.prod(sizes))} "
                     f"devices, have {len(devices)}")
  # Auto axis types: XLA propagates shardings from the annotated parameters and inputs (jax 0.10 defaults to
  # Explicit, which would demand a sharding rule for every op).
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, Any] = LOGICAL_RULES) -> PartitionSpec:
  mapped = []
  for name in axes:
    if name is None:
      mapped.append(None)
      continue
    if name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule")
    mapped.append(rules[name])
  used = [a for m in mapped if m is not None for a in (m if isinstance(m, tuple) else (m,))]
  if len(used) != len(set(used)):
    raise ValueError(f"logical axes {tuple(axes)} map a mesh axis twice: {mapped}")
  return PartitionSpec(*mapped)


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops a mesh axis from a dimension it does not divide (small tiny-model tables, odd vocab sizes)."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    kept = tuple(a for a in axes if mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in kept])) if kept else 1
    out.append(None if not kept or dim % size else (kept if len(kept) > 1 else kept[0]))
  return PartitionSpec(*out)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES) -> dict[str, Any]:
  """NamedSharding of every Variable of an nnx State from its `logical_axes` metadata (replicated if none).

  Returned as a nested dict shaped like `nnx.to_pure_dict(state)`.
  """
  out: dict[str, Any] = {}
  for path, v in nnx.to_flat_state(state):
    axes = v.get_metadata().get("logical_axes")
    shape = tuple(v.get_value().shape)
    spec = PartitionSpec() if axes is None else _fit(logical_to_spec(axes, rules), shape, mesh)
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = NamedSharding(mesh, spec)
  return out


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES):
  """Within this context (and under `jax.set_mesh(mesh)`), `constrain` pins activation shardings."""
  token = _ACTIVE_RULES.set(rules)
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside `activation_rules` (single device, tests)."""
  rules = _ACTIVE_RULES.get()
  if rules is None:
    return x
  mesh = jax.sharding.get_abstract_mesh()
  return jax.lax.with_sharding_constraint(x, _fit(logical_to_spec(axes, rules), x.shape, mesh))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES) -> nnx.Module:
  """Moves every parameter of `model` onto its sharding (in place) and returns the model."""
  state = nnx.state(model)
  values = jax.device_put(nnx.to_pure_dict(state), param_shardings(state, mesh, rules))
  nnx.replace_by_pure_dict(state, values)
  nnx.update(model, state)
  return model
