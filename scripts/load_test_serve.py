"""Load test of the reward server: concurrent clients against launch.serve on localhost, with dynamic batching and
with --max_batch=1.

  python scripts/load_test_serve.py [--checkpoint=CKPT] [--clients=16] [--requests=50] [--max_items=4]

Starts each server itself on a free 127.0.0.1 port (a tiny random reward model when --checkpoint is not given), waits
for its warm-up, sends `--clients` threads x `--requests` requests of 1..`--max_items` edits (112x112 images, the
tiny model's max_pixels) once untimed (the server compiles the batch shapes beyond its warm-up) and once timed,
checks that every item is answered exactly once with its own id and no errors, then stops
the server with SIGTERM (exit 0 expected). One JSON line per configuration, then one with the throughput ratio.
"""

from __future__ import annotations

import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

flags.DEFINE_string("checkpoint", None, "Model directory; default: a tiny random reward model (tests/tiny_reward.py).")
flags.DEFINE_integer("clients", 16, "Concurrent clients.", lower_bound=1, upper_bound=64)
flags.DEFINE_integer("requests", 50, "Requests per client.", lower_bound=1, upper_bound=1000)
flags.DEFINE_integer("max_items", 4, "Each request has 1..max_items edits.", lower_bound=1, upper_bound=64)
flags.DEFINE_integer("image_side", 112, "Side of the square test images.", lower_bound=28, upper_bound=1024)
flags.DEFINE_list("configs", ["default", "--max_batch=1"], "Server flag sets to compare ('default': none).")
flags.DEFINE_bool("prime", True, "Run the load once untimed first (it compiles the shapes beyond the warm-up).")
flags.DEFINE_bool("forward_only", False, "Instead: time the server's batch forward (Batcher.forward, in process, no HTTP) "
                  "at each edit bucket up to 16, median of 5 after compiling.")
flags.DEFINE_integer("seed", 0, "Seed of the images and request sizes.")
FLAGS = flags.FLAGS


def start_server(checkpoint: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  proc = subprocess.Popen([sys.executable, "-m", "launch.serve", f"--checkpoint={checkpoint}", "--host=127.0.0.1",
                           "--port=0", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  if not line.startswith("listening on "):
    proc.kill()
    raise RuntimeError(f"the server did not start: {line!r}")
  return proc, line.split()[2]


def run_load(client, images: list[bytes], rng) -> dict:
  plans = [[int(rng.integers(1, FLAGS.max_items + 1)) for _ in range(FLAGS.requests)] for _ in range(FLAGS.clients)]
  latencies, answered, failures = [], [], []
  lock = threading.Lock()

  def one_client(c: int):
    for r, n in enumerate(plans[c]):
      ids = [f"c{c}-r{r}-i{k}" for k in range(n)]
      items = [{"id": ids[k], "instruction": f"make square {(c * 7 + r + k) % 10} red",
                "source_image": images[(c + r + 2 * k) % len(images)],
                "edited_image": images[(c + 3 * r + 2 * k + 1) % len(images)]} for k in range(n)]
      start = time.perf_counter()
      try:
        out = client.score(items)
      except Exception as e:  # noqa: BLE001 -- counted and reported
        with lock:
          failures.append(f"{ids[0]}: {e}")
        continue
      elapsed = time.perf_counter() - start
      with lock:
        latencies.append(elapsed)
        answered.extend(x["id"] for x in out["results"])
        if [x["id"] for x in out["results"]] != ids or out["errors"]:
          failures.append(f"{ids[0]}: ids {[x['id'] for x in out['results']]} errors {out['errors']}")

  threads = [threading.Thread(target=one_client, args=(c,)) for c in range(FLAGS.clients)]
  start = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  expected = sum(map(sum, plans))
  latencies.sort()
  return {"requests": len(latencies), "items": len(answered), "items_expected": expected,
          "exactly_once": len(answered) == len(set(answered)) == expected, "failures": len(failures),
          "first_failures": failures[:3], "wall_s": round(wall, 2), "items_per_s": round(len(answered) / wall, 2),
          "p50_ms": round(1e3 * statistics.median(latencies), 1),
          "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def measure(url: str, images: list[bytes]) -> dict:
  """The load once untimed (the server compiles the batch shapes it produces beyond its warm-up), then timed."""
  import numpy as np

  from editreward_jax.client import RewardClient
  client = RewardClient(url, retries=0, timeout=600)
  client.wait_ready(600)
  if FLAGS.prime:
    primed = run_load(client, images, np.random.default_rng(FLAGS.seed))
    if primed["failures"] or not primed["exactly_once"]:
      return {"priming": primed, **primed}
  before = client.info()
  report = run_load(client, images, np.random.default_rng(FLAGS.seed))
  after = client.info()
  batches = after["batches"] - before["batches"]
  return {**report, "batches": batches, "mean_batch": round((after["items"] - before["items"]) / max(batches, 1), 2),
          "buckets_compiled_before": len(before["compiled"]), "buckets_compiled_during": len(after["compiled"]) -
          len(before["compiled"])}


def time_forward(checkpoint: str, images: list[bytes]) -> None:
  from editreward_jax import load_scorer
  from editreward_jax.serving.batcher import Batcher
  scorer = load_scorer(checkpoint)
  batcher = Batcher(scorer, max_batch=16)
  for size in batcher.buckets:
    examples = [scorer._example("make square 3 red", images[2 * i % len(images)], images[(2 * i + 1) % len(images)],
                                "bench") for i in range(size)]
    batcher.forward(examples)  # compiles
    times = []
    for _ in range(5):
      start = time.perf_counter()
      batcher.forward(examples)
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"edits": size, "forward_ms": round(1e3 * median, 1), "ms_per_edit": round(1e3 * median / size, 1),
                      "edits_per_s": round(size / median, 1)}), flush=True)


def main(argv):
  del argv
  import numpy as np
  import PIL.Image
  rng = np.random.default_rng(FLAGS.seed)
  images = []
  for _ in range(24):
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (FLAGS.image_side, FLAGS.image_side, 3), np.uint8)).save(buffer, "PNG")
    images.append(buffer.getvalue())  # the client base64-encodes, as a trainer's would
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = FLAGS.checkpoint
    if checkpoint is None:
      from tiny_reward import make_reward_dir
      checkpoint = make_reward_dir(os.path.join(tmp, "tiny_reward"))
    if FLAGS.forward_only:
      return time_forward(checkpoint, images)
    reports = {}
    for config in FLAGS.configs:
      extra = [] if config == "default" else config.split()
      proc, url = start_server(checkpoint, extra)
      try:
        report = measure(url, images)
      finally:
        proc.send_signal(signal.SIGTERM)
        report_exit = proc.wait(120)
      report = {"config": config, "clients": FLAGS.clients, "requests_per_client": FLAGS.requests,
                **report, "exit_code": report_exit}
      reports[config] = report
      print(json.dumps(report), flush=True)
  if len(reports) == 2:
    a, b = reports.values()
    print(json.dumps({"throughput_ratio": round(a["items_per_s"] / b["items_per_s"], 2),
                      "of": [a["config"], b["config"]]}), flush=True)
  if any(r["failures"] or not r["exactly_once"] or r["exit_code"] for r in reports.values()):
    sys.exit("error: the load test saw failures (see the JSON lines above)")


if __name__ == "__main__":
  app.run(main)
