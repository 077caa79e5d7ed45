"""Where a training step's time goes, part by part, on the launch.bench synthetic inputs.

  python scripts/profile_train_parts.py [--shape=small] [--pairs_per_step=2] [--image_px=448] [--text_tokens=150]
                                        [--prefix_sharing=true] [--remat=none] [--steps=3]

Each part is jitted and timed on its own (median of --steps after a compile call), forward and backward:
- vision: the vision tower on the batch's 3 images per pair, gradient of a fixed projection of its merged features;
- decoder: the text decoder on the batch's embeddings (packed rows with prefix sharing), gradient of a fixed
  projection of its hidden states;
- heads_and_loss: both reward heads at the `<|Reward|>` states, the fused Gauss-Hermite ranking loss and its gradient;
- optimizer: gradient clipping and the AdamW update of every parameter;
- host_input: the host side of one batch (decode and resize 3 PNG images per pair, tokenize 4 prompts, collate).
Prints one JSON line of seconds per part and their sum beside the whole step of `launch.bench`.
"""

from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
from absl import app, flags
from flax import nnx

import data
from editreward_jax import batching, benchmark, losses, pipeline, processing
from editreward_jax.models import shared_prefix
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.models.scan import REMAT_POLICIES
from editreward_jax.prompts import load_prompts
from editreward_jax.reward import RewardModel, fuse

_SHAPE = flags.DEFINE_enum("shape", "small", ["tiny", "small"], "Model shape (launch.bench's).")
_PAIRS = flags.DEFINE_integer("pairs_per_step", 2, "Training pairs per step.", lower_bound=1)
_PX = flags.DEFINE_integer("image_px", 448, "Square image side in pixels.")
_TEXT = flags.DEFINE_integer("text_tokens", 150, "Rubric tokens per row (launch.bench's layout).")
_SHARING = flags.DEFINE_bool("prefix_sharing", True, "Compute each pair's shared prefixes once.")
_REMAT = flags.DEFINE_enum("remat", "none", list(REMAT_POLICIES), "Rematerialisation of the vision and decoder "
                           "layers (the real configs use dots_no_batch).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per part (after one compile call).", lower_bound=1)


def timed(fn, *args) -> float:
  """Median seconds of `fn(*args)` over the timed calls, after one compile call (benchmark.time_calls)."""
  return benchmark.time_calls(lambda: jax.block_until_ready(fn(*args)), _STEPS.value, 1)["step_s_median"]


def projection(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32) / np.sqrt(shape[-1])


def host_input_s(cfg, n: int) -> float:
  """Processes n pairs of random 448 px PNGs with the default rubric and collates them, as the pipeline does."""
  tokenizer = processing.load_tokenizer(data.TINY_TOKENIZER)
  processor = processing.Processor(tokenizer, load_prompts(), min_pixels=_PX.value**2, max_pixels=_PX.value**2)
  rng = np.random.default_rng(0)

  def png():
    out = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (_PX.value, _PX.value, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()

  images = [[png() for _ in range(3)] for _ in range(n)]
  groups = pipeline.ROWS_PER_PAIR if _SHARING.value else None
  def one_batch():
    table = batching.ImageTable()
    rows = []
    for src, a, b in images:
      for edit in (a, b):
        rows += batching.edit_rows(processor("make it blue", src, edit), table)
    batching.collate(rows, table, cfg, rope_mode="sequential", prefix_groups=groups)

  return benchmark.time_calls(one_batch, _STEPS.value, 1)["step_s_median"]


def main(argv):
  del argv
  cfg = benchmark.SHAPES[_SHAPE.value]
  layout = benchmark.Layout(image_px=_PX.value, text_tokens=_TEXT.value)
  reward_id = cfg.text.vocab_size - 1
  pairs = benchmark.synthetic_pairs(cfg, _PAIRS.value, layout, reward_id)
  batch = jax.tree.map(jnp.asarray, benchmark.train_batch(cfg, pairs, prefix_sharing=_SHARING.value))
  model_in = batch["batch"]
  model = RewardModel(cfg, RuntimeOptions(remat=_REMAT.value), rngs=nnx.Rngs(0))
  backbone = model.backbone
  parts = {}

  feats = backbone.vision_features(model_in["vision"])
  w_feats = projection(feats.shape, 1)
  parts["vision"] = timed(nnx.jit(nnx.grad(lambda m, v: jnp.sum(m.vision_features(v) * w_feats))), backbone,
                          model_in["vision"])

  x = backbone.embed(model_in["input_ids"], model_in["image_slots"], model_in["vision"])
  layout_arrays = {k: model_in[k] for k in shared_prefix.LAYOUT_KEYS} if _SHARING.value else None
  w_hidden = projection(x.shape, 2)
  decoder_loss = lambda d, x: jnp.sum(d(x, model_in["position_ids"], model_in["lengths"], layout_arrays) * w_hidden)
  parts["decoder"] = timed(nnx.jit(nnx.grad(decoder_loss)), backbone.decoder, x)

  hidden = backbone.decoder(x, model_in["position_ids"], model_in["lengths"], layout_arrays)
  if _SHARING.value:
    h = shared_prefix.at_positions(hidden, model_in["row_tokens"], batch["reward_index"])
  else:
    h = jnp.take_along_axis(hidden, batch["reward_index"][:, None, None], axis=1)[:, 0]

  def heads_loss(heads, h):
    per_dim = jnp.stack([heads[d](h) for d in heads], axis=1)
    per_dim = jnp.take_along_axis(per_dim, batch["dimension"][:, None, None], axis=1)[:, 0]
    f = fuse(batching.pair_outputs(per_dim))
    return jnp.mean(losses.pairwise_loss_values(f[:, 0, 0], f[:, 0, 1], f[:, 1, 0], f[:, 1, 1]))

  parts["heads_and_loss"] = timed(nnx.jit(nnx.grad(heads_loss)), model.heads, h)

  params = nnx.state(model, nnx.Param)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(2e-6))
  opt_state = tx.init(params)

  @jax.jit
  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  grads = jax.tree.map(jnp.ones_like, params)
  parts["optimizer"] = timed(update, params, opt_state, grads)
  parts["host_input"] = host_input_s(cfg, _PAIRS.value)
  device_parts = sum(v for k, v in parts.items() if k != "host_input")
  print(json.dumps({"shape": _SHAPE.value, "pairs_per_step": _PAIRS.value, "image_px": _PX.value,
                    "text_tokens": _TEXT.value, "prefix_sharing": _SHARING.value, "remat": _REMAT.value,
                    "seq_len": int(model_in["input_ids"].shape[-1]), **{f"{k}_s": v for k, v in parts.items()},
                    "device_parts_s": device_parts, "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
