"""Qwen2.5-VL backbone: token embedding, vision tower, image features at `<|image_pad|>` tokens, text decoder.

Inputs are fixed-shape arrays prepared on the host (see `inputs.py`):
  input_ids [B, L] int32, lengths [B] int32 (right padding), position_ids [3, B, L] int32,
  image_slots [B, L] int32 (merged-unit slot feeding each image token, -1 elsewhere), and the vision batch.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from editreward_jax.models import layers
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
      feats = self.visual(vision).astype(self.dtype)
      placed = jnp.take(feats, jnp.maximum(image_slots, 0), axis=0)
      x = jnp.where((image_slots >= 0)[..., None], placed, x)
    return x

  def __call__(self, input_ids: jax.Array, lengths: jax.Array, position_ids: jax.Array,
               image_slots: jax.Array | None = None, vision: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """Final normed hidden states [B, L, D]."""
    x = self.embed(input_ids, image_slots, vision)
    return self.decoder(x, position_ids, lengths)

  def logits(self, hidden: jax.Array) -> jax.Array:
    w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
    return jnp.dot(hidden, w.astype(hidden.dtype))


def abstract_model(cfg: ModelConfig, options: RuntimeOptions = RuntimeOptions()) -> Qwen25VL:
  """The model with shapes and dtypes only (no memory): for parameter counts and sharding plans."""
  return nnx.eval_shape(lambda: Qwen25VL(cfg, options, rngs=nnx.Rngs(0)))


def count_params(model: nnx.Module) -> int:
  state = nnx.state(model, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(state)))

