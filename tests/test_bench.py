"""launch.bench at the tiny shape (both modes, both implementations) and its FLOP figures; timings never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import bench

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(shape="tiny", image_px=56, text_tokens=20, steps=2, warmup=1, pairs_per_step=2, edits_per_step=2)


@pytest.fixture(autouse=True)
def parsed_flags():
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()


def check(record: dict, unit: str) -> None:
  for key in (f"gflops_per_{unit}", f"reference_gflops_per_{unit}", "step_s_median", f"{unit}s_per_s", "compile_s",
              "peak_mem_gib", "achieved_tflops"):
    assert record[key] >= 0 and (key == "compile_s" or record[key] > 0), key
  assert record["peak_mem_source"] in ("device", "host_rss")
  assert record["mfu"] is None and record["peak_tflops"] is None


@pytest.mark.parametrize("mode", ["train", "score"])
def test_jax(mode):
  unit = "pair" if mode == "train" else "edit"
  with flagsaver.flagsaver(mode=mode, **TINY):
    record = bench.measure("jax")
  check(record, unit)
  assert record[f"gflops_per_{unit}"] < record[f"reference_gflops_per_{unit}"]  # each distinct image encoded once
  assert 0 < record["flop_ratio"] < 1


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["train", "score"])
def test_torch(mode):
  pytest.importorskip("torch")
  unit = "pair" if mode == "train" else "edit"
  with flagsaver.flagsaver(mode=mode, **TINY):
    record = bench.measure("torch")
  check(record, unit)
  assert record[f"gflops_per_{unit}"] == record[f"reference_gflops_per_{unit}"]  # it runs the reference layout


def test_flops_only_7b_vision_term_by_hand():
  with flagsaver.flagsaver(shape="7b", mode="train", flops_only=True, pairs_per_step=2):
    record = bench.measure("torch")
  assert "step_s_median" not in record
  # One 448x448 image: 32x32 = 1024 patches, 16 windows of 8x8 = 64 patches; 28 window blocks, 4 full ones.
  c, ffn, patches = 1280, 3420, 1024
  per_image = (2 * 1176 * c * patches + 32 * 2 * (4 * c * c + 3 * c * ffn) * patches
               + 28 * 4 * c * 16 * 64**2 + 4 * 4 * c * patches**2 + 2 * (4 * c * 4 * c + 4 * c * 3584) * patches / 4)
  assert record["reference_gflops_per_pair_parts"]["vision"] == pytest.approx(3 * 8 * per_image / 1e9, rel=1e-12)
  assert record["reference_gflops_per_pair"] == pytest.approx(sum(record["reference_gflops_per_pair_parts"].values()))
  assert record["flop_ratio"] == 1.0 and record["gflops_per_pair"] == record["reference_gflops_per_pair"]


def test_large_shape_refused_on_cpu():
  with flagsaver.flagsaver(shape="7b", mode="score"), pytest.raises(ValueError, match="--flops_only"):
    bench.measure("jax")


def test_prefix_sharing_computes_fewer_flops():
  with flagsaver.flagsaver(mode="score", prefix_sharing=True, **TINY):
    shared = bench.measure("jax")
  with flagsaver.flagsaver(mode="score", flops_only=True, prefix_sharing=False, **TINY):
    plain = bench.measure("jax")
  check(shared, "edit")
  assert shared["prefix_sharing"] and shared["gflops_per_edit"] < plain["gflops_per_edit"]


def test_both_flops_only_command(tmp_path):
  out = tmp_path / "bench.jsonl"
  run = subprocess.run([sys.executable, "-m", "launch.bench", "--shape=small", "--mode=train", "--impl=both",
                        "--flops_only", f"--out={out}"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
  assert [r["impl"] for r in lines] == ["jax", "torch", "jax/torch"]
  assert lines[2]["gflops_per_pair"] == pytest.approx(lines[0]["flop_ratio"]) and lines[2]["gflops_per_pair"] < 1
  assert out.read_text().splitlines() == run.stdout.strip().splitlines()


def test_bad_flag_is_one_line():
  run = subprocess.run([sys.executable, "-m", "launch.bench", "--image_px=50", "--flops_only"], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
  assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: --image_px=50")
