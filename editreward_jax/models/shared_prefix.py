"""Shared-prefix computation: the tokens that several rows of a group have in common go through the decoder once.

The rows of one group (the 4 prompt rows of a training pair, the 2 of a scored edit) begin alike: both rubric rows of
a candidate show [system turn, source image, edited image], both candidates show [system turn, source image]. Under
causal attention a token's hidden state depends only on the tokens before it, and its rotary position is a function
of that prefix in both position modes, so the rows' common prefix has the same hidden states in every row: computing
it once is exact.

Layout. Each group's distinct tokens are *packed* into one row of `Lu` slots (the first row's tokens, then each later
row's tokens after its longest common prefix with an earlier row). The decoder's dense work (norms, projections,
MLP) runs on the packed rows [G, Lu]; attention runs on the standalone rows [R, L] (R = G * n, n rows per group),
gathered from the packed ones, with lengths and the causal mask exactly as without sharing, so it keeps the fused
kernel; each packed token then takes its attention output from the row it first appeared in. Two index arrays, built
here on the host, carry the layout (both group-local, so a group never reaches across a batch shard):
  row_tokens [R, L] int32: the packed slot of each row position, -1 past the row's length;
  token_rows [G, Lu] int32: for each packed slot, its first occurrence as a flat index into its group's [n * L] row
    positions, -1 for padding slots.
Two positions are "the same token" when their token id and their image-unit slot (`image_slots`, -1 for text) agree
and every position before them does: with vision dedup an image shown by two rows has the same slots in both.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

LAYOUT_KEYS = ("row_tokens", "token_rows")


def common_prefix(ids_a: np.ndarray, slots_a: np.ndarray, ids_b: np.ndarray, slots_b: np.ndarray) -> int:
  """Length of the longest common prefix of two rows (token ids and image slots both equal)."""
  n = min(len(ids_a), len(ids_b))
  differ = (ids_a[:n] != ids_b[:n]) | (slots_a[:n] != slots_b[:n])
  return int(np.argmax(differ)) if differ.any() else n


def group_layout(input_ids: np.ndarray, image_slots: np.ndarray, lengths: np.ndarray
                 ) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """One group's rows [n, L] -> (row_tokens [n, L], the (row, position) of each packed token in packed order)."""
  n, seq = input_ids.shape
  row_tokens = np.full((n, seq), -1, np.int32)
  first: list[tuple[int, int]] = []
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
  return row_tokens, first


def pack(batch: Mapping[str, Any], rows_per_group: int, packed_len: int | None = None,
         bucket=None) -> dict[str, Any]:
  """`inputs.make_batch` arrays of R standalone rows -> the same batch with consecutive groups of `rows_per_group`
  rows packed: input_ids, image_slots [G, Lu] and position_ids [3, G, Lu] in the packed layout, lengths [R] kept
  (attention runs on the rows), and the layout arrays `row_tokens`, `token_rows`. `packed_len` fixes Lu; without
  it, Lu = `bucket(longest group)` (or the longest group itself)."""
  input_ids, slots, lengths = (np.asarray(batch[k]) for k in ("input_ids", "image_slots", "lengths"))
  rows, seq = input_ids.shape
  if rows % rows_per_group:
    raise ValueError(f"{rows} rows do not split into groups of {rows_per_group}")
  groups = rows // rows_per_group
  layouts = [group_layout(input_ids[g * rows_per_group:(g + 1) * rows_per_group],
                          slots[g * rows_per_group:(g + 1) * rows_per_group],
                          lengths[g * rows_per_group:(g + 1) * rows_per_group]) for g in range(groups)]
  longest = max(len(first) for _, first in layouts)
  if packed_len is None:
    packed_len = bucket(max(longest, 1)) if bucket else max(longest, 1)
  if longest > packed_len:
    raise ValueError(f"a group packs to {longest} tokens, more than packed_len={packed_len}")
  token_rows = np.full((groups, packed_len), -1, np.int32)
  for g, (_, first) in enumerate(layouts):
    if first:
      r, p = np.array(first).T
      token_rows[g, :len(first)] = r * seq + p
  row_tokens = np.concatenate([rt for rt, _ in layouts])
  # Packed-layout copies of the per-token inputs, read at each slot's first occurrence (slot 0 for padding slots).
  flat = np.maximum(token_rows, 0) + (np.arange(groups) * rows_per_group * seq)[:, None]
  take = lambda a: a.reshape(*a.shape[:-2], rows * seq)[..., flat]
  position_ids = np.asarray(batch["position_ids"])
  return {**batch, "input_ids": take(input_ids), "image_slots": np.where(token_rows >= 0, take(slots), -1),
          "position_ids": take(position_ids), "lengths": lengths, "row_tokens": row_tokens, "token_rows": token_rows}


def packed_tokens(batch: Mapping[str, Any]) -> int:
  """Real tokens the decoder's dense layers compute in a batch: packed slots with sharing, row tokens without."""
  if "token_rows" in batch:
    return int(np.sum(np.asarray(batch["token_rows"]) >= 0))
  return int(np.sum(batch["lengths"]))


# ----------------------------------------------------------------------------------------------------------------
# Device side


def to_rows(packed: jax.Array, row_tokens: jax.Array) -> jax.Array:
  """[G, Lu, ...] packed values -> [R, L, ...] standalone rows (row positions past their length get slot 0)."""
  groups = packed.shape[0]
  rows, seq = row_tokens.shape
  index = jnp.maximum(row_tokens, 0).reshape(groups, (rows // groups) * seq)
  out = jax.vmap(lambda x, i: jnp.take(x, i, axis=0))(packed, index)
  return out.reshape(rows, seq, *packed.shape[2:])


def to_packed(rows_values: jax.Array, token_rows: jax.Array) -> jax.Array:
  """[R, L, ...] standalone rows -> [G, Lu, ...] packed: each slot from its first occurrence."""
  groups, _ = token_rows.shape
  rows, seq = rows_values.shape[:2]
  grouped = rows_values.reshape(groups, (rows // groups) * seq, *rows_values.shape[2:])
  return jax.vmap(lambda x, i: jnp.take(x, i, axis=0))(grouped, jnp.maximum(token_rows, 0))


def at_positions(packed: jax.Array, row_tokens: jax.Array, positions: jax.Array) -> jax.Array:
  """[G, Lu, D] packed hidden states -> [R, D]: row r's state at its position `positions[r]`."""
  groups = packed.shape[0]
  slot = jnp.take_along_axis(row_tokens, positions[:, None], axis=1)[:, 0]
  index = jnp.maximum(slot, 0).reshape(groups, -1)
  return jax.vmap(lambda x, i: jnp.take(x, i, axis=0))(packed, index).reshape(-1, packed.shape[-1])
