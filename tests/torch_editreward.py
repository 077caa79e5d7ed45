"""A tiny random EditReward model in PyTorch, laid out like the released ones, and its scores computed the reference's
way (transformers' forward on `inputs_embeds`, float32 heads at `<|Reward|>`), independently of convert/torch_reward.

The model is a transformers Qwen2.5-VL sized for the tiny tokenizer: a "base" with spare embedding rows (as
Qwen2.5-VL's 152,064 rows exceed its tokenizer), then resized to the tokenizer with `<|Reward|>`, with two heads
`rm_heads.head_{0,1}` attached, so `state_dict()` has exactly the released key layout.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import PIL.Image
import torch
import transformers

from convert.from_hf import import_hf
from convert.safetensors_io import save_file
from editreward_jax import processing
from editreward_jax.prompts import DIMENSIONS
from torch_reference import redraw_, tiny_hf_config

TOKENIZER_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "tiny_tokenizer"
BASE_ROWS = 1040  # the base model's table, larger than its tokenizer
SMALL_PIXELS = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 20)  # at most 20 LLM tokens per image
SHORT_PROMPTS = {"instruction_following": "Did the edit follow: {instruction}?", "visual_quality":
                 "How good does it look after: {instruction}?", "suffix": " Rating: <|Reward|>"}  # short rows: fast


def reward_head(dim: int) -> torch.nn.Sequential:
  return torch.nn.Sequential(torch.nn.Linear(dim, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.05),
                             torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def tiny_editreward(base_dir: str | os.PathLike, seed: int = 0, tie: bool = False
                    ) -> transformers.Qwen2_5_VLForConditionalGeneration:
  """Writes a base model directory (config.json, safetensors, the tokenizer without `<|Reward|>`) at `base_dir` and
  returns the EditReward model made from it: vocabulary resized to the tokenizer with `<|Reward|>`, heads added,
  every weight redrawn (so the reward weights differ from the base's) with O(1) activations."""
  tokenizer = processing.load_tokenizer(TOKENIZER_DIR)
  ids = tokenizer.convert_tokens_to_ids
  cfg = tiny_hf_config(tie=tie, vocab_size=BASE_ROWS)
  cfg.image_token_id, cfg.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
  cfg.vision_start_token_id, cfg.vision_end_token_id = ids("<|vision_start|>"), ids("<|vision_end|>")
  cfg._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
  model.save_pretrained(base_dir)
  for f in os.listdir(TOKENIZER_DIR):
    shutil.copy(TOKENIZER_DIR / f, os.path.join(base_dir, f))
  model.resize_token_embeddings(len(tokenizer))
  model.rm_heads = torch.nn.ModuleDict({f"head_{i}": reward_head(cfg.text_config.hidden_size)
                                        for i in range(len(DIMENSIONS))})
  return redraw_(model, seed + 1).eval()


def release(directory: pathlib.Path, seed: int = 0, tie: bool = False
            ) -> tuple[transformers.Qwen2_5_VLForConditionalGeneration, str, str]:
  """(model, base directory, reward weights file): a tiny EditReward model saved as a release is, its full state
  dict in one safetensors file (tied tables under both names), next to the base model directory it came from."""
  base = directory / "base"
  model = tiny_editreward(base, seed, tie)
  weights = str(directory / "model.safetensors")
  save_file({k: v.detach().numpy() for k, v in model.state_dict().items()}, weights)
  return model, str(base), weights


def import_release(base: str, weights: str, out: pathlib.Path, **kwargs) -> str:
  """The release imported into a model directory with short prompts and small images recorded."""
  prompts_file = out.parent / f"{out.name}_prompts.json"
  prompts_file.write_text(json.dumps(SHORT_PROMPTS))
  return import_hf(base, str(out), reward_weights=weights, prompts_file=str(prompts_file), **SMALL_PIXELS, **kwargs)


def sample_edits(seed: int = 0) -> tuple[list[str], list[PIL.Image.Image], list[PIL.Image.Image]]:
  """Three edits with images of different sizes and aspect ratios (some below min_pixels, some above max_pixels);
  the first and last edits share their source image."""
  rng = np.random.default_rng(seed)
  sizes = [(64, 48), (40, 90), (100, 100), (150, 60), (30, 170)]
  images = [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
  return ["make the sky red", "remove the cat", "add a hat"], [images[0], images[2], images[0]], \
      [images[1], images[3], images[4]]


@torch.no_grad()
def reference_scores(model, examples: list[processing.ProcessedExample]) -> np.ndarray:
  """[N, 1 + dims, 2]: the fused then each dimension's (mu, log_sigma), computed the reference's way: one right-padded
  batch of (edit, dimension) rows, each encoding its own two images; image features scattered into the token
  embeddings; the decoder called with `inputs_embeds` only, so positions are plain 0..L-1; the final normed hidden
  state at `<|Reward|>` through the row's head in float32; the mean of the dimensions (the reference's default)."""
  rows = [(ex.prompts[d], ex.reward_index[d], ex.images, i) for ex in examples for i, d in enumerate(DIMENSIONS)]
  ids = torch.zeros((len(rows), max(len(t) for t, *_ in rows)), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for r, (tokens, *_) in enumerate(rows):
    ids[r, :len(tokens)] = torch.from_numpy(tokens.astype(np.int64))
    mask[r, :len(tokens)] = 1
  images = [im for *_, ims, _ in rows for im in ims]
  pixels = torch.from_numpy(np.concatenate([im.normalised() for im in images]))
  grids = torch.from_numpy(np.stack([im.grid_thw for im in images]))
  embeds = model.get_input_embeddings()(ids)
  features = torch.cat(model.model.get_image_features(pixels, grids).pooler_output)
  embeds = embeds.masked_scatter((ids == model.config.image_token_id)[..., None], features)
  model.model.rope_deltas = None
  hidden = model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
  reward = hidden[torch.arange(len(rows)), torch.tensor([r for _, r, *_ in rows])].float()
  out = torch.stack([model.rm_heads[f"head_{dim}"](h) for h, (*_, dim) in zip(reward, rows)])
  per_dim = out.reshape(len(examples), len(DIMENSIONS), 2)
  return torch.cat([per_dim.mean(1, keepdim=True), per_dim], 1).numpy()


def as_array(scores) -> np.ndarray:
  """A scorer's Scores as [N, 1 + dims, 2], laid out like `reference_scores`."""
  columns = [(scores.mu, scores.log_sigma)] + [scores.dims[d] for d in DIMENSIONS]
  return np.stack([np.stack(c, -1) for c in columns], 1)
