"""Tiny random transformers Qwen2.5-VL models for parity tests, and their torch-side inputs.

Weights are redrawn so activations are O(1) (transformers' std-0.02 init makes most mistakes invisible), except the
token embedding and the patch embedding, which are kept small so that the first RMSNorm of each tower sees a small
variance and a wrong epsilon shows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import transformers

IMAGE_TOKEN = 290
VISION_START = 288
VISION_END = 289
VIDEO_TOKEN = 291
VOCAB = 300


def tiny_hf_config(*, tie: bool = False, vision_depth: int = 3, text_layers: int = 2, window_size: int = 56,
                   fullatt=(1,), **text_overrides) -> transformers.Qwen2_5_VLConfig:
  text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=text_layers,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
              rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=tie,
              bos_token_id=None, eos_token_id=None)
  text.update(text_overrides)
  vision = dict(depth=vision_depth, hidden_size=32, intermediate_size=48, num_heads=2,
                out_hidden_size=text["hidden_size"], patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
                window_size=window_size, fullatt_block_indexes=list(fullatt), in_channels=3)
  return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                                       video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                                       vision_end_token_id=VISION_END, tie_word_embeddings=tie)


def redraw_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Redraws every parameter so that activations are O(1) (in place)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("embed_tokens.weight"):
        p.copy_(0.02 * torch.randn(p.shape, generator=g))
      elif name.endswith("patch_embed.proj.weight"):
        p.copy_(0.001 * torch.randn(p.shape, generator=g))
      elif "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
      elif name.endswith("bias"):
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
      else:
        fan_in = math.prod(p.shape[1:])
        p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
  return model


def tiny_torch_model(seed: int = 0, **config_kwargs) -> transformers.Qwen2_5_VLForConditionalGeneration:
  torch.manual_seed(seed)
  cfg = tiny_hf_config(**config_kwargs)
  cfg._attn_implementation = "eager"
  model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
  return redraw_(model, seed)


def random_pixels(grid_thw: np.ndarray, seed: int = 0) -> np.ndarray:
  n = int(sum(t * h * w for t, h, w in grid_thw))
  return np.random.default_rng(seed).standard_normal((n, 3 * 2 * 14 * 14)).astype(np.float32)


def image_tokens(grid: tuple[int, int, int]) -> list[int]:
  t, h, w = grid
  return [VISION_START] + [IMAGE_TOKEN] * (t * h * w // 4) + [VISION_END]


def torch_inputs(rows: list[list[int]], *, pixel_values=None, image_grid_thw=None, mode: str):
  """transformers keyword arguments for right-padded `rows` with positions as `mode` asks, and the [B, L] mask."""
  length = max(len(r) for r in rows)
  ids = torch.zeros((len(rows), length), dtype=torch.long)
  mask = torch.zeros((len(rows), length), dtype=torch.long)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = torch.tensor(r)
    mask[i, :len(r)] = 1
  kwargs = dict(input_ids=ids, attention_mask=mask)
  if pixel_values is not None:
    kwargs.update(pixel_values=torch.from_numpy(np.ascontiguousarray(pixel_values)),
                  image_grid_thw=torch.from_numpy(np.ascontiguousarray(image_grid_thw)))
  if mode == "mrope":
    kwargs["mm_token_type_ids"] = (ids == IMAGE_TOKEN).int()
  elif mode == "sequential":
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs["position_ids"] = pos[None].expand(3, -1, -1)
  else:
    raise ValueError(mode)
  return kwargs, mask.numpy().astype(bool)


def torch_forward(model, rows: list[list[int]], *, pixel_values=None, image_grid_thw=None, mode: str):
  """Final hidden states and logits from transformers, right-padded, positions as `mode` asks."""
  kwargs, mask = torch_inputs(rows, pixel_values=pixel_values, image_grid_thw=image_grid_thw, mode=mode)
  with torch.no_grad():
    model.model.rope_deltas = None
    hidden = model.model(**kwargs).last_hidden_state
    logits = model.lm_head(hidden)
  return hidden.numpy(), logits.numpy(), mask
