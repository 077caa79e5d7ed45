"""The multi-device test runner runs a script again when XLA's rendezvous watchdog ended it (a known XLA:CPU deadlock
of simulated devices), and not a single-device one."""

from __future__ import annotations

import pytest

from subprocess_run import run_report


def test_a_deadlocked_multi_device_run_is_run_again(tmp_path):
  assert run_report("deadlock_once.py", str(tmp_path / "runs"), devices=2) == {"runs": 2}


def test_a_single_device_run_is_not_run_again(tmp_path):
  with pytest.raises(AssertionError, match="Termination timeout"):
    run_report("deadlock_once.py", str(tmp_path / "runs"))
  assert (tmp_path / "runs").read_text() == "1"
