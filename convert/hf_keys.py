"""The correspondence between Hugging Face Qwen2.5-VL tensor names and this project's parameters.

One table (`param_specs`) serves import and export. Hugging Face names are given in the current in-memory layout
(`model.visual.*`, `model.language_model.*`, `lm_head.weight`), which released EditReward state dicts also use;
`canonical_key` maps the older on-disk layout (`visual.*`, `model.layers.*`, `model.embed_tokens.*`,
`model.norm.*`) onto it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from editreward_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  path: tuple[str, ...]     # where the parameter lives in the nnx state
  hf_key: str               # Hugging Face name; "{i}" stands for the layer index of a stacked parameter
  num_layers: int | None    # leading stacked axis of our parameter, or None
  # "copy"; "linear" (torch [out, in] <-> our [in, out]); "patch" (Conv3d <-> matmul); for attention projections,
  # whose head axes we keep apart (see layers.Linear), "to_heads" (torch [prod(heads), in] <-> our [in, *heads]),
  # "from_heads" (torch [out, prod(heads)] <-> our [*heads, out]) and "bias_heads" (torch [prod(heads)] <-> ours).
  transform: str
  heads: tuple[int, ...] = ()  # the head axes of a *_heads transform, e.g. (num_heads, head_dim)

  def hf_keys(self) -> list[str]:
    if self.num_layers is None:
      return [self.hf_key]
    return [self.hf_key.format(i=i) for i in range(self.num_layers)]


def canonical_key(key: str) -> str:
  """Older on-disk names -> current in-memory names; other names pass through."""
  if key.startswith("visual."):
    return "model." + key
  if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
    return "model.language_model." + key[len("model."):]
  return key


def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
  v, t = cfg.vision, cfg.text
  specs = [
      ParamSpec(("embed_tokens",), "model.language_model.embed_tokens.weight", None, "copy"),
      ParamSpec(("decoder", "norm", "scale"), "model.language_model.norm.weight", None, "copy"),
      ParamSpec(("visual", "patch_embed", "kernel"), "model.visual.patch_embed.proj.weight", None, "patch"),
      ParamSpec(("visual", "merger", "ln_q", "scale"), "model.visual.merger.ln_q.weight", None, "copy"),
  ]
  for ours, theirs in (("fc1", "0"), ("fc2", "2")):
    specs += [
        ParamSpec(("visual", "merger", ours, "kernel"), f"model.visual.merger.mlp.{theirs}.weight", None, "linear"),
        ParamSpec(("visual", "merger", ours, "bias"), f"model.visual.merger.mlp.{theirs}.bias", None, "copy"),
    ]
  if not t.tie_word_embeddings:
    specs.append(ParamSpec(("lm_head",), "lm_head.weight", None, "linear"))

  block = "model.visual.blocks.{i}."
  specs += [
      ParamSpec(("visual", "blocks", "norm1", "scale"), block + "norm1.weight", v.depth, "copy"),
      ParamSpec(("visual", "blocks", "norm2", "scale"), block + "norm2.weight", v.depth, "copy"),
  ]
  vis_heads = (v.num_heads, v.head_dim)
  attn = ("visual", "blocks", "attn")
  specs += [
      ParamSpec(attn + ("qkv", "kernel"), block + "attn.qkv.weight", v.depth, "to_heads", (3,) + vis_heads),
      ParamSpec(attn + ("qkv", "bias"), block + "attn.qkv.bias", v.depth, "bias_heads", (3,) + vis_heads),
      ParamSpec(attn + ("proj", "kernel"), block + "attn.proj.weight", v.depth, "from_heads", vis_heads),
      ParamSpec(attn + ("proj", "bias"), block + "attn.proj.bias", v.depth, "copy"),
  ]
  for name in ("gate_proj", "up_proj", "down_proj"):
    specs += [
        ParamSpec(("visual", "blocks", "mlp", name, "kernel"), block + f"mlp.{name}.weight", v.depth, "linear"),
        ParamSpec(("visual", "blocks", "mlp", name, "bias"), block + f"mlp.{name}.bias", v.depth, "copy"),
    ]

  layer = "model.language_model.layers.{i}."
  n = t.num_hidden_layers
  specs += [
      ParamSpec(("decoder", "layers", "input_layernorm", "scale"), layer + "input_layernorm.weight", n, "copy"),
      ParamSpec(("decoder", "layers", "post_attention_layernorm", "scale"), layer + "post_attention_layernorm.weight",
                n, "copy"),
      ParamSpec(("decoder", "layers", "self_attn", "o_proj", "kernel"), layer + "self_attn.o_proj.weight", n,
                "from_heads", (t.num_attention_heads, t.head_dim)),
  ]
  for name, heads in (("q_proj", t.num_attention_heads), ("k_proj", t.num_key_value_heads),
                      ("v_proj", t.num_key_value_heads)):
    path, key = ("decoder", "layers", "self_attn", name), layer + f"self_attn.{name}."
    specs += [
        ParamSpec(path + ("kernel",), key + "weight", n, "to_heads", (heads, t.head_dim)),
        ParamSpec(path + ("bias",), key + "bias", n, "bias_heads", (heads, t.head_dim)),
    ]
  for name in ("gate_proj", "up_proj", "down_proj"):
    specs.append(ParamSpec(("decoder", "layers", "mlp", name, "kernel"), layer + f"mlp.{name}.weight", n, "linear"))
  return specs


SETTINGS_FILE = "editreward_settings.json"  # beside an exported model.safetensors: how to score with it (to_torch)
REWARD_HEAD_LAYERS = (("fc0", "0"), ("fc3", "3"), ("fc5", "5"))  # torch Sequential indices of the Linear layers


def head_specs(dimensions: tuple[str, ...]) -> list[ParamSpec]:
  """The reward heads: rm_heads.head_{i} is the head of dimensions[i]."""
  specs = []
  for i, dim in enumerate(dimensions):
    for ours, theirs in REWARD_HEAD_LAYERS:
      specs += [
          ParamSpec(("heads", dim, ours, "kernel"), f"rm_heads.head_{i}.{theirs}.weight", None, "linear"),
          ParamSpec(("heads", dim, ours, "bias"), f"rm_heads.head_{i}.{theirs}.bias", None, "copy"),
      ]
  return specs


def hf_shape(spec: ParamSpec, ours: tuple[int, ...], cfg: ModelConfig) -> tuple[int, ...]:
  """Shape of one Hugging Face tensor for our parameter shape `ours` (without the stacked axis)."""
  if spec.transform == "linear":
    return tuple(reversed(ours))
  if spec.transform == "to_heads":
    return (int(np.prod(ours[1:])), ours[0])
  if spec.transform == "from_heads":
    return (ours[-1], int(np.prod(ours[:-1])))
  if spec.transform == "bias_heads":
    return (int(np.prod(ours)),)
  if spec.transform == "patch":
    v = cfg.vision
    return (ours[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return tuple(ours)


def to_ours(spec: ParamSpec, x: np.ndarray) -> np.ndarray:
  """One Hugging Face tensor -> our layout (one layer of a stacked parameter)."""
  if spec.transform == "linear":
    return x.T
  if spec.transform == "to_heads":
    return x.T.reshape(x.shape[1], *spec.heads)
  if spec.transform == "from_heads":
    return x.T.reshape(*spec.heads, x.shape[0])
  if spec.transform == "bias_heads":
    return x.reshape(spec.heads)
  if spec.transform == "patch":
    # Conv3d with kernel = stride over a (C, T, P, P) patch is a dot product with the flattened kernel.
    return x.reshape(x.shape[0], -1).T
  return x


def to_hf(spec: ParamSpec, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """Inverse of `to_ours`."""
  if spec.transform == "linear":
    return x.T
  if spec.transform == "to_heads":
    return x.reshape(x.shape[0], -1).T
  if spec.transform == "from_heads":
    return x.reshape(-1, x.shape[-1]).T
  if spec.transform == "bias_heads":
    return x.reshape(-1)
  if spec.transform == "patch":
    return x.T.reshape(hf_shape(spec, x.shape, cfg))
  return x
