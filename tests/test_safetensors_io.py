"""Reading safetensors safely: a truncated or corrupt file fails when opened, naming the file and the tensor."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from convert.safetensors_io import SafetensorsFile, save_file


def _write(path, header: dict, data: bytes) -> str:
  blob = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + data)
  return str(path)


def _good(tmp_path):
  path = str(tmp_path / "good.safetensors")
  save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, ml_dtypes.bfloat16)}, path)
  return path


def test_round_trip_with_bfloat16(tmp_path):
  st = SafetensorsFile(_good(tmp_path))
  np.testing.assert_array_equal(st.get("a"), np.arange(6, dtype=np.float32).reshape(2, 3))
  assert st.dtype("b") == np.dtype(ml_dtypes.bfloat16) and st.shape("b") == (4,)


def test_truncated_file_names_the_tensor(tmp_path):
  path = _good(tmp_path)
  with open(path, "rb") as f:
    blob = f.read()
  with open(path, "wb") as f:
    f.write(blob[:-3])
  with pytest.raises(ValueError, match=r"good.safetensors: tensor 'b': .* end past .*truncated"):
    SafetensorsFile(path)


def test_bogus_header_length(tmp_path):
  path = tmp_path / "x.safetensors"
  path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
  with pytest.raises(ValueError, match=r"x.safetensors: header length 1000000000000 exceeds"):
    SafetensorsFile(str(path))


@pytest.mark.parametrize("entry, message", [
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}, r"tensor 'w': data_offsets \[0, 20\] hold 20 bytes, "
                                                                 r"but shape \[2, 3\] of F32 needs 24"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, r"tensor 'w': data_offsets \[8, 0\] is not"),
    ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, r"tensor 'w': unsupported dtype 'Q7'"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, r"tensor 'w': shape \[-2\]"),
    ({"dtype": "F32", "shape": [2]}, r"tensor 'w': header entry needs"),
])
def test_bad_header_entries(tmp_path, entry, message):
  path = _write(tmp_path / "bad.safetensors", {"w": entry}, bytes(24))
  with pytest.raises(ValueError, match=message):
    SafetensorsFile(path)


def test_overlapping_tensors(tmp_path):
  header = {"u": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
  with pytest.raises(ValueError, match=r"tensors 'u' and 'v' overlap"):
    SafetensorsFile(_write(tmp_path / "o.safetensors", header, bytes(24)))
