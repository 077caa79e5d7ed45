"""Training on 8 simulated CPU devices equals training on one (subprocess: the device count is fixed at start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from subprocess_run import HERE, run_report, script_env


# XLA:CPU's in-process collectives deadlock in this backward pass with 8 simulated devices on 2 cores: each device
# runs several independent all-gathers at once and the 8 intra-op threads all block in different ones (gdb on a hung
# CI run). It deadlocked in 3 of the last 4 fresh-clone CI runs (2 of them failed, retries included); alone it mostly
# passes. It runs when EDITREWARD_MESH_TRAIN_TEST=1 until that is fixed.
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDITREWARD_MESH_TRAIN_TEST") != "1",
                    reason="XLA:CPU collectives deadlock with 8 simulated devices; set EDITREWARD_MESH_TRAIN_TEST=1")
def test_eight_device_mesh_trains_like_one_device():
  report = run_report("multidevice_train.py", devices=8)
  assert report["devices"] == 8
  assert max(abs(a - b) for a, b in zip(report["one_losses"], report["mesh_losses"])) <= 1e-5, report
  assert report["max_param_diff"] <= 1e-5 and report["param_scale"] > 0.1, report
  # 4 pairs over data x fsdp = 4 batch shards: the mesh batch lays its images out per shard.
  assert report["mesh_pixels_shape"][0] == 4 and report["one_pixels_shape"][0] == 1, report


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batch(tmp_path):
  from test_train_command import scalars
  script = os.path.join(HERE, "multiprocess_train.py")
  env = script_env(JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  port = _free_port()
  workers = [subprocess.Popen([sys.executable, script, "worker", str(i), str(port), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [w.communicate(timeout=900) for w in workers]
  for w, (_, err) in zip(workers, outputs):
    assert w.returncode == 0, err[-3000:]
  reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert sorted(r["process"] for r in reports) == [0, 1] and all(r["processes"] == 2 for r in reports)
  reference = run_report("multiprocess_train.py", "reference", str(tmp_path), devices=2)
  logged = scalars(tmp_path, "train/loss")
  for step in (2, 3):
    assert abs(logged[step][0] - reference["losses"][step - 1]) <= 1e-5, (logged, reference)
  assert reference["max_param_diff"] <= 1e-5, reference
