"""The scores of N edits, as both scorers return them (JAX: editreward_jax.scoring, PyTorch: convert.torch_reward).

NumPy only, so that the PyTorch scorer imports no JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Scores:
  """Fused and per-dimension (mu, log_sigma) of N edits; the score of an edit is `mu` (higher is better)."""
  mu: np.ndarray
  log_sigma: np.ndarray
  dims: dict[str, tuple[np.ndarray, np.ndarray]]
  errors: dict[int, str] = dataclasses.field(default_factory=dict)  # skipped edits (bad_rows="skip"): index -> why

  def __len__(self) -> int:
    return len(self.mu)

  def row(self, i: int) -> dict[str, Any]:
    out = {"mu": float(self.mu[i]), "log_sigma": float(self.log_sigma[i])}
    for d, (mu, ls) in self.dims.items():
      out[d] = {"mu": float(mu[i]), "log_sigma": float(ls[i])}
    return out
