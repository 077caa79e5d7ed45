"""EditReward on Qwen2.5-VL-3B-Instruct.

Convert the base first: python -m convert.from_hf --base=/path/to/Qwen2.5-VL-3B-Instruct --out=ckpt/qwen2.5-vl-3b
"""

from configs.base import base_config


def get_config():
  return base_config("qwen25vl3b", base="ckpt/qwen2.5-vl-3b")
