"""The command-line boundary: --help, one-line errors, `~` in paths, and data.build's guard on the source tree."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import data
from editreward_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("launch.train", "launch.score", "convert.from_hf", "convert.to_torch", "data.build")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT,
                        env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_zero(command):
  result = _run(command, "--help")
  assert result.returncode == 0, result.stderr
  assert "--[no]verbose" in result.stdout


@pytest.mark.parametrize("error, line", [
    (KeyError("hidden_size"), "error: missing key 'hidden_size'"),
    (MemoryError(), "error: out of memory (try a smaller batch or bfloat16 parameters)"),
    (FileNotFoundError("x.json: not found"), "error: x.json: not found"),
])
def test_expected_failures_become_one_line(error, line, monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  with pytest.raises(SystemExit) as exit_info:
    with cli.one_line_errors():
      raise error
  assert exit_info.value.code == line


def test_build_expands_home_and_open_source_finds_a_non_default_demo(tmp_path, monkeypatch):
  result = _run("data.build", "--dataset=editreward_demo", "--data_dir=~/tfds", "--num_train_pairs=3",
                "--num_test_pairs=2", "--image_size=32", env={"HOME": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1].startswith("built editreward_demo in ") and not os.path.exists(os.path.join(ROOT, "~"))
  monkeypatch.setenv("HOME", str(tmp_path))
  source = data.open_source("editreward_demo", "train", "~/tfds")  # its config folder found without being named
  assert len(source) >= 3


def test_build_refuses_a_data_dir_in_the_source_tree():
  result = _run("data.build", "--dataset=editreward_demo", "--data_dir=tfds_in_repo", "--num_train_pairs=3")
  assert result.returncode == 1 and "is inside the source tree" in result.stderr, result.stderr
  assert not os.path.exists(os.path.join(ROOT, "tfds_in_repo"))
