"""What every command line shares at its boundary: expected failures reach the user as one line, and the libraries'
INFO logs stay quiet unless `--verbose` is given.

  def main(argv):
    cli.quiet_logs(VERBOSE.value)
    with cli.one_line_errors():
      ...

  if __name__ == "__main__":
    cli.run(main)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

TRACEBACK_ENV = "EDITREWARD_TRACEBACK"  # set to 1 to see the traceback of an expected failure
_EXPECTED = (OSError, ValueError, KeyError, MemoryError)


_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def run(main) -> None:
  """`absl.app.run(main)`, except that asking for help exits 0 (absl exits 1 after printing it)."""
  try:
    app.run(main)
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP_FLAGS for a in sys.argv[1:]):
      sys.exit(0)
    raise


def describe(error: BaseException) -> str:
  """One line for an expected failure; KeyError and MemoryError carry no sentence of their own."""
  if isinstance(error, KeyError):
    return f"missing key {error.args[0]!r}" if error.args else "missing key"
  if isinstance(error, MemoryError):
    return "out of memory" + (f": {error}" if str(error) else " (try a smaller batch or bfloat16 parameters)")
  return str(error) or type(error).__name__


@contextlib.contextmanager
def one_line_errors(*also: type[BaseException]):
  """Turns expected failures (bad files or values, missing fields, out of memory, and the types in `also`) into
  `error: ...` on stderr and exit status 1."""
  try:
    yield
  except (*_EXPECTED, *also) as e:
    if os.environ.get(TRACEBACK_ENV):
      raise
    sys.exit(f"error: {describe(e)}")


def duration(seconds: float) -> str:
  """12m05s, or 1h02m05s: the ETA of progress lines."""
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def verbose_flag() -> flags.FlagHolder:
  """--verbose, listed in the calling command's own --help (absl lists the flags of the module named by argv[0])."""
  caller = sys._getframe(1).f_globals["__name__"]
  return flags.DEFINE_bool("verbose", False, "Show the INFO logs of the project and its libraries (Orbax, Grain, "
                           "TFDS, transformers, JAX's backend probe).",
                           module_name=sys.argv[0] if caller == "__main__" else caller)


def quiet_logs(verbose: bool) -> None:
  """INFO logs at --verbose only; the command prints its own progress lines."""
  level = logging.INFO if verbose else logging.WARNING
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  logging.getLogger().setLevel(level)
  for name in ("jax._src.xla_bridge", "orbax", "absl"):
    logging.getLogger(name).setLevel(level)
  if not verbose:
    import transformers
    transformers.logging.set_verbosity_error()  # token-id warnings of tiny tokenizers
