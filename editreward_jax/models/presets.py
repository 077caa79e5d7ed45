"""Model shapes of the released backbones and the tiny CPU model, as ModelConfigs (a checkpoint's config.json wins)."""

from __future__ import annotations

from editreward_jax.models.config import ModelConfig, TextConfig, VisionConfig

# Vision tower shared by Qwen2.5-VL 3B/7B and MiMo-VL-7B; only the merger's output width follows the LLM.
_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, temporal_patch_size=2,
               spatial_merge_size=2, window_size=112, fullatt_block_indexes=(7, 15, 23, 31), hidden_act="silu")

QWEN25VL_3B = ModelConfig(
    vision=VisionConfig(**_VISION, out_hidden_size=2048),
    text=TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                    tie_word_embeddings=True))

QWEN25VL_7B = ModelConfig(
    vision=VisionConfig(**_VISION, out_hidden_size=3584),
    text=TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
                    tie_word_embeddings=False))

# MiMo-VL-7B-SFT-2508: sizes from REFERENCE.md; vocab_size and rope_theta are unverified here. Importing the real
# checkpoint (convert.from_hf) always takes its config.json and sizes the embedding from the tensor.
MIMO_VL_7B = ModelConfig(
    vision=VisionConfig(**_VISION, out_hidden_size=4096),
    text=TextConfig(vocab_size=151680, hidden_size=4096, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-6, rope_theta=640000.0,
                    tie_word_embeddings=False))

# A CPU-sized model with the real structure (window + full-attention blocks, M-RoPE sections, GQA), sized for the
# bundled tiny tokenizer (data/tiny_tokenizer: 1023 tokens + <|Reward|>) and its special-token ids. Fresh weights
# are drawn at std 1/sqrt(width), not the released 0.02, which suits widths in the thousands: at width 64/128 it
# leaves attention logits near zero, and the tiny model trained from scratch on the demo set stayed near chance
# (docs/learnability.md).
TINY = ModelConfig(
    vision=VisionConfig(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                        patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
                        fullatt_block_indexes=(1, 3), initializer_range=64**-0.5),
    text=TextConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                    mrope_section=(4, 6, 6), initializer_range=128**-0.5),
    image_token_id=1013, video_token_id=1014, vision_start_token_id=1010, vision_end_token_id=1011)

PRESETS = {"qwen25vl3b": QWEN25VL_3B, "qwen25vl7b": QWEN25VL_7B, "mimo7b": MIMO_VL_7B, "tiny": TINY}
