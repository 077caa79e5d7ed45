"""Serve a reward model over HTTP, with dynamic batching across concurrent requests.

  python -m launch.serve --checkpoint=CKPT [--host=127.0.0.1] [--port=8000] [--max_batch=16] [--max_wait_ms=10]
      [--max_items=64] [--max_image_bytes=16777216] [--max_body_bytes=67108864] [--allow_paths=DIR,...]
      [--api_key_env=NAME]

GET /health (200 once the warm-up compiled the batch buckets), GET /info, POST /score with
{"items": [{"id", "instruction", "source_image", "edited_image"}]} (images base64, or {"path": ...} under
--allow_paths); see the README's "Reward server". Binding anywhere but localhost requires --api_key_env naming an
environment variable that holds the bearer token. SIGTERM drains: in-flight requests finish, new ones get 503, exit 0.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app, flags

from editreward_jax import cli
from editreward_jax.models.attention import IMPLEMENTATIONS
from editreward_jax.models.positions import ROPE_MODES
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.reward import FUSIONS
from editreward_jax.scoring import DEFAULT_MAX_SEQ_LEN

flags.DEFINE_string("checkpoint", None, "Model directory (convert.from_hf output or a trained model).",
                    required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; anything but localhost requires --api_key_env.")
flags.DEFINE_integer("port", 8000, "Port to bind (0: any free port, printed at start).", lower_bound=0)
flags.DEFINE_integer("max_batch", 16, "Most edits per forward pass (dynamic batching across requests).",
                     lower_bound=1)
flags.DEFINE_float("max_wait_ms", 10.0, "Longest a batch waits for more edits after its first.", lower_bound=0)
flags.DEFINE_integer("max_items", 64, "Most items per request.", lower_bound=1)
flags.DEFINE_integer("max_image_bytes", 16 << 20, "Largest encoded image (bytes).", lower_bound=1)
flags.DEFINE_integer("max_body_bytes", 64 << 20, "Largest request body (bytes); a larger one is refused unread.",
                     lower_bound=1)
flags.DEFINE_list("allow_paths", [], "Directories whose files items may name as {\"path\": ...}; default: none "
                  "(base64 only).")
flags.DEFINE_string("api_key_env", None, "Environment variable holding the bearer token required on /score and "
                    "/info; required when --host is not localhost.")
flags.DEFINE_string("prompts", None, "Prompts file overriding the rubric recorded in the checkpoint.")
flags.DEFINE_enum("rope_mode", None, list(ROPE_MODES), "Override the checkpoint's position mode.")
flags.DEFINE_enum("fusion", None, list(FUSIONS), "Override the checkpoint's fusion of the two dimensions.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_enum("attention_impl", "xla", list(IMPLEMENTATIONS), "Attention kernel (cudnn: GPU; splash: TPU).")
flags.DEFINE_integer("max_seq_len", DEFAULT_MAX_SEQ_LEN, "Longest prompt in tokens; a longer item is an error.",
                     lower_bound=16)
flags.DEFINE_integer("host_threads", min(4, os.cpu_count() or 1), "Threads decoding and preprocessing images.",
                     lower_bound=1)
flags.DEFINE_float("drain_timeout_s", 60.0, "On SIGTERM, longest wait for in-flight requests.", lower_bound=0)
flags.DEFINE_bool("warm_up", True, "Compile the batch buckets before reporting ready.")
VERBOSE = cli.verbose_flag()
FLAGS = flags.FLAGS


def api_key(host: str, env_name: str | None) -> str | None:
  """The bearer token, or None on localhost without one; raises ValueError where one is required but missing."""
  from editreward_jax.serving.app import LOCAL_HOSTS
  if env_name is None:
    if host not in LOCAL_HOSTS:
      raise ValueError(f"--host={host} is not localhost: give --api_key_env=NAME, an environment variable holding "
                       "the bearer token clients must send")
    return None
  token = os.environ.get(env_name, "")
  if not token.strip():
    raise ValueError(f"--api_key_env={env_name}: the environment variable {env_name} is not set or empty")
  return token.strip()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_logs(VERBOSE.value)
  with cli.one_line_errors(ImportError):
    key = api_key(FLAGS.host, FLAGS.api_key_env)  # before the model loads: a refused start is immediate
    try:
      from editreward_jax.serving import app as server
    except ImportError as e:
      raise ImportError(f"{e.name} is missing: the server needs the [serve] extra (pip install -e '.[serve]')"
                        ) from None
    from editreward_jax.scoring import load_scorer
    from editreward_jax.serving.batcher import Batcher
    from editreward_jax.serving.protocol import Limits, allowed_roots
    limits = Limits(max_items=FLAGS.max_items, max_image_bytes=FLAGS.max_image_bytes,
                    allow_paths=allowed_roots(FLAGS.allow_paths))
    scorer = load_scorer(FLAGS.checkpoint, prompts=FLAGS.prompts, rope_mode=FLAGS.rope_mode, fusion=FLAGS.fusion,
                         options=RuntimeOptions(dtype=FLAGS.dtype, attention_impl=FLAGS.attention_impl),
                         max_seq_len=FLAGS.max_seq_len)
    state = server.ServerState(scorer, Batcher(scorer, max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms),
                               limits, max_body_bytes=FLAGS.max_body_bytes, api_key=key,
                               host_threads=FLAGS.host_threads, info=server.model_info(scorer, FLAGS.checkpoint))
  listening = lambda address: print(f"listening on http://{address[0]}:{address[1]} (ready once /health says so)",
                                    flush=True)
  with cli.one_line_errors(server.WarmUpError):
    server.serve(state, FLAGS.host, FLAGS.port, drain_timeout_s=FLAGS.drain_timeout_s, warm_up=FLAGS.warm_up,
                 on_listening=listening, on_ready=lambda: print("ready", flush=True))
  print("stopped", flush=True)


if __name__ == "__main__":
  cli.run(main)
