"""Stands in for a multi-device script that XLA's rendezvous watchdog ended (test_subprocess_run.py): the first run
exits with the watchdog's message, later runs print a JSON report with the number of runs so far."""

import json
import pathlib
import sys

from subprocess_run import DEADLOCK

runs = pathlib.Path(sys.argv[1])
count = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(count))
if count == 1:
  sys.exit(f"Termination timeout for `all gather`. {DEADLOCK}.")
print(json.dumps({"runs": count}))
