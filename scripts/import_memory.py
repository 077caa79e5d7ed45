"""Host memory of importing a Hugging Face checkpoint: `convert.from_hf` on a synthetic sharded bf16 checkpoint.

  python scripts/import_memory.py --shape=7b --workdir=/tmp/import7b [--shard_gib=4]

Writes a Qwen2.5-VL checkpoint of the shape (config.json, bf16 safetensors shards with an index, the bundled tiny
tokenizer; weights are zeros: their values do not change what is read or stored), imports it in a child process with
`python -m convert.from_hf --param_dtype=bfloat16`, and prints one JSON line: the weights' bf16 size, the child's
peak resident set (from wait4), their ratio and the import time. The checkpoint and the import take about twice the
weights on disk (15 GB each at 7B).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
from absl import app, flags

import data
from convert import hf_keys
from convert.safetensors_io import INDEX_FILE, save_file
from editreward_jax import benchmark
from editreward_jax.models import qwen2_5_vl
from editreward_jax.models.config import to_hf_dict

_SHAPE = flags.DEFINE_enum("shape", "7b", list(benchmark.SHAPES), "Model shape.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the checkpoint and the import are written.", required=True)
_SHARD_GIB = flags.DEFINE_float("shard_gib", 4.0, "Largest safetensors shard, GiB.")


class Zeros:
  """A lazy bf16 zero tensor: `save_file` materialises it only while writing it."""

  def __init__(self, shape):
    self.shape, self.dtype, self.size = tuple(shape), np.dtype(ml_dtypes.bfloat16), int(np.prod(shape))

  def __array__(self, dtype=None, copy=None):
    return np.zeros(self.shape, self.dtype)


def hf_tensors(cfg) -> list[tuple[str, Zeros]]:
  """Every backbone tensor under its Hugging Face name and shape."""
  params = qwen2_5_vl.abstract_model(cfg)
  from flax import nnx
  state = nnx.to_pure_dict(nnx.state(params, nnx.Param))
  out = []
  for spec in hf_keys.param_specs(cfg):
    value = state
    for key in spec.path:
      value = value[key]
    shape = value.shape[1:] if spec.num_layers else value.shape
    out += [(name, Zeros(hf_keys.hf_shape(spec, shape, cfg))) for name in spec.hf_keys()]
  return out


def write_checkpoint(cfg, directory: str, shard_bytes: float) -> int:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({**to_hf_dict(cfg), "torch_dtype": "bfloat16"}, f)
  for name in os.listdir(data.TINY_TOKENIZER):
    shutil.copy(os.path.join(data.TINY_TOKENIZER, name), directory)
  shards, current, size = [], [], 0
  for name, tensor in hf_tensors(cfg):
    nbytes = tensor.size * 2
    if current and size + nbytes > shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append((name, tensor))
    size += nbytes
  shards.append(current)
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(directory, filename))
    for name, tensor in shard:
      weight_map[name] = filename
      total += tensor.size * 2
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  return total


def main(argv):
  del argv
  cfg = benchmark.SHAPES[_SHAPE.value]
  base, out = os.path.join(_WORKDIR.value, "hf"), os.path.join(_WORKDIR.value, "imported")
  shutil.rmtree(_WORKDIR.value, ignore_errors=True)
  weights = write_checkpoint(cfg, base, _SHARD_GIB.value * 2**30)
  start = time.perf_counter()
  child = subprocess.Popen([sys.executable, "-m", "convert.from_hf", f"--base={base}", f"--out={out}",
                            "--param_dtype=bfloat16"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(child.pid, 0)
  seconds = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"error: convert.from_hf failed: {child.stderr.read()[-2000:]}")
  peak = usage.ru_maxrss * 1024  # Linux: KiB
  print(json.dumps({"shape": _SHAPE.value, "weights_gib": weights / 2**30, "import_peak_rss_gib": peak / 2**30,
                    "rss_over_weights": peak / weights, "import_s": seconds}))


if __name__ == "__main__":
  app.run(main)
