"""Score edits with a reward model.

  python -m launch.score --checkpoint=CKPT --input=edits.jsonl --output=scores.jsonl [--prompts=FILE]
      [--rope_mode=sequential|mrope] [--fusion=mean|min|sum] [--batch_size=8] [--dtype=float32|bfloat16]
      [--bad_rows=raise|skip] [--top_k=N] [--report=report.html]

Input rows: {"id", "instruction", "source_image", "edited_image"} (image paths absolute or relative to the input
file's folder). Output rows, in input order: {"id", "mu", "log_sigma", "instruction_following": {"mu", "log_sigma"},
"visual_quality": {"mu", "log_sigma"}}; the score of an edit is `mu`. With --bad_rows=skip, rows that cannot be scored
are listed in OUTPUT.errors.jsonl as {"line", "id", "error"}. Curation: --top_k=N writes the N best ids
(OUTPUT.top_ids.txt) and their input rows (OUTPUT.curated.jsonl); --report writes a self-contained HTML page.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from absl import app, flags

from data.readers import ScoringSource, iter_json_rows
from editreward_jax import cli, paths
from editreward_jax.models.attention import IMPLEMENTATIONS
from editreward_jax.models.positions import ROPE_MODES
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.reward import FUSIONS
from editreward_jax.scoring import BAD_ROWS, DEFAULT_MAX_SEQ_LEN, load_scorer


def define_flags() -> None:
  """The command's flags, defined only when it runs, so that importing its functions (tests, other commands)
  defines none (absl refuses a flag name defined twice in one process)."""
  flags.DEFINE_string("checkpoint", None, "Model directory (convert.from_hf output or a trained model).",
                      required=True)
  flags.DEFINE_string("input", None, "JSONL of edits: id, instruction, source_image, edited_image.", required=True)
  flags.DEFINE_string("output", None, "JSONL to write the scores to.", required=True)
  flags.DEFINE_string("prompts", None, "Prompts file overriding the rubric recorded in the checkpoint.")
  flags.DEFINE_enum("rope_mode", None, list(ROPE_MODES), "Override the checkpoint's position mode.")
  flags.DEFINE_enum("fusion", None, list(FUSIONS), "Override the checkpoint's fusion of the two dimensions.")
  flags.DEFINE_integer("batch_size", 8, "Edits per forward pass.", lower_bound=1)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
  flags.DEFINE_enum("attention_impl", "xla", list(IMPLEMENTATIONS), "Attention kernel (cudnn: GPU; splash: TPU).")
  flags.DEFINE_integer("max_seq_len", DEFAULT_MAX_SEQ_LEN, "Longest prompt in tokens; a longer one is a bad row.",
                       lower_bound=16)
  flags.DEFINE_enum("bad_rows", "raise", list(BAD_ROWS), "raise: stop at a bad row (malformed, or an image or prompt "
                    "that fails), keeping the rows scored before it; skip: list bad rows with their reason in "
                    "OUTPUT.errors.jsonl and score the others.")
  flags.DEFINE_integer("top_k", 0, "Curation: also write the K best ids (OUTPUT.top_ids.txt, best first) and their "
                       "input rows (OUTPUT.curated.jsonl, in input order).", lower_bound=0)
  flags.DEFINE_string("report", None, "Write an HTML page of every scored edit (thumbnails embedded, sorted, the top_k "
                      "kept ones marked, a score histogram).")
  flags.DEFINE_integer("num_shards", 1, "Split the input into this many contiguous shards (one per process or host).",
                       lower_bound=1)
  flags.DEFINE_integer("shard_index", 0, "Which shard this run scores (0-based); shard outputs concatenated in shard "
                       "order equal one run's output.", lower_bound=0)
  cli.verbose_flag()


FLAGS = flags.FLAGS
ERRORS_SUFFIX = ".errors.jsonl"  # beside the output: the rows skipped with --bad_rows=skip, and why
TOP_IDS_SUFFIX, CURATED_SUFFIX = ".top_ids.txt", ".curated.jsonl"  # --top_k
PROGRESS_SUFFIX = ".progress.json"  # beside the output: the arguments it was scored with, and whether it is complete


def run(checkpoint: str, input_path: str, output_path: str, *, prompts: str | None = None,
        rope_mode: str | None = None, fusion: str | None = None, batch_size: int = 8, dtype: str = "float32",
        attention_impl: str = "xla", bad_rows: str = "raise", max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        num_shards: int = 1, shard_index: int = 0) -> tuple[int, int]:
  """Scores every row of `input_path` into `output_path`, batch by batch, in input order; returns (rows scored,
  rows skipped). With bad_rows="skip" a bad row (malformed, or an image or prompt that fails) is listed with its
  reason in OUTPUT.errors.jsonl and the others are scored.

  Resumable: OUTPUT.progress.json records the arguments; run again with the same ones after a kill, and scoring
  continues after the last complete row written (each id exactly once, still in input order). Other arguments start
  over. With `num_shards`, only the `shard_index`-th contiguous part of the input rows is scored: the shards'
  outputs (and errors files) concatenated in shard order are one run's."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is not in [0, num_shards={num_shards})")
  output_path = paths.expand(output_path)
  progress_path, errors_path = output_path + PROGRESS_SUFFIX, output_path + ERRORS_SUFFIX
  arguments = {"checkpoint": os.path.abspath(paths.expand(checkpoint)),
               "input": os.path.abspath(paths.expand(input_path)), "prompts": prompts, "rope_mode": rope_mode,
               "fusion": fusion, "dtype": dtype, "bad_rows": bad_rows, "max_seq_len": max_seq_len,
               "shard": [shard_index, num_shards]}
  source = ScoringSource(input_path, skip_bad_rows=bad_rows == "skip")
  lines = sorted([r.line for r in source.requests] + [row["line"] for row in source.skipped])
  mine = set(lines[len(lines) * shard_index // num_shards:len(lines) * (shard_index + 1) // num_shards])
  done, skipped = _resume(output_path, errors_path, progress_path, arguments)
  skipped.update({row["line"]: row for row in source.skipped if row["line"] in mine})
  reqs = [r for r in source.requests if r.line in mine and r.id not in done and r.line not in skipped]
  if done or skipped:
    print(f"resuming {output_path}: {len(done)} rows scored before, {len(reqs)} to go", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(progress_path, "w") as f:
    json.dump({"arguments": arguments, "complete": False}, f)
  written = len(done)
  if reqs:
    scorer = load_scorer(checkpoint, prompts=prompts, rope_mode=rope_mode, fusion=fusion, batch_size=batch_size,
                         options=RuntimeOptions(dtype=dtype, attention_impl=attention_impl), max_seq_len=max_seq_len)
    with open(output_path, "a") as out, open(errors_path, "a") as errors_out:
      try:
        for kept, scores, errors in scorer.score_batches(
            [r.instruction for r in reqs], [r.source_image for r in reqs], [r.edited_image for r in reqs],
            where=[f"{source.path} line {r.line}" for r in reqs], bad_rows=bad_rows, progress=True):
          out.writelines(json.dumps({"id": reqs[i].id, **scores.row(j)}) + "\n" for j, i in enumerate(kept))
          out.flush()
          written += len(kept)
          for i, message in errors:
            skipped[reqs[i].line] = {"line": reqs[i].line, "id": reqs[i].id, "error": message}
            errors_out.write(json.dumps(skipped[reqs[i].line]) + "\n")
          errors_out.flush()
      except ValueError as e:
        raise ValueError(f"{e} (the {written} rows scored before it are in {output_path}; --bad_rows=skip scores "
                         "around bad rows)") from None
  if skipped:
    with open(errors_path, "w") as f:
      f.writelines(json.dumps(skipped[line]) + "\n" for line in sorted(skipped))
  elif os.path.exists(errors_path):
    os.remove(errors_path)
  with open(progress_path, "w") as f:
    json.dump({"arguments": arguments, "complete": True}, f)
  return written, len(skipped)


def _resume(output_path: str, errors_path: str, progress_path: str, arguments: dict
            ) -> tuple[set, dict[int, dict]]:
  """(ids already scored, {line: skipped row}) of an earlier run with the same arguments, its output cut back to
  the last complete row; empty, and the earlier files cleared, for a first run or other arguments."""
  try:
    with open(progress_path) as f:
      same = json.load(f).get("arguments") == arguments
  except (OSError, ValueError):
    same = False
  if not same or not os.path.exists(output_path):
    for path in (output_path, errors_path):
      if os.path.exists(path):
        os.remove(path)
    return set(), {}
  with open(output_path, "rb") as f:
    text = f.read()
  complete = text[:text.rfind(b"\n") + 1]  # a row cut by the kill is dropped, and scored again
  if len(complete) != len(text):
    with open(output_path, "wb") as f:
      f.write(complete)
  done = {json.loads(line)["id"] for line in complete.decode().splitlines()}
  skipped = {}
  if os.path.exists(errors_path):
    with open(errors_path) as f:
      for line in f:
        if line.endswith("\n"):
          row = json.loads(line)
          skipped[row["line"]] = row
  return done, skipped


def curate(input_path: str, output_path: str, top_k: int = 0, report_path: str | None = None) -> list:
  """From a finished output: with `top_k`, OUTPUT.top_ids.txt (the K best ids, best first) and OUTPUT.curated.jsonl
  (their input rows, in input order, image paths made absolute so the file works from anywhere); with
  `report_path`, the HTML page. Returns the kept ids."""
  from editreward_jax.evaluation import report
  output_path = paths.expand(output_path)
  with open(output_path) as f:
    scored = [json.loads(line) for line in f]
  source = ScoringSource(input_path, skip_bad_rows=True)
  requests = {r.id: r for r in source.requests}
  kept = report.top_k(scored, top_k) if top_k else None
  if kept is not None:
    with open(output_path + TOP_IDS_SUFFIX, "w") as f:
      f.writelines(f"{row_id}\n" for row_id in kept)
    chosen = set(kept)
    with open(output_path + CURATED_SUFFIX, "w") as f:
      for _, row in iter_json_rows(source.path):
        if isinstance(row, dict) and row.get("id") in chosen:
          r = requests[row["id"]]
          f.write(json.dumps({**row, "source_image": str(r.source_image), "edited_image": str(r.edited_image)}) + "\n")
  if report_path:
    report.write_html(paths.expand(report_path), scored,
                      {i: (r.instruction, r.source_image, r.edited_image) for i, r in requests.items()}, kept,
                      title=f"EditReward scores: {input_path}")
  return kept or []


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(FLAGS.verbose)
  start = time.time()
  with cli.one_line_errors():
    n, skipped = run(FLAGS.checkpoint, FLAGS.input, FLAGS.output, prompts=FLAGS.prompts, rope_mode=FLAGS.rope_mode,
                     fusion=FLAGS.fusion, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
                     attention_impl=FLAGS.attention_impl, bad_rows=FLAGS.bad_rows, max_seq_len=FLAGS.max_seq_len,
                     num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index)
    if FLAGS.top_k or FLAGS.report:
      curate(FLAGS.input, FLAGS.output, FLAGS.top_k, FLAGS.report)
  note = f"; skipped {skipped} bad rows, listed in {FLAGS.output}{ERRORS_SUFFIX}" if skipped else ""
  if FLAGS.top_k:
    note += f"; top {FLAGS.top_k} in {FLAGS.output}{TOP_IDS_SUFFIX} and {FLAGS.output}{CURATED_SUFFIX}"
  if FLAGS.report:
    note += f"; report {FLAGS.report}"
  print(f"scored {n} edits in {time.time() - start:.1f}s -> {FLAGS.output}{note}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
