"""EditReward on MiMo-VL-7B-SFT-2508 (the paper's best backbone).

Convert the base first: python -m convert.from_hf --base=/path/to/MiMo-VL-7B-SFT-2508 --out=ckpt/mimo-vl-7b
"""

from configs.base import base_config


def get_config():
  return base_config("mimo7b", base="ckpt/mimo-vl-7b")
