"""The scoring API and CLI on a tiny random reward model (JAX only)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import PIL.Image
import pytest

from editreward_jax import load_scorer, model_dir, processing
from editreward_jax.prompts import PromptError, load_prompts
from subprocess_run import run_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(70, 50), (112, 112), (40, 150), (90, 64)]


@pytest.fixture(scope="module")
def edits(tmp_path_factory):
  folder = tmp_path_factory.mktemp("edits")
  rng = np.random.default_rng(0)
  rows = []
  for i, (w, h) in enumerate(SIZES):
    for name in ("src", "edit"):
      PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}{i}.png")
    rows.append({"id": f"e{i}", "instruction": f"make the square number {i} red",
                 "source_image": f"src{i}.png", "edited_image": str(folder / f"edit{i}.png")})
  rows.append({**rows[0], "id": "same_source", "edited_image": "edit2.png"})  # shares a source with e0
  path = folder / "edits.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path, rows


def _args(path, rows):
  folder = path.parent
  resolve = lambda p: p if os.path.isabs(p) else str(folder / p)
  return ([r["instruction"] for r in rows], [resolve(r["source_image"]) for r in rows],
          [resolve(r["edited_image"]) for r in rows])


def test_scores_are_independent_of_batching_and_dedup(reward_dir, edits):
  args = _args(*edits)
  ref = load_scorer(reward_dir, batch_size=8, dedup=False).score(*args)
  assert ref.mu.shape == (len(args[0]),) and np.isfinite(ref.mu).all()
  for batch_size, dedup in [(1, True), (3, True), (8, True)]:
    got = load_scorer(reward_dir, batch_size=batch_size, dedup=dedup).score(*args)
    np.testing.assert_allclose(got.mu, ref.mu, rtol=0, atol=1e-6)
    for d in got.dims:
      np.testing.assert_allclose(got.dims[d][1], ref.dims[d][1], rtol=0, atol=1e-6)
  # edits with different images get different scores (the images reach the heads)
  assert len(set(np.round(ref.mu, 6))) == len(ref.mu)


def test_fusion_and_overrides(reward_dir, edits, tmp_path):
  args = _args(*edits)
  scorer = load_scorer(reward_dir)
  mean = scorer.score(*args)
  (mu0, ls0), (mu1, ls1) = mean.dims.values()
  np.testing.assert_allclose(mean.mu, (mu0 + mu1) / 2, atol=1e-6)
  np.testing.assert_allclose(load_scorer(reward_dir, fusion="min").score(*args).mu, np.minimum(mu0, mu1), atol=1e-6)
  summed = load_scorer(reward_dir, fusion="sum").score(*args)
  np.testing.assert_allclose(summed.log_sigma, 0.5 * np.log(np.exp(2 * ls0) + np.exp(2 * ls1)), atol=1e-5)
  mrope = load_scorer(reward_dir, rope_mode="mrope").score(*args)
  assert np.abs(mrope.mu - mean.mu).max() > 1e-6
  prompts = load_prompts().to_dict()
  prompts["visual_quality"] = "Rate the picture quality for: {instruction}"
  (tmp_path / "p.json").write_text(json.dumps(prompts))
  other = load_scorer(reward_dir, prompts=str(tmp_path / "p.json")).score(*args)
  np.testing.assert_allclose(other.dims["instruction_following"][0], mu0, atol=1e-6)
  assert np.abs(other.dims["visual_quality"][0] - mu1).max() > 1e-6


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.score", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_writes_one_row_per_edit(reward_dir, edits, tmp_path):
  path, rows = edits
  out = tmp_path / "scores.jsonl"
  run = run_cli(f"--checkpoint={reward_dir}", f"--input={path}", f"--output={out}", "--batch_size=2")
  assert run.returncode == 0, run.stderr[-2000:]
  assert re.search(r"^scored 2/5 edits \([\d.]+ edits/s, ETA \d+m\d\ds\)$", run.stdout, re.M), run.stdout
  written = [json.loads(line) for line in out.read_text().splitlines()]
  assert [w["id"] for w in written] == [r["id"] for r in rows]
  assert set(written[0]) == {"id", "mu", "log_sigma", "instruction_following", "visual_quality"}
  api = load_scorer(reward_dir).score(*_args(path, rows))
  np.testing.assert_allclose([w["mu"] for w in written], api.mu, atol=1e-6)


def test_bad_rows_raise_keeps_what_was_scored_and_skip_scores_around_them(reward_dir, edits, tmp_path):
  path, rows = edits
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  image = lambda name: str(path.parent / name)
  bad = tmp_path / "bad.jsonl"
  bad_rows = [dict(rows[0], source_image=image("src0.png"), edited_image=image("edit0.png")),
              dict(rows[1], id="x", source_image=image("src1.png"), edited_image="broken.png"),
              {"id": "no_instruction", "source_image": image("src1.png"), "edited_image": image("edit1.png")},
              dict(rows[2], source_image=image("src2.png"), edited_image=image("edit2.png"))]
  bad.write_text("".join(json.dumps(r) + "\n" for r in bad_rows[:2] + bad_rows[3:]))
  out = tmp_path / "o.jsonl"
  run = run_cli(f"--checkpoint={reward_dir}", f"--input={bad}", f"--output={out}", "--batch_size=1")
  assert run.returncode == 1
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "bad.jsonl line 2" in last and "edited_image" in last, last
  assert f"the 1 rows scored before it are in {out}" in last
  assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [rows[0]["id"]]

  bad.write_text("".join(json.dumps(r) + "\n" for r in bad_rows))
  run = run_cli(f"--checkpoint={reward_dir}", f"--input={bad}", f"--output={out}", "--batch_size=2",
                "--bad_rows=skip")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "skipped 2 bad rows" in run.stdout
  written = [json.loads(line) for line in out.read_text().splitlines()]
  assert [w["id"] for w in written] == [rows[0]["id"], rows[2]["id"]]
  skipped = [json.loads(line) for line in (tmp_path / "o.jsonl.errors.jsonl").read_text().splitlines()]
  assert [(e["line"], e["id"]) for e in skipped] == [(2, "x"), (3, "no_instruction")]
  assert "edited_image" in skipped[0]["error"] and "instruction" in skipped[1]["error"]
  good = [bad_rows[0], bad_rows[3]]
  api = load_scorer(reward_dir).score([r["instruction"] for r in good], [r["source_image"] for r in good],
                                      [r["edited_image"] for r in good])
  np.testing.assert_allclose([w["mu"] for w in written], api.mu, atol=1e-6)


def test_no_edits_give_empty_scores_and_skipped_edits_score_nan(reward_dir, edits):
  scorer = load_scorer(reward_dir)
  empty = scorer.score([], [], [])
  assert len(empty) == 0 and empty.dims["visual_quality"][0].shape == (0,)
  instructions, sources, edited = _args(*edits)
  scores = scorer.score(instructions[:2], sources[:2], [edited[0], b"not an image"], bad_rows="skip")
  assert np.isfinite(scores.mu[0]) and np.isnan(scores.mu[1]) and list(scores.errors) == [1]
  assert "edit 1" in scores.errors[1]


def test_untrained_heads_warn(reward_dir, tmp_path, caplog):
  fresh = str(tmp_path / "fresh")
  shutil.copytree(reward_dir, fresh)
  meta = model_dir.read_meta(fresh)
  model_dir.write_meta(fresh, meta.model, meta.head, dict(meta.settings, heads_trained=False))
  with caplog.at_level(logging.WARNING):
    load_scorer(fresh)
  assert any("reward heads were never trained" in r.getMessage() for r in caplog.records)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    load_scorer(reward_dir)
  assert not any("never trained" in r.getMessage() for r in caplog.records)


def test_not_a_model_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="editreward.json"):
    load_scorer(str(tmp_path))


@pytest.mark.slow
def test_scores_sharded_over_eight_devices_match_one_device(tmp_path):
  report = run_report("multidevice_score.py", str(tmp_path), devices=8)
  assert report["devices"] == 8 and report["scale"] > 0
  f32, bf16 = report["float32"], report["bfloat16"]
  assert f32["max_abs_diff"] <= 1e-5 and f32["dims_max_abs_diff"] <= 1e-5, report
  layers, d, f = f32["gate_shape"]
  assert f32["gate_shard_shape"] == [layers, d // 8, f]  # embed over fsdp=8: each device holds an eighth
  assert bf16["param_dtype"] == "bfloat16" and bf16["gate_shard_shape"] == [layers, d // 8, f]
  assert bf16["max_abs_diff"] < 0.1 * max(report["scale"], 1.0), report  # bf16 weights: close, not equal


def _png_claiming(width: int, height: int) -> bytes:
  """A PNG whose header claims width x height pixels, with no pixel data: only its header can be read."""
  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
          chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_scoring_applies_the_pipeline_image_guards_and_a_length_limit(reward_dir, edits, tmp_path):
  scorer = load_scorer(reward_dir)
  instructions, sources, edited = _args(*edits)
  small = io.BytesIO()
  PIL.Image.new("RGB", (20, 40)).save(small, format="PNG")
  whole = open(edited[0], "rb").read()
  (tmp_path / "truncated.png").write_bytes(whole[:len(whole) // 2])
  lazy = PIL.Image.open(tmp_path / "truncated.png")  # decoded only when used
  for bad, message in ((_png_claiming(7000, 6000), r"edit 0: edited_image: image is 7000x6000 pixels, "
                                                         r"more than max_image_pixels=33554432"),
                       (small.getvalue(), r"edit 0: edited_image: image is 20x40 pixels, a side below "
                                          r"min_image_side=28"),
                       (whole[:len(whole) // 2], r"edit 0: edited_image: "),
                       (lazy, r"edit 0: edited_image: ")):
    with pytest.raises(processing.ImageError, match=message):
      scorer.score(instructions[:1], sources[:1], [bad])
  with pytest.raises(PromptError, match=r"edit 0: the instruction_following prompt is \d+ tokens, more than "
                                        r"max_seq_len=128"):
    load_scorer(reward_dir, max_seq_len=128).score(["make it red " * 40], sources[:1], edited[:1])


class _Page(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.images, self.rows = [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs["src"])
    if tag == "tr" and "class" in attrs:
      self.rows.append(attrs["class"])


def test_top_k_and_report(reward_dir, edits, tmp_path):
  path, rows = edits
  out = tmp_path / "scores.jsonl"
  report = tmp_path / "report.html"
  run = run_cli(f"--checkpoint={reward_dir}", f"--input={path}", f"--output={out}", "--top_k=2", f"--report={report}")
  assert run.returncode == 0, run.stderr[-2000:]
  scored = [json.loads(line) for line in out.read_text().splitlines()]
  best = [s["id"] for s in sorted(scored, key=lambda s: -s["mu"])[:2]]
  assert (tmp_path / "scores.jsonl.top_ids.txt").read_text().split() == best
  curated = [json.loads(line) for line in (tmp_path / "scores.jsonl.curated.jsonl").read_text().splitlines()]
  assert [c["id"] for c in curated] == [r["id"] for r in rows if r["id"] in best]  # input order
  assert all(os.path.isfile(c["source_image"]) and os.path.isabs(c["edited_image"]) for c in curated)
  page = _Page()
  page.feed(report.read_text())
  assert len(page.images) == 2 * len(rows) and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
  for src in page.images:  # every embedded thumbnail decodes
    PIL.Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
  assert sorted(page.rows) == sorted(["kept"] * 2 + ["dropped"] * (len(rows) - 2))
  assert page.rows[:2] == ["kept", "kept"]  # sorted best first


@pytest.mark.slow
def test_scoring_killed_midway_resumes_to_the_uninterrupted_output(reward_dir, edits, tmp_path):
  path, rows = edits
  args = [f"--checkpoint={reward_dir}", f"--input={path}", "--batch_size=1"]
  whole = tmp_path / "whole.jsonl"
  assert run_cli(*args, f"--output={whole}").returncode == 0
  out = tmp_path / "killed.jsonl"
  proc = subprocess.Popen([sys.executable, "-m", "launch.score", *args, f"--output={out}"], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = out.read_text().count("\n")
  assert 2 <= written < len(rows), f"the kill came after {written} of {len(rows)} rows"
  again = run_cli(*args, f"--output={out}")
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"resuming {out}: {written} rows scored before" in again.stdout
  got, want = ([json.loads(line) for line in p.read_text().splitlines()] for p in (out, whole))
  assert [g["id"] for g in got] == [w["id"] for w in want]  # every id once, in input order
  np.testing.assert_allclose([g["mu"] for g in got], [w["mu"] for w in want], atol=1e-5)
  assert "resuming" not in run_cli(*args, f"--output={tmp_path / 'fresh.jsonl'}").stdout


def test_two_shards_concatenated_equal_one_run(reward_dir, edits, tmp_path):
  path, _ = edits
  args = [f"--checkpoint={reward_dir}", f"--input={path}", "--batch_size=2"]
  assert run_cli(*args, f"--output={tmp_path / 'one.jsonl'}").returncode == 0
  shards = [subprocess.Popen([sys.executable, "-m", "launch.score", *args, "--num_shards=2", f"--shard_index={i}",
                              f"--output={tmp_path / f'shard{i}.jsonl'}"], cwd=REPO, stderr=subprocess.PIPE)
            for i in range(2)]
  assert all(p.wait() == 0 for p in shards), [p.stderr.read()[-1000:] for p in shards]
  one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
  merged = [json.loads(line) for i in range(2) for line in (tmp_path / f"shard{i}.jsonl").read_text().splitlines()]
  assert [m["id"] for m in merged] == [o["id"] for o in one] and len((tmp_path / "shard0.jsonl").read_text()) > 0
  np.testing.assert_allclose([m["mu"] for m in merged], [o["mu"] for o in one], atol=1e-5)
