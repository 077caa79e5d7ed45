"""Benchmark the train step or the scorer's forward on synthetic inputs laid out like real ones; one JSON line a run.

  python -m launch.bench --shape=tiny|small|3b|7b|mimo7b --mode=train|score --impl=jax|torch|both
      [--pairs_per_step=2] [--edits_per_step=2] [--image_px=448] [--text_tokens=150] [--steps=5 --warmup=2]
      [--dtype=float32|bfloat16] [--remat=none|full|dots|dots_no_batch] [--prefix_sharing] [--peak_tflops=X]
      [--flops_only] [--out=FILE]

jax: the real jitted train step (loss, backward, clipping, AdamW; `editreward_jax.training.run`) or
`scoring._forward`; torch: the reference's way (convert/torch_bench.py). `--impl=both` runs each in its own process
(clean memory peaks) and adds a line of jax/torch ratios. Inputs, FLOP conventions and fields:
editreward_jax/benchmark.py. 3b/7b/mimo7b run only on an accelerator (or with --allow_large); `--flops_only` prints
the FLOP figures without building a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Sequence

from absl import app, flags

from editreward_jax import benchmark, cli
from editreward_jax.models.attention import IMPLEMENTATIONS
from editreward_jax.models.config import to_hf_dict
from editreward_jax.models.scan import REMAT_POLICIES
from editreward_jax.reward import HeadConfig

_TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "tiny_tokenizer")
_PRESET = {"tiny": "tiny", "3b": "qwen25vl3b", "7b": "qwen25vl7b", "mimo7b": "mimo7b"}  # small: no preset

_SHAPE = flags.DEFINE_enum("shape", "tiny", list(benchmark.SHAPES), "Model shape.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "score"], "train: the train step; score: the scorer forward.")
_IMPL = flags.DEFINE_enum("impl", "jax", ["jax", "torch", "both"], "Implementation (both: one line each + ratios).")
_PAIRS = flags.DEFINE_integer("pairs_per_step", 2, "Pairs per train step.", lower_bound=1)
_EDITS = flags.DEFINE_integer("edits_per_step", 2, "Edits per scorer forward.", lower_bound=1)
_IMAGE_PX = flags.DEFINE_integer("image_px", 448, "Square image side in pixels (a multiple of 28).")
_TEXT = flags.DEFINE_integer("text_tokens", 150, "Rubric tokens per row (item b adds 7*b mod 11).", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (torch: weight dtype).")
_REMAT = flags.DEFINE_enum("remat", "none", list(REMAT_POLICIES), "Rematerialisation (torch: any but none = "
                           "transformers' gradient checkpointing).")
_PREFIX = flags.DEFINE_bool("prefix_sharing", True, "jax: compute each pair's (edit's) shared prefixes once (the "
                             "training and scoring default).")
_ATTENTION = flags.DEFINE_enum("attention", "xla", list(IMPLEMENTATIONS), "jax attention kernel (cudnn: GPU, "
                               "splash: TPU).")
_TORCH_ATTENTION = flags.DEFINE_enum("torch_attention", "sdpa", ["sdpa", "eager", "flash_attention_2"],
                                     "torch attention implementation.")
_LOSS = flags.DEFINE_enum("loss_kind", "monte_carlo", ["monte_carlo", "gauss_hermite", "paper"],
                          "jax loss (monte_carlo: the reference's).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of the hardware used, for mfu; 0: mfu is null.",
                           lower_bound=0.0)
_FLOPS_ONLY = flags.DEFINE_bool("flops_only", False, "Print the FLOP figures only; no model is built.")
_ALLOW_LARGE = flags.DEFINE_bool("allow_large", False, "Run 3b/7b/mimo7b even on a CPU.")
_OUT = flags.DEFINE_string("out", None, "Also append the JSON lines to this file.")
_VERBOSE = cli.verbose_flag()
_FORWARDED = ("shape", "mode", "pairs_per_step", "edits_per_step", "image_px", "text_tokens", "steps", "warmup",
              "dtype", "remat", "prefix_sharing", "attention", "torch_attention", "loss_kind", "peak_tflops",
              "allow_large")


def _reward_id() -> int:
  from editreward_jax.processing import load_tokenizer
  from editreward_jax.prompts import REWARD_TOKEN
  return int(load_tokenizer(_TOKENIZER).convert_tokens_to_ids(REWARD_TOKEN))


def _common(impl: str) -> dict[str, Any]:
  n = _PAIRS.value if _MODE.value == "train" else _EDITS.value
  return {"impl": impl, "shape": _SHAPE.value, "mode": _MODE.value,
          ("pairs_per_step" if _MODE.value == "train" else "edits_per_step"): n, "image_px": _IMAGE_PX.value,
          "text_tokens": _TEXT.value, "dtype": _DTYPE.value, "remat": _REMAT.value,
          "prefix_sharing": _PREFIX.value and impl == "jax", "steps": _STEPS.value, "warmup": _WARMUP.value}


def _flops(impl: str, layout: benchmark.Layout, reward_id: int) -> dict[str, Any]:
  n = _PAIRS.value if _MODE.value == "train" else _EDITS.value
  f = benchmark.flop_figures(benchmark.SHAPES[_SHAPE.value], HeadConfig(), _MODE.value, n, layout, reward_id,
                             prefix_sharing=_PREFIX.value)
  unit = "pair" if _MODE.value == "train" else "edit"
  ours = f.pop(f"jax_gflops_per_{unit}")
  executed = ours if impl == "jax" else f[f"reference_gflops_per_{unit}"]  # torch executes the reference layout
  ratio = f.pop("flop_ratio")
  return {f"gflops_per_{unit}": executed, **f, "flop_ratio": ratio if impl == "jax" else 1.0}


def _too_large(platform_is_cpu: bool) -> None:
  if _SHAPE.value in benchmark.LARGE_SHAPES and platform_is_cpu and not _ALLOW_LARGE.value:
    raise ValueError(f"--shape={_SHAPE.value} is too big to run on a CPU: use --flops_only (or --allow_large)")


def _run_jax(layout: benchmark.Layout, reward_id: int) -> dict[str, Any]:
  import jax
  _too_large(jax.default_backend() == "cpu")
  cfg = benchmark.SHAPES[_SHAPE.value]
  if _MODE.value == "score":
    from editreward_jax.models.qwen2_5_vl import RuntimeOptions
    options = RuntimeOptions(dtype=_DTYPE.value, param_dtype=_DTYPE.value, remat=_REMAT.value,
                             attention_impl=_ATTENTION.value)
    program = benchmark.score_program(cfg, HeadConfig(), options, _EDITS.value, layout, reward_id,
                                      prefix_sharing=_PREFIX.value)
  else:
    from configs.base import base_config
    from editreward_jax.training import state as state_lib
    from editreward_jax.training.config import from_config
    raw = base_config(_PRESET.get(_SHAPE.value, "tiny"))
    raw.model.tokenizer = _TOKENIZER
    raw.train.update(steps=_STEPS.value + _WARMUP.value, epochs=0.0, batch_pairs=_PAIRS.value, grad_accumulation=1,
                     loss_kind=_LOSS.value)
    raw.runtime.update(dtype=_DTYPE.value, remat=_REMAT.value, attention=_ATTENTION.value)
    config = from_config(raw)
    setup = dataclasses.replace(state_lib.model_setup(config), cfg=cfg)
    program = benchmark.train_program(config, setup, layout, prefix_sharing=_PREFIX.value)
  out = benchmark.time_program(program, steps=_STEPS.value, warmup=_WARMUP.value)
  return {**out, "platform": jax.default_backend(), "devices": jax.device_count(), "jax": jax.__version__}


def _run_torch(layout: benchmark.Layout, reward_id: int) -> dict[str, Any]:
  try:
    from convert import torch_bench
  except ImportError as e:
    raise ValueError(f"--impl=torch needs PyTorch and transformers (pip install .[torch]): {e}") from None
  import torch
  _too_large(not torch.cuda.is_available())
  cfg = benchmark.SHAPES[_SHAPE.value]
  n = _PAIRS.value if _MODE.value == "train" else _EDITS.value
  passes = benchmark.torch_passes(_MODE.value, cfg, n, layout, reward_id)
  training = _MODE.value == "train"
  model, device, opt = torch_bench.setup(to_hf_dict(cfg), dataclasses.asdict(HeadConfig()), dtype=_DTYPE.value,
                                         attention=_TORCH_ATTENTION.value, remat=_REMAT.value != "none",
                                         training=training, reward_id=reward_id)
  step = (lambda: torch_bench.train_step(model, device, opt, passes)) if training else \
      (lambda: torch_bench.score_step(model, device, passes))
  out = benchmark.time_calls(step, _STEPS.value, _WARMUP.value)
  return {**out, "seq_len": max(len(t) for p in passes for t in p["tokens"]),
          **benchmark.peak_memory(torch_bench.peak_device_bytes(device)), "platform": device.type, "devices": 1,
          "threads": torch_bench.threads(), "attention": _TORCH_ATTENTION.value, **torch_bench.versions()}


def measure(impl: str) -> dict[str, Any]:
  """One implementation's JSON record (FLOP figures only with --flops_only)."""
  layout = benchmark.Layout(image_px=_IMAGE_PX.value, text_tokens=_TEXT.value)
  benchmark.check_layout(benchmark.SHAPES[_SHAPE.value], layout)
  reward_id = _reward_id()
  record = {**_common(impl), **_flops(impl, layout, reward_id)}
  if _FLOPS_ONLY.value:
    return record
  record.update((_run_jax if impl == "jax" else _run_torch)(layout, reward_id))
  unit = "pair" if _MODE.value == "train" else "edit"
  n = _PAIRS.value if _MODE.value == "train" else _EDITS.value
  rate = n / record["step_s_median"]
  tflops = rate * record[f"gflops_per_{unit}"] / 1e3
  record.update({f"{unit}s_per_s": rate, "achieved_tflops": tflops, "peak_tflops": _PEAK.value or None,
                 "mfu": tflops / _PEAK.value if _PEAK.value else None})
  return record


def _child(impl: str) -> dict[str, Any]:
  """`measure(impl)` in a fresh process, so that each implementation's memory peak is its own."""
  args = [FLAGS[name].serialize() for name in _FORWARDED] + [f"--impl={impl}", f"--flops_only={_FLOPS_ONLY.value}"]
  done = subprocess.run([sys.executable, "-m", "launch.bench", *args], stdout=subprocess.PIPE, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if done.returncode:
    raise ValueError(f"the {impl} run failed (exit status {done.returncode}; its error is above)")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _ratios(jax_record: dict[str, Any], torch_record: dict[str, Any]) -> dict[str, Any]:
  unit = "pair" if _MODE.value == "train" else "edit"
  out = {"impl": "jax/torch", "shape": _SHAPE.value, "mode": _MODE.value,
         f"gflops_per_{unit}": jax_record[f"gflops_per_{unit}"] / torch_record[f"gflops_per_{unit}"]}
  if not _FLOPS_ONLY.value:
    out[f"{unit}s_per_s"] = jax_record[f"{unit}s_per_s"] / torch_record[f"{unit}s_per_s"]
    out["peak_mem_gib"] = jax_record["peak_mem_gib"] / torch_record["peak_mem_gib"]
  return out


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(_VERBOSE.value)
  with cli.one_line_errors():
    if _IMPL.value == "both":
      records = [_child("jax"), _child("torch")]
      records.append(_ratios(*records))
    else:
      records = [measure(_IMPL.value)]
    lines = [json.dumps(r) for r in records]
    print("\n".join(lines), flush=True)
    if _OUT.value:
      with open(_OUT.value, "a") as f:
        f.writelines(line + "\n" for line in lines)


if __name__ == "__main__":
  cli.run(main)
