"""Evaluate a reward model, or any judge's scores, on a benchmark.

  python -m launch.evaluate --benchmark=editreward_bench|pairs|pointwise --data=PATH
      (--checkpoint=CKPT | --scores=FILE) --output=results.json [--batch_size=8] [--dtype=float32|bfloat16]

--data: for editreward_bench the download's folder (2pair/, 3pair/, 4pair/ of parquet files) or a TFDS data_dir
holding its build (`data.build --dataset=editreward_bench`); for pairs and pointwise a JSON or JSONL file (formats
in the README). Every distinct candidate is scored once; a group's candidates are batched together, so their shared
source image is encoded once. Writes OUTPUT (the metrics, JSON), OUTPUT with .md (the table, also printed), with
--checkpoint OUTPUT with .scores.json (the scores, reusable with --scores), and where log_sigmas exist OUTPUT with
.reliability.png (the calibration diagram).
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from absl import app, flags

from editreward_jax import cli, paths


def define_flags() -> None:
  """The command's flags, defined only when it runs, so that importing its functions (tests, other commands)
  defines none (absl refuses a flag name defined twice in one process)."""
  flags.DEFINE_enum("benchmark", None, ["editreward_bench", "pairs", "pointwise"], "Which kind of benchmark --data is.",
                    required=True)
  flags.DEFINE_string("data", None, "The benchmark: a folder (editreward_bench download or TFDS data_dir) or a "
                      "JSON/JSONL file (pairs, pointwise).", required=True)
  flags.DEFINE_string("checkpoint", None, "CKPT to score the benchmark with (a model directory or training workdir).")
  flags.DEFINE_string("scores", None, "Instead of --checkpoint: a scores file from any judge (format in the README).")
  flags.DEFINE_string("output", None, "Results JSON to write; the table, scores and diagram go beside it.",
                      required=True)
  flags.DEFINE_integer("batch_size", 8, "Edits per forward pass.", lower_bound=1)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
  cli.verbose_flag()


FLAGS = flags.FLAGS


def load_items(benchmark: str, data_path: str) -> list[dict]:
  """The benchmark's items as `editreward_jax.evaluation.benchmarks` takes them."""
  import data
  from data import editreward_bench
  data_path = paths.expand(data_path)
  if benchmark == "pairs":
    return data.read_pair_set(data_path)
  if benchmark == "pointwise":
    return data.read_pointwise(data_path)
  if any(os.path.isdir(os.path.join(data_path, f)) for f in editreward_bench.FOLDERS):
    return list(editreward_bench.iter_groups(data_path))
  source = data.open_source("editreward_bench", "test", data_path)
  return [source[i] for i in range(len(source))]


def run(benchmark: str, data_path: str, output: str, *, checkpoint: str | None = None, scores_path: str | None = None,
        batch_size: int = 8, dtype: str = "float32") -> dict:
  """Scores (or reads the scores of) the benchmark, measures them and writes the outputs; returns the results."""
  from editreward_jax.evaluation import benchmarks, reliability
  if (checkpoint is None) == (scores_path is None):
    raise ValueError("give exactly one of --checkpoint and --scores")
  output = paths.expand(output)
  stem = output[:-len(".json")] if output.endswith(".json") else output
  items = load_items(benchmark, data_path)
  if scores_path is not None:
    scores_path = paths.expand(scores_path)
    with open(scores_path) as f:
      try:
        scores = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{scores_path}: not JSON: {e}") from None
    source = scores_path
  else:
    scores, source = _score(benchmark, items, checkpoint, batch_size, dtype), checkpoint
    _write_json(stem + ".scores.json", scores)
  results = benchmarks.evaluate(benchmark, items, scores, source)
  results["benchmark"], results["scored_by"] = benchmark, source
  _write_json(output, results)
  table = benchmarks.markdown(benchmark, results)
  with open(stem + ".md", "w") as f:
    f.write(table)
  if "calibration" in results:
    reliability.write(stem + ".reliability.png", results["calibration"]["bins"], f"{benchmark}: {source}")
  print(table, end="")
  return results


def _score(benchmark: str, items: list[dict], checkpoint: str, batch_size: int, dtype: str) -> dict:
  from editreward_jax.evaluation import benchmarks
  from editreward_jax.models.qwen2_5_vl import RuntimeOptions
  from editreward_jax.scoring import load_scorer
  scorer = load_scorer(checkpoint, batch_size=batch_size, options=RuntimeOptions(dtype=dtype))
  todo = benchmarks.edits(benchmark, items)
  scores = scorer.score([e[2] for e in todo], [e[3] for e in todo], [e[4] for e in todo],
                        where=[f"{e[0]}" + (f" candidate {e[1]}" if e[1] else "") for e in todo], progress=True)
  return benchmarks.scores_file(benchmark, [(e[0], e[1]) for e in todo], scores.mu, scores.log_sigma)


def _write_json(path: str, value: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(FLAGS.verbose)
  from editreward_jax.schema import DataError
  start = time.time()
  with cli.one_line_errors(DataError):
    run(FLAGS.benchmark, FLAGS.data, FLAGS.output, checkpoint=FLAGS.checkpoint, scores_path=FLAGS.scores,
        batch_size=FLAGS.batch_size, dtype=FLAGS.dtype)
  print(f"evaluated in {time.time() - start:.1f}s -> {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
