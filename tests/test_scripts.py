"""The README's quick-start job and the benchmark scripts run as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args: str) -> dict:
  run = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_forward_quick_start():
  report = run_script("scripts/bench_forward.py", "--iters=1")
  assert report["max_abs_diff"] < 1e-4 and report["jax_forward_s"] > 0


@pytest.mark.slow
def test_bench_train_step(tmp_path):
  report = run_script("scripts/bench_train_step.py", "--steps=2", f"--data_dir={tmp_path}",
                      "--config.data.demo.num_train_pairs=24", "--config.data.demo.image_size=56",
                      "--config.data.min_pixels=3136", "--config.data.max_pixels=3136", "--config.train.batch_pairs=2")
  assert report["steps"] == 2 and report["pairs_per_s"] > 0 and report["batch_pairs"] == 2


@pytest.mark.slow
def test_profile_train_parts():
  report = run_script("scripts/profile_train_parts.py", "--shape=tiny", "--image_px=56", "--text_tokens=10",
                      "--steps=1", "--remat=full")
  parts = ("vision_s", "decoder_s", "heads_and_loss_s", "optimizer_s", "host_input_s")
  assert all(report[p] > 0 for p in parts) and report["prefix_sharing"] and report["remat"] == "full"
  assert report["device_parts_s"] == pytest.approx(sum(report[p] for p in parts[:4]))


@pytest.mark.slow
def test_trace_ops():
  report = run_script("scripts/trace_ops.py", "--shape=tiny", "--mode=score", "--image_px=56", "--text_tokens=10",
                      "--top=5")
  assert len(report["top"]) == 5 and all(op["s"] > 0 and op["calls"] >= 1 for op in report["top"])
  assert any("dot" in op["from"] or "fusion" in op["op"] for op in report["top"])
  assert report["op_s"] == pytest.approx(sum(report["kinds_s"].values()))


@pytest.mark.slow
def test_import_memory(tmp_path):
  report = run_script("scripts/import_memory.py", "--shape=tiny", f"--workdir={tmp_path}", "--shard_gib=0.0005")
  assert len([f for f in os.listdir(tmp_path / "hf") if f.endswith(".safetensors")]) > 1  # sharded
  assert os.path.exists(tmp_path / "imported" / "editreward.json")
  assert report["weights_gib"] > 0 and report["import_peak_rss_gib"] > 0


@pytest.mark.slow
def test_bench_kernels():
  report = run_script("scripts/bench_kernels.py", "--iters=1")
  for case in ("decoder_causal", "vision_full"):
    assert all(report[case][k] > 0 for k in ("chunked_fwd_bwd_s", "jax_xla_fwd_bwd_s", "torch_sdpa_fwd_bwd_s"))
  assert report["matmul_3072x512x1408"]["gflop_per_s"] > 0
