"""Attention and matmul kernels at the small benchmark shape: this project's XLA attention (query chunks), jax's
`jax.nn.dot_product_attention` XLA path, and torch's scaled_dot_product_attention; forward and backward.

  python scripts/bench_kernels.py [--iters=3]

Shapes: the decoder's causal attention over the standalone rows of 2 training pairs (8 rows x 768 tokens, 8 query
heads, 2 KV heads, head_dim 64), the vision tower's full attention over 6 images of 1024 patches (4 heads, 64), and
the decoder MLP's matmul on 2 packed pairs (3072 x 512 x 1408). Prints one JSON line of seconds (medians).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from editreward_jax import benchmark
from editreward_jax.models import attention

_ITERS = flags.DEFINE_integer("iters", 3, "Timed calls per kernel (after one compile call).", lower_bound=1)


def timed(fn, *args) -> float:
  """Median seconds of `fn(*args)` over the timed calls, after one compile call (benchmark.time_calls)."""
  return benchmark.time_calls(lambda: jax.block_until_ready(fn(*args)), _ITERS.value, 1)["step_s_median"]


def attention_case(rows, seq, heads, kv_heads, causal, length, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(rows, seq, heads, 64)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(rows, seq, kv_heads, 64)), jnp.float32) for _ in range(2))
  lengths = jnp.full((rows,), length)
  ours = lambda q, k, v: attention.attend(q, k, v, lengths, causal=causal, implementation="xla")
  theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                                        key_value_seq_lengths=lengths)
  out = {}
  for name, fn in (("chunked", ours), ("jax_xla", theirs)):
    out[f"{name}_fwd_s"] = timed(jax.jit(fn), q, k, v)
    out[f"{name}_fwd_bwd_s"] = timed(jax.jit(jax.grad(lambda *a, f=fn: jnp.sum(f(*a)), argnums=(0, 1, 2))), q, k, v)
  try:
    import torch
  except ImportError:
    return out
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  qt, kt, vt = (torch.tensor(np.asarray(x)).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
  rep = heads // kv_heads

  def sdpa():
    o = torch.nn.functional.scaled_dot_product_attention(qt, kt.repeat_interleave(rep, 1),
                                                         vt.repeat_interleave(rep, 1), is_causal=causal)
    o.sum().backward()

  out["torch_sdpa_fwd_bwd_s"] = benchmark.time_calls(sdpa, _ITERS.value, 1)["step_s_median"]
  return out


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(3072, 512)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(512, 1408)), jnp.float32)
  matmul_s = timed(jax.jit(lambda a, w: a @ w), a, w)
  print(json.dumps({
      "decoder_causal": attention_case(8, 768, 8, 2, True, 695),
      "vision_full": attention_case(6, 1024, 4, 4, False, 1024),
      "matmul_3072x512x1408": {"s": matmul_s, "gflop_per_s": 2 * 3072 * 512 * 1408 / matmul_s / 1e9},
      "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
