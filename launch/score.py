"""Score edits with a reward model.

  python -m launch.score --checkpoint=CKPT --input=edits.jsonl --output=scores.jsonl [--prompts=FILE]
      [--rope_mode=sequential|mrope] [--fusion=mean|min|sum] [--batch_size=8] [--dtype=float32|bfloat16]
      [--bad_rows=raise|skip]

Input rows: {"id", "instruction", "source_image", "edited_image"} (image paths absolute or relative to the input
file's folder). Output rows, in input order: {"id", "mu", "log_sigma", "instruction_following": {"mu", "log_sigma"},
"visual_quality": {"mu", "log_sigma"}}; the score of an edit is `mu`. With --bad_rows=skip, rows that cannot be scored
are listed in OUTPUT.errors.jsonl as {"line", "id", "error"}.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from absl import app, flags

from data.readers import ScoringSource
from editreward_jax import cli, paths
from editreward_jax.models.positions import ROPE_MODES
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.reward import FUSIONS
from editreward_jax.scoring import BAD_ROWS, load_scorer

flags.DEFINE_string("checkpoint", None, "Model directory (convert.from_hf output or a trained model).",
                    required=True)
flags.DEFINE_string("input", None, "JSONL of edits: id, instruction, source_image, edited_image.", required=True)
flags.DEFINE_string("output", None, "JSONL to write the scores to.", required=True)
flags.DEFINE_string("prompts", None, "Prompts file overriding the rubric recorded in the checkpoint.")
flags.DEFINE_enum("rope_mode", None, list(ROPE_MODES), "Override the checkpoint's position mode.")
flags.DEFINE_enum("fusion", None, list(FUSIONS), "Override the checkpoint's fusion of the two dimensions.")
flags.DEFINE_integer("batch_size", 8, "Edits per forward pass.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_enum("attention_impl", "xla", ["xla", "cudnn"], "Attention kernel (cudnn: GPU only).")
flags.DEFINE_enum("bad_rows", "raise", list(BAD_ROWS), "raise: stop at a bad row (malformed, or an image or prompt "
                  "that fails), keeping the rows scored before it; skip: list bad rows with their reason in "
                  "OUTPUT.errors.jsonl and score the others.")
VERBOSE = cli.verbose_flag()
FLAGS = flags.FLAGS
ERRORS_SUFFIX = ".errors.jsonl"  # beside the output: the rows skipped with --bad_rows=skip, and why


def run(checkpoint: str, input_path: str, output_path: str, *, prompts: str | None = None,
        rope_mode: str | None = None, fusion: str | None = None, batch_size: int = 8, dtype: str = "float32",
        attention_impl: str = "xla", bad_rows: str = "raise") -> tuple[int, int]:
  """Scores every row of `input_path` into `output_path`, batch by batch (what was scored before a failure stays
  written); returns (rows scored, rows skipped). With bad_rows="skip" a bad row (malformed, or an image or prompt
  that fails) is listed with its reason in OUTPUT.errors.jsonl and the others are scored."""
  output_path = paths.expand(output_path)
  skip = bad_rows == "skip"
  source = ScoringSource(input_path, skip_bad_rows=skip)
  scorer = load_scorer(checkpoint, prompts=prompts, rope_mode=rope_mode, fusion=fusion, batch_size=batch_size,
                       options=RuntimeOptions(dtype=dtype, attention_impl=attention_impl))
  reqs = source.requests
  skipped = list(source.skipped)
  written = 0
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, "w") as out:
    try:
      for kept, scores, errors in scorer.score_batches(
          [r.instruction for r in reqs], [r.source_image for r in reqs], [r.edited_image for r in reqs],
          where=[f"{source.path} line {r.line}" for r in reqs], bad_rows=bad_rows, progress=True):
        out.writelines(json.dumps({"id": reqs[i].id, **scores.row(j)}) + "\n" for j, i in enumerate(kept))
        out.flush()
        written += len(kept)
        skipped += [{"line": reqs[i].line, "id": reqs[i].id, "error": message} for i, message in errors]
    except ValueError as e:
      raise ValueError(f"{e} (the {written} rows scored before it are in {output_path}; --bad_rows=skip scores "
                       "around bad rows)") from None
  errors_path = output_path + ERRORS_SUFFIX
  if skipped:
    with open(errors_path, "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in sorted(skipped, key=lambda r: r["line"]))
  elif os.path.exists(errors_path):
    os.remove(errors_path)  # from an earlier run: it would describe rows this run scored
  return written, len(skipped)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(VERBOSE.value)
  start = time.time()
  with cli.one_line_errors():
    n, skipped = run(FLAGS.checkpoint, FLAGS.input, FLAGS.output, prompts=FLAGS.prompts, rope_mode=FLAGS.rope_mode,
                     fusion=FLAGS.fusion, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
                     attention_impl=FLAGS.attention_impl, bad_rows=FLAGS.bad_rows)
  note = f"; skipped {skipped} bad rows, listed in {FLAGS.output}{ERRORS_SUFFIX}" if skipped else ""
  print(f"scored {n} edits in {time.time() - start:.1f}s -> {FLAGS.output}{note}")


if __name__ == "__main__":
  cli.run(main)
