"""Small building blocks shared by the vision tower and the text decoder.

Every parameter carries `logical_axes` metadata (one name per dimension); `editreward_jax.sharding` maps those names to
mesh axes through a single table, so no module here mentions a mesh axis. Kernels are stored [in, out] (the transpose
of a torch Linear weight); the importer does the transposition.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype


def param(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, axes: tuple[str | None, ...], init: str,
          std: float | None = None) -> nnx.Param:
  """A parameter drawn as `init` says: "normal" (mean 0, `std`; the config's initializer_range), "zeros", "ones"."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  if (init == "normal") != (std is not None):
    raise ValueError(f"std is required by, and only by, the normal init (init {init!r}, std {std})")
  if init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  elif init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value, logical_axes=axes)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias), computed in `dtype` with parameters stored in `param_dtype`.

  `in_features` and `out_features` may be tuples: the kernel is then [*in, *out], contracting the last len(in) axes
  of x and giving len(out) new ones. Attention projections keep (heads, head_dim) apart this way, so a mesh axis on
  the heads dimension always splits whole heads.
  """

  def __init__(self, in_features: int | tuple[int, ...], out_features: int | tuple[int, ...],
               axes: tuple[str | None, ...], *, use_bias: bool, init_std: float, dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    in_shape = in_features if isinstance(in_features, tuple) else (in_features,)
    out_shape = out_features if isinstance(out_features, tuple) else (out_features,)
    self.kernel = param(rngs, in_shape + out_shape, param_dtype, axes, "normal", init_std)
    self.bias = param(rngs, out_shape, param_dtype, axes[len(in_shape):], "zeros") if use_bias else None
    self.contract = len(in_shape)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # One 2-D matmul over all leading axes: the weight gradient then contracts a single token axis. With several
    # (batch, sequence), XLA:CPU transposes the output gradient into a [out, tokens] layout first, fused into the
    # activation's backward and slower than the matmul itself (docs/benchmarks.md).
    kernel = self.kernel[...].astype(self.dtype)
    lead, out_shape = x.shape[:x.ndim - self.contract], kernel.shape[self.contract:]
    flat = kernel.reshape(-1, math.prod(out_shape))
    y = jnp.dot(x.astype(self.dtype).reshape(-1, flat.shape[0]), flat).reshape(*lead, *out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """RMSNorm as transformers computes it: normalise in float32, cast back, then scale."""

  def __init__(self, dim: int, eps: float, axis_name: str, *, param_dtype: Dtype, rngs: nnx.Rngs):
    self.scale = param(rngs, (dim,), param_dtype, (axis_name,), "ones")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    in_dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(in_dtype) * x32.astype(in_dtype)


class GatedMLP(nnx.Module):
  """SwiGLU: down(act(gate(x)) * up(x)); the vision tower uses biases, the text decoder does not."""

  def __init__(self, dim: int, hidden: int, act: str, axes: tuple[str, str], *, use_bias: bool, init_std: float,
               dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    embed_axis, mlp_axis = axes
    kw = dict(use_bias=use_bias, init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Linear(dim, hidden, (embed_axis, mlp_axis), **kw)
    self.up_proj = Linear(dim, hidden, (embed_axis, mlp_axis), **kw)
    self.down_proj = Linear(hidden, dim, (mlp_axis, embed_axis), **kw)
    self.act = activation(act)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  table = {
      "silu": jax.nn.silu,
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  }
  if name not in table:
    raise ValueError(f"unsupported activation {name!r}; known: {sorted(table)}")
  return table[name]


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [..., seq, heads, head_dim]; cos/sin: [..., seq, head_dim] (broadcast over heads)."""
  return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]
