"""Qwen2.5-VL vision tower in Flax NNX, over the padded window layout of `vision_layout`.

uint8 pixel rows are first normalised by the batch's `pixel_table` (see `vision_layout`); float rows go in as they are.
Patch embedding is a matmul over flattened patch rows (the Conv3d has kernel = stride, so it is exactly this), then
`depth` blocks (RMSNorm, attention with a 2-D rotary embedding, RMSNorm, SwiGLU MLP with biases), each run of
window-attention blocks and of full-attention blocks (attention within each image) scanned on its own, then the
2x2 patch merger.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editreward_jax import sharding
from editreward_jax.models import attention, layers, scan, vision_layout
from editreward_jax.models.config import VisionConfig

_VISION_NORM_EPS = 1e-6  # fixed in Qwen2.5-VL's vision tower, independent of the text rms_norm_eps


def rotary_cos_sin(rope_pos: jax.Array, cfg: VisionConfig) -> tuple[jax.Array, jax.Array]:
  """Axial 2-D RoPE: the first half of the rotated dims follow the patch row, the second the column."""
  dim = cfg.head_dim // 2
  inv_freq = 1.0 / (cfg.rope_theta**(np.arange(0, dim, 2, dtype=np.float32) / dim))
  freqs = rope_pos.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [S, 2, dim/2]
  freqs = jnp.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)  # [S, dim]
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # [S, head_dim]
  return jnp.cos(emb), jnp.sin(emb)


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    c = cfg.hidden_size
    heads = (cfg.num_heads, cfg.head_dim)
    kw = dict(use_bias=True, init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # The fused projection keeps q, k and v on their own axis so that splitting heads gives each device the same
    # heads of all three.
    self.qkv = layers.Linear(c, (3,) + heads, ("vis_embed", "qkv", "vis_heads", "head_dim"), **kw)
    self.proj = layers.Linear(heads, c, ("vis_heads", "head_dim", "vis_embed"), **kw)
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.head_dim

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, full: bool, vb: Mapping[str, jax.Array],
               implementation: str) -> jax.Array:
    s = x.shape[0]
    qkv = self.qkv(x)  # [S, 3, heads, head_dim]
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    # transformers rotates q and k in float32 whatever the compute dtype.
    q = layers.apply_rotary(q.astype(jnp.float32), cos, sin).astype(x.dtype)
    k = layers.apply_rotary(k.astype(jnp.float32), cos, sin).astype(x.dtype)

    def window_attention(q, k, v):
      n_win = vb["window_lengths"].shape[0]
      shape = (n_win, s // n_win, self.num_heads, self.head_dim)
      out = attention.attend(q.reshape(shape), k.reshape(shape), v.reshape(shape), vb["window_lengths"],
                             causal=False, implementation=implementation)
      return out.reshape(s, self.num_heads, self.head_dim)

    def image_attention(q, k, v):
      idx = vb["image_slots"]  # [I, P]: each image's patches gathered into one compact row
      out = attention.attend(q[idx], k[idx], v[idx], vb["image_lengths"], causal=False,
                             implementation=implementation)
      return out.reshape(-1, self.num_heads, self.head_dim)[vb["slot_to_image"]]

    out = image_attention(q, k, v) if full else window_attention(q, k, v)
    return self.proj(out)


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    c = cfg.hidden_size
    self.norm1 = layers.RMSNorm(c, _VISION_NORM_EPS, "vis_norm", param_dtype=param_dtype, rngs=rngs)
    self.attn = VisionAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm2 = layers.RMSNorm(c, _VISION_NORM_EPS, "vis_norm", param_dtype=param_dtype, rngs=rngs)
    self.mlp = layers.GatedMLP(c, cfg.intermediate_size, cfg.hidden_act, ("vis_embed", "vis_mlp"), use_bias=True,
                               init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, cos, sin, full, vb, implementation):
    x = x + self.attn(self.norm1(x), cos, sin, full, vb, implementation)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then each run of merge_unit consecutive patches concatenated -> Linear -> GELU -> Linear."""

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    c = cfg.hidden_size * cfg.merge_unit
    self.ln_q = layers.RMSNorm(cfg.hidden_size, _VISION_NORM_EPS, "vis_norm", param_dtype=param_dtype, rngs=rngs)
    self.fc1 = layers.Linear(c, c, ("vis_merge", "vis_merge_out"), use_bias=True,
                             init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc2 = layers.Linear(c, cfg.out_hidden_size, ("vis_merge_out", "embed"), use_bias=True,
                             init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.merged_dim = c

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.ln_q(x).reshape(-1, self.merged_dim)
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
               attention_impl: str = "xla", rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.remat = remat
    self.attention_impl = attention_impl
    self.patch_embed = layers.Linear(cfg.patch_dim, cfg.hidden_size, ("vis_patch", "vis_embed"), use_bias=False,
                                     init_std=cfg.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.blocks = scan.make_stack(lambda r: VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                  cfg.depth, "vis_layers", rngs)
    self.merger = PatchMerger(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.full_blocks = tuple(i in cfg.fullatt_block_indexes for i in range(cfg.depth))

  def __call__(self, vb: Mapping[str, jax.Array]) -> jax.Array:
    """Merged features [num_unit_slots, out_hidden_size] in slot order (see `vision_layout.VisionBatch`)."""
    pixels = vb["pixels"]
    if pixels.dtype == jnp.uint8:
      pixels = vision_layout.normalise_pixels(pixels, vb["pixel_table"])
    x = self.patch_embed(pixels)
    x = sharding.constrain(x, ("vis_tokens", "vis_embed_act"))
    cos, sin = rotary_cos_sin(vb["rope_pos"], self.cfg)
    impl = self.attention_impl

    def body(block, h, full):
      return block(h, cos, sin, full, vb, impl)

    x = scan.run_stack_by_kind(self.blocks, x, self.full_blocks, body, self.remat)
    return self.merger(x)

  def features(self, vb: Mapping[str, jax.Array]) -> jax.Array:
    """Merged features [num_units, out_hidden_size] in the processor's order (what transformers' tower returns)."""
    return self(vb)[vb["unit_slots"]]
