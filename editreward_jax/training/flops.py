"""Executed model FLOPs of a batch, for throughput and MFU (model FLOPs utilisation) figures.

What is counted, per forward (a multiply-add is 2 FLOPs), on the tokens actually computed (real tokens of every row,
or with prefix sharing every packed token, each shared prefix once; real patches of every encoded image; padding is
not counted) and the images actually encoded:
- decoder dense layers: 2 x (q, k, v, o and the three MLP matrices' parameters) x tokens, per layer;
- decoder attention: 2 x T^2 x heads x head_dim per layer and row of T tokens (causal: half of the full
  4 x T^2 x heads x head_dim of QK^T and PV); with prefix sharing a suffix row's queries start after its shared
  prefix of S tokens: 2 x (T^2 - S^2) x heads x head_dim (what the `xla` attention runs; cuDNN and splash attend
  from every position of such rows, so their executed attention FLOPs are a little higher than counted);
- vision tower: patch embedding 2 x patch_dim x hidden per patch; per block 2 x (qkv, proj, MLP parameters) x
  patches, and attention 4 x hidden x (sum over windows of length^2) in window blocks, 4 x hidden x (sum over images
  of patches^2) in full-attention blocks; the merger's two matrices per merged token;
- reward heads: both heads at each row's `<|Reward|>` token (the model evaluates both and keeps its row's).
Not counted: embedding lookups, norms, rotary embeddings, softmax, the loss, lm_head (never run). A train step is
3 x forward (backward = 2 x forward); rematerialised recomputation is not counted (MFU, not hardware FLOPs).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from editreward_jax.models import shared_prefix
from editreward_jax.models.config import ModelConfig
from editreward_jax.prompts import DIMENSIONS
from editreward_jax.reward import HeadConfig


def decoder_flops(cfg: ModelConfig, lengths: np.ndarray, dense_tokens: float | None = None,
                  query_starts: np.ndarray | None = None) -> float:
  """Rows of `lengths` tokens; `dense_tokens` (default: their sum) go through the dense layers; each row's
  attention queries start at `query_starts` (default 0)."""
  t = cfg.text
  hd = t.head_dim
  dense = t.hidden_size * hd * (2 * t.num_attention_heads + 2 * t.num_key_value_heads) + 3 * t.hidden_size * \
      t.intermediate_size
  lengths = np.asarray(lengths, np.float64)
  dense_tokens = lengths.sum() if dense_tokens is None else dense_tokens
  starts = np.zeros_like(lengths) if query_starts is None else np.asarray(query_starts, np.float64)
  per_layer = 2.0 * dense * dense_tokens + 2.0 * (lengths**2 - starts**2).sum() * t.num_attention_heads * hd
  return per_layer * t.num_hidden_layers


def vision_flops(cfg: ModelConfig, window_lengths: np.ndarray, image_lengths: np.ndarray) -> float:
  v = cfg.vision
  c = v.hidden_size
  patches = float(np.sum(image_lengths))
  full = set(v.fullatt_block_indexes)
  block_dense = 2.0 * (4 * c * c + 3 * c * v.intermediate_size) * patches
  window_attn = 4.0 * c * float(np.sum(np.asarray(window_lengths, np.float64)**2))
  image_attn = 4.0 * c * float(np.sum(np.asarray(image_lengths, np.float64)**2))
  blocks = sum(block_dense + (image_attn if i in full else window_attn) for i in range(v.depth))
  merged = c * v.merge_unit
  merger = 2.0 * (merged * merged + merged * v.out_hidden_size) * patches / v.merge_unit
  return 2.0 * v.patch_dim * c * patches + blocks + merger


def head_flops(cfg: ModelConfig, head: HeadConfig, rows: int) -> float:
  per_head = cfg.text.hidden_size * head.hidden + head.hidden * head.bottleneck + head.bottleneck * 2
  return 2.0 * per_head * len(DIMENSIONS) * rows


def forward_flops(cfg: ModelConfig, head: HeadConfig, batch: Mapping[str, Any]) -> float:
  """Executed forward FLOPs of one collated batch (NumPy arrays as the pipeline gives them)."""
  model_in = batch["batch"]
  lengths = np.asarray(model_in["lengths"])
  total = decoder_flops(cfg, lengths, shared_prefix.packed_tokens(model_in), shared_prefix.query_starts(model_in)) + \
      head_flops(cfg, head, int(np.sum(lengths > 0)))
  vision = model_in.get("vision")
  if vision is not None:
    total += vision_flops(cfg, vision["window_lengths"], vision["image_lengths"])
  return total


def train_flops(cfg: ModelConfig, head: HeadConfig, batch: Mapping[str, Any]) -> float:
  return 3.0 * forward_flops(cfg, head, batch)
