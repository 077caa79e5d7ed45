"""Shared-prefix computation: the tokens that several rows of a group have in common go through the decoder once.

The rows of one group (the 4 prompt rows of a training pair, the 2 of a scored edit) begin alike: both rubric rows of
a candidate show [system turn, source image, edited image], both candidates show [system turn, source image]. Under
causal attention a token's hidden state depends only on the tokens before it, and its rotary position is a function
of that prefix in both position modes, so the rows' common prefix has the same hidden states in every row: computing
it once is exact.

Layout. Each group's distinct tokens are *packed* into one row of `Lu` slots (the first row's tokens, then each later
row's tokens after its longest common prefix with an earlier row). The decoder's dense work (norms, projections,
MLP) runs on the packed rows [G, Lu]. Attention takes its keys and values from the standalone rows [R, L] (R = G * n,
n rows per group), gathered from the packed ones, with lengths and the causal mask exactly as without sharing. Its
queries: a *full* row attends from every position (on the fused kernel); a *suffix* row (`suffix_slots`: a rubric row
whose images an earlier row of its group already showed) attends only from its own new tokens, `Q` query slots at
positions [shared prefix, length), since its prefix's outputs are the earlier row's. Each packed token then takes
its attention output from the row it first appeared in. Index arrays, built here on the host and all group-local
(a group never reaches across a batch shard), carry the layout:
  row_tokens [R, L] int32: the packed slot of each row position, -1 past the row's length;
  full_rows [G, nf], suffix_rows [G, ns] int32: which rows of the group attend in full or by suffix;
  suffix_tokens [G, ns, Q] int32: the packed slot of each suffix query, -1 for padding queries;
  suffix_positions [G, ns, Q] int32: its position in its row (padding queries: clipped to L - 1);
  token_rows [G, Lu] int32: for each packed slot, where its attention output is in the group's outputs laid out as
    [nf full rows x L positions, then ns suffix rows x Q queries], -1 for padding slots.
Two positions are "the same token" when their token id and their image-unit slot (`image_slots`, -1 for text) agree
and every position before them does: with vision dedup an image shown by two rows has the same slots in both.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from editreward_jax.models import attention

LAYOUT_KEYS = ("row_tokens", "token_rows", "full_rows", "suffix_rows", "suffix_tokens", "suffix_positions")


def common_prefix(ids_a: np.ndarray, slots_a: np.ndarray, ids_b: np.ndarray, slots_b: np.ndarray) -> int:
  """Length of the longest common prefix of two rows (token ids and image slots both equal)."""
  n = min(len(ids_a), len(ids_b))
  differ = (ids_a[:n] != ids_b[:n]) | (slots_a[:n] != slots_b[:n])
  return int(np.argmax(differ)) if differ.any() else n


def group_layout(input_ids: np.ndarray, image_slots: np.ndarray, lengths: np.ndarray
                 ) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
  """One group's rows [n, L] -> (row_tokens [n, L], the (row, position) of each packed token in packed order, the
  length of each row's prefix shared with an earlier row)."""
  n, seq = input_ids.shape
  row_tokens = np.full((n, seq), -1, np.int32)
  first: list[tuple[int, int]] = []
  shared_lengths = []
  for j in range(n):
    ids, slots, length = input_ids[j, :lengths[j]], image_slots[j, :lengths[j]], int(lengths[j])
    shared, donor = 0, -1
    for i in range(j):
      c = common_prefix(ids, slots, input_ids[i, :lengths[i]], image_slots[i, :lengths[i]])
      if c > shared:
        shared, donor = c, i
    if shared:
      row_tokens[j, :shared] = row_tokens[donor, :shared]
    row_tokens[j, shared:length] = np.arange(len(first), len(first) + length - shared)
    first.extend((j, p) for p in range(shared, length))
    shared_lengths.append(shared)
  return row_tokens, first, shared_lengths


def pack(batch: Mapping[str, Any], rows_per_group: int, packed_len: int | None = None, bucket=None,
         suffix_slots: tuple[int, ...] = (), suffix_len: int | None = None) -> dict[str, Any]:
  """`inputs.make_batch` arrays of R standalone rows -> the same batch with consecutive groups of `rows_per_group`
  rows packed: input_ids, image_slots [G, Lu] and position_ids [3, G, Lu] in the packed layout, lengths [R] kept
  (attention runs on the rows), and the layout arrays (`LAYOUT_KEYS`). The rows at `suffix_slots` of each group attend
  from their new tokens only. `packed_len` fixes Lu; without it, Lu = `bucket(longest group)` (or the longest
  itself). `suffix_len` fixes Q (0: no suffix rows, every row attends in full); without it, Q = `bucket(most new
  tokens of a suffix row)`. Q is capped at the row length L."""
  input_ids, slots, lengths = (np.asarray(batch[k]) for k in ("input_ids", "image_slots", "lengths"))
  rows, seq = input_ids.shape
  if rows % rows_per_group:
    raise ValueError(f"{rows} rows do not split into groups of {rows_per_group}")
  if suffix_len == 0:
    suffix_slots = ()
  if any(not 0 < j < rows_per_group for j in suffix_slots):
    raise ValueError(f"suffix slots {suffix_slots} must be later rows of a group of {rows_per_group}")
  groups = rows // rows_per_group
  layouts = [group_layout(input_ids[g * rows_per_group:(g + 1) * rows_per_group],
                          slots[g * rows_per_group:(g + 1) * rows_per_group],
                          lengths[g * rows_per_group:(g + 1) * rows_per_group]) for g in range(groups)]
  fit = lambda n: max(bucket(max(n, 1)) if bucket else n, 1)
  longest = max(len(first) for _, first, _ in layouts)
  packed_len = fit(longest) if packed_len is None else packed_len
  if longest > packed_len:
    raise ValueError(f"a group packs to {longest} tokens, more than packed_len={packed_len}")
  new_tokens = [[int(lengths[g * rows_per_group + j]) - shared[j] for j in suffix_slots]
                for g, (_, _, shared) in enumerate(layouts)]
  longest_suffix = max((n for group in new_tokens for n in group), default=0)
  suffix_len = (fit(longest_suffix) if suffix_slots else 0) if suffix_len is None else suffix_len
  suffix_len = min(suffix_len, seq)  # more query slots than a row has positions would all be padding
  if longest_suffix > suffix_len:
    raise ValueError(f"a suffix row has {longest_suffix} new tokens, more than suffix_len={suffix_len}")
  full_slots = [j for j in range(rows_per_group) if j not in suffix_slots]
  # Where each row's outputs start in the group's [nf x L, then ns x Q] attention outputs.
  out_start = {j: i * seq for i, j in enumerate(full_slots)}
  out_start.update({j: len(full_slots) * seq + i * suffix_len for i, j in enumerate(suffix_slots)})
  token_rows = np.full((groups, packed_len), -1, np.int32)
  suffix_tokens = np.full((groups, len(suffix_slots), suffix_len), -1, np.int32)
  suffix_positions = np.zeros((groups, len(suffix_slots), suffix_len), np.int32)
  for g, (row_tokens_g, first, shared) in enumerate(layouts):
    for i, j in enumerate(suffix_slots):
      n = new_tokens[g][i]
      suffix_tokens[g, i, :n] = row_tokens_g[j, shared[j]:shared[j] + n]
      suffix_positions[g, i] = np.minimum(shared[j] + np.arange(suffix_len), seq - 1)
    for slot, (j, p) in enumerate(first):
      token_rows[g, slot] = out_start[j] + (p - shared[j] if j in suffix_slots else p)
  row_tokens = np.concatenate([rt for rt, _, _ in layouts])
  # Packed-layout copies of the per-token inputs, read at each slot's first occurrence (padding slots: the group's
  # first row position).
  first_at = np.repeat(np.arange(groups, dtype=np.int64)[:, None] * rows_per_group * seq, packed_len, axis=1)
  for g, (_, first, _) in enumerate(layouts):
    if first:
      r, p = np.array(first).T
      first_at[g, :len(first)] = (g * rows_per_group + r) * seq + p
  take = lambda a: a.reshape(*a.shape[:-2], rows * seq)[..., first_at]
  position_ids = np.asarray(batch["position_ids"])
  return {**batch, "input_ids": take(input_ids), "image_slots": np.where(token_rows >= 0, take(slots), -1),
          "position_ids": take(position_ids), "lengths": lengths, "row_tokens": row_tokens, "token_rows": token_rows,
          "full_rows": np.tile(np.array(full_slots, np.int32), (groups, 1)),
          "suffix_rows": np.tile(np.array(suffix_slots, np.int32), (groups, 1)),
          "suffix_tokens": suffix_tokens, "suffix_positions": suffix_positions}


def packed_tokens(batch: Mapping[str, Any]) -> int:
  """Real tokens the decoder's dense layers compute in a batch: packed slots with sharing, row tokens without."""
  if "token_rows" in batch:
    return int(np.sum(np.asarray(batch["token_rows"]) >= 0))
  return int(np.sum(batch["lengths"]))


def query_starts(batch: Mapping[str, Any]) -> np.ndarray:
  """[R] position of each row's first attention query: a suffix row's shared prefix length, else 0."""
  lengths = np.asarray(batch["lengths"])
  starts = np.zeros(len(lengths), np.int64)
  if "suffix_rows" in batch:
    suffix_rows, suffix_tokens = np.asarray(batch["suffix_rows"]), np.asarray(batch["suffix_tokens"])
    rows = (np.arange(suffix_rows.shape[0])[:, None] * (len(lengths) // suffix_rows.shape[0]) + suffix_rows).ravel()
    starts[rows] = lengths[rows] - (suffix_tokens >= 0).sum(-1).ravel()
  return starts


# ----------------------------------------------------------------------------------------------------------------
# Device side


def to_rows(packed: jax.Array, row_tokens: jax.Array) -> jax.Array:
  """[G, Lu, ...] packed values -> [R, L, ...] standalone rows (row positions past their length get slot 0)."""
  groups = packed.shape[0]
  rows, seq = row_tokens.shape
  out = _take_per_group(packed, jnp.maximum(row_tokens, 0).reshape(groups, (rows // groups) * seq))
  return out.reshape(rows, seq, *packed.shape[2:])


def attend(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, layout: Mapping[str, jax.Array],
           implementation: str) -> jax.Array:
  """Packed q, k, v [G, Lu, heads, head_dim] -> packed attention outputs [G, Lu, heads, head_dim], each token's
  as in the row it first appeared in. On "xla" suffix rows compute only their new tokens' queries; the other kernels
  take full rows only, so there every row attends in full and the suffix queries are read from its outputs."""
  groups = q.shape[0]
  rows, seq = layout["row_tokens"].shape
  n = rows // groups
  full, suffix = layout["full_rows"], layout["suffix_rows"]
  pick = lambda x, index: _take_per_group(x.reshape(groups, n, *x.shape[1:]), index)  # [R, ...] -> [G, m, ...]
  flat = lambda x: x.reshape(-1, *x.shape[2:])
  heads = q.shape[2:]
  if implementation == "xla" and suffix.shape[1]:
    # Each attention call gathers its rows' keys and values straight from the packed ones.
    full_tokens, suffix_row_tokens = (flat(pick(layout["row_tokens"], which)) for which in (full, suffix))
    out_full = attention.attend(to_rows(q, full_tokens), to_rows(k, full_tokens), to_rows(v, full_tokens),
                                flat(pick(lengths, full)), causal=True, implementation=implementation)
    queries = _take_per_group(q, jnp.maximum(layout["suffix_tokens"].reshape(groups, -1), 0))
    out_suffix = attention.attend(queries.reshape(-1, layout["suffix_tokens"].shape[-1], *heads),
                                  to_rows(k, suffix_row_tokens), to_rows(v, suffix_row_tokens),
                                  flat(pick(lengths, suffix)), causal=True, implementation=implementation,
                                  query_positions=flat(layout["suffix_positions"]))
    parts = [out_full, out_suffix]
  else:
    row_tokens = layout["row_tokens"]
    out_rows = attention.attend(to_rows(q, row_tokens), to_rows(k, row_tokens), to_rows(v, row_tokens), lengths,
                                causal=True, implementation=implementation)
    parts = [flat(pick(out_rows, full))]
    if suffix.shape[1]:  # a row's outputs [L, ...] at its queries [Q]
      at_queries = jax.vmap(lambda x, p: jnp.take(x, p, axis=0))
      parts.append(at_queries(flat(pick(out_rows, suffix)), flat(layout["suffix_positions"])))
  outputs = jnp.concatenate([p.reshape(groups, -1, *heads) for p in parts], axis=1)
  return _take_per_group(outputs, jnp.maximum(layout["token_rows"], 0))


def _take_per_group(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [G, A, ...], index [G, B] -> [G, B, ...]: each group's entries at its own indices."""
  return jax.vmap(lambda a, i: jnp.take(a, i, axis=0))(x, index)


def at_positions(packed: jax.Array, row_tokens: jax.Array, positions: jax.Array) -> jax.Array:
  """[G, Lu, D] packed hidden states -> [R, D]: row r's state at its position `positions[r]`."""
  groups = packed.shape[0]
  slot = jnp.take_along_axis(row_tokens, positions[:, None], axis=1)[:, 0]
  return _take_per_group(packed, jnp.maximum(slot, 0).reshape(groups, -1)).reshape(-1, packed.shape[-1])
