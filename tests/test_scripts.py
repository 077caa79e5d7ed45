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
def test_bench_train_step():
  report = run_script("scripts/bench_train_step.py", "--pairs=1", "--iters=1", "--prompt_tokens=32")
  assert report["pairs_per_s"] > 0


@pytest.mark.slow
def test_learn_demo_runs_and_reports_a_curve(tmp_path):
  report = run_script("scripts/learn_demo.py", f"--data_dir={tmp_path}", "--num_train_pairs=24", "--num_test_pairs=12",
                      "--image_size=28", "--steps=2", "--eval_every=1", "--dimension_weight=0.5", "--decay=cosine",
                      "--warmup=1")
  assert list(report["curve"]) == ["0", "1", "2"] and report["decay"] == "cosine"
  assert report["pairs_seen"] == 16 and report["test_pairs"] > 0
  for accuracy in report["curve"].values():
    assert set(accuracy) == {"fused", "instruction_following", "visual_quality"}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
