"""Qwen2 text decoder in Flax NNX with multimodal (3-axis) rotary positions, layers stacked and scanned."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editreward_jax import sharding
from editreward_jax.models import attention, layers, scan, shared_prefix
from editreward_jax.models.config import TextConfig


def mrope_cos_sin(position_ids: jax.Array, cfg: TextConfig, dtype) -> tuple[jax.Array, jax.Array]:
  """position_ids [3, B, L] -> cos, sin [B, L, head_dim].

  Frequency j takes its position from axis (section index of j) mod 3: with sections (16, 24, 24) the first 16
  frequencies follow the temporal axis, the next 24 the height axis, the last 24 the width axis.
  """
  hd = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta**(np.arange(0, hd, 2, dtype=np.float32) / hd))
  axis_of_freq = np.repeat(np.arange(len(cfg.mrope_section)) % 3, cfg.mrope_section)
  pos = position_ids.astype(jnp.float32)[axis_of_freq]  # [hd/2, B, L]
  freqs = jnp.moveaxis(pos, 0, -1) * jnp.asarray(inv_freq)  # [B, L, hd/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


class TextAttention(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, hd = cfg.hidden_size, cfg.head_dim
    kw = dict(init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    self.q_proj = layers.Linear(d, (h, hd), ("embed", "q_heads", "head_dim"), use_bias=True, **kw)
    self.k_proj = layers.Linear(d, (kv, hd), ("embed", "kv_heads", "head_dim"), use_bias=True, **kw)
    self.v_proj = layers.Linear(d, (kv, hd), ("embed", "kv_heads", "head_dim"), use_bias=True, **kw)
    self.o_proj = layers.Linear((h, hd), d, ("q_heads", "head_dim", "embed"), use_bias=False, **kw)

  def __call__(self, x, cos, sin, lengths, implementation, layout=None):
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, L, heads, head_dim]
    q = layers.apply_rotary(q, cos, sin)
    k = layers.apply_rotary(k, cos, sin)
    if layout is None:
      return self.o_proj(attention.attend(q, k, v, lengths, causal=True, implementation=implementation))
    return self.o_proj(shared_prefix.attend(q, k, v, lengths, layout, implementation))  # packed x


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.input_layernorm = layers.RMSNorm(d, cfg.rms_norm_eps, "norm", param_dtype=param_dtype, rngs=rngs)
    self.self_attn = TextAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_attention_layernorm = layers.RMSNorm(d, cfg.rms_norm_eps, "norm", param_dtype=param_dtype, rngs=rngs)
    self.mlp = layers.GatedMLP(d, cfg.intermediate_size, cfg.hidden_act, ("embed", "mlp"), use_bias=False,
                               init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, cos, sin, lengths, implementation, layout=None):
    x = x + self.self_attn(self.input_layernorm(x), cos, sin, lengths, implementation, layout)
    x = x + self.mlp(self.post_attention_layernorm(x))
    return sharding.constrain(x, ("batch", "seq", "embed_act"))


class TextDecoder(nnx.Module):
  """Decoder layers and the final norm; takes input embeddings, returns final normed hidden states."""

  def __init__(self, cfg: TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
               attention_impl: str = "xla", rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    self.attention_impl = attention_impl
    self.layers = scan.make_stack(lambda r: DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                  cfg.num_hidden_layers, "layers", rngs)
    self.norm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "norm", param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, position_ids: jax.Array, lengths: jax.Array,
               layout: dict[str, jax.Array] | None = None) -> jax.Array:
    """x [B, L, D] embeddings; position_ids [3, B, L]; lengths [B] valid (right-padded) tokens per row.

    With `layout` (the arrays of `shared_prefix.LAYOUT_KEYS`), x and position_ids are packed groups [G, Lu] and
    lengths are the standalone rows' (shared_prefix.py); the result is packed too.
    """
    x = sharding.constrain(x.astype(self.dtype), ("batch", "seq", "embed_act"))
    cos, sin = mrope_cos_sin(position_ids, self.cfg, self.dtype)
    impl = self.attention_impl

    def body(layer, h, _):
      return layer(h, cos, sin, lengths, impl, layout)

    x = scan.run_stack(self.layers, x, None, body, self.remat)
    return self.norm(x)
