"""A client of the reward server (`python -m launch.serve`), standard library only, and a reward-function adapter.

  client = RewardClient("http://127.0.0.1:8000", api_key=os.environ.get("EDITREWARD_API_KEY"))
  response = client.score([{"id": "a", "instruction": "make the sky pink", "source_image": "src.png",
                            "edited_image": edited_pil_image}])
  reward_fn = make_reward_fn(client)        # Flow-GRPO shape: reward_fn(images, prompts, metadata) -> (scores, info)

Images are PIL images, uint8 arrays (HWC, or NCHW/NHWC float arrays or tensors in [0, 1] as trainers hold them),
encoded bytes, or file paths (read here and sent as base64, or sent as paths with `send_paths=True` for a server run
with --allow_paths). PIL and NumPy are imported only to encode arrays and PIL images. Retries (with exponential
backoff) cover connection errors, timeouts and 5xx (503 while warming up or draining); a 4xx is never retried.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

__all__ = ["RewardClient", "RewardServerError", "make_reward_fn"]


class RewardServerError(RuntimeError):
  """A request the server refused (4xx), or one still failing after the retries; `errors` as the server sent them."""

  def __init__(self, status: int | None, message: str, errors: Sequence[Mapping[str, Any]] = ()):
    super().__init__(f"reward server: {f'HTTP {status}: ' if status else ''}{message}")
    self.status, self.errors = status, list(errors)


class RewardClient:

  def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, *, timeout: float = 120.0,
               retries: int = 3, backoff_s: float = 0.5, max_items_per_request: int = 64, send_paths: bool = False):
    self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
    self.retries, self.backoff_s = retries, backoff_s
    self.max_items_per_request, self.send_paths = max_items_per_request, send_paths

  def health(self) -> dict[str, Any]:
    return self._request("GET", "/health", retry=False)

  def info(self) -> dict[str, Any]:
    return self._request("GET", "/info")

  def wait_ready(self, timeout: float = 300.0) -> None:
    """Blocks until /health says ready (the server compiles its buckets first)."""
    deadline = time.monotonic() + timeout
    while True:
      try:
        if self.health().get("status") == "ready":
          return
      except RewardServerError:
        pass
      if time.monotonic() > deadline:
        raise RewardServerError(None, f"{self.url} not ready after {timeout:.0f}s")
      time.sleep(0.2)

  def score(self, items: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """`{"results": [...], "errors": [...]}` for items `{"id", "instruction", "source_image", "edited_image"}`,
    sent in requests of at most max_items_per_request. An item the server could not score is in "errors" (id,
    field, message), never in "results"; raises RewardServerError when the server refuses a request (4xx)."""
    out: dict[str, list] = {"results": [], "errors": []}
    for start in range(0, len(items), self.max_items_per_request):
      chunk = items[start:start + self.max_items_per_request]
      body = json.dumps({"items": [self._encode_item(item) for item in chunk]}).encode()
      response = self._request("POST", "/score", body, ok=(200, 422))  # 422: every item of the request failed
      out["results"] += response["results"]
      out["errors"] += response["errors"]
    return out

  def _encode_item(self, item: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": item["id"], "instruction": item["instruction"],
            **{f: self._encode_image(item[f]) for f in ("source_image", "edited_image")}}

  def _encode_image(self, image: Any) -> Any:
    if isinstance(image, (str, os.PathLike)):
      if self.send_paths:
        return {"path": os.path.abspath(os.fspath(image))}
      with open(image, "rb") as f:
        image = f.read()
    if not isinstance(image, (bytes, bytearray, memoryview)):
      image = encode_png(image)
    return base64.b64encode(image).decode("ascii")

  def _request(self, method: str, path: str, body: bytes | None = None, *, ok=(200,), retry: bool = True
               ) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    attempts = 1 + (self.retries if retry else 0)
    for attempt in range(attempts):
      request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          return json.loads(response.read())
      except urllib.error.HTTPError as e:
        payload = _json_or_none(e.read())
        if e.code in ok and payload is not None:
          return payload
        errors = (payload or {}).get("errors", [])
        message = "; ".join(f"{x.get('field')}: {x.get('message')}" for x in errors) or e.reason
        if e.code < 500 or attempt + 1 == attempts:
          raise RewardServerError(e.code, message, errors) from None
      except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        if attempt + 1 == attempts:
          raise RewardServerError(None, f"{self.url}{path}: {getattr(e, 'reason', e)} (after {attempts} "
                                  "attempts)") from None
      time.sleep(self.backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def _json_or_none(data: bytes) -> Any:
  try:
    return json.loads(data)
  except ValueError:
    return None


def encode_png(image: Any) -> bytes:
  """PNG bytes of a PIL image or an image array: uint8 HWC (or HW), or floats in [0, 1], CHW or HWC."""
  import numpy as np
  import PIL.Image
  if not isinstance(image, PIL.Image.Image):
    array = np.asarray(image)  # torch CPU tensors convert too
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
      array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.dtype != np.uint8:
      array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    image = PIL.Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def make_reward_fn(client: RewardClient | str, *, source_key: str = "source_image", dimension: str | None = None
                   ) -> Callable[..., tuple[list[float], dict[str, Any]]]:
  """A Flow-GRPO-style reward function: `reward_fn(images, prompts, metadata, ref_images=None)` with the edited
  images (a batch tensor or array, or a list), the edit instructions, and one metadata dict per sample holding the
  source image under `source_key` (or the source images as `ref_images`). Returns (scores, info): the fused `mu`
  (or that of `dimension`) per sample, NaN for a sample the server could not score; info holds every dimension's
  `mu`, the `log_sigma`s and the server's errors."""
  client = RewardClient(client) if isinstance(client, str) else client

  def reward_fn(images, prompts, metadata, ref_images=None, **unused):
    del unused  # trainers pass extra keywords (e.g. only_strict)
    sources = list(ref_images) if ref_images is not None else [m[source_key] for m in metadata]
    edited = list(images)  # the first axis of a batch tensor, or the list
    if not len(edited) == len(prompts) == len(sources):
      raise ValueError(f"got {len(edited)} images, {len(prompts)} prompts and {len(sources)} source images")
    response = client.score([{"id": i, "instruction": p, "source_image": s, "edited_image": e}
                             for i, (p, s, e) in enumerate(zip(prompts, sources, edited))])
    by_id = {r["id"]: r for r in response["results"]}
    pick = lambda r, key: (r[dimension] if dimension else r)[key] if r else math.nan
    rows = [by_id.get(i) for i in range(len(edited))]
    info = {"log_sigma": [pick(r, "log_sigma") for r in rows], "errors": response["errors"],
            **{d: [r[d]["mu"] if r else math.nan for r in rows] for d in ("instruction_following", "visual_quality")}}
    return [pick(r, "mu") for r in rows], info

  return reward_fn
