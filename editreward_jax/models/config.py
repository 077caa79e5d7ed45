"""Model configuration for Qwen2.5-VL, built from a Hugging Face `config.json` or written by hand.

Hugging Face configs come in two layouts: the current one nests `text_config` and `vision_config`; the older one
(how Qwen2.5-VL checkpoints were published) keeps the text fields at the top level beside a nested `vision_config`.
`from_hf_dict` reads both and `to_hf_dict` writes the nested layout, which transformers 4.5x and 5.x both read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DEFAULT_MROPE_SECTION = (16, 24, 24)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  tokens_per_second: int = 2
  initializer_range: float = 0.02  # std of freshly drawn weights (transformers' field); checkpoints overwrite them

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Values per flattened patch row: channels x temporal patch x patch x patch (1176 for Qwen2.5-VL)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

  @property
  def merge_unit(self) -> int:
    """Patches merged into one LLM token."""
    return self.spatial_merge_size**2

  @property
  def window_units(self) -> int:
    """Side of an attention window in merged units (112 px / 14 px / 2 = 4)."""
    return self.window_size // self.spatial_merge_size // self.patch_size

  def validate(self) -> None:
    if self.hidden_size % self.num_heads:
      raise ValueError(f"vision hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 4:
      raise ValueError(f"vision head_dim {self.head_dim} must be divisible by 4 for the 2-D rotary embedding")
    if self.window_units < 1:
      raise ValueError(f"window_size {self.window_size} is smaller than one merged unit")
    bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
    if bad:
      raise ValueError(f"fullatt_block_indexes {bad} outside [0, depth={self.depth})")


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = DEFAULT_MROPE_SECTION
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def validate(self) -> None:
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"text hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads {self.num_key_value_heads}")
    if sum(self.mrope_section) * 2 != self.head_dim:
      raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the parameter shapes and numerics of the backbone."""
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653

  def validate(self) -> ModelConfig:
    self.vision.validate()
    self.text.validate()
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(f"vision out_hidden_size {self.vision.out_hidden_size} != text hidden_size "
                       f"{self.text.hidden_size}")
    return self

  def replace(self, **kwargs) -> ModelConfig:
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
    vision = _build(VisionConfig, d.get("vision", {}), "vision")
    text = _build(TextConfig, d.get("text", {}), "text")
    top = {k: v for k, v in d.items() if k not in ("vision", "text")}
    return cls(vision=vision, text=text, **top).validate()


def _build(cls, fields: dict[str, Any], where: str):
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"unknown {where} config fields: {unknown}")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return cls(**fields)


def _rope(d: dict[str, Any]) -> dict[str, Any]:
  return d.get("rope_parameters") or d.get("rope_scaling") or {}


def from_hf_dict(hf: dict[str, Any]) -> ModelConfig:
  """Builds a ModelConfig from a Hugging Face Qwen2.5-VL config.json (nested or flat text fields); a missing
  required field is a ValueError naming it."""
  try:
    return _from_hf_dict(hf)
  except KeyError as e:
    where = "text_config." if hf.get("text_config") else ""
    raise ValueError(f"required field {where}{e.args[0]} is missing") from None


def _from_hf_dict(hf: dict[str, Any]) -> ModelConfig:
  model_type = hf.get("model_type", "qwen2_5_vl")
  if model_type not in ("qwen2_5_vl",):
    raise ValueError(f"config.json has model_type {model_type!r}; only 'qwen2_5_vl' is supported")
  text = dict(hf.get("text_config") or hf)
  vis = dict(hf.get("vision_config") or {})
  rope = _rope(text) or _rope(hf)
  tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
  defaults_t, defaults_v = TextConfig(), VisionConfig()
  text_cfg = TextConfig(
      vocab_size=text.get("vocab_size", defaults_t.vocab_size),
      hidden_size=text["hidden_size"],
      intermediate_size=text["intermediate_size"],
      num_hidden_layers=text["num_hidden_layers"],
      num_attention_heads=text["num_attention_heads"],
      num_key_value_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
      # transformers' own default is 1e-5; released Qwen2.5-VL configs all state 1e-6 explicitly.
      rms_norm_eps=text.get("rms_norm_eps", 1e-5),
      rope_theta=float(rope.get("rope_theta", text.get("rope_theta", hf.get("rope_theta", 1000000.0)))),
      mrope_section=tuple(rope.get("mrope_section", DEFAULT_MROPE_SECTION)),
      hidden_act=text.get("hidden_act", "silu"),
      tie_word_embeddings=bool(tie),
      initializer_range=text.get("initializer_range", hf.get("initializer_range", defaults_t.initializer_range)),
  )
  vis_rope = _rope(vis)
  vision_cfg = VisionConfig(
      depth=vis.get("depth", defaults_v.depth),
      hidden_size=vis.get("hidden_size", defaults_v.hidden_size),
      intermediate_size=vis.get("intermediate_size", defaults_v.intermediate_size),
      num_heads=vis.get("num_heads", defaults_v.num_heads),
      out_hidden_size=vis.get("out_hidden_size", text_cfg.hidden_size),
      in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
      patch_size=vis.get("patch_size", vis.get("spatial_patch_size", 14)),
      temporal_patch_size=vis.get("temporal_patch_size", 2),
      spatial_merge_size=vis.get("spatial_merge_size", 2),
      window_size=vis.get("window_size", defaults_v.window_size),
      fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", defaults_v.fullatt_block_indexes)),
      hidden_act=vis.get("hidden_act", "silu"),
      rope_theta=float(vis_rope.get("rope_theta", 10000.0)),
      tokens_per_second=vis.get("tokens_per_second", 2),
      initializer_range=vis.get("initializer_range", defaults_v.initializer_range),
  )
  return ModelConfig(
      vision=vision_cfg,
      text=text_cfg,
      image_token_id=hf.get("image_token_id", 151655),
      video_token_id=hf.get("video_token_id", 151656),
      vision_start_token_id=hf.get("vision_start_token_id", 151652),
      vision_end_token_id=hf.get("vision_end_token_id", 151653),
  ).validate()


def to_hf_dict(cfg: ModelConfig) -> dict[str, Any]:
  """The nested Hugging Face layout of `cfg` (what `Qwen2_5_VLConfig(**d)` accepts)."""
  t, v = cfg.text, cfg.vision
  return {
      "model_type": "qwen2_5_vl",
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "image_token_id": cfg.image_token_id,
      "video_token_id": cfg.video_token_id,
      "vision_start_token_id": cfg.vision_start_token_id,
      "vision_end_token_id": cfg.vision_end_token_id,
      "tie_word_embeddings": t.tie_word_embeddings,
      "text_config": {
          "model_type": "qwen2_5_vl_text",
          "vocab_size": t.vocab_size,
          "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size,
          "num_hidden_layers": t.num_hidden_layers,
          "num_attention_heads": t.num_attention_heads,
          "num_key_value_heads": t.num_key_value_heads,
          "rms_norm_eps": t.rms_norm_eps,
          "hidden_act": t.hidden_act,
          "tie_word_embeddings": t.tie_word_embeddings,
          "rope_theta": t.rope_theta,
          "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section), "rope_type": "default"},
          "initializer_range": t.initializer_range,
      },
      "vision_config": {
          "model_type": "qwen2_5_vl_vision",
          "depth": v.depth,
          "hidden_size": v.hidden_size,
          "intermediate_size": v.intermediate_size,
          "num_heads": v.num_heads,
          "out_hidden_size": v.out_hidden_size,
          "in_channels": v.in_channels,
          "patch_size": v.patch_size,
          "temporal_patch_size": v.temporal_patch_size,
          "spatial_merge_size": v.spatial_merge_size,
          "window_size": v.window_size,
          "fullatt_block_indexes": list(v.fullatt_block_indexes),
          "hidden_act": v.hidden_act,
          "tokens_per_second": v.tokens_per_second,
          "initializer_range": v.initializer_range,
      },
  }
