"""launch.evaluate end to end on tiny fixtures of each benchmark format, with a checkpoint and with a scores file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import data
from editreward_jax.evaluation import benchmarks, metrics
from launch import evaluate
from test_data_builders import BENCH_TYPES, make_group, write_hf_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K2_FIELDS = {"accuracy_with_ties", "epsilon", "accuracy_without_ties", "strict_accuracy", "groups", "pairs"}
K34_FIELDS = {"pairwise_accuracy", "group_accuracy", "strict_accuracy", "groups", "pairs"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  """An EditReward-Bench download: 2pair/, 3pair/, 4pair/ parquet folders (images 56 px and larger)."""
  root = tmp_path_factory.mktemp("bench")
  size = (64, 56)
  groups = {k: make_group(f"{k}pair", f"65f1c0{k}a9b8c7d6e5f4a3b2c", k, 10 * k, rankings, size=size)
            for k, rankings in ((2, {("A", "B"): ("A=B", 0)}),
                                (3, {("A", "B"): ("A>B", 1), ("A", "C"): ("C>A", -1), ("B", "C"): ("B<C", -1)}),
                                (4, {(x, y): (f"{x}>{y}", 1) for x, y in
                                     (("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D"))}))}
  two_b = make_group("2pair", "65f1c0ffa9b8c7d6e5f4a3b2", 2, 5, {("A", "B"): ("A>B", 1)}, size=size)
  write_hf_parquet(root / "2pair" / "train-00000-of-00001.parquet", groups[2][0] + two_b[0], BENCH_TYPES)
  for k in (3, 4):
    write_hf_parquet(root / f"{k}pair" / "train-00000-of-00001.parquet", groups[k][0], BENCH_TYPES)
  return root


def _image(path, seed):
  PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 72, 3), dtype=np.uint8)).save(path)
  return path.name


@pytest.fixture(scope="module")
def pair_and_pointwise_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("sets")
  pairs, points = [], []
  for i, preference in enumerate(["A", "B", "tie", "A"]):
    pairs.append({"id": f"p{i}", "instruction": f"make square {i} red", "source_image": _image(root / f"s{i}.png", i),
                  "image_a": _image(root / f"a{i}.png", 10 + i), "image_b": _image(root / f"b{i}.png", 20 + i),
                  "preference": preference})
    for model in ("m1", "m2"):
      points.append({"id": f"{model}-{i}", "instruction": f"make square {i} red", "source_image": f"s{i}.png",
                     "edited_image": f"a{i}.png" if model == "m1" else f"b{i}.png", "model": model,
                     "human_score": float(i % 3)})
  (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
  (root / "points.json").write_text(json.dumps(points))
  return root / "pairs.jsonl", root / "points.json"


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], capture_output=True, text=True, cwd=ROOT)


def test_editreward_bench_with_a_checkpoint_then_from_its_scores(reward_dir, bench, tmp_path):
  out = tmp_path / "results.json"
  run = _run_cli("--benchmark=editreward_bench", f"--data={bench}", f"--checkpoint={reward_dir}", f"--output={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(out.read_text())
  assert set(results["k2"]) == K2_FIELDS and set(results["k3"]) == K34_FIELDS and set(results["k4"]) == K34_FIELDS
  assert {"accuracy_with_ties", "epsilon", "strict_accuracy"} <= set(results["overall"])
  assert (results["k2"]["groups"], results["k3"]["pairs"], results["k4"]["pairs"]) == (2, 3, 6)
  assert 0 <= results["calibration"]["ece"] <= 1 and (tmp_path / "results.reliability.png").is_file()
  assert "| K=2 accuracy with ties |" in (tmp_path / "results.md").read_text()
  assert "K=4 strict accuracy" in run.stdout
  scores = json.loads((tmp_path / "results.scores.json").read_text())
  assert sorted(scores) == sorted(f"{k}pair/{i}" for k, i in (
      (2, "65f1c02a9b8c7d6e5f4a3b2c"), (2, "65f1c0ffa9b8c7d6e5f4a3b2"), (3, "65f1c03a9b8c7d6e5f4a3b2c"),
      (4, "65f1c04a9b8c7d6e5f4a3b2c")))
  assert sorted(scores["4pair/65f1c04a9b8c7d6e5f4a3b2c"]) == ["A", "B", "C", "D"]

  # The same numbers from the scores file alone, and from the TFDS build of the same download.
  again = evaluate.run("editreward_bench", str(bench), str(tmp_path / "again.json"),
                       scores_path=str(tmp_path / "results.scores.json"))
  data.build("editreward_bench", tmp_path / "tfds", manual_dir=bench)
  built = evaluate.run("editreward_bench", str(tmp_path / "tfds"), str(tmp_path / "built.json"),
                       scores_path=str(tmp_path / "results.scores.json"))
  for name in ("k2", "k3", "k4", "overall", "calibration"):
    assert again[name] == results[name] == built[name]


def test_scores_from_another_judge(bench, tmp_path):
  # Every pair right: scores that follow the human order (the K=2 tie gets equal scores).
  scores = {"2pair/65f1c02a9b8c7d6e5f4a3b2c": {"A": 1.0, "B": 1.0}, "2pair/65f1c0ffa9b8c7d6e5f4a3b2": {"A": 2, "B": 1},
            "3pair/65f1c03a9b8c7d6e5f4a3b2c": {"A": 2.0, "B": 1.0, "C": 3.0},
            "4pair/65f1c04a9b8c7d6e5f4a3b2c": {"A": 4.0, "B": 3.0, "C": 2.0, "D": 1.0}}
  path = tmp_path / "judge.json"
  path.write_text(json.dumps(scores))
  results = evaluate.run("editreward_bench", str(bench), str(tmp_path / "r.json"), scores_path=str(path))
  assert results["k2"]["accuracy_with_ties"] == 1.0 and results["k2"]["strict_accuracy"] == 1.0
  assert results["k3"]["group_accuracy"] == results["k4"]["strict_accuracy"] == 1.0
  assert "calibration" not in results  # plain numbers carry no sigma

  del scores["3pair/65f1c03a9b8c7d6e5f4a3b2c"]
  path.write_text(json.dumps(scores))
  run = _run_cli("--benchmark=editreward_bench", f"--data={bench}", f"--scores={path}", f"--output={tmp_path / 'x'}")
  assert run.returncode == 1
  assert run.stderr.strip().splitlines() == [f"error: {path}: no scores for 3pair/65f1c03a9b8c7d6e5f4a3b2c"]


def test_pairs_and_pointwise_with_a_checkpoint(reward_dir, pair_and_pointwise_files, tmp_path):
  pairs_file, points_file = pair_and_pointwise_files
  pairs = evaluate.run("pairs", str(pairs_file), str(tmp_path / "pairs.json"), checkpoint=reward_dir)
  assert pairs["pairs"] == 4 and pairs["ties"] == 1 and 0 <= pairs["accuracy_with_ties"] <= 1
  scores = json.loads((tmp_path / "pairs.scores.json").read_text())
  delta = [scores[f"p{i}"]["A"]["mu"] - scores[f"p{i}"]["B"]["mu"] for i in range(4)]
  assert pairs["accuracy_with_ties"] == metrics.accuracy_with_ties(delta, [1, -1, 0, 1])[0]
  points = evaluate.run("pointwise", str(points_file), str(tmp_path / "points.json"), checkpoint=reward_dir)
  assert set(points["per_model"]) == {"m1", "m2"} and points["items"] == 8
  assert "Spearman, pooled" in (tmp_path / "points.md").read_text()


def test_bad_benchmark_inputs_name_the_file_and_item(bench, pair_and_pointwise_files, tmp_path):
  pairs_file, _ = pair_and_pointwise_files
  bad = pairs_file.parent / "bad.jsonl"  # beside the images it names
  rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
  del rows[1]["image_b"]
  bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
  run = _run_cli("--benchmark=pairs", f"--data={bad}", f"--scores={bad}", f"--output={tmp_path / 'x'}")
  assert run.returncode == 1 and run.stderr.strip().splitlines()[-1]== f"error: {bad}: line 2: field 'image_b': missing"
  broken = tmp_path / "broken_bench"
  rows, _ = make_group("2pair", "65f1c0eea9b8c7d6e5f4a3b2", 2, 3, {("A", "B"): ("A>>B", 1)})
  write_hf_parquet(broken / "2pair" / "train-00000-of-00001.parquet", rows, BENCH_TYPES)
  with pytest.raises(data.DataError, match=r"train-00000-of-00001.parquet: row 0: field 'ranking': expected 'X>Y'"):
    evaluate.load_items("editreward_bench", str(broken))
  with pytest.raises(ValueError, match="unknown benchmark"):
    benchmarks.evaluate("nope", [], {})
