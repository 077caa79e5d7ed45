"""Running a test script in a fresh Python: JAX fixes its device count at start, so multi-device tests need one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def script_env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """This environment on CPU, with `devices` simulated host devices and tests/ and the repo importable."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra,
             PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
  if devices:
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        f"--xla_cpu_collective_call_terminate_timeout_seconds={COLLECTIVE_TIMEOUT_S}")
  return env


# XLA:CPU's in-process collectives can deadlock with simulated devices: every device thread of its intra-op pool
# (8 threads for 8 devices here) can end up blocked in a different one of several independent all-gathers that a
# device runs at once (seen in a CI run: devices 0 and 2 in op 11 while 0 and 1 waited in op 12, all threads idle
# for 15 minutes). XLA ends such a process after the timeout; the script then runs again, at most ATTEMPTS times.
# 120 s is far more than the lag of one device behind another in these tiny programs. In full-suite CI runs the first
# attempt of the 8-device training script deadlocked twice in two runs (alone it never did); the second passed.
COLLECTIVE_TIMEOUT_S = 120
ATTEMPTS = 4
DEADLOCK = "Exiting to ensure a consistent program state"  # XLA's rendezvous watchdog ending the process


def run_report(script: str, *args: str, devices: int | None = None, timeout: int = 900) -> dict:
  """Runs tests/`script` with `args`; returns the JSON report on its last stdout line."""
  for _ in range(ATTEMPTS if devices else 1):
    run = subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=script_env(devices),
                         capture_output=True, text=True, timeout=timeout)
    if run.returncode == 0 or DEADLOCK not in run.stderr:
      break
    print(f"{script}: XLA's collectives deadlocked; running it again", file=sys.stderr)  # shown if the test fails
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])
