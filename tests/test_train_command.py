"""`python -m launch.train` end to end on the demo set: the README's first command shortened, resume, exact resume
after SIGKILL, SIGTERM, one-line errors. Each test runs the real command in a subprocess."""

from __future__ import annotations

import glob
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's command on a smaller demo set, fewer steps; every step logged so its loss lands in TensorBoard.
SHORT = ["--config=configs/tiny.py", "--config.data.demo.num_train_pairs=40", "--config.data.demo.num_test_pairs=12",
         "--config.data.demo.image_size=56", "--config.data.min_pixels=3136", "--config.data.max_pixels=3136",
         "--config.train.batch_pairs=2", "--config.train.log_every=1", "--config.data.prefetch=0"]


def train(workdir, *flags, wait=True):
  cmd = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *SHORT, *flags]
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  return run.stdout + run.stderr


def scalars(workdir, tag: str) -> dict[int, list[float]]:
  """Every value logged under `tag`, by step, from all event files of the workdir (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  out: dict[int, list[float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        if value.tag == tag:
          out.setdefault(event.step, []).append(value.simple_value)
  return out


@pytest.mark.slow
def test_train_command_logs_evaluates_checkpoints_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  out = train(workdir, "--config.train.steps=4", "--config.train.eval_every=2", "--config.train.checkpoint_every=2")
  assert "building the demo set" in out
  # TFDS's stdout lines and its custom-config warning stay hidden (shown with --verbose).
  assert "Downloading and preparing" not in out and "Using custom data configuration" not in out
  progress = [line for line in out.splitlines() if line.startswith("step 4/4 ")]
  assert progress and "ETA" in progress[0] and "pairs/s=" in progress[0]
  evals = [line for line in out.splitlines() if line.startswith("eval step=")]
  assert [line.split()[1] for line in evals] == ["step=0", "step=2", "step=4"]
  assert all(" accuracy=" in line and " accuracy_with_ties=" in line for line in evals)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert glob.glob(str(workdir / "events.out.tfevents.*"))
  assert set(scalars(workdir, "train/loss")) == {2, 3, 4}  # step 1 compiles and is timed alone
  assert set(scalars(workdir, "eval/accuracy")) == {0, 2, 4}
  assert (workdir / "model" / "editreward.json").exists() and (workdir / "config.json").exists()
  again = train(workdir, "--config.train.steps=4", "--config.train.eval_every=2", "--config.train.checkpoint_every=2")
  assert "resumed from step 4 of 4" in again and "compiled and ran" not in again
  # The workdir is a CKPT for scoring.
  from data.editreward_demo import generate_rows
  from editreward_jax import load_scorer
  row = next(iter(generate_rows("test", 1, seed=0, image_size=56, edits_per_source=2)))
  for ckpt in (workdir, workdir / "checkpoints" / "2", workdir / "model"):
    scores = load_scorer(str(ckpt)).score([row["instruction"]], [row["source_img"]], [row["left_output_image"]])
    assert len(scores) == 1


def _wait_for(path, process, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, f"{path} did not appear"
    time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_losses_bit_for_bit(tmp_path):
  flags = ["--config.train.steps=10", "--config.train.eval_every=0", "--config.train.checkpoint_every=3",
           "--config.data.eval_split="]
  train(tmp_path / "straight", *flags)
  want = {step: values[0] for step, values in scalars(tmp_path / "straight", "train/loss").items()}
  workdir = tmp_path / "killed"
  process = train(workdir, *flags, wait=False)
  _wait_for(workdir / "checkpoints" / "3" / "commit_success.txt", process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  out = train(workdir, *flags)
  assert "resumed from step" in out
  got = scalars(workdir, "train/loss")
  assert max(got) == 10
  resumed = int(out.split("resumed from step ")[1].split()[0])
  for step in range(resumed + 2, 11):  # the first step after a (re)start compiles and is not logged
    assert got[step] and all(v == want[step] for v in got[step]), (step, got[step], want[step])


@pytest.mark.slow
def test_sigterm_saves_and_the_restart_continues(tmp_path):
  flags = ["--config.train.steps=40", "--config.train.eval_every=0", "--config.train.checkpoint_every=100",
           "--config.data.eval_split="]
  process = train(tmp_path, *flags, wait=False)
  for line in process.stdout:
    if line.startswith("step 3/40"):
      process.send_signal(signal.SIGTERM)
      break
  rest = process.stdout.read()
  assert process.wait(timeout=300) == 0, rest[-3000:]
  saved = int(rest.split("SIGTERM: saved step ")[1].split(";")[0])
  assert 3 <= saved < 40
  out = train(tmp_path, *flags)
  assert f"resumed from step {saved} of 40" in out and "step 40/40" in out


@pytest.mark.slow
@pytest.mark.parametrize("flag, message", [
    ("--config.optimizer.lr=-1.0", "error: config.optimizer.lr: must be > 0"),
    ("--config.data.name=editreward_data", "error: dataset 'editreward_data' is not prepared"),
])
def test_bad_value_or_missing_dataset_is_one_line(tmp_path, flag, message):
  run = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={tmp_path}", *SHORT, flag], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-2000:]
  assert "Traceback" not in run.stderr
