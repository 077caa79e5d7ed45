"""Import a Hugging Face Qwen2.5-VL checkpoint into a project model directory.

  python -m convert.from_hf --base=HF_DIR --out=CKPT [--param_dtype=auto|float32|bfloat16] [--rope_mode=sequential]

HF_DIR holds config.json, tokenizer files and safetensors (one file or shards with an index; either key layout;
bf16 or fp32). Tensors are streamed: each parameter is built shard by shard on its target device(s) from
memory-mapped tensors, so no host copy of the whole model is ever made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import flags
from flax import nnx

from convert import hf_keys
from convert.safetensors_io import CheckpointReader
from editreward_jax import cli, model_dir, paths, processing
from editreward_jax.models import positions
from editreward_jax.models.config import ModelConfig, from_hf_dict
from editreward_jax.models.qwen2_5_vl import RuntimeOptions
from editreward_jax.prompts import DIMENSIONS, load_prompts
from editreward_jax.reward import FUSIONS, HeadConfig, RewardHead

EMBED_KEY = "model.language_model.embed_tokens.weight"


class CheckpointMismatchError(ValueError):
  """The checkpoint's tensors do not match the model: lists every missing, unexpected and mis-shaped key."""


def read_hf_config(base: str) -> ModelConfig:
  """The model config of a Hugging Face directory; errors name config.json and the field."""
  path = os.path.join(base, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{base}: config.json is missing")
  try:
    with open(path) as f:
      return from_hf_dict(json.load(f))
  except ValueError as e:  # json.JSONDecodeError included
    raise ValueError(f"{path}: {e}") from None


def canonical_index(reader: CheckpointReader) -> dict[str, str]:
  """Canonical (in-memory layout) name -> name as stored, for every tensor of the checkpoint."""
  index: dict[str, str] = {}
  for key in reader.keys():
    canon = hf_keys.canonical_key(key)
    if canon in index:
      raise CheckpointMismatchError(f"{reader.source}: {key!r} and {index[canon]!r} are the same parameter")
    index[canon] = key
  return index


def check_tensors(reader: CheckpointReader, index: dict[str, str], cfg: ModelConfig, abstract: dict,
                  ignore_prefixes: Sequence[str] = ()) -> None:
  """Raises one CheckpointMismatchError naming every missing, unexpected and mis-shaped tensor."""
  missing, misshaped, used = [], [], set()
  for spec in hf_keys.param_specs(cfg):
    shape = _lookup(abstract, spec.path).shape
    want = hf_keys.hf_shape(spec, shape[1:] if spec.num_layers else shape, cfg)
    for key in spec.hf_keys():
      if key not in index:
        missing.append(key)
        continue
      used.add(key)
      got = reader.shape(index[key])
      if got != want:
        misshaped.append(f"{index[key]}: expected {want}, found {got}")
  tied_copy = "lm_head.weight" if cfg.text.tie_word_embeddings else None
  unexpected = sorted(index[k] for k in index
                      if k not in used and k != tied_copy and not k.startswith(tuple(ignore_prefixes)))
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
  if misshaped:
    problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
  if problems:
    raise CheckpointMismatchError(f"{reader.source}: checkpoint does not match the model config:\n  " +
                                  "\n  ".join(problems))


def _lookup(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_tensor(reader: CheckpointReader, index: dict[str, str], spec: hf_keys.ParamSpec,
                target: jax.ShapeDtypeStruct) -> jax.Array:
  """One parameter, assembled shard by shard on its sharding from memory-mapped tensors."""
  keys = spec.hf_keys()
  dtype = np.dtype(target.dtype)

  # Cropping to the target shape first lets a token table keep only its first rows (a resize that shrinks).
  crop = tuple(slice(0, n) for n in target.shape[1 if spec.num_layers else 0:])

  def one(key: str, idx: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(hf_keys.to_ours(spec, reader.get(index[key]))[crop][idx], dtype=dtype)

  def shard(idx: tuple[slice, ...]) -> np.ndarray:
    if spec.num_layers is None:
      return one(keys[0], idx)
    return np.stack([one(keys[i], idx[1:]) for i in range(spec.num_layers)[idx[0]]])

  return jax.make_array_from_callback(target.shape, target.sharding, shard)


def resolve_param_dtype(name: str, reader: CheckpointReader, index: dict[str, str]) -> str:
  if name != "auto":
    return name
  return str(np.dtype(reader.get(index[EMBED_KEY]).dtype)) if EMBED_KEY in index else "float32"


def load_backbone(base: str, *, param_dtype: str = "auto", mesh=None, reader: CheckpointReader | None = None,
                  vocab_size: int | None = None) -> tuple[ModelConfig, dict]:
  """Config and backbone parameters (nested dict of jax arrays) of a Hugging Face Qwen2.5-VL checkpoint.

  `reader` reads the tensors from another file than the base directory's (a released EditReward state dict, whose
  `rm_heads.*` are left to the caller). The token tables keep the tensor's row count, or are cut to `vocab_size`.
  """
  cfg = read_hf_config(base)
  reader = reader or CheckpointReader(base)
  index = canonical_index(reader)
  if EMBED_KEY in index:  # the table size comes from the tensor (e.g. resized for an added <|Reward|> token)
    rows = reader.shape(index[EMBED_KEY])[0]
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=rows)).validate()
  options = RuntimeOptions(param_dtype=resolve_param_dtype(param_dtype, reader, index))
  _, _, abstract = model_dir.abstract_params(cfg, options, mesh=mesh)
  check_tensors(reader, index, cfg, abstract["backbone"], ignore_prefixes=("rm_heads.",))
  rows = cfg.text.vocab_size if vocab_size is None else vocab_size
  if rows > cfg.text.vocab_size:
    raise ValueError(f"{base}: the tokenizer needs {rows} embedding rows but the checkpoint has "
                     f"{cfg.text.vocab_size}")
  if rows < cfg.text.vocab_size:  # as transformers' resize_token_embeddings shrinks: keep the first rows
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=rows)).validate()
    _, _, abstract = model_dir.abstract_params(cfg, options, mesh=mesh)
  return cfg, load_specs(reader, index, hf_keys.param_specs(cfg), abstract["backbone"])


def load_specs(reader: CheckpointReader, index: dict[str, str], specs: Sequence[hf_keys.ParamSpec],
               abstract: dict) -> dict:
  params: dict = {}
  start = time.time()
  for n, spec in enumerate(specs, 1):
    _set(params, spec.path, load_tensor(reader, index, spec, _lookup(abstract, spec.path)))
    logging.info("loaded %d/%d %s (%.1fs)", n, len(specs), "/".join(spec.path), time.time() - start)
  return params


def load_heads(reader: CheckpointReader, abstract: dict) -> dict:
  """The reward heads {dimension: ...} of a released EditReward state dict (rm_heads.head_{0,1}.{0,3,5}.*), in
  float32; `abstract` is the whole model's tree, as the head specs' paths start at "heads"."""
  index = canonical_index(reader)
  specs = hf_keys.head_specs(DIMENSIONS)
  missing = [k for spec in specs for k in spec.hf_keys() if k not in index]
  misshaped = [f"{spec.hf_key}: expected {hf_keys.hf_shape(spec, _lookup(abstract, spec.path).shape, None)}, "
               f"found {reader.shape(index[spec.hf_key])}" for spec in specs if spec.hf_key in index and
               reader.shape(index[spec.hf_key]) != hf_keys.hf_shape(spec, _lookup(abstract, spec.path).shape, None)]
  if missing or misshaped:
    raise CheckpointMismatchError(f"{reader.source}: reward heads do not match: missing keys {missing}; "
                                  f"mis-shaped keys {misshaped}")
  return load_specs(reader, index, specs, abstract)["heads"]


# Where a Hugging Face directory keeps its chat template, in the order a Qwen2.5-VL processor loaded from it takes
# them (transformers 5.x: the legacy processor file chat_template.json, then chat_template.jinja, then a key of
# processor_config.json); the tokenizer's own (tokenizer_config.json) last, for directories with none of those.
CHAT_TEMPLATE_FILES = ("chat_template.json", "chat_template.jinja", "processor_config.json", "tokenizer_config.json")


def find_chat_template(base: str) -> tuple[str, str]:
  """(template text, file it came from) of the chat template the base directory provides; ValueError if none."""
  for name in CHAT_TEMPLATE_FILES:
    path = os.path.join(base, name)
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      if name.endswith(".jinja"):
        return f.read(), name
      try:
        template = json.load(f).get("chat_template")
      except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e})") from None
    if isinstance(template, list):  # several named templates: the default one renders chats
      template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if isinstance(template, str) and template:
      return template, name
  raise ValueError(f"{base}: no chat template (looked for one in {', '.join(CHAT_TEMPLATE_FILES)}); the prompts "
                   "are rendered with the base model's template")


def tokenizer_with_reward(base: str):
  """(the base directory's tokenizer with `<|Reward|>` added and the base's chat template, a record of which file
  that template came from and its digest), or (None, None) when the directory has no tokenizer."""
  if not any(os.path.exists(os.path.join(base, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
    logging.warning("%s has no tokenizer files: the model directory will have no tokenizer", base)
    return None, None
  tokenizer = processing.load_tokenizer(base)
  template, source = find_chat_template(base)
  tokenizer.chat_template = template  # saved with the tokenizer (chat_template.jinja), which scoring then reads
  return tokenizer, {"file": source, "sha256": hashlib.sha256(template.encode("utf-8")).hexdigest()}


def reward_reader(path: str) -> CheckpointReader:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: reward weights file not found")
  if not path.endswith(".safetensors"):
    raise ValueError(f"{path}: reward weights must be a .safetensors file (pickled .pth files are not loaded)")
  return CheckpointReader(os.path.dirname(os.path.abspath(path)), os.path.basename(path))


def import_hf(base: str, out: str, *, reward_weights: str | None = None, param_dtype: str = "auto",
              rope_mode: str = "sequential", fusion: str = "mean", prompts_file: str | None = None,
              min_pixels: int = processing.DEFAULT_PIXELS, max_pixels: int = processing.DEFAULT_PIXELS,
              seed: int = 0, mesh=None) -> str:
  """Writes a model directory at `out` from the Hugging Face directory `base`; returns `out`.

  With `reward_weights` (a released EditReward `model.safetensors`), backbone and heads come from that file; without,
  the backbone comes from `base` and the heads are freshly initialised from `seed` (a starting point for training).
  The base tokenizer gets `<|Reward|>` (id = its original length); the token tables are cut to the tokenizer's
  length as the reference's resize does. The prompts (the project's default rubric unless `prompts_file`), image
  resolution, position mode and fusion are recorded so that scoring needs nothing else.
  """
  base, out, reward_weights = paths.expand(base), paths.expand(out), paths.expand(reward_weights)
  if not os.path.isdir(base):
    raise FileNotFoundError(f"{base}: not a directory (expected a Hugging Face model directory)")
  if rope_mode not in positions.ROPE_MODES:
    raise ValueError(f"unknown rope mode {rope_mode!r}; choose one of {positions.ROPE_MODES}")
  if fusion not in FUSIONS:
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
  processing.check_pixel_bounds(min_pixels, max_pixels)
  prompts = load_prompts(prompts_file)
  tokenizer, chat_template = tokenizer_with_reward(base)
  reader = reward_reader(reward_weights) if reward_weights else None
  cfg, backbone = load_backbone(base, param_dtype=param_dtype, mesh=mesh, reader=reader,
                                vocab_size=None if tokenizer is None else len(tokenizer))
  _, _, abstract = model_dir.abstract_params(cfg, RuntimeOptions(), mesh=mesh)
  if reader is not None:
    heads = load_heads(reader, abstract)
  else:
    rngs = nnx.Rngs(seed)
    heads = {d: nnx.to_pure_dict(nnx.state(RewardHead(cfg.text.hidden_size, HeadConfig(), rngs), nnx.Param))
             for d in DIMENSIONS}
  settings = {"rope_mode": rope_mode, "fusion": fusion, "prompts": prompts.to_dict(), "min_pixels": min_pixels,
              "max_pixels": max_pixels, "source": os.path.abspath(base),
              "reward_weights": os.path.abspath(reward_weights) if reward_weights else None,
              "heads": "released" if reward_weights else f"initialised (seed {seed})",
              "heads_trained": reward_weights is not None, "chat_template": chat_template}
  model_dir.save_model_dir(out, {"backbone": backbone, "heads": heads}, cfg, HeadConfig(), settings, tokenizer)
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  cli.quiet_logs(f.verbose)
  start = time.time()
  with cli.one_line_errors():
    out = import_hf(f.base, f.out, reward_weights=f.reward_weights, param_dtype=f.param_dtype, rope_mode=f.rope_mode,
              fusion=f.fusion, prompts_file=f.prompts, min_pixels=f.min_pixels, max_pixels=f.max_pixels)
  print(f"wrote {out} in {time.time() - start:.1f}s")


def define_flags() -> None:
  cli.verbose_flag()
  flags.DEFINE_string("base", None, "Hugging Face Qwen2.5-VL directory (config.json, tokenizer, safetensors).",
                      required=True)
  flags.DEFINE_string("out", None, "Output model directory.", required=True)
  flags.DEFINE_string("reward_weights", None, "A released EditReward model.safetensors (backbone and rm_heads) that "
                      "replaces the base weights; without it the heads are freshly initialised.")
  flags.DEFINE_enum("fusion", "mean", list(FUSIONS), "How the two dimensions' outputs are fused.")
  flags.DEFINE_string("prompts", None, "Prompts file (JSON with instruction_following, visual_quality, suffix) to "
                      "record with the model; default: the project's rubric.")
  flags.DEFINE_integer("min_pixels", processing.DEFAULT_PIXELS, "Images are resized to at least this many pixels.")
  flags.DEFINE_integer("max_pixels", processing.DEFAULT_PIXELS, "Images are resized to at most this many pixels.")
  flags.DEFINE_enum("param_dtype", "auto", ["auto", "float32", "bfloat16"],
                    "Stored parameter dtype; auto keeps the checkpoint's.")
  flags.DEFINE_enum("rope_mode", "sequential", list(positions.ROPE_MODES),
                    "Position mode recorded with the model: sequential (what EditReward checkpoints expect) or "
                    "mrope (native Qwen2.5-VL 3-D).")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
