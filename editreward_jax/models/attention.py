"""Attention with padding given as lengths: `jax.nn.dot_product_attention` (XLA, cuDNN) or Pallas splash (TPU).

Lengths (valid tokens form a prefix of each row) rather than arbitrary masks keep every call eligible for a fused
kernel: cuDNN on GPU (`"cudnn"`), and on TPU the splash-attention kernel that jax ships (`"splash"`: the lengths
become segment ids, valid tokens 1 and padding 0, so a valid query never sees padding; causal is its static block
mask, so no [B, N, L, L] logits are materialised). "xla" runs everywhere, written here rather than through
`jax.nn.dot_product_attention`'s XLA path, in query chunks of `CHUNK`: a causal chunk of a whole row against only
the keys up to its end (half the logits of the [L, L] square; queries at given positions, a prefix-shared row's
suffix, see every key of their row, masked by position), every chunk small enough to stay in cache; the query heads that
share a KV head are one matrix, so each product is one large batched matmul. Its backward pass is FlashAttention's:
the probabilities are recomputed from each query's saved log-sum-exp (nothing of size [L, L] is kept between the
passes) and softmax's row term comes from the output, not from a sum over all keys (scripts/bench_kernels.py
times it against jax's XLA path and torch). A row of length 0 (a padding window or padding image) is given length 1
so no softmax runs over an empty set; its output is discarded by the caller.

Splash tiles the key axis in blocks of 128 lanes: a sequence whose length is not a multiple of 128 (the vision
tower's 64-patch windows) stays on XLA, where one such tile is what a fused kernel would compute anyway. Off TPU the
kernel runs in Pallas interpret mode (tests on CPU; slow).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("xla", "cudnn", "splash")
CHUNK = 128
SPLASH_LANES = 128
SPLASH_MAX_BLOCK = 512
_MASKED = float(np.finfo(np.float32).min)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, *, causal: bool,
           implementation: str, query_positions: jax.Array | None = None) -> jax.Array:
  """q: [B, T, N, H]; k, v: [B, T, K, H] (GQA when K < N); lengths: [B] int32 valid prefix per row.

  With `query_positions` [B, Q] (causal, "xla" only), q is [B, Q, N, H]: the queries of each row at those positions
  only (a row's rubric suffix under prefix sharing), each attending to the row's keys up to its own position.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
  if query_positions is not None and not (causal and implementation == "xla"):
    raise ValueError("query_positions needs causal attention on the 'xla' path")
  lengths = jnp.maximum(lengths.astype(jnp.int32), 1)
  if implementation == "splash":
    if q.shape[1] % SPLASH_LANES == 0:
      return _splash(q, k, v, lengths, causal)
    implementation = "xla"
  if implementation == "xla":
    return _chunks(q, k, v, lengths, query_positions, causal, CHUNK)
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths, implementation=implementation)


def _chunks(q, k, v, lengths, query_positions, causal, chunk):
  """Attention with key padding, query chunk by query chunk, with its own backward pass (see `_flash`)."""
  b, queries, heads, hd = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  # Per KV head, its `group` query heads and a chunk's queries form one matrix: rows m = (query, head in group).
  qh = (q * jnp.asarray(hd**-0.5, q.dtype)).reshape(b, queries, kv_heads, group, hd).transpose(0, 2, 1, 3, 4)
  qh = qh.reshape(b, kv_heads, queries * group, hd)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
  out = _flash(qh, kh, vh, lengths, query_positions, causal, chunk, group)
  return out.reshape(b, kv_heads, queries, group, hd).transpose(0, 2, 1, 3, 4).reshape(b, queries, heads, hd)


def _spans(queries: int, keys: int, chunk: int, causal: bool, positioned: bool):
  """(first query, query count, keys seen) of each chunk: a causal chunk of a whole row sees only the keys up to its
  end; queries at given positions (`positioned`) see every key, masked by position."""
  def seen(s):
    return min(s + chunk, keys) if causal and not positioned else keys
  return [(s, min(chunk, queries - s), seen(s)) for s in range(0, queries, chunk)]


def _chunk_logits(q, k, lengths, query_positions, start, count, end, group, causal):
  """Float32 logits [B, K, count * group, end] of one query chunk, and where they are visible."""
  logits = jnp.einsum("bkmh,bkeh->bkme", q, k[:, :, :end], preferred_element_type=jnp.float32)
  keys = jnp.arange(end)
  visible = (keys[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, E]
  if query_positions is not None:
    query = jnp.repeat(query_positions[:, start:start + count], group, axis=1)  # [B, M]
    visible = visible & (keys[None, None, :] <= query[:, :, None])[:, None]  # [B, 1, M, E]
  elif causal:
    query = start + jnp.arange(count * group) // group
    visible = visible & (keys[None, :] <= query[:, None])[None, None]  # [B, 1, M, E]
  return logits, visible


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, lengths, query_positions, causal, chunk, group):
  """q [B, K, Q * group, H] (scaled), k, v [B, K, T, H] -> [B, K, Q * group, H]; Q = T unless `query_positions`."""
  return _flash_forward(q, k, v, lengths, query_positions, causal, chunk, group)[0]


def _flash_forward(q, k, v, lengths, query_positions, causal, chunk, group):
  """Per chunk: softmax statistics in float32, the normalisation applied to the [M, H] output rather than the
  [M, E] probabilities; returns the output and each query's log-sum-exp for the backward pass."""
  outs, lses = [], []
  for start, count, end in _spans(q.shape[2] // group, k.shape[2], chunk, causal, query_positions is not None):
    rows = slice(start * group, (start + count) * group)
    logits, visible = _chunk_logits(q[:, :, rows], k, lengths, query_positions, start, count, end, group, causal)
    logits = jnp.where(visible, logits, _MASKED)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - peak)
    total = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkme,bkeh->bkmh", p.astype(v.dtype), v[:, :, :end], preferred_element_type=jnp.float32)
    outs.append((out / total).astype(q.dtype))
    lses.append(peak[..., 0] + jnp.log(total[..., 0]))
  out = jnp.concatenate(outs, axis=2)
  return out, (q, k, v, lengths, query_positions, out, jnp.concatenate(lses, axis=2))


def _flash_backward(causal, chunk, group, residuals, d_out):
  """The probabilities are recomputed from the saved log-sum-exp; softmax's backward takes its row term from
  sum(d_out * out) over the head dimension (FlashAttention's identity) instead of a sum over every key."""
  q, k, v, lengths, query_positions, out, lse = residuals
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, M]
  dq, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for start, count, end in _spans(q.shape[2] // group, k.shape[2], chunk, causal, query_positions is not None):
    rows = slice(start * group, (start + count) * group)
    qc, doc = q[:, :, rows], d_out[:, :, rows]
    logits, visible = _chunk_logits(qc, k, lengths, query_positions, start, count, end, group, causal)
    p = jnp.where(visible, jnp.exp(logits - lse[:, :, rows, None]), 0.0)
    dv = dv.at[:, :, :end].add(jnp.einsum("bkme,bkmh->bkeh", p.astype(v.dtype), doc,
                                          preferred_element_type=jnp.float32))
    dp = jnp.einsum("bkmh,bkeh->bkme", doc, v[:, :, :end], preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[:, :, rows, None])).astype(q.dtype)
    dq.append(jnp.einsum("bkme,bkeh->bkmh", ds, k[:, :, :end], preferred_element_type=jnp.float32))
    dk = dk.at[:, :, :end].add(jnp.einsum("bkme,bkmh->bkeh", ds, qc, preferred_element_type=jnp.float32))
  d_lengths = np.zeros(lengths.shape, jax.dtypes.float0)
  d_positions = None if query_positions is None else np.zeros(query_positions.shape, jax.dtypes.float0)
  return (jnp.concatenate(dq, axis=2).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), d_lengths, d_positions)


_flash.defvjp(_flash_forward, _flash_backward)


@functools.cache
def _splash_kernel(seq: int, group: int, causal: bool, interpret: bool):
  """The splash MQA kernel for one KV head and its `group` query heads over sequences of `seq` tokens."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
  block = math.gcd(seq, SPLASH_MAX_BLOCK)
  sizes = kernel_lib.BlockSizes(block_q=block, block_kv_compute=block, block_kv=block, block_q_dkv=block,
                                block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  head_mask = mask_lib.CausalMask((seq, seq)) if causal else mask_lib.FullMask((seq, seq))
  mask = mask_lib.MultiHeadMask([head_mask] * group)
  return kernel_lib.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret), kernel_lib.SegmentIds


def _splash(q, k, v, lengths, causal):
  b, seq, heads, hd = q.shape
  kv_heads = k.shape[2]
  kernel, segment_ids = _splash_kernel(seq, heads // kv_heads, causal, jax.default_backend() != "tpu")
  segments = (jnp.arange(seq)[None] < lengths[:, None]).astype(jnp.int32)
  # Query head n uses KV head n // group, as in GQA: [B, K, group, T, H] queries against [B, K, T, H] keys.
  qh = (q * jnp.asarray(hd**-0.5, q.dtype)).reshape(b, seq, kv_heads, heads // kv_heads, hd).transpose(0, 2, 3, 1, 4)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  one = lambda qg, kg, vg, s: kernel(qg, kg, vg, segment_ids(q=s, kv=s))
  out = jax.vmap(jax.vmap(one, in_axes=(0, 0, 0, None)))(qh, kh, vh, segments)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, seq, heads, hd)
