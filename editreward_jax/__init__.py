"""EditReward in JAX/Flax: a human-aligned reward model for instruction-guided image editing.

`load_scorer` is imported lazily so that host-only modules (processing, prompts, pairs) load without JAX, e.g. in
data-loader workers and in the PyTorch scorer.
"""

__all__ = ["load_scorer"]


def __getattr__(name):
  if name == "load_scorer":
    from editreward_jax.scoring import load_scorer  # pylint: disable=g-import-not-at-top
    return load_scorer
  raise AttributeError(f"module 'editreward_jax' has no attribute {name!r}")
