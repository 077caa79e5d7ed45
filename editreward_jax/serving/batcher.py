"""Dynamic batching for the reward server: one device thread (every JAX call from one thread) gathers edits from
concurrent requests into batches of up to `max_batch`, waiting at most `max_wait_ms` after the first, and scores them
with the scorer's jitted forward. Rows are padded to a power-of-two bucket of edits (capped at `max_batch`), so the
server compiles a handful of programs, all of them at warm-up for images at the checkpoint's pixel settings.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import queue
import threading
import time
from concurrent import futures
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from editreward_jax import batching, cli, processing, sharding
from editreward_jax.prompts import PromptError
from editreward_jax.scoring import Scorer, _forward
from editreward_jax.serving.protocol import IMAGE_FIELDS, Item, ItemError

_STOP = object()


def prepare(scorer: Scorer, item: Item) -> processing.ProcessedExample | ItemError:
  """Decode, resize and tokenize one item through the scorer's guards (image header before decoding, prompt
  length): host work, run in the server's thread pool."""
  where = f"items[{item.index}]"
  try:
    return scorer._example(item.instruction, item.source_image, item.edited_image, where)
  except PromptError as e:
    return ItemError(item.id, "instruction", _strip(str(e), where), item.index)
  except ValueError as e:  # ImageError: "<where>: <field>: ..." (the scorer names the image field)
    message = _strip(str(e), where)
    field = next((f for f in IMAGE_FIELDS if message.startswith(f)), "item")
    return ItemError(item.id, field, message, item.index)


def _strip(message: str, where: str) -> str:
  return message[len(where) + 2:] if message.startswith(where + ": ") else message


def row_buckets(max_batch: int) -> list[int]:
  """Edits per compiled batch: powers of two below max_batch, and max_batch."""
  return sorted({batching.bucket(n) for n in range(1, max_batch)} | {max_batch})


class Batcher:
  """Owns the device: `submit(example)` returns a future of the edit's score row (`Scores.row`)."""

  def __init__(self, scorer: Scorer, *, max_batch: int = 16, max_wait_ms: float = 10.0):
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_wait_ms < 0:
      raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    self.scorer, self.max_batch, self.max_wait = scorer, max_batch, max_wait_ms / 1000
    self.buckets = row_buckets(max_batch)
    self.compiled: dict[tuple, dict[str, Any]] = {}  # batch shapes -> summary, for /info
    self.ready = threading.Event()
    self.warm_up_error: str | None = None  # the warm-up failed (e.g. out of memory): the server stops with it
    self.batches = self.items = 0
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._run, name="editreward-device", daemon=True)

  def start(self, warm_up: bool = True) -> None:
    self._warm_up = warm_up
    self._thread.start()

  def submit(self, example: processing.ProcessedExample) -> futures.Future:
    future: futures.Future = futures.Future()
    self._queue.put((example, future))
    return future

  def close(self, timeout: float | None = None) -> None:
    """Scores what is queued, then stops the device thread."""
    self._queue.put(_STOP)
    self._thread.join(timeout)

  def _run(self) -> None:
    rules = sharding.activation_rules(self.scorer.mesh) if self.scorer.mesh is not None else contextlib.nullcontext()
    with rules:
      if self._warm_up:
        try:
          self._compile_buckets()
        except Exception as e:  # noqa: BLE001 -- reported by the server, which then exits 1
          self.warm_up_error = cli.describe(e)
          return
        self.batches = self.items = 0  # /info counts served edits only
      self.ready.set()
      stop = False
      while not stop:
        first = self._queue.get()
        if first is _STOP:
          break
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
          try:
            entry = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
          except queue.Empty:
            break
          if entry is _STOP:
            stop = True
            break
          batch.append(entry)
        self._score(batch)

  def _score(self, batch: list[tuple[processing.ProcessedExample, futures.Future]]) -> None:
    try:
      rows = self.forward([example for example, _ in batch])
    except Exception as e:  # noqa: BLE001 -- a failed batch fails its requests (500), not the server
      logging.exception("scoring a batch of %d edits failed", len(batch))
      for _, future in batch:
        future.set_exception(e)
      return
    for (_, future), row in zip(batch, rows):
      future.set_result(row)

  def forward(self, examples: list[processing.ProcessedExample]) -> list[dict[str, Any]]:
    """Score rows of up to max_batch examples, padded to their edit bucket (device thread only)."""
    size = next(b for b in self.buckets if b >= len(examples))
    arrays = self.scorer.collate(examples, size)
    key = tuple((path, np.shape(leaf)) for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0])
    start, level = time.perf_counter(), logging.WARNING if self.ready.is_set() else logging.INFO
    out = np.asarray(_forward(self.scorer.model, jax.tree.map(jnp.asarray, arrays)))
    if key not in self.compiled:
      vision = arrays["batch"].get("vision") or {}
      self.compiled[key] = {"edits": size, "tokens": int(np.shape(arrays["batch"]["input_ids"])[-1]),
                            "patches": int(np.shape(vision["pixels"])[-2]) if "pixels" in vision else 0}
      logging.log(level, "compiled a batch bucket %s in %.1fs", self.compiled[key], time.perf_counter() - start)
    self.batches += 1
    self.items += len(examples)
    scores = self.scorer._scores(batching.edit_outputs(out[:2 * len(examples)]))
    return [scores.row(j) for j in range(len(examples))]

  def _compile_buckets(self) -> None:
    """Scores synthetic edits of every edit bucket with square images at the checkpoint's max_pixels (and
    min_pixels), the shapes real requests at those settings take."""
    processor, rng = self.scorer.processor, np.random.default_rng(0)
    sides = sorted({max(int(math.sqrt(p)), 28) for p in (processor.min_pixels, processor.max_pixels)})
    for side in sides:
      images = [_png(rng, side) for _ in range(2 * self.max_batch)]
      for size in self.buckets:
        self.forward([self.scorer._example("warm-up", images[2 * i], images[2 * i + 1], "warm-up")
                      for i in range(size)])


def _png(rng: np.random.Generator, side: int) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()
