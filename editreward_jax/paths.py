"""User-given paths: `~` and environment variables expanded once, where a path enters the program (flags and the
public Python API alike), so `--data_dir=~/tfds` (which the shell leaves unexpanded) means the home folder."""

from __future__ import annotations

import os


def expand(path: str | None) -> str | None:
  return os.path.expandvars(os.path.expanduser(path)) if path else path
