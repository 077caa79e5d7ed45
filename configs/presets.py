"""The model shape presets a config's `model.preset` names (defined in editreward_jax/models/presets.py)."""

from editreward_jax.models.presets import MIMO_VL_7B, PRESETS, QWEN25VL_3B, QWEN25VL_7B, TINY

__all__ = ["MIMO_VL_7B", "PRESETS", "QWEN25VL_3B", "QWEN25VL_7B", "TINY"]
