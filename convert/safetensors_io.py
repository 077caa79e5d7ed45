"""Reading and writing safetensors with NumPy, bfloat16 included, without torch.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then raw
little-endian tensor bytes. Files are memory-mapped, so reading one tensor touches only its bytes: a 7B checkpoint is
streamed tensor by tensor, never loaded whole. (The `safetensors` package's NumPy backend rejects bfloat16.)
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsFile:
  """One memory-mapped .safetensors file, its header checked against the file when it is opened: a truncated or
  corrupt file fails here, naming the file and the tensor, not later inside a reshape."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file's {size - 8} bytes after it (truncated, or "
                         "not a safetensors file)")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable safetensors header: {e}") from None
    if not isinstance(header, dict):
      raise ValueError(f"{path}: the safetensors header is not a JSON object")
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header = header
    self._data_start = 8 + n
    _check_layout(path, header, size - self._data_start)
    self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

  def keys(self) -> list[str]:
    return list(self.header)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.header[key]["shape"])

  def dtype(self, key: str) -> np.dtype:
    return _DTYPES[self.header[key]["dtype"]]

  def get(self, key: str) -> np.ndarray:
    """A read-only view of the tensor (no copy)."""
    info = self.header[key]
    begin, end = info["data_offsets"]
    buf = self._mmap[self._data_start + begin:self._data_start + end]
    return buf.view(self.dtype(key)).reshape(info["shape"])


def _check_layout(path: str, header: Mapping[str, object], data_bytes: int) -> None:
  """Every entry has a known dtype, a shape of non-negative ints and offsets inside the data section that hold
  exactly shape x itemsize bytes; no two tensors overlap."""
  spans = []
  for key, info in header.items():
    where = f"{path}: tensor {key!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
      raise ValueError(f"{where}: header entry needs dtype, shape and data_offsets, has {info!r}")
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{where}: unsupported dtype {info['dtype']!r} (known: {', '.join(_DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
      raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]):
      raise ValueError(f"{where}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    if offsets[1] > data_bytes:
      raise ValueError(f"{where}: data_offsets {offsets} end past the file's {data_bytes}-byte data section "
                       "(truncated file?)")
    want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[info["dtype"]].itemsize
    if offsets[1] - offsets[0] != want:
      raise ValueError(f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but shape {shape} "
                       f"of {info['dtype']} needs {want}")
    spans.append((offsets[0], offsets[1], key))
  spans.sort()
  for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
    if begin < end:
      raise ValueError(f"{path}: tensors {first!r} and {second!r} overlap in the data section")


class CheckpointReader:
  """All tensors of a Hugging Face checkpoint directory: `model.safetensors` or an index with shards."""

  def __init__(self, directory: str, filename: str | None = None):
    self.directory = directory
    self.source = os.path.join(directory, filename) if filename else directory  # what error messages name
    index_path = os.path.join(directory, INDEX_FILE)
    if filename is not None:
      files = {filename: None}
    elif os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
      files = {name: None for name in sorted(set(weight_map.values()))}
    elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
      files = {SINGLE_FILE: None}
    else:
      raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} and no {INDEX_FILE}")
    self._where: dict[str, SafetensorsFile] = {}
    for name in files:
      st = SafetensorsFile(os.path.join(directory, name))
      for key in st.keys():
        if key in self._where:
          raise ValueError(f"{directory}: tensor {key!r} appears in both {self._where[key].path} and {st.path}")
        self._where[key] = st

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._where[key].shape(key)

  def get(self, key: str) -> np.ndarray:
    return self._where[key].get(key)

  def file_of(self, key: str) -> str:
    return self._where[key].path


def save_file(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], path: str,
              metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors as one safetensors file: a Mapping sorted by name, (name, array) pairs in their order.

  An array may be lazy: any object with `shape`, `dtype` and `size` that `np.asarray` turns into its data is read only
  when its bytes are written, so a file larger than memory streams (convert.to_torch orders its pairs so that each
  stored parameter is read once).
  """
  items = sorted(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
  header: dict = {"__metadata__": dict(metadata)} if metadata else {}
  offset = 0
  for key, arr in items:
    dt = np.dtype(arr.dtype)
    if dt not in _NAMES:
      raise ValueError(f"tensor {key!r}: dtype {dt} cannot be written to safetensors")
    nbytes = arr.size * dt.itemsize
    header[key] = {"dtype": _NAMES[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for _, arr in items:
      f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
  os.replace(tmp, path)
