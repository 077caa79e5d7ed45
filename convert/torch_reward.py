"""A small PyTorch scorer for models exported with `python -m convert.to_torch`, for PyTorch users.

  model = EditRewardTorch.from_pretrained(DIR)
  scores = model.score(instructions, source_images, edited_images)  # scores.mu: higher is better

The forward is the reference's: transformers' Qwen2.5-VL over a right-padded batch of (edit, dimension) prompts, each
showing its own two images; the final normed hidden state at `<|Reward|>` goes, in float32, through the dimension's
head; the dimensions are fused as recorded. Positions follow the recorded mode: `sequential` passes cumsum(mask) - 1 on
all three M-RoPE axes (what EditReward checkpoints were trained with), `mrope` has transformers compute the native 3-D
positions from `mm_token_type_ids`. Inputs come from the project's host processing (PIL, tokenizer, NumPy).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import safetensors.torch
import torch
import transformers
from transformers.initialization import no_init_weights

from convert.hf_keys import SETTINGS_FILE
from convert.safetensors_io import SINGLE_FILE
from editreward_jax import processing
from editreward_jax.prompts import DIMENSIONS, prompts_from_dict
from editreward_jax.scores import Scores


def reward_head(dim: int, hidden: int, bottleneck: int, dropout: float) -> torch.nn.Sequential:
  """Linear layers at Sequential indices 0, 3, 5: the names `rm_heads.head_i.{0,3,5}.*` of released state dicts."""
  return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                             torch.nn.Linear(hidden, bottleneck), torch.nn.ReLU(), torch.nn.Linear(bottleneck, 2))


def fuse(per_dim: np.ndarray, fusion: str) -> np.ndarray:
  """[N, dims, 2] -> [N, 2]: mean or min of each column; sum: mu summed, sigma = sqrt(sum of sigma^2)."""
  mu, log_sigma = per_dim[..., 0], per_dim[..., 1]
  if fusion == "mean":
    return np.stack([mu.mean(-1), log_sigma.mean(-1)], -1)
  if fusion == "min":
    return np.stack([mu.min(-1), log_sigma.min(-1)], -1)
  if fusion == "sum":
    return np.stack([mu.sum(-1), 0.5 * np.logaddexp.reduce(2 * log_sigma, axis=-1)], -1)
  raise ValueError(f"unknown fusion {fusion!r}")


class EditRewardTorch(torch.nn.Module):
  """transformers' Qwen2_5_VLForConditionalGeneration (its `model` and `lm_head`) plus `rm_heads`, so that the state
  dict carries exactly the released EditReward names."""

  def __init__(self, config: transformers.Qwen2_5_VLConfig, settings: dict[str, Any],
               processor: processing.Processor):
    super().__init__()
    with no_init_weights():  # every weight is loaded afterwards
      backbone = transformers.Qwen2_5_VLForConditionalGeneration(config)
    self.model, self.lm_head = backbone.model, backbone.lm_head
    self.rm_heads = torch.nn.ModuleDict({f"head_{i}": reward_head(config.text_config.hidden_size, **settings["head"])
                                         for i in range(len(DIMENSIONS))})
    self.settings, self.processor = settings, processor
    self.pad_id = processor.tokenizer.pad_token_id or 0

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike) -> EditRewardTorch:
    """Loads an exported directory; the weights must match the model exactly (strict load, no pickle)."""
    directory = os.fspath(directory)
    settings_path = os.path.join(directory, SETTINGS_FILE)
    if not os.path.exists(settings_path):
      raise FileNotFoundError(f"{directory} is not an exported EditReward model: {SETTINGS_FILE} is missing")
    with open(settings_path) as f:
      settings = json.load(f)
    config = transformers.Qwen2_5_VLConfig.from_pretrained(directory)
    tokenizer = processing.load_tokenizer(directory)
    if tokenizer.convert_tokens_to_ids(settings["reward_token"]) != settings["reward_token_id"]:
      raise ValueError(f"{directory}: the tokenizer's {settings['reward_token']} id differs from "
                       f"{settings['reward_token_id']} in {SETTINGS_FILE}")
    v = config.vision_config
    processor = processing.Processor(
        tokenizer, prompts_from_dict(settings["prompts"], settings_path), min_pixels=settings["min_pixels"],
        max_pixels=settings["max_pixels"], patch_size=v.patch_size, merge_size=v.spatial_merge_size,
        temporal_patch_size=v.temporal_patch_size)
    model = cls(config, settings, processor)
    model.load_state_dict(safetensors.torch.load_file(os.path.join(directory, SINGLE_FILE)), strict=True,
                          assign=True)
    return model.eval()

  def forward(self, examples: Sequence[processing.ProcessedExample]) -> torch.Tensor:
    """[N, dims, 2] (mu, log_sigma) of each edit under each dimension's head."""
    rows = [(ex.prompts[d], ex.reward_index[d], ex.images) for ex in examples for d in DIMENSIONS]
    ids = torch.full((len(rows), max(len(t) for t, _, _ in rows)), self.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (tokens, _, _) in enumerate(rows):
      ids[r, :len(tokens)] = torch.from_numpy(tokens.astype(np.int64))
      mask[r, :len(tokens)] = 1
    images = [im for _, _, ims in rows for im in ims]
    kwargs = dict(pixel_values=torch.from_numpy(np.concatenate([im.normalised() for im in images])),
                  image_grid_thw=torch.from_numpy(np.stack([im.grid_thw for im in images])))
    mode = self.settings["rope_mode"]
    if mode == "sequential":
      kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    elif mode == "mrope":
      kwargs["mm_token_type_ids"] = (ids == self.model.config.image_token_id).int()
      self.model.rope_deltas = None  # transformers caches these across calls
    else:
      raise ValueError(f"unknown rope_mode {mode!r} in {SETTINGS_FILE}")
    hidden = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).last_hidden_state
    reward = hidden[torch.arange(len(rows)), torch.tensor([r for _, r, _ in rows])].float()
    reward = reward.view(len(examples), len(DIMENSIONS), -1)
    index = self.settings["head_index"]
    return torch.stack([self.rm_heads[f"head_{index[d]}"](reward[:, i]) for i, d in enumerate(DIMENSIONS)], 1)

  @torch.inference_mode()
  def score(self, instructions: Sequence[str], source_images: Sequence[Any], edited_images: Sequence[Any],
            batch_size: int = 8) -> Scores:
    """Scores N edits (images: PIL images, paths or encoded bytes); the same structure as the JAX scorer returns."""
    n = len(instructions)
    if not n == len(source_images) == len(edited_images):
      raise ValueError(f"got {n} instructions, {len(source_images)} source images, {len(edited_images)} edits")
    per_dim = np.zeros((n, len(DIMENSIONS), 2), np.float32)
    for s in range(0, n, batch_size):
      examples = [self.processor(*edit, where=f"edit {s + k}") for k, edit in
                  enumerate(zip(instructions[s:s + batch_size], source_images[s:s + batch_size],
                                edited_images[s:s + batch_size]))]
      per_dim[s:s + len(examples)] = self(examples).numpy()
    fused = fuse(per_dim, self.settings["fusion"])
    return Scores(mu=fused[:, 0], log_sigma=fused[:, 1],
                  dims={d: (per_dim[:, i, 0], per_dim[:, i, 1]) for i, d in enumerate(DIMENSIONS)})
