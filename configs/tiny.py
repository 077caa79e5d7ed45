"""A tiny model on the bundled synthetic demo data: runs on a CPU in minutes (the embedded default)."""

from configs.base import base_config


def get_config():
  c = base_config("tiny")
  c.runtime.dtype = "float32"
  c.runtime.remat = "none"
  return c
