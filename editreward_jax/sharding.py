"""Device mesh and the one table that maps logical axis names to mesh axes.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimizer state split over
it: ZeRO-3 style) and `tensor` (Megatron-style splitting of heads and MLP width). Parameters name their dimensions
with logical names (see `models/layers.py`); activations are constrained with `constrain`; pipeline batches are
placed by `batch_shardings` (rows, pairs and the vision arrays' shard axis split over the batch axes, so each device
group encodes only its own images). Nothing else in the project writes a PartitionSpec.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of mesh axes, or None for replicated).
LOGICAL_RULES: dict[str, Any] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",  # fewer KV heads than the tensor axis (or not a multiple): KV replicated over it
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    "vis_layers": None,
    "vis_patch": None,
    "vis_embed": "fsdp",
    "qkv": None,  # the q/k/v axis of the vision tower's fused projection
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
    "batch_shards": ("data", "fsdp"),  # the leading shard axis of a batch's vision arrays: split like "batch"
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


def _axes(entry: Any) -> tuple[str, ...]:
  return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def _fit_axes(entry: Any, dim: int, mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes of one spec entry that split a dimension of size `dim`: none if they do not divide it."""
  kept = tuple(a for a in _axes(entry) if mesh.shape[a] > 1)
  return () if dim % int(np.prod([mesh.shape[a] for a in kept])) else kept


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops a mesh axis from a dimension it does not divide (small tiny-model tables, odd vocab sizes)."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    kept = _fit_axes(entry, dim, mesh)
    out.append(None if not kept else (kept if len(kept) > 1 else kept[0]))
  return PartitionSpec(*out)


def _param_specs(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any]
                 ) -> tuple[list[tuple[tuple[str, ...], PartitionSpec]], dict[tuple[str, int, str], list[str]]]:
  """Each Variable's (path, spec), and the dimensions the table would split but the mesh cannot, keyed by (logical
  name, size, mesh axes) with the parameters concerned."""
  specs, unsplit = [], {}
  for path, v in nnx.to_flat_state(state):
    axes = v.get_metadata().get("logical_axes")
    shape = tuple(v.get_value().shape)
    if axes is None:
      specs.append((path, PartitionSpec()))
      continue
    spec = _fit(logical_to_spec(axes, rules), shape, mesh)
    for name, dim, entry in zip(axes, shape, spec):
      wanted = tuple(a for a in _axes(rules.get(name)) if mesh.shape[a] > 1)
      if wanted and not entry:
        sizes = " x ".join(f"{a}={mesh.shape[a]}" for a in wanted)
        unsplit.setdefault((name, dim, sizes), []).append("/".join(map(str, path)))
    specs.append((path, spec))
  return specs, unsplit


def unsplit_dims(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES) -> list[str]:
  """One line per logical axis that the table splits but this mesh cannot (its size is no multiple of the mesh
  axes): such dimensions stay replicated. For KV heads fewer than the tensor axis that is the intended rule (each
  device keeps every KV head; queries still split); elsewhere it means memory or compute is not shared as the
  config asked."""
  return _describe(_param_specs(state, mesh, rules)[1])


def _describe(unsplit: Mapping[tuple[str, int, str], list[str]]) -> list[str]:
  lines = []
  for (name, dim, sizes), paths in sorted(unsplit.items()):
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    lines.append(f"logical axis {name!r} of size {dim} cannot be split over {sizes}: replicated in {len(paths)} "
                 f"parameter{'s' if len(paths) > 1 else ''} ({shown})")
  return lines


def param_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES) -> dict[str, Any]:
  """NamedSharding of every Variable of an nnx State from its `logical_axes` metadata (replicated if none).

  Returned as a nested dict shaped like `nnx.to_pure_dict(state)`. A dimension the mesh cannot split is replicated
  and logged (`unsplit_dims`).
  """
  specs, unsplit = _param_specs(state, mesh, rules)
  for line in _describe(unsplit):
    logging.warning("sharding: %s", line)
  out: dict[str, Any] = {}
  for path, spec in specs:
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


def spmd_axes(logical: str, size: int) -> tuple[str, ...] | None:
  """The mesh axes that split a dimension of `size` named `logical`, as `constrain` would split it; None outside
  `activation_rules` (or where none does). For `jax.vmap(..., spmd_axis_name=...)`: without it, a `constrain`
  inside the mapped function would pin the mapped axis replicated."""
  rules = _ACTIVE_RULES.get()
  if rules is None:
    return None
  return _fit_axes(rules[logical], size, jax.sharding.get_abstract_mesh()) or None


def batch_shard_count(mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES) -> int:
  """Device groups along the batch mesh axes: how many batch shards (see `pipeline`) a global batch is cut into."""
  return int(np.prod([mesh.shape[a] for a in _axes(rules["batch"])]))


# A pipeline batch's arrays are split over the batch mesh axes along axis 0 (rows, pairs, the vision arrays'
# leading shard axis), except those named here; HOST_ONLY keys never go to a device.
BATCH_SPLIT_AXIS = {"position_ids": 1}  # [3, rows, seq]
HOST_ONLY = ("metrics",)


def _local_slices(mesh: Mesh, axes: Sequence[str]) -> int:
  """How many of the slices of a dimension split over `axes` this process's devices hold."""
  dims = [mesh.axis_names.index(a) for a in axes]
  mine = np.argwhere(np.vectorize(lambda d: d.process_index == jax.process_index())(mesh.devices))
  return len({tuple(c[dims]) for c in mine})


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES
                    ) -> dict[str, Any]:
  """NamedSharding of every array of a pipeline batch (nested dicts, as `pipeline` lays it out), HOST_ONLY left out.

  Made for `jax.make_array_from_process_local_data`, so `batch` holds this process's part: each split dimension
  must divide into this process's slices of the batch axes, else a ValueError names the array and the sizes (a
  batch is never silently replicated).
  """
  axes = _axes(rules["batch"])
  slices = _local_slices(mesh, axes)

  def place(path: tuple[str, ...], shape: tuple[int, ...]) -> NamedSharding:
    axis = BATCH_SPLIT_AXIS.get(path[-1], 0)
    if len(shape) <= axis or shape[axis] % slices:
      sizes = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)
      raise ValueError(f"batch array {'/'.join(path)} of shape {shape} cannot be split along axis {axis}: it needs "
                       f"a multiple of the {slices} slices of the batch mesh axes ({sizes}) this process feeds")
    return NamedSharding(mesh, PartitionSpec(*(axes if d == axis else None for d in range(len(shape)))))

  def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
      if key in HOST_ONLY:
        continue
      here = path + (key,)
      if isinstance(value, Mapping):
        out[key] = walk(value, here)
      else:
        out[key] = None if value is None else place(here, np.shape(value))
    return out

  return walk(batch, ())


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, Any] = LOGICAL_RULES) -> nnx.Module:
  """Moves every parameter of `model` onto its sharding (in place) and returns the model."""
  state = nnx.state(model)
  values = jax.device_put(nnx.to_pure_dict(state), param_shardings(state, mesh, rules))
  nnx.replace_by_pure_dict(state, values)
  nnx.update(model, state)
  return model
