"""Qwen2.5-VL backbone: token embedding, vision tower, image features at `<|image_pad|>` tokens, text decoder.

Inputs are fixed-shape arrays prepared on the host (see `inputs.py`):
  input_ids [B, L] int32, lengths [B] int32 (right padding), position_ids [3, B, L] int32,
  image_slots [B, L] int32 (merged-unit slot feeding each image token, -1 elsewhere), and the vision batch of K
  shards (`batching.stack_shards`): arrays [K, ...], B = K * rows per shard, rows shard-major, each row's slots
  indexing its own shard's merged units. A vision batch without the shard axis is one shard.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from editreward_jax import sharding
from editreward_jax.models import layers, shared_prefix
from editreward_jax.models.config import ModelConfig
from editreward_jax.models.text import TextDecoder
from editreward_jax.models.vision import VisionTower


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
  """How the backbone computes (not what it is): dtypes, rematerialisation, attention kernel."""
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention_impl: str = "xla"


class Qwen25VL(nnx.Module):

  def __init__(self, cfg: ModelConfig, options: RuntimeOptions = RuntimeOptions(), *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    self.options = options
    dtype, param_dtype = jnp.dtype(options.dtype), jnp.dtype(options.param_dtype)
    t = cfg.text
    self.embed_tokens = layers.param(rngs, (t.vocab_size, t.hidden_size), param_dtype, ("vocab", "embed"), "normal",
                                     t.initializer_range)
    self.visual = VisionTower(cfg.vision, dtype=dtype, param_dtype=param_dtype, remat=options.remat,
                              attention_impl=options.attention_impl, rngs=rngs)
    self.decoder = TextDecoder(t, dtype=dtype, param_dtype=param_dtype, remat=options.remat,
                               attention_impl=options.attention_impl, rngs=rngs)
    self.lm_head = None if t.tie_word_embeddings else layers.param(
        rngs, (t.hidden_size, t.vocab_size), param_dtype, ("embed", "vocab"), "normal", t.initializer_range)
    self.dtype = dtype

  def embed(self, input_ids: jax.Array, image_slots: jax.Array | None,
            vision: Mapping[str, jax.Array] | None) -> jax.Array:
    """Token embeddings with the vision tower's merged features placed at the image tokens."""
    x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)
    if vision is not None:
      feats = self.vision_features(vision)
      k = feats.shape[0]
      if image_slots.shape[0] % k:
        raise ValueError(f"{image_slots.shape[0]} rows do not split into the vision batch's {k} shards")
      slots = image_slots.reshape(k, -1, image_slots.shape[-1])  # rows are shard-major, slots shard-local
      placed = jax.vmap(lambda f, s: jnp.take(f, jnp.maximum(s, 0), axis=0))(feats, slots)
      x = jnp.where((image_slots >= 0)[..., None], placed.reshape(x.shape), x)
    return x

  def vision_features(self, vision: Mapping[str, jax.Array]) -> jax.Array:
    """Merged features [K, unit slots, D] of a vision batch of K shards ([K, ...] arrays; without the axis, K = 1).

    Each shard is encoded on its own, vmapped; under a mesh the shard axis is split over the batch mesh axes, so a
    device group encodes only its own shards' images.
    """
    if vision["pixels"].ndim == 2:  # one shard, as inputs.make_batch lays it out
      vision = {name: v[None] for name, v in vision.items()}
    vision = {name: sharding.constrain(v, ("batch_shards",) + (None,) * (v.ndim - 1)) for name, v in vision.items()}
    k = vision["pixels"].shape[0]
    if k == 1:  # no vmap: its batch axis would give every weight gradient two contracting axes (see layers.Linear)
      feats = self.visual({name: v[0] for name, v in vision.items()})[None]
    else:
      feats = jax.vmap(self.visual, spmd_axis_name=sharding.spmd_axes("batch_shards", k))(vision)
    return sharding.constrain(feats.astype(self.dtype), ("batch_shards", None, "embed_act"))

  def __call__(self, input_ids: jax.Array, lengths: jax.Array, position_ids: jax.Array,
               image_slots: jax.Array | None = None, vision: Mapping[str, jax.Array] | None = None,
               **layout: jax.Array) -> jax.Array:
    """Final normed hidden states [B, L, D]; in the packed layout of `shared_prefix` ([G, Lu, D]) when the batch
    carries one (the arrays of `shared_prefix.LAYOUT_KEYS`)."""
    if layout and set(layout) != set(shared_prefix.LAYOUT_KEYS):
      raise ValueError(f"a packed batch needs exactly the layout arrays {shared_prefix.LAYOUT_KEYS}, "
                       f"got {sorted(layout)}")
    x = self.embed(input_ids, image_slots, vision)
    return self.decoder(x, position_ids, lengths, layout or None)

  def logits(self, hidden: jax.Array) -> jax.Array:
    w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
    return jnp.dot(hidden, w.astype(hidden.dtype))


def abstract_model(cfg: ModelConfig, options: RuntimeOptions = RuntimeOptions()) -> Qwen25VL:
  """The model with shapes and dtypes only (no memory): for parameter counts and sharding plans."""
  return nnx.eval_shape(lambda: Qwen25VL(cfg, options, rngs=nnx.Rngs(0)))


def count_params(model: nnx.Module) -> int:
  state = nnx.state(model, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(state)))

