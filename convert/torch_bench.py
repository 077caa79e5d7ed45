"""The PyTorch side of `python -m launch.bench --impl=torch`: the same computation run the reference's way.

transformers' `Qwen2_5_VLForConditionalGeneration` of the benchmark's shape plus two float32 heads
(`convert.torch_reward.reward_head`). Like the reference, a pass feeds `inputs_embeds` (the token embedding applied
by the caller) with no `input_ids` or position ids, so transformers falls back to sequential positions, and every
row's images are encoded in every pass. A training step of B pairs is 4 batched passes of B rows (one per
(candidate, dimension)), the final hidden state at `<|Reward|>` through that dimension's head in float32, the two
dimensions fused by their mean, the Monte-Carlo loss with 1000 samples, backward, gradient clipping at norm 1.0 and
AdamW; the input embedding trains only its `<|Reward|>` row (the other rows' gradients are zeroed) and lm_head gets
no gradient. Scoring is 2 passes of N rows (one per dimension) under `torch.inference_mode`. Imports no JAX: the
inputs arrive as NumPy (`editreward_jax.benchmark.torch_passes`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import transformers
from transformers.initialization import no_init_weights

from convert.torch_reward import reward_head

MC_SAMPLES = 1000  # the reference loss's Monte-Carlo samples
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")


def threads() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class RewardModel(torch.nn.Module):
  """Backbone and heads, weights drawn at std `init_std` (timing only: the values do not matter)."""

  def __init__(self, hf_config: Mapping[str, Any], head: Mapping[str, Any], *, dtype: str, attention: str,
               device: torch.device, init_std: float = 0.02):
    super().__init__()
    if attention not in ATTENTIONS:
      raise ValueError(f"unknown attention {attention!r}; choose one of {ATTENTIONS}")
    config = transformers.Qwen2_5_VLConfig(**hf_config)
    config._attn_implementation = attention
    config.vision_config._attn_implementation = attention
    config.text_config._attn_implementation = attention
    with no_init_weights(), device:  # drawn below, on the device: a 7B init on the host takes minutes
      backbone = transformers.Qwen2_5_VLForConditionalGeneration(config)
    self.model = backbone.model.to(getattr(torch, dtype))
    with torch.no_grad():
      for p in self.model.parameters():
        p.normal_(0.0, init_std)
    dim = config.text_config.hidden_size
    with device:
      self.heads = torch.nn.ModuleList([reward_head(dim, **head) for _ in range(2)])  # float32, as the reference

  def reward(self, p: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    """[rows, 2] (mu, log_sigma) of one pass: its dimension's head at each row's `<|Reward|>`."""
    tokens = p["tokens"]
    ids = torch.zeros((len(tokens), max(len(t) for t in tokens)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, t in enumerate(tokens):
      ids[r, :len(t)] = torch.from_numpy(np.asarray(t, np.int64))
      mask[r, :len(t)] = 1
    ids, mask = ids.to(device), mask.to(device)
    dtype = self.model.dtype
    embeds = self.model.get_input_embeddings()(ids)
    hidden = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                        pixel_values=torch.from_numpy(p["pixel_values"]).to(device, dtype),
                        image_grid_thw=torch.from_numpy(p["image_grid_thw"]).to(device)).last_hidden_state
    at = hidden[torch.arange(len(tokens), device=device), torch.tensor(p["reward_index"], device=device)]
    return self.heads[p["dimension"]](at.float())


def mc_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """The reference's loss on fused [P, 2] outputs of the preferred (a) and other (b) candidate."""
  delta = a[:, 0] - b[:, 0]
  tau = torch.sqrt(torch.exp(2 * a[:, 1]) + torch.exp(2 * b[:, 1]))
  eps = torch.randn(len(delta), MC_SAMPLES, device=delta.device)
  return torch.nn.functional.softplus(-(delta[:, None] + tau[:, None] * eps)).mean()


def _sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def setup(hf_config: Mapping[str, Any], head: Mapping[str, Any], *, dtype: str, attention: str, remat: bool,
          training: bool, reward_id: int, seed: int = 0) -> tuple[RewardModel, torch.device, Any]:
  """(model, device, optimizer or None). `remat`: transformers' gradient checkpointing (the reference trains with it)."""
  torch.manual_seed(seed)
  torch.set_num_threads(threads())
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  model = RewardModel(hf_config, head, dtype=dtype, attention=attention, device=device)
  if not training:
    return model.eval(), device, None
  model.train()
  if remat:
    model.model.gradient_checkpointing_enable()
  embed = model.model.get_input_embeddings().weight
  keep = torch.zeros(embed.shape[0], 1, dtype=embed.dtype, device=device)
  keep[reward_id] = 1
  embed.register_hook(lambda g: g * keep)  # only the <|Reward|> row trains
  opt = torch.optim.AdamW(model.parameters(), lr=2e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  return model, device, opt


def train_step(model: RewardModel, device: torch.device, opt, passes: Sequence[Mapping[str, Any]]) -> float:
  """One optimizer step over 4 passes (A, dim 0), (A, dim 1), (B, dim 0), (B, dim 1)."""
  opt.zero_grad(set_to_none=True)
  out = [model.reward(p, device) for p in passes]
  a, b = (out[0] + out[1]) / 2, (out[2] + out[3]) / 2  # fusion "mean" of both columns
  loss = mc_loss(a, b)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
  opt.step()
  _sync(device)
  return float(loss.detach())


def score_step(model: RewardModel, device: torch.device, passes: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """[N, 2] fused scores from one pass per dimension."""
  with torch.inference_mode():
    out = [model.reward(p, device) for p in passes]
    fused = sum(out) / len(out)
  _sync(device)
  return fused.float().cpu().numpy()


def peak_device_bytes(device: torch.device) -> int | None:
  return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def versions() -> dict[str, str]:
  return {"torch": torch.__version__, "transformers": transformers.__version__}
