"""EditReward on Qwen2.5-VL-7B-Instruct.

Convert the base first: python -m convert.from_hf --base=/path/to/Qwen2.5-VL-7B-Instruct --out=ckpt/qwen2.5-vl-7b
"""

from configs.base import base_config


def get_config():
  return base_config("qwen25vl7b", base="ckpt/qwen2.5-vl-7b")
