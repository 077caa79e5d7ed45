"""Attention through `jax.nn.dot_product_attention`, with padding given as lengths.

Lengths (valid tokens form a prefix of each row) rather than arbitrary masks keep every call eligible for the fused
cuDNN kernel on GPU (`implementation="cudnn"`); "xla" runs everywhere. A row of length 0 (a padding window or
padding image) is given length 1 so no softmax runs over an empty set; its output is discarded by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *, causal: bool,
           implementation: str) -> jax.Array:
  """q: [B, T, N, H]; k, v: [B, T, K, H] (GQA when K < N); lengths: [B] int32 valid prefix per row."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
  lengths = jnp.maximum(lengths.astype(jnp.int32), 1)
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths, implementation=implementation)
