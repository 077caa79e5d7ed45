"""EditReward on MiMo-VL-7B-SFT-2508 (the paper's best backbone)."""

from configs.base import base_config


def get_config():
  return base_config("mimo7b")
