"""Benchmarks scored and measured: which edits each one scores, the scores file format, and its results.

Three kinds (`BENCHMARKS`), each with items as the readers in `data/` give them:
- "editreward_bench": K-way groups (the TFDS builder's example format: id, dataset, instruction, source_image,
  candidates [{letter, image}], pairs [{candidate_1, candidate_2, preference}]);
- "pairs": two candidates and a human preference (`data.read_pair_set`);
- "pointwise": one edit and a human score, with the editing model (`data.read_pointwise`).

A scores file (JSON) maps each item to the model's scores, so any judge can be measured by the same code:
editreward_bench `{"<dataset>/<id>": {"A": s, "B": s, ...}}`, pairs `{"<id>": {"A": s, "B": s}}`, pointwise
`{"<id>": s}`, where each s is a number (mu) or `{"mu": ..., "log_sigma": ...}` (calibration needs log_sigma).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from editreward_jax.evaluation import metrics

BENCHMARKS = ("editreward_bench", "pairs", "pointwise")


def edits(benchmark: str, items: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, Any, Any]]:
  """Every distinct edit to score: (item key, candidate or "", instruction, source image, edited image); the
  candidates of one item are adjacent, so a batch encodes their shared source image once."""
  out = []
  for item in items:
    key = item_key(benchmark, item)
    if benchmark == "editreward_bench":
      out += [(key, c["letter"], item["instruction"], item["source_image"], c["image"]) for c in item["candidates"]]
    elif benchmark == "pairs":
      out += [(key, side, item["instruction"], item["source_image"], item[f"image_{side.lower()}"])
              for side in ("A", "B")]
    else:
      out.append((key, "", item["instruction"], item["source_image"], item["edited_image"]))
  return out


def item_key(benchmark: str, item: Mapping[str, Any]) -> str:
  return f"{item['dataset']}/{item['id']}" if benchmark == "editreward_bench" else str(item["id"])


def scores_file(benchmark: str, keys: Iterable[tuple[str, str]], mu: np.ndarray, log_sigma: np.ndarray) -> dict:
  """The scores-file mapping of scored edits ((item key, candidate) pairs, as `edits` lists them)."""
  out: dict[str, Any] = {}
  for (key, candidate), m, s in zip(keys, mu, log_sigma):
    entry = {"mu": float(m), "log_sigma": float(s)}
    if benchmark == "pointwise":
      out[key] = entry
    else:
      out.setdefault(key, {})[candidate] = entry
  return out


def _split(value: Any, where: str) -> tuple[float, float]:
  """(mu, log_sigma) of one score: a number, or {"mu", "log_sigma"} (log_sigma NaN when absent)."""
  if isinstance(value, Mapping) and "mu" in value:
    value, log_sigma = value["mu"], value.get("log_sigma", float("nan"))
  else:
    log_sigma = float("nan")
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{where}: expected a number or {{'mu': number, 'log_sigma': number}}, got {value!r}")
  return float(value), float(log_sigma)


def _lookup(scores: Mapping[str, Any], key: str, candidate: str | None, source: str) -> tuple[float, float]:
  if key not in scores:
    raise ValueError(f"{source}: no scores for {key}")
  if candidate is None:
    return _split(scores[key], f"{source}: {key}")
  entry = scores[key]
  if not isinstance(entry, Mapping) or candidate not in entry:
    raise ValueError(f"{source}: {key} has no score for candidate {candidate}")
  return _split(entry[candidate], f"{source}: {key}/{candidate}")


def evaluate(benchmark: str, items: Sequence[Mapping[str, Any]], scores: Mapping[str, Any],
             source: str = "scores") -> dict[str, Any]:
  """The benchmark's metrics (`metrics`), plus calibration over its non-tie pairs where every score has a
  log_sigma. `source` names the scores in errors (a missing item, a malformed score)."""
  if benchmark == "editreward_bench":
    return _bench(items, scores, source)
  if benchmark == "pairs":
    return _pairs(items, scores, source)
  if benchmark == "pointwise":
    got = [_lookup(scores, item_key(benchmark, item), None, source)[0] for item in items]
    return metrics.pointwise(np.array(got), np.array([item["human_score"] for item in items]),
                             [item["model"] for item in items])
  raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {BENCHMARKS}")


def _bench(items, scores, source) -> dict[str, Any]:
  groups, calibration_pairs = [], []
  for item in items:
    key = item_key("editreward_bench", item)
    got = {c["letter"]: _lookup(scores, key, c["letter"], source) for c in item["candidates"]}
    pairs = tuple((p["candidate_1"], p["candidate_2"], int(p["preference"])) for p in item["pairs"])
    groups.append(metrics.BenchGroup(item["dataset"], item["id"], pairs, {c: mu for c, (mu, _) in got.items()}))
    calibration_pairs += [(got[x], got[y], label) for x, y, label in pairs]
  return {**metrics.editreward_bench(groups), **_calibration(calibration_pairs)}


def _pairs(items, scores, source) -> dict[str, Any]:
  sides = [(_lookup(scores, str(item["id"]), "A", source), _lookup(scores, str(item["id"]), "B", source))
           for item in items]
  labels = np.array([item["label"] for item in items])
  delta = np.array([a[0] - b[0] for a, b in sides])
  return {**metrics.pairwise_set(delta, labels), **_calibration([(a, b, lab) for (a, b), lab in zip(sides, labels)])}


def _calibration(pairs: list[tuple[tuple[float, float], tuple[float, float], int]]) -> dict[str, Any]:
  """{"calibration": ...} over the non-tie pairs, oriented so the human preferred candidate is judged; {} when a
  score has no log_sigma."""
  decided = [(a, b, label) for a, b, label in pairs if label != 0]
  if not decided or any(np.isnan(a[1]) or np.isnan(b[1]) for a, b, _ in decided):
    return {}
  (mu_a, ls_a), (mu_b, ls_b) = (np.array([p[i] for p in decided]).T for i in (0, 1))
  probability = metrics.preference_probability(mu_a, ls_a, mu_b, ls_b)
  return {"calibration": metrics.calibration(probability, np.array([label > 0 for _, _, label in decided]))}


def markdown(benchmark: str, results: Mapping[str, Any]) -> str:
  """A readable summary table of `results`."""
  rows = []
  if benchmark == "editreward_bench":
    k2 = results["k2"]
    rows.append(("K=2 accuracy with ties", k2["accuracy_with_ties"], f"eps {k2['epsilon']:.4g}, {k2['pairs']} pairs"))
    rows.append(("K=2 accuracy without ties", k2["accuracy_without_ties"], ""))
    for k in ("k3", "k4"):
      r = results[k]
      rows.append((f"K={k[1]} pairwise accuracy", r["pairwise_accuracy"], f"{r['pairs']} pairs"))
      rows.append((f"K={k[1]} group accuracy", r["group_accuracy"], f"{r['groups']} groups"))
      rows.append((f"K={k[1]} strict accuracy", r["strict_accuracy"], ""))
    rows.append(("overall accuracy with ties", results["overall"]["accuracy_with_ties"],
                 f"eps {results['overall']['epsilon']:.4g}"))
    rows.append(("overall strict accuracy", results["overall"]["strict_accuracy"], ""))
  elif benchmark == "pairs":
    rows.append(("accuracy with ties", results["accuracy_with_ties"], f"eps {results['epsilon']:.4g}"))
    rows.append(("accuracy without ties", results["accuracy_without_ties"],
                 f"{results['pairs']} pairs, {results['ties']} ties"))
  else:
    rows.append(("Spearman, mean over editing models", results["spearman_mean_over_models"],
                 f"{len(results['per_model'])} models"))
    rows.append(("Spearman, pooled", results["spearman_pooled"], f"{results['items']} items"))
  if "calibration" in results:
    c = results["calibration"]
    rows.append(("calibration: expected calibration error", c["ece"], f"{len(c['bins'])} equal-mass bins"))
    rows.append(("calibration: Brier score", c["brier"], f"{c['pairs']} non-tie pairs"))
  lines = [f"# {benchmark}", "", "| metric | value | |", "| --- | ---: | --- |"]
  lines += [f"| {name} | {value:.4f} | {note} |" for name, value, note in rows]
  return "\n".join(lines) + "\n"
