"""Base class of the project's TFDS builders: data made from local files or generated, never downloaded."""

from __future__ import annotations

import tensorflow_datasets as tfds


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` that TFDS can prepare without TensorFlow and without `importlib_resources`."""

  # TFDS reads `code_path` only to find a checksums file of download URLs beside the builder's code. For a builder
  # in a package, TFDS 4.9.10 resolves it through `importlib_resources`, which it requires only on Python < 3.9, so
  # preparing fails on a plain Python 3.11. These builders download nothing: no path, no checksums.
  code_path = None
