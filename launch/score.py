"""Score edits with a reward model.

  python -m launch.score --checkpoint=CKPT --input=edits.jsonl --output=scores.jsonl [--prompts=FILE]
      [--rope_mode=sequential|mrope] [--fusion=mean|min|sum] [--batch_size=8] [--dtype=float32|bfloat16]

Input rows: {"id", "instruction", "source_image", "edited_image"} (image paths absolute or relative to the input
file's folder). Output rows, in input order: {"id", "mu", "log_sigma", "instruction_following": {"mu", "log_sigma"},
"visual_quality": {"mu", "log_sigma"}}; the score of an edit is `mu`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from absl import app, flags

from data.readers import ScoringSource
from editreward_jax import cli
from editreward_jax.models.positions import ROPE_MODES
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.reward import FUSIONS
from editreward_jax.scoring import load_scorer

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
VERBOSE = cli.verbose_flag()
FLAGS = flags.FLAGS


def run(checkpoint: str, input_path: str, output_path: str, *, prompts: str | None = None,
        rope_mode: str | None = None, fusion: str | None = None, batch_size: int = 8, dtype: str = "float32",
        attention_impl: str = "xla") -> int:
  """Scores every row of `input_path` into `output_path`; returns the number of rows."""
  source = ScoringSource(input_path)
  scorer = load_scorer(checkpoint, prompts=prompts, rope_mode=rope_mode, fusion=fusion, batch_size=batch_size,
                       options=RuntimeOptions(dtype=dtype, attention_impl=attention_impl))
  reqs = source.requests
  scores = scorer.score([r.instruction for r in reqs], [r.source_image for r in reqs],
                        [r.edited_image for r in reqs], where=[f"{input_path} line {r.line}" for r in reqs],
                        progress=True)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, "w") as f:
    for i, r in enumerate(reqs):
      f.write(json.dumps({"id": r.id, **scores.row(i)}) + "\n")
  return len(reqs)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(VERBOSE.value)
  start = time.time()
  with cli.one_line_errors():
    n = run(FLAGS.checkpoint, FLAGS.input, FLAGS.output, prompts=FLAGS.prompts, rope_mode=FLAGS.rope_mode,
            fusion=FLAGS.fusion, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, attention_impl=FLAGS.attention_impl)
  print(f"scored {n} edits in {time.time() - start:.1f}s -> {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
