"""The reward server's HTTP app (Starlette on uvicorn) and its lifecycle.

`GET /health` (503 until the warm-up compiled the buckets, and while draining), `GET /info`, `POST /score`. JSON
parsing, base64 decoding and image preprocessing run in a thread pool, off the event loop; the device thread of the
`Batcher` does every JAX call. SIGTERM (or SIGINT) drains: new requests get 503, the requests in flight finish, then
uvicorn closes and the process exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import importlib.metadata
import json
import logging
import threading
import time
from concurrent import futures
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from editreward_jax.scoring import Scorer
from editreward_jax.serving.batcher import Batcher, prepare
from editreward_jax.serving.protocol import ItemError, Limits, RequestError, parse_request

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class WarmUpError(RuntimeError):
  """Compiling the batch buckets at start-up failed: the server stops (a one-line error in launch.serve)."""


def package_version() -> str:
  try:
    return importlib.metadata.version("editreward-jax")
  except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never pip-installed
    return "unknown"


@dataclasses.dataclass
class ServerState:
  scorer: Scorer
  batcher: Batcher
  limits: Limits
  max_body_bytes: int = 64 << 20
  api_key: str | None = None  # bearer token required on /score and /info when set
  host_threads: int = 4
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  draining: bool = False
  in_flight: int = 0

  def __post_init__(self):
    self.pool = futures.ThreadPoolExecutor(self.host_threads, thread_name_prefix="editreward-host")


def model_info(scorer: Scorer, checkpoint: str) -> dict[str, Any]:
  """What /info reports besides the live counters: enough to tell which model and rubric scored a result."""
  cfg = scorer.model.cfg
  prompts = json.dumps(scorer.processor.prompts.to_dict(), sort_keys=True, ensure_ascii=False)
  return {"checkpoint": checkpoint, "version": package_version(),
          "model": {"text": {k: getattr(cfg.text, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
                    "vision": {k: getattr(cfg.vision, k) for k in ("depth", "hidden_size", "patch_size")}},
          "prompts_sha256": hashlib.sha256(prompts.encode()).hexdigest(), "rope_mode": scorer.rope_mode,
          "fusion": scorer.fusion, "pixels": {"min": scorer.processor.min_pixels, "max": scorer.processor.max_pixels},
          "max_seq_len": scorer.max_seq_len}


def _error(status: int, field: str, message: str, **headers: str) -> JSONResponse:
  return JSONResponse({"results": [], "errors": [RequestError(status, field, message).to_json()]}, status,
                      headers=headers or None)


def _authorized(state: ServerState, request: Request) -> bool:
  if state.api_key is None:
    return True
  scheme, _, token = request.headers.get("authorization", "").partition(" ")
  return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), state.api_key.encode())


async def read_body(request: Request, limit: int) -> bytes:
  """The body, refused (413) from its Content-Length before reading, or as soon as the stream passes `limit`."""
  length = request.headers.get("content-length")
  if length is not None:
    if not length.isdigit():
      raise RequestError(400, "content-length", f"not a byte count: {length!r}")
    if int(length) > limit:
      raise RequestError(413, "body", f"{length} bytes, more than max_body_bytes={limit}")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise RequestError(413, "body", f"more than max_body_bytes={limit}")
    chunks.append(chunk)
  return b"".join(chunks)


def make_app(state: ServerState) -> Starlette:
  async def health(request: Request) -> JSONResponse:
    status = "draining" if state.draining else "ready" if state.batcher.ready.is_set() else "warming_up"
    return JSONResponse({"status": status, "in_flight": state.in_flight}, 200 if status == "ready" else 503)

  async def info(request: Request) -> JSONResponse:
    if not _authorized(state, request):
      return _error(401, "authorization", "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"})
    return JSONResponse({**state.info, "max_batch": state.batcher.max_batch, "max_wait_ms": state.batcher.max_wait * 1e3,
                         "max_items": state.limits.max_items, "max_image_bytes": state.limits.max_image_bytes,
                         "max_body_bytes": state.max_body_bytes, "paths_allowed": bool(state.limits.allow_paths),
                         "edit_buckets": state.batcher.buckets, "compiled": list(state.batcher.compiled.values()),
                         "ready": state.batcher.ready.is_set(), "batches": state.batcher.batches,
                         "items": state.batcher.items})

  async def score(request: Request) -> JSONResponse:
    if state.draining:
      return _error(503, "server", "shutting down", Connection="close")
    if not state.batcher.ready.is_set():
      return _error(503, "server", "warming up (compiling the batch buckets)", **{"Retry-After": "1"})
    if not _authorized(state, request):
      return _error(401, "authorization", "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"})
    state.in_flight += 1
    try:
      loop = asyncio.get_running_loop()
      body = await read_body(request, state.max_body_bytes)
      items, errors = await loop.run_in_executor(state.pool, parse_request, body, state.limits)

      async def one(item):
        example = await loop.run_in_executor(state.pool, prepare, state.scorer, item)
        if isinstance(example, ItemError):
          return example
        return {"id": item.id, **await asyncio.wrap_future(state.batcher.submit(example))}

      outcomes = await asyncio.gather(*(one(item) for item in items))
      results = [o for o in outcomes if isinstance(o, dict)]
      errors += [o for o in outcomes if isinstance(o, ItemError)]
      errors.sort(key=lambda e: e.index)
      return JSONResponse({"results": results, "errors": [e.to_json() for e in errors]}, 200 if results else 422)
    except RequestError as e:  # a body refused unread: close rather than wait for the rest of it
      return _error(e.status, e.field, e.message, **({"Connection": "close"} if e.status == 413 else {}))
    finally:
      state.in_flight -= 1

  return Starlette(routes=[Route("/health", health), Route("/info", info),
                           Route("/score", score, methods=["POST"])])


class _DrainingServer(uvicorn.Server):
  """uvicorn, except that the first SIGTERM/SIGINT drains (503 to new requests until the in-flight ones finish)
  instead of closing at once, and the signal is not re-raised afterwards (so the exit status is 0)."""

  def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float):
    super().__init__(config)
    self.state, self.drain_timeout_s = state, drain_timeout_s
    self._drain_started: float | None = None

  def handle_exit(self, sig, frame) -> None:
    if self._drain_started is not None:  # a second signal: close now
      self.should_exit = True
      return
    logging.warning("signal %d: draining %d request(s) in flight, refusing new ones", sig, self.state.in_flight)
    self.state.draining, self._drain_started = True, time.monotonic()

  async def on_tick(self, counter: int) -> bool:
    if self.state.batcher.warm_up_error is not None:
      self.should_exit = True
    if self._drain_started is not None and (
        self.state.in_flight == 0 or time.monotonic() - self._drain_started > self.drain_timeout_s):
      self.should_exit = True
    return await super().on_tick(counter)


def serve(state: ServerState, host: str, port: int, *, drain_timeout_s: float = 60.0, warm_up: bool = True,
          on_listening=None, on_ready=None) -> None:
  """Runs the server until drained by a signal; the warm-up runs on the device thread while it already answers
  /health (503 until ready). `on_listening((host, port))` and `on_ready()` are called from a helper thread."""
  state.batcher.start(warm_up=warm_up)
  config = uvicorn.Config(make_app(state), host=host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=drain_timeout_s, lifespan="off")
  server = _DrainingServer(config, state, drain_timeout_s)
  if on_listening is not None:
    threading.Thread(target=_when_started, args=(server, on_listening, on_ready), daemon=True).start()
  try:
    server.run()
  finally:
    state.batcher.close(timeout=drain_timeout_s)
    state.pool.shutdown(wait=False, cancel_futures=True)
  if state.batcher.warm_up_error is not None:
    raise WarmUpError(f"the warm-up (compiling the batch buckets) failed: {state.batcher.warm_up_error}")


def _when_started(server: _DrainingServer, on_listening, on_ready) -> None:
  while not server.started and not server.should_exit:
    time.sleep(0.05)
  if server.started:
    on_listening(server.servers[0].sockets[0].getsockname()[:2])
    server.state.batcher.ready.wait()
    if on_ready is not None:
      on_ready()
