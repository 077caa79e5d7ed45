"""Rows of Hugging Face `datasets` parquet files, read in batches so a multi-GB shard never sits in memory whole."""

from __future__ import annotations

import pathlib
from typing import Iterator, Sequence

import pyarrow.parquet as pq

from data.schema import DataError, row_error

_BATCH_ROWS = 32  # rows can carry several MB of images each


def find_files(root: pathlib.Path, pattern: str) -> list[pathlib.Path]:
  """Files under `root` (recursively) whose name matches `pattern`, sorted so builds are reproducible."""
  files = sorted(p for p in root.rglob(pattern) if p.is_file())
  if not files:
    raise DataError(f"{root}: no files matching {pattern!r}")
  return files


def iter_rows(path: pathlib.Path, columns: Sequence[str], optional: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
  """(row index, row dict) over `columns` (all required) and whichever of `optional` the file has."""
  names = set(pq.read_schema(path).names)
  missing = [c for c in columns if c not in names]
  if missing:
    raise DataError(f"{path}: missing columns {missing}; the file has {sorted(names)}")
  wanted = [*columns, *(c for c in optional if c in names)]
  index = 0
  for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
    for row in batch.to_pylist():
      yield index, row
      index += 1


def image_bytes(value: object, path: pathlib.Path, index: int, column: str) -> tuple[bytes, str]:
  """(encoded bytes, path member) of an image struct `{bytes, path}` as `datasets` stores images."""
  if not isinstance(value, dict) or "bytes" not in value:
    raise row_error(path, f"row {index}", column,
                    f"expected an image struct {{bytes, path}}, got {type(value).__name__}")
  data = value["bytes"]
  if not isinstance(data, bytes) or not data:
    raise row_error(path, f"row {index}", column, "the image struct has no embedded bytes")
  return data, value.get("path") or ""
