"""EditReward on Qwen2.5-VL-3B-Instruct."""

from configs.base import base_config


def get_config():
  return base_config("qwen25vl3b")
