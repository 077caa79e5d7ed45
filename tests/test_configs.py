"""Model configs: the released shapes build abstractly with transformers' parameter counts; HF config layouts."""

from __future__ import annotations

import json

import pytest
import transformers

from configs import presets
from editreward_jax.models.config import ModelConfig, from_hf_dict, to_hf_dict
from editreward_jax.models.qwen2_5_vl import abstract_model, count_params


def torch_param_count(cfg: ModelConfig) -> int:
  torch = pytest.importorskip("torch")
  hf = transformers.Qwen2_5_VLConfig(**to_hf_dict(cfg))
  with torch.device("meta"):
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf)
  return sum(p.numel() for p in model.parameters())


@pytest.mark.torch
@pytest.mark.parametrize("name", ["qwen25vl3b", "qwen25vl7b", "mimo7b", "tiny"])
def test_preset_param_count_matches_transformers(name):
  cfg = presets.PRESETS[name]
  ours = count_params(abstract_model(cfg))
  assert ours == torch_param_count(cfg)
  if name == "qwen25vl7b":
    assert 8.2e9 < ours < 8.4e9  # Qwen2.5-VL-7B has 8.29B parameters


def test_tied_embeddings_have_no_lm_head():
  model = abstract_model(presets.QWEN25VL_3B)
  assert model.lm_head is None
  assert count_params(abstract_model(presets.QWEN25VL_7B)) > count_params(model)


# config.json of Qwen2.5-VL-7B-Instruct as published (flat text fields, older layout), abridged.
FLAT_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 3584,
    "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 152064, "tie_word_embeddings": False,
    "hidden_act": "silu", "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
}


def test_flat_hf_layout_gives_the_7b_preset():
  assert from_hf_dict(FLAT_7B) == presets.QWEN25VL_7B


def test_nested_layout_round_trips():
  for cfg in presets.PRESETS.values():
    assert from_hf_dict(json.loads(json.dumps(to_hf_dict(cfg)))) == cfg


@pytest.mark.parametrize("name", ["mimo7b", "tiny"])  # tiny: initializer_range differs from the default, per tower
def test_transformers_reads_our_hf_dict_like_we_do(name):
  cfg = presets.PRESETS[name]
  hf = transformers.Qwen2_5_VLConfig(**to_hf_dict(cfg))
  assert from_hf_dict(hf.to_dict()) == cfg


def test_project_config_dict_round_trip():
  cfg = presets.TINY
  assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_bad_configs_are_rejected():
  with pytest.raises(ValueError, match="mrope_section"):
    from_hf_dict({**FLAT_7B, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 20]}})
  with pytest.raises(ValueError, match="model_type"):
    from_hf_dict({**FLAT_7B, "model_type": "llama"})
  with pytest.raises(ValueError, match="unknown text config fields"):
    ModelConfig.from_dict({"text": {"hidden": 3}})
