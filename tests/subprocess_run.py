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
    # XLA:CPU ends the process when the devices of a collective arrive more than 40 s apart (its default). Eight
    # simulated devices share 2 cores, and on a busy machine one can lag that long without anything being wrong.
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=900")
  return env


def run_report(script: str, *args: str, devices: int | None = None, timeout: int = 900) -> dict:
  """Runs tests/`script` with `args`; returns the JSON report on its last stdout line."""
  run = subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=script_env(devices),
                       capture_output=True, text=True, timeout=timeout)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])
