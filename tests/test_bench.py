"""launch.bench at the tiny shape (both modes, both implementations) and its FLOP figures; timings never asserted."""

from __future__ import annotations

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import bench

FLAGS = flags.FLAGS
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
