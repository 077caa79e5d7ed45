"""What a person watching a run sees: a progress line per log interval, eval lines, TensorBoard scalars.

Step metrics stay on the device until the log interval (so the host never waits on a step it just dispatched), then
are fetched together. TensorBoard event files are written with tensorboardX: a small pure-Python writer of the
standard event format, so no TensorFlow is needed (flax.metrics.tensorboard and clu's writers import TensorFlow).
Only process 0 writes (pass `workdir=None` elsewhere).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import numpy as np

from editreward_jax import cli

_MEAN = ("loss", "accuracy", "sigma", "grad_norm", "lr")


class ProgressLog:

  def __init__(self, workdir: str | None, total_steps: int, peak_tflops: float, devices: int):
    self.total, self.peak_tflops, self.devices = total_steps, peak_tflops, devices
    self.writer = None
    if workdir is not None:
      from tensorboardX import SummaryWriter  # deferred: only process 0 writes events
      self.writer = SummaryWriter(workdir, flush_secs=10)
    self._window: list[tuple[int, Any]] = []
    self._flops = 0.0
    self._clock: float | None = None
    self.last: dict[str, float] = {}

  def step(self, step: int, metrics: Mapping[str, Any], step_flops: float, skipped: Mapping[str, int]) -> None:
    if self._clock is None:  # the first step compiles: time it alone, then start the throughput clock
      t0 = time.perf_counter()
      jax.block_until_ready(metrics)
      self._print(f"step {step}: compiled and ran the train step in {time.perf_counter() - t0:.1f}s")
      self._clock = time.perf_counter()
      return
    self._window.append((step, metrics))
    self._flops += step_flops
    self._skipped = skipped

  def flush(self, step: int) -> list[int]:
    """Prints and records the metrics since the last flush; returns the steps whose update was skipped."""
    if not self._window:
      return []
    fetched = jax.device_get([m for _, m in self._window])
    steps = [s for s, _ in self._window]
    elapsed = time.perf_counter() - self._clock
    bad = [s for s, m in zip(steps, fetched) if not bool(m["finite"])]
    row = {k: float(np.mean([m[k] for m in fetched])) for k in _MEAN}
    pairs = sum(int(m["pairs"]) for m in fetched)
    tokens = sum(int(m["tokens"]) for m in fetched)
    step_time = elapsed / len(fetched)
    row.update(pairs_per_s=pairs / elapsed, tokens_per_s=tokens / elapsed, step_time_s=step_time)
    if self.peak_tflops:
      row["mfu"] = self._flops / elapsed / (self.devices * self.peak_tflops * 1e12)
    eta = (self.total - step) * step_time
    extra = f" mfu={row['mfu']:.3f}" if "mfu" in row else ""
    skipped = sum(self._skipped.values())
    self._print(f"step {step}/{self.total} loss={row['loss']:.4f} accuracy={row['accuracy']:.3f} "
                f"sigma={row['sigma']:.3f} grad_norm={row['grad_norm']:.3f} lr={row['lr']:.2e} "
                f"pairs/s={row['pairs_per_s']:.2f} tokens/s={row['tokens_per_s']:.0f} "
                f"step={step_time:.3f}s{extra} skipped_rows={skipped} ETA {cli.duration(eta)}")
    self._scalars("train", step, {**row, "skipped_rows": skipped, "skipped_updates": len(bad)})
    self.last = row
    self._window, self._flops, self._clock = [], 0.0, time.perf_counter()
    return bad

  def evaluation(self, step: int, result: Mapping[str, float]) -> None:
    fields = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    self._print(f"eval step={step} {fields}")
    self._scalars("eval", step, result)
    if self._clock is not None:
      self._clock = time.perf_counter()  # evaluation time is not training throughput

  def _scalars(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
    if self.writer is not None:
      for name, value in values.items():
        self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

  def _print(self, line: str) -> None:
    if self.writer is not None:
      print(line, flush=True)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
