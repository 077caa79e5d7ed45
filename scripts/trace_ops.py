"""Where a compiled train step (or scorer forward) spends its time, op by op, from a `jax.profiler` trace.

  python scripts/trace_ops.py [--shape=small] [--mode=train|score] [--remat=none] [--image_px=448] [--text_tokens=150]
                              [--top=30]

Runs the launch.bench program once to compile and once more under `jax.profiler.trace` (Perfetto JSON), then prints
the XLA ops (fusions, matmuls, copies) that took the most time, each with its output shape and the JAX operation it
came from, and the totals per kind of op (the op name less its number: `ynn_fusion` are matmuls with what XLA fused
into them, `*dynamic-update-slice*` mostly a scan stacking per-layer residuals, `copy*`/`transpose*` layout changes).
Op times add up over both threads of the CPU, so their sum exceeds the step's wall time. The last line is the same
summary as JSON. This is how the slow
transposed weight-gradient layouts and the attention backward's reduce over keys were found (docs/benchmarks.md).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import re
import tempfile

import jax
from absl import app, flags

import data
from configs.base import base_config
from editreward_jax import benchmark
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.models.scan import REMAT_POLICIES
from editreward_jax.reward import HeadConfig
from editreward_jax.training import state as state_lib
from editreward_jax.training.config import from_config

_SHAPE = flags.DEFINE_enum("shape", "small", ["tiny", "small"], "Model shape (launch.bench's).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "score"], "The train step or the scorer's forward.")
_REMAT = flags.DEFINE_enum("remat", "none", list(REMAT_POLICIES), "Rematerialisation policy.")
_PX = flags.DEFINE_integer("image_px", 448, "Square image side in pixels.")
_TEXT = flags.DEFINE_integer("text_tokens", 150, "Rubric tokens per row (launch.bench's layout).")
_TOP = flags.DEFINE_integer("top", 30, "Ops to list.", lower_bound=1)


def _program() -> benchmark.Program:
  """One step on the launch.bench inputs of 2 pairs or 2 edits, float32, prefix sharing on."""
  cfg = benchmark.SHAPES[_SHAPE.value]
  layout = benchmark.Layout(image_px=_PX.value, text_tokens=_TEXT.value)
  if _MODE.value == "score":
    return benchmark.score_program(cfg, HeadConfig(), RuntimeOptions(remat=_REMAT.value), 2, layout,
                                   cfg.text.vocab_size - 1, prefix_sharing=True)
  raw = base_config("tiny")
  raw.model.tokenizer = data.TINY_TOKENIZER
  raw.train.update(steps=10, epochs=0.0, batch_pairs=2, grad_accumulation=1, loss_kind="monte_carlo")
  raw.runtime.update(dtype="float32", remat=_REMAT.value)
  config = from_config(raw)
  setup = dataclasses.replace(state_lib.model_setup(config), cfg=cfg)
  return benchmark.train_program(config, setup, layout, prefix_sharing=True)


def _op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "SlinkyThreadPool", "while", "Pjit")):
      total[name] += e.get("dur", 0)
      calls[name] += 1
  return total, calls


def main(argv):
  del argv
  program = _program()
  wall = benchmark.time_calls(program.call, 1, 1)["step_s_median"]
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      program.call()
    total, calls = _op_times(trace_dir)
  defs = {m.group(1): line for line in program.hlo().splitlines()
          if (m := re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line))}
  op_s = sum(total.values()) / 1e6
  print(f"step wall {wall:.3f} s; op time {op_s:.3f} s over both threads")
  top = []
  for name, us in total.most_common(_TOP.value):
    line = defs.get(name, "")
    shape = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = (\S+)", line)
    origin = re.search(r'op_name="([^"]+)"', line)
    top.append({"op": name, "s": us / 1e6, "calls": calls[name], "shape": shape.group(1) if shape else "",
                "from": origin.group(1) if origin else ""})
    print(f"{us / 1e3:8.1f} ms x{calls[name]:<3d} {name:34s} {top[-1]['shape']:30s} {top[-1]['from'][-70:]}")
  kinds = collections.Counter()
  for name, us in total.items():
    kinds[re.sub(r"\.\d+$", "", name)] += us
  print("by kind:", ", ".join(f"{k} {us / 1e6:.2f} s" for k, us in kinds.most_common(12)))
  print(json.dumps({"shape": _SHAPE.value, "mode": _MODE.value, "remat": _REMAT.value, "wall_s": wall,
                    "op_s": op_s, "top": top, "kinds_s": {k: us / 1e6 for k, us in kinds.most_common()}}))


if __name__ == "__main__":
  app.run(main)
